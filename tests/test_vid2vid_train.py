"""vid2vid's training loop, generation and scores, run through layered_jax.main on a tiny synthetic pose clip set.

Runs in subprocesses (as a user would): a 2-epoch run whose second epoch doubles n_frames_total (more chunks per
clip, the same compiled step), the same split in two runs (an exact resume), and the first epoch on 4 host
devices (the same result as on 1).
"""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import vid2vid_demo
from data_prep import vid2vid_synthetic
from layered_jax import errors
from layered_jax.vid2vid import generate, train
from tests import browser as browser_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.ngf=8', '--config.ndf=8', '--config.n_blocks=1', '--config.n_frames_total=5',
        '--config.niter_step=1', '--config.batch_size=4', '--config.log_every_steps=1',
        '--config.compare_baseline=False', '--config.fps=5', '--config.n_frames_G=3',
        '--config.report_every_secs=1e-6']


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  """2 training clips of 12 frames and a held-out one, 64x64."""
  return vid2vid_synthetic.generate(str(tmp_path_factory.mktemp('v2v')), 'pose', size=(64, 64), frames=12, clips=2,
                                    test_clips=1, plain_background=True)


def _main(workdir, dataroot, *flags, devices=1):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', 'layered_jax.main', '--config=configs/vid2vid_demo.py',
                           f'--workdir={workdir}', f'--config.dataroot={dataroot}', *TINY, *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def _params(workdir, epoch):
  import orbax.checkpoint as ocp
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(epoch), 'state'))
  return state['params']


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope='module')
def runs(clips, tmp_path_factory):
  """(whole run dir, split run dir, 4-device run dir, their console outputs)."""
  base = tmp_path_factory.mktemp('runs')
  whole, split, four = (str(base / name) for name in ('whole', 'split', 'four'))
  out = {'whole': _main(whole, clips, '--config.niter=1', '--config.niter_decay=1', '--config.image_every_epochs=2')}
  out['split1'] = _main(split, clips, '--config.niter=1', '--config.niter_decay=0', '--config.mode=train')
  out['split2'] = _main(split, clips, '--config.niter=1', '--config.niter_decay=1', '--config.mode=train')
  out['four'] = _main(four, clips, '--config.niter=1', '--config.niter_decay=0', '--config.mode=train', devices=4)
  return whole, split, four, out


def test_training_resumes_exactly_and_compiles_the_step_once(runs):
  whole, split, _, out = runs
  # Epoch 2 doubles n_frames_total (5 -> 10: 1 then 2 chunks per clip): still one compiled step.
  assert out['whole'].count('compiling the train step') == 1
  assert 'resuming from epoch 1' in out['split2']
  for a, b in zip(_leaves(_params(whole, 2)), _leaves(_params(split, 2))):
    np.testing.assert_array_equal(a, b)
  progress = json.load(open(os.path.join(whole, 'checkpoints', '2', 'progress', 'metadata')))
  # epoch 1: 2 clips x 8 starts = 16 samples, 4 steps of 4 clips, 1 chunk; epoch 2: 2 x 3 = 6 -> 2 steps, 2 chunks
  assert progress == {'epoch': 2, 'chunks': 8, 'n_frames_total': 10}


def test_metrics_and_images_reach_tensorboard(runs):
  from tensorboard.backend.event_processing import event_accumulator
  whole = runs[0]
  events = event_accumulator.EventAccumulator(whole, size_guidance={'tensors': 0, 'images': 0})
  events.Reload()
  tags = set(events.Tags()['tensors']) | set(events.Tags()['scalars'])
  assert {'loss/G', 'loss/D', 'loss/D_T0', 'terms/G_Warp', 'terms/F_Flow', 'learning_rate', 'epoch', 'n_frames_total',
          'steps_per_sec', 'frames_per_sec'} <= tags, tags
  assert {'labels', 'generated', 'real', 'flow', 'weight'} <= tags | set(events.Tags()['images'])
  steps = [e.step for e in events.Tensors('n_frames_total')]
  assert steps == list(range(1, 9)), steps  # every chunk step (log_every_steps=1), numbered across epochs


def _losses(console):
  """{step: {network: loss}} from the progress lines (4 significant digits)."""
  lines = re.findall(r'step (\d+)/\d+ .*?; (.*)', console)
  return {int(n): {k: float(v) for k, v in (item.split(' ') for item in text.split(', '))} for n, text in lines}


def test_four_devices_train_as_one(runs):
  """The same clips split over 4 devices: the runs stay together (the first step's losses agree to 1e-7).

  Not bit-equal afterwards: the sums are reordered, and Adam's first steps (lr * g / |g|) turn rounding in
  near-zero gradients into steps of up to lr, which the GAN losses then amplify (measured: 0.05% on loss G
  after one step, 1% after four).
  """
  _, split, four, out = runs
  one, many = _losses(out['split1']), _losses(out['four'])
  assert sorted(one) == sorted(many) == [2, 3, 4]  # the first step's line is the compile report
  for name, value in one[2].items():
    assert abs(many[2][name] - value) <= 0.002 * abs(value) + 1e-3, (name, value, many[2][name])
  for n in one:
    for name, value in one[n].items():
      assert abs(many[n][name] - value) <= 0.03 * abs(value) + 1e-3, (n, name, value, many[n][name])
  lr = vid2vid_demo.get_config().lr
  for a, b in zip(_leaves(_params(split, 1)), _leaves(_params(four, 1))):
    np.testing.assert_allclose(a, b, atol=8 * lr)  # 4 Adam steps of at most lr each, on either side


def test_generation_writes_videos_a_page_and_scores(runs, browser):
  whole = runs[0]
  results = json.load(open(os.path.join(whole, 'generate', 'scores.json')))
  assert results['split'] == 'test' and results['first_scored_frame'] == 2
  scores = results['clips']['clip00']
  assert set(scores) == {'psnr', 'psnr_person', 'warp_error', 'real_warp_error'}
  assert 5 < scores['psnr'] < 60 and scores['warp_error'] > scores['real_warp_error'] >= 0
  clip_dir = os.path.join(whole, 'generate', 'clip00')
  assert len(os.listdir(os.path.join(clip_dir, 'frames'))) == 12
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(whole))
  with browser_lib.serve(clip_dir) as url:
    browser.open(f'{url}/index.html')
    states = browser.wait("""(() => {
        const videos = [...document.querySelectorAll('video')];
        const bad = videos.find(v => v.error);
        if (bad) throw new Error(bad.getAttribute('src') + ' failed: media error ' + bad.error.code);
        return videos.length === 3 && videos.every(v => v.readyState >= 2) && videos.map(v => v.readyState);
      })()""")
  assert len(states) == 3


def test_scores_of_the_real_frames_and_of_a_flicker(clips):
  from layered_jax.vid2vid import data, input_pipeline
  clip_set = data.open_clips(clips, 'test')
  clip = input_pipeline.eval_clip(clip_set, 0, input_pipeline.ClipOptions(n_scales_temporal=1))
  real = np.asarray(clip['frames'])
  mask = generate.person_mask(clip, clip_set.metadata)
  assert 0 < mask.mean() < 0.5
  same = generate.scores(real, clip, mask, 0)
  assert same['psnr'] > 100 and same['warp_error'] == same['real_warp_error'] < 0.01
  flicker = real + np.where(np.arange(len(real)) % 2, 0.1, -0.1)[:, None, None, None]
  worse = generate.scores(flicker, clip, mask, 0)
  assert worse['warp_error'] > same['warp_error'] + 0.09  # a 0.1 (in [0, 1]) flicker, one frame to the next
  assert 25.5 < worse['psnr'] < 26.5  # 26 dB: RMS error 0.05 in [0, 1]


def test_schedule():
  config = vid2vid_demo.get_config()
  config.n_frames_total, config.niter_step, config.niter, config.niter_decay = 6, 2, 3, 4
  assert [train.frames_in_epoch(config, e, 20) for e in (1, 2, 3, 5, 7)] == [6, 6, 12, 20, 20]
  assert [train.lr_scale(config, e) for e in (1, 3, 4, 5, 7)] == [1., 1., 1., 0.75, 0.25]
  assert train.chunks_per_clip(config, 12) == (12 - 2) // 3


def test_config_errors_name_the_field():
  config = vid2vid_demo.get_config()
  config.ngf = 0
  config.lr = float('nan')
  with pytest.raises(errors.ConfigError, match=r'config\.ngf=0 .*config\.lr=nan'):
    train.check_config(config)
  config = vid2vid_demo.get_config()
  config.mode = 'export'
  with pytest.raises(errors.ConfigError, match="config.mode='export'"):
    train.check_config(config)


def test_a_single_frame_generator_renders(clips):
  """The baseline's generator (n_frames_G=1, no flow) renders a clip; its first frames are generated too."""
  from layered_jax.vid2vid import data, input_pipeline, step
  options = step.Options(input_nc=6, ngf=4, n_downsample_G=1, n_blocks=1, n_frames_G=1, no_flow=True,
                         n_scales_temporal=0, no_vgg=True)
  models = step.build_models(options)
  import jax
  params = step.create_state(jax.random.PRNGKey(0), models, options).params['G']
  clip = input_pipeline.eval_clip(data.open_clips(clips, 'test'), 0, input_pipeline.ClipOptions(n_scales_temporal=1))
  out = generate.render(models.generator, params, options, clip)
  assert out['final'].shape == (12, 64, 64, 3) and set(out) == {'final', 'raw'}
  assert float(jnp.abs(out['final'][0] - clip['frames'][0]).max()) > 0


def test_memory_planner_and_scaling_benchmark_take_vid2vid(capsys, tmp_path):
  from layered_jax import memory
  config = tmp_path / 'tiny.py'
  config.write_text('from configs import vid2vid_demo\n\n\ndef get_config():\n  c = vid2vid_demo.get_config()\n'
                    '  c.update(ngf=4, ndf=4, n_blocks=1, n_layers_D=1, n_scales_temporal=1, max_frames_per_gpu=1)\n'
                    '  return c\n')
  memory.main([f'--config={config}', '--size=128x128', '--memory_gb=1', '--devices=1'])
  out = capsys.readouterr().out
  need = float(re.search(r'([\d.]+) GiB per device \(', out).group(1))
  assert 0 < need < 1 and 'fits in 1.00 GiB per device' in out, out
  result = subprocess.run([sys.executable, '-m', 'benchmarks.scaling', '--system=vid2vid', '--preset=tiny',
                           '--fake_cpu_devices=2', '--devices', '2', '--steps=1', '--frames=1', '--json'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
  assert row['devices'] == 2 and row['frames_per_sec'] > 0 and row['global_batch'] == 2


def test_user_errors_are_one_line(clips, tmp_path):
  def run(*flags):
    result = subprocess.run([sys.executable, '-m', 'layered_jax.main', *flags, f'--workdir={tmp_path / "w"}'],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr.strip().splitlines()[-1]
  assert 'config.dataroot is empty' in run('--config=configs/vid2vid_pose.py')
  line = run('--config=configs/vid2vid_demo.py', f'--config.dataroot={clips}', '--config.mode=generate')
  assert line.startswith('error:') and 'has no checkpoint to generate from' in line
  assert not os.path.exists(tmp_path / 'w' / 'generate')
