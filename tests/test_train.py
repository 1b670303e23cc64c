"""Training: the reference schedule, device-count invariance, exact resume, failures, export."""

import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from data_prep import prepare, synthetic
from layered_jax import dataset, errors, export, loop, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(video, data_dir):
  config = default.get_config()
  config.dataroot = video
  config.data_dir = data_dir
  config.num_filters = 8
  config.n_epochs = 2
  config.batch_size = 4
  config.n_epochs_upsample = 1
  config.batch_size_upsample = 4
  config.crop_size = 32
  config.trimap_width = 4
  config.log_every_steps = 1
  config.image_every_epochs = 2
  config.checkpoint_every_epochs = 1
  return config


def train_on(config, workdir):
  """What main does: prepare the dataset, then train."""
  prepare.prepare_dataset(config, workdir)
  return train.train_and_evaluate(config, workdir)


def restored(config, workdir):
  """(state, progress) of the workdir's newest usable checkpoint."""
  frames, meta = dataset.load(dataset.location(config, workdir))
  module = train.make_module(config, int(meta['n_textures']))
  return train.restore(config, workdir, meta, module, {k: frames[k][:1] for k in ('uv', 'pids')})[1]


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('train') / 'walk')
  synthetic.generate(path, people=2, frames=8, size=(128, 64))
  return path


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


def test_schedule_follows_the_reference():
  config = default.get_config()
  s = train.initial_schedule(config)
  s = train.update_schedule(s, 1, previous_mask_loss=0.1, config=config)  # never on the first epoch
  assert s['lambda_mask'] == 50
  s = train.update_schedule(s, 5, previous_mask_loss=1.5, config=config)  # 1.5 > 0.02 * 50
  assert s['lambda_mask'] == 50 and s['mask_rolloff_epoch'] == -1
  s = train.update_schedule(s, 6, previous_mask_loss=0.9, config=config)  # below: drop 10x, remember
  assert s['lambda_mask'] == pytest.approx(5) and s['mask_rolloff_epoch'] == 6
  s = train.update_schedule(s, 7, previous_mask_loss=0.0, config=config)
  assert s['lambda_mask'] == pytest.approx(5)
  s = train.update_schedule(s, 12, previous_mask_loss=0.0, config=config)  # zero at twice that epoch
  assert s['lambda_mask'] == 0
  assert train.update_schedule(s, 199, None, config)['lambda_alpha_l1'] == 0.01
  assert train.update_schedule(s, 200, None, config)['lambda_alpha_l1'] == 0
  assert train.update_schedule(s, 399, None, config)['jitter_rgb'] == 0.2
  assert train.update_schedule(s, 400, None, config)['jitter_rgb'] == 0
  config.mask_loss_rolloff_epoch = 30  # fixed roll-off: zero at 60 whatever the loss
  fixed = train.initial_schedule(config)
  assert train.update_schedule(fixed, 59, 0., config)['lambda_mask'] == 50
  assert train.update_schedule(fixed, 60, 0., config)['lambda_mask'] == 0


def _run(tmp_path, name, video, data_dir, devices, *overrides):
  out = str(tmp_path / f'{name}.npz')
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'train_run.py'), str(tmp_path / name),
                           video, data_dir, out, *overrides], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out))


def assert_same_training(a, b):
  """Equal up to float reduction order. Compared after one epoch per stage: Adam's first steps
  normalise each gradient entry, so rounding-level differences in near-zero gradients become
  lr-sized parameter changes from the second step on (after 6 steps outputs differ by ~2e-3).
  Per-device BatchNorm statistics or loss normalisers would differ by ~1e-1."""
  difference = np.abs(a['reconstruction'] - b['reconstruction'])
  assert difference.max() < 1e-4 and difference.mean() < 1e-5, (difference.max(), difference.mean())
  np.testing.assert_allclose(a['upsampler'], b['upsampler'], atol=1e-4)
  np.testing.assert_allclose(a['running_mean'], b['running_mean'], atol=5e-3)


def test_one_and_four_devices_agree_on_the_same_global_batch(tmp_path, video, data_dir):
  one = _run(tmp_path, 'one', video, data_dir, 1, 'n_epochs=1')
  four = _run(tmp_path, 'four', video, data_dir, 4, 'n_epochs=1')
  assert (one['devices'], four['devices']) == (1, 4)
  assert one['step'] == four['step'] == 2 * 2  # 1 + 1 epochs of 8 frames at batch 4
  assert_same_training(four, one)


def _params(state):
  return jax.tree_util.tree_map(np.asarray, {'params': state.params, 'batch_stats': state.batch_stats})


def test_resume_continues_exactly_where_it_stopped(tmp_path, video, data_dir):
  straight_config = tiny_config(video, data_dir)
  straight_config.n_epochs = 3
  straight_config.do_upsampling = False
  straight = train_on(straight_config, str(tmp_path / 'straight'))
  stopped_config = tiny_config(video, data_dir)
  stopped_config.n_epochs = 1  # "stops" after epoch 1 (its checkpoint is written)
  stopped_config.do_upsampling = False
  train_on(stopped_config, str(tmp_path / 'resumed'))
  resumed = train_on(straight_config, str(tmp_path / 'resumed'))
  assert int(resumed.step) == int(straight.step) == 6
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), _params(resumed),
                         _params(straight))
  _, progress = restored(straight_config, str(tmp_path / 'resumed'))
  assert (progress.epoch, progress.stage) == (3, 'layers')


def test_stage_two_continues_the_epoch_count_and_trains_only_the_upsampler(tmp_path, video, data_dir):
  config = tiny_config(video, data_dir)
  config.n_epochs = 1
  first = train_on(config.copy_and_resolve_references(), str(tmp_path / 'run'))
  config.n_epochs_upsample = 0
  config.do_upsampling = False
  state = train_on(config, str(tmp_path / 'run'))  # nothing left to do
  _, progress = restored(config, str(tmp_path / 'run'))
  assert (progress.stage, progress.epoch) == ('upsample', 2)
  assert progress.schedule['lambda_mask'] == 0
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                   first.params, state.params)
  assert not any(jax.tree_util.tree_leaves(changed))
  # The upsampling epoch moved the upsampler and nothing else.
  low_only = tiny_config(video, data_dir)
  low_only.n_epochs = 1
  low_only.do_upsampling = False
  base = train_on(low_only, str(tmp_path / 'base'))
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                 base.params, first.params)
  assert moved['upsampler']['upsample_block_0']['conv']['kernel']
  assert not any(jax.tree_util.tree_leaves({k: v for k, v in moved.items() if k != 'upsampler'}))


def test_a_state_made_non_finite_by_an_epochs_last_update_is_not_saved(tmp_path, video, data_dir, monkeypatch):
  """The loss of the last step is computed before its update: a NaN that update makes must not be checkpointed."""
  config = tiny_config(video, data_dir)
  config.n_epochs, config.do_upsampling = 2, False
  real = train.pmapped_step
  poison = jax.pmap(lambda state: jax.tree_util.tree_map(lambda x: x * np.nan, state), donate_argnums=0)

  def step_poisoning_the_end_of_epoch_2(stage, devices=None):
    p_step = real(stage, devices)

    def step(state, batch, weights):
      state, terms = p_step(state, batch, weights)  # 2 steps per epoch (8 frames, batch 4)
      if int(state.step[0]) == 4:
        state = state.replace(params=poison(state.params))
      return state, terms
    step.lower = p_step.lower
    return step

  monkeypatch.setattr(train, 'pmapped_step', step_poisoning_the_end_of_epoch_2)
  with pytest.raises(errors.DivergedError, match=r'non-finite values at the end of epoch 2 \(params/.*not saved.*'
                     r'last checkpoint \(epoch 1, finite\).*lower --config.lr'):
    train_on(config, str(tmp_path / 'run'))
  assert loop.Checkpoints(str(tmp_path / 'run'), 3, {}).steps() == [1]
  config.n_epochs = 1  # the rerun the message advises resumes from the finite epoch 1
  state, progress = restored(config, str(tmp_path / 'run'))
  assert progress.epoch == 1 and not loop.nonfinite_leaves(state)


def test_a_huge_learning_rate_stops_instead_of_finishing(tmp_path, video, data_dir):
  config = tiny_config(video, data_dir)
  config.n_epochs, config.do_upsampling, config.lr = 3, False, 1e6
  with pytest.raises(errors.DivergedError, match=r'non-finite values at the end of epoch 1 .*no checkpoint had been'):
    train_on(config, str(tmp_path / 'run'))  # BatchNorm's running variance overflows; the losses stay finite
  assert loop.Checkpoints(str(tmp_path / 'run'), 3, {}).steps() == []


def test_wrong_configs_fail_before_any_compute(tmp_path, video, data_dir):
  config = tiny_config('', data_dir)
  with pytest.raises(errors.ConfigError, match='config.dataroot is empty'):
    train.check_config(config)
  config.dataroot = str(tmp_path / 'nowhere')
  with pytest.raises(errors.ConfigError, match='does not exist'):
    train.check_config(config)
  config = tiny_config(video, data_dir)
  config.dtype = 'float16'
  with pytest.raises(errors.ConfigError, match="use one of 'float32', 'bfloat16'"):
    train.check_config(config)
  # A workdir trained on one video refuses another video's dataset (here in another data_dir), and another model.
  config = tiny_config(video, data_dir)
  config.n_epochs, config.do_upsampling = 1, False
  train_on(config, str(tmp_path / 'b'))
  other = str(tmp_path / 'three')
  synthetic.generate(other, people=3, frames=4, size=(128, 64))
  config = tiny_config(other, str(tmp_path / 'other_data'))
  with pytest.raises(errors.WorkdirError, match=r'checkpoints in .*b/checkpoints came from other inputs than this run '
                     r'\(content .*; video .*walk.* there, .*three.* now\); .*new --workdir'):
    train_on(config, str(tmp_path / 'b'))
  config = tiny_config(video, data_dir)
  config.num_filters = 4
  with pytest.raises(errors.WorkdirError, match=r'\(num_filters 8 there, 4 now\)'):
    train_on(config, str(tmp_path / 'b'))
  config.num_filters, config.crop_size = 8, 256  # larger than the 2x frames of this 128x64 video
  with pytest.raises(errors.ConfigError, match=r'config.crop_size=256 is larger than the 2x frames \(256x128\)'):
    train_on(config, str(tmp_path / 'b'))


def test_detail_transfer_equals_the_reference_loop(rng):
  layers = jnp.asarray(rng.uniform(-1, 1, (2, 4, 5, 6, 4)), jnp.float32)
  target = jnp.asarray(rng.uniform(-1, 1, (2, 5, 6, 3)), jnp.float32)
  recon = jnp.asarray(rng.uniform(-1, 1, (2, 5, 6, 4)), jnp.float32)
  residual = target - recon[..., :3]
  want = np.array(layers)
  transmission = np.zeros((2, 5, 6, 1), np.float32)
  for i in range(3, 0, -1):
    want[:, i, ..., :3] += (1 - transmission) * np.asarray(residual)
    alpha = np.asarray(layers[:, i, ..., 3:]) * 0.5 + 0.5
    transmission = alpha + (1 - alpha) * transmission
  np.testing.assert_allclose(export.transfer_detail(layers, target, recon), np.clip(want, -1, 1), atol=1e-6)


def test_export_writes_layers_by_identity_with_the_frames_composite_order(tmp_path, data_dir):
  video = str(tmp_path / 'v')
  synthetic.generate(video, people=2, frames=3, size=(128, 64))
  meta_path = os.path.join(video, 'metadata.json')
  meta = json.load(open(meta_path))
  meta['composite_order'] = [[1, 2], [2, 1], [1, 2]]
  json.dump(meta, open(meta_path, 'w'))
  config = tiny_config(video, str(tmp_path / 'data'))
  config.n_epochs, config.do_upsampling, config.batch_size = 1, False, 3
  train_on(config, str(tmp_path / 'run'))
  out = export.export(config, str(tmp_path / 'run'))
  info = json.load(open(os.path.join(out, 'layers.json')))
  assert info['layer_ids'] == [0, 1, 2] and info['composite_order'][1] == [2, 1]
  assert info['size'] == [128, 64] and not info['high_res']
  assert info['training'] == {'steps': 1, 'epoch': 1, 'stage': 'layers'}  # shown on index.html
  for k in ('00', '01', '02'):
    assert sorted(os.listdir(os.path.join(out, 'layers', k))) == ['0001.png', '0002.png', '0003.png']
  background = cv2.imread(os.path.join(out, 'layers', '00', '0002.png'), cv2.IMREAD_UNCHANGED)
  assert background.shape == (64, 128, 4) and np.all(background[..., 3] == 255)
  assert {'index.html', 'original.mp4', 'reconstruction.mp4', 'layer_01.mp4'} <= set(os.listdir(out))
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.export-')]
  # Frame 2 stacks the layers as [background, iuv 2, iuv 1]: file 01/0002.png is stack position 2.
  frames, meta = dataset.load(dataset.location(config, str(tmp_path / 'run')))
  variables, _, _ = export.load_variables(config, str(tmp_path / 'run'), meta,
                                          {k: frames[k][:1] for k in ('uv', 'pids')})
  rendered = train.make_module(config, 49).apply(variables, frames['uv'][1:2], frames['pids'][1:2])
  layers = export.transfer_detail(rendered['layers'], frames['rgb'][1:2] / 127.5 - 1, rendered['reconstruction'])
  png = cv2.cvtColor(cv2.imread(os.path.join(out, 'layers', '01', '0002.png'), cv2.IMREAD_UNCHANGED),
                     cv2.COLOR_BGRA2RGBA)
  assert np.abs(png.astype(int) - export.to_uint8(np.asarray(layers[0, 2]))).max() <= 1


def test_metrics_reach_tensorboard(tmp_path, video, data_dir):
  from tensorboard.backend.event_processing import event_accumulator
  config = tiny_config(video, data_dir)
  config.n_epochs, config.do_upsampling, config.image_every_epochs = 2, False, 1
  train_on(config, str(tmp_path / 'run'))
  events = event_accumulator.EventAccumulator(str(tmp_path / 'run'), size_guidance={'tensors': 0, 'images': 0})
  events.Reload()
  tags = set(events.Tags()['tensors']) | set(events.Tags()['scalars'])
  assert {'loss/total', 'loss/recon', 'loss/mask', 'loss/alpha_reg', 'weights/lambda_mask', 'learning_rate',
          'steps_per_sec', 'frames_per_sec'} <= tags, tags
  assert {'target', 'reconstruction', 'layer_01_rgba', 'layer_02_alpha'} <= tags | set(events.Tags()['images'])


def test_export_from_a_converted_reference_checkpoint(tmp_path, video, data_dir):
  import torch
  from layered_jax import convert
  from tests.torch_reference import TorchLNR
  torch.manual_seed(0)
  converted = str(tmp_path / 'converted')
  convert.save(converted, *convert.variables_from_state_dict(TorchLNR(nf=8, n_textures=49).state_dict(), 'lnr'))
  config = tiny_config(video, data_dir)
  config.init_checkpoint = converted
  config.export_high_res = False
  prepare.prepare_dataset(config, str(tmp_path / 'fresh'))  # the shared data_dir's dataset, checked
  out = export.export(config, str(tmp_path / 'fresh'))
  assert len(os.listdir(os.path.join(out, 'layers', '02'))) == 8
  config.init_checkpoint = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='model.json'):
    export.export(config, str(tmp_path / 'fresh2'))
  config.init_checkpoint = ''
  with pytest.raises(errors.WorkdirError, match='train first'):
    export.export(config, str(tmp_path / 'fresh3'))
