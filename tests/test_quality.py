"""The quality benchmark's parts: image scores on known errors, the original's output layout, the shims, --quick."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import quality, retiming_original
from data_prep import synthetic
from layered_jax import evaluate, files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('quality') / 'video')
  synthetic.generate(path, people=2, frames=3, size=(128, 64), shadow_length=1.6, shadow_blur=1.5, seed=5)
  return path


def _truth_as_export(video: str, export: str) -> None:
  """The ground truth layers in the export layout: what a perfect model would write."""
  shutil.copytree(os.path.join(video, 'ground_truth', 'layers'), os.path.join(export, 'layers'))
  shutil.copy(os.path.join(video, 'ground_truth', 'layers.json'), os.path.join(export, 'layers.json'))


def test_image_scores_of_the_truth_and_of_a_background_blob(video, tmp_path):
  export = str(tmp_path / 'export')
  _truth_as_export(video, export)
  perfect = evaluate.image_scores(export, video)
  assert perfect['background_psnr'] > 100 and perfect['background_peak_error'] == 0
  assert perfect['recomposited_psnr'] > 45  # the frames are the true layers composited, then rounded
  people = evaluate.layer_scores(export, video)
  assert all(s['alpha_iou'] == 1 and s['shadow_recall'] == 1 and s['stray_alpha'] == 0 for s in people.values())

  path = os.path.join(export, 'layers', '00', '0002.png')
  before = (files.read_rgba(path) * 255).round()
  after = before.copy()
  after[40:43, 20:23, :3] = np.clip(after[40:43, 20:23, :3] + 60, 0, 255)  # a bright 3x3 blob on the ground
  files.write_png(path, after.astype(np.uint8))
  blob = evaluate.image_scores(export, video)
  assert blob['background_peak_error'] == pytest.approx(np.square(after - before)[..., :3].mean(-1).max())
  assert blob['background_peak_error'] == 3600  # the ground is dark enough for +60 on every channel
  pixels = 3 * 64 * 128
  assert blob['background_psnr'] == pytest.approx(evaluate.psnr(9 * blob['background_peak_error'] / pixels), abs=0.3)
  assert blob['background_psnr_98'] > 100  # 9 pixels are far fewer than the 2% left out
  assert blob['recomposited_psnr'] < perfect['recomposited_psnr'] - 10

  smudged = os.path.join(export, 'layers', '01', '0001.png')
  layer = (files.read_rgba(smudged) * 255).round()
  empty = layer[..., 3] == 0
  layer[..., 3] = np.where(empty, 51, layer[..., 3])  # alpha 0.2 wherever the person's layer should be empty
  files.write_png(smudged, layer.astype(np.uint8))
  stray = evaluate.layer_scores(export, video)['01']['stray_alpha']
  empties = [np.sum(files.read_rgba(os.path.join(video, 'ground_truth', 'layers', '01', f'{i:04d}.png'))[..., 3] == 0)
             for i in (1, 2, 3)]
  assert stray == pytest.approx(0.2 * empties[0] / sum(empties), rel=1e-6)  # one frame of three


def test_soft_shadows_count_only_where_their_alpha_reaches_the_recall_bar(video):
  truth = [files.read_rgba(os.path.join(video, 'ground_truth', 'layers', '01', f'{i:04d}.png'))[..., 3]
           for i in (1, 2, 3)]
  soft = np.concatenate([a[(a > 0) & (a < 1)] for a in truth])
  assert soft.min() < evaluate.SHADOW_ON < soft.max() <= synthetic.SHADOW_ALPHA + 1 / 255  # blurred edges


def test_original_results_are_laid_out_as_our_export(video, tmp_path):
  """test.py names layers by their position in each frame's stack; the export by their layer id."""
  meta_path = os.path.join(video, 'metadata.json')
  meta = json.load(open(meta_path))
  order = [[2, 1], [1, 2], [2, 1]]
  changed = str(tmp_path / 'video')
  shutil.copytree(video, changed)
  json.dump({**meta, 'composite_order': order}, open(os.path.join(changed, 'metadata.json'), 'w'))
  images = tmp_path / 'work' / 'results' / retiming_original.NAME / 'test_latest' / 'images'
  images.mkdir(parents=True)
  for i, frame_order in enumerate(order):
    for position, layer in enumerate([0] + frame_order):
      pixel = np.full((64, 128, 4), [i, layer, position, 255], np.uint8)
      files.write_png(str(images / f'{i + 1:04d}_rgba_l{position}.png'), pixel)
  export = str(tmp_path / 'export')
  retiming_original.to_export(str(tmp_path / 'work'), changed, export)
  for i in range(3):
    for layer in (0, 1, 2):
      rgba = (files.read_rgba(os.path.join(export, 'layers', f'{layer:02d}', f'{i + 1:04d}.png')) * 255).round()
      assert tuple(rgba[0, 0, :2]) == (i, layer)
  meta_out = json.load(open(os.path.join(export, 'layers.json')))
  assert meta_out['composite_order'] == order and meta_out['layer_ids'] == [0, 1, 2]
  assert meta_out['size'] == [128, 64]


def test_shims_behave_as_the_libraries_they_stand_in_for(tmp_path):
  sys.path.insert(0, retiming_original.SHIMS)
  try:
    from torchvision import transforms  # the shim: PyPI's torchvision is not installed here
    import dominate
    from dominate.tags import a, img, p, table, td, tr
  finally:
    sys.path.remove(retiming_original.SHIMS)
  picture = np.random.default_rng(0).integers(0, 256, (5, 7, 4), np.uint8)
  tensor = transforms.ToTensor()(Image.fromarray(picture))
  assert tensor.dtype == torch.float32 and tensor.shape == (4, 5, 7)
  np.testing.assert_allclose(tensor.numpy(), picture.transpose(2, 0, 1) / 255., atol=1e-7)
  gray = transforms.ToTensor()(Image.fromarray(picture[..., 0]))
  assert gray.shape == (1, 5, 7)

  doc = dominate.document(title='t & u')
  row_table = table(border=1)
  doc.add(row_table)
  with row_table:
    with tr():
      with td():
        with p():
          with a(href='images/x.png'):
            img(src='images/x.png')
          p('caption')
  html = doc.render()
  assert '<title>t &amp; u</title>' in html
  assert ('<body><table border="1"><tr><td><p><a href="images/x.png"><img src="images/x.png"></img></a>'
          '<p>caption</p></p></td></tr></table></body>') in html


def test_settings_compress_the_schedule_into_the_budget():
  settings = quality.Settings(frames=32, batch_size=8, steps=1200)
  assert settings.n_epochs == 300
  assert settings.schedule() == {'mask_loss_rolloff_epoch': 50, 'alpha_l1_rolloff_epoch': 100, 'jitter_epochs': 100}
  assert quality.Settings(frames=30, batch_size=8, steps=100).n_epochs == 25  # ceil(30 / 8) = 4 steps an epoch


def test_table_gives_each_metric_its_own_column_with_mean_and_span():
  runs = [{'code': 'original', 'kind': 'long_hard', 'seed': seed,
           **{m: v * (1 + seed) for m, v in zip(quality.METRICS, (0.4499, 0.119, 0.01057, 21.66, 23.52, 9944., 21.28,
                                                                   1660.5, 1.4453))}} for seed in (0, 1)]
  summary = quality.summarize(runs)
  assert summary['original']['all']['background_psnr'] == {'min': 21.66, 'mean': 21.66 * 1.5, 'max': 43.32}
  lines = quality.format_table(runs, summary).splitlines()
  assert len({len(line) for line in lines if line and '(mean' not in line}) == 1  # rows as wide as the header
  spans = lines[-1].split()  # the last group's min..max
  assert len(spans) == len(quality.METRICS)
  assert spans[0] == '0.45..0.9' and spans[5] == '9944..19888' and spans[7] == '1660..3321'
  assert [float(x) for x in lines[1].split()[3:]] == pytest.approx([runs[0][m] for m in quality.METRICS], abs=1e-3)


def test_quick_benchmark_trains_exports_and_scores(tmp_path):
  """The CI-sized run: ours on one scene, one seed, a tiny network; the file's slow test (95 s on the shared 2-core
  machine, most of it compiling the UNet in the train and the export process)."""
  result = subprocess.run([sys.executable, '-m', 'benchmarks.quality', '--quick', '--json',
                           f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  (run,) = report['runs']
  assert run['code'] == 'ours-faithful' and run['steps'] == quality.QUICK.steps
  assert 0 <= run['alpha_iou'] <= 1 and 0 <= run['shadow_recall'] <= 1
  assert 5 < run['background_psnr'] <= run['background_psnr_98'] < 60 and 5 < run['recomposited_psnr'] < 60
  assert run['steps_per_sec'] > 0 and run['train_seconds'] > 0 and run['cpus'] == len(os.sched_getaffinity(0))
  stats = report['summary']['ours-faithful']['all']['background_psnr']
  assert stats['min'] == stats['mean'] == stats['max'] == run['background_psnr']
