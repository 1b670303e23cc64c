"""Video folders -> network inputs -> TFDS dataset, against an independent spec implementation."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_prep import build, synthetic, video_folder
from layered_jax import dataset
from tests.reference_inputs import reference_frame

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (128, 64)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('videos') / 'walk')
  synthetic.generate(path, people=2, frames=6, size=SIZE, retime_offsets=[0, 3])
  return path


@pytest.fixture(scope='module')
def panning_video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('videos') / 'pan')
  synthetic.generate(path, people=3, frames=5, size=SIZE, camera_pan=24.5, seed=3)
  return path


def _copy(video, tmp_path):
  target = str(tmp_path / 'copy')
  shutil.copytree(video, target)
  return target


def test_network_inputs_match_independent_implementation(video):
  folder = video_folder.read_video_folder(video)
  for index in range(folder.num_frames):
    example = video_folder.frame_example(folder, index)
    uv, trimap, pids = reference_frame(video, index)
    np.testing.assert_allclose(example['uv'], uv, atol=1e-6)
    np.testing.assert_array_equal(example['trimap'], trimap)
    np.testing.assert_array_equal(example['pids'], pids)
  assert set(np.unique(example['trimap'])) == {-1., 0., 1.}
  assert example['uv'].shape == (3, SIZE[1], SIZE[0], 2)


def test_homography_background_and_permuted_composite_order(panning_video, tmp_path):
  path = _copy(panning_video, tmp_path)
  meta = json.load(open(os.path.join(path, 'metadata.json')))
  meta['composite_order'] = [[3, 1, 2], [1, 2, 3], [2, 3, 1], [3, 2, 1], [1, 3, 2]]
  json.dump(meta, open(os.path.join(path, 'metadata.json'), 'w'))
  folder = video_folder.read_video_folder(path, use_homographies=True)
  h = folder.homographies
  for index in range(folder.num_frames):
    example = video_folder.frame_example(folder, index, band_width=7)
    uv, trimap, pids = reference_frame(path, index, band=7, homographies=(h.matrices, h.size, h.bounds))
    np.testing.assert_allclose(example['uv'], uv, atol=1e-5)
    np.testing.assert_array_equal(example['trimap'], trimap)
    np.testing.assert_array_equal(example['pids'], pids)
  # Frame 0 sees the left of the world, the last frame is panned right by 24.5 pixels.
  last = video_folder.frame_example(folder, folder.num_frames - 1)['uv'][0]
  first = video_folder.frame_example(folder, 0)['uv'][0]
  world_width = h.bounds[1]
  shift = (last[..., 0] - first[..., 0]).mean() * 73 / 2 * world_width  # u = 2 x / (W_world n_tex) - 1
  assert shift == pytest.approx(24.5, rel=0.02)


def test_custom_masks_replace_the_trimap_of_that_layer(video, tmp_path):
  path = _copy(video, tmp_path)
  os.makedirs(os.path.join(path, 'mask', '02'))
  mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
  mask[10:30, 40:60] = 255
  cv2.imwrite(os.path.join(path, 'mask', '02', '0002.png'), mask)
  folder = video_folder.read_video_folder(path)
  with_masks = video_folder.frame_example(folder, 1, use_mask_images=True)
  position = 1 + list(folder.composite_order[1]).index(2)
  np.testing.assert_array_equal(with_masks['trimap'][position], mask / 255. * 2 - 1)
  plain = video_folder.frame_example(folder, 1)
  others = [i for i in range(3) if i != position]
  np.testing.assert_array_equal(with_masks['trimap'][others], plain['trimap'][others])


def test_built_dataset_holds_every_frame_and_reads_without_tensorflow(video, tmp_path):
  dataset_dir = build.build(video, str(tmp_path / 'data'))
  assert os.listdir(tmp_path / 'data') == ['layered_video']  # no staging folder left
  script = f'''
import importlib.machinery, sys
find = importlib.machinery.PathFinder.find_spec
importlib.machinery.PathFinder.find_spec = classmethod(
    lambda cls, name, path=None, target=None: None if name.split('.')[0] == 'tensorflow' else find(name, path, target))
import numpy as np
from layered_jax import dataset
frames = dataset.load_frames({dataset_dir!r})
assert 'tensorflow' not in sys.modules
np.savez({str(tmp_path / 'frames.npz')!r}, **frames)
'''
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  frames = dict(np.load(tmp_path / 'frames.npz'))
  folder = video_folder.read_video_folder(video)
  np.testing.assert_array_equal(frames['frame_index'], np.arange(folder.num_frames))
  for index in range(folder.num_frames):
    example = video_folder.frame_example(folder, index)
    for key, value in example.items():
      np.testing.assert_array_equal(frames[key][index], value, err_msg=key)
  meta = dataset.metadata(dataset_dir)
  assert meta['frame_names'] == folder.frame_names and meta['n_textures'] == 49
  assert meta['identity'] == {'video': folder.root, 'content': video_folder.fingerprint(folder), 'trimap_width': 20,
                              'use_homographies': False, 'use_mask_images': False}


def test_synthetic_ground_truth_composites_to_the_frames(video):
  gt = json.load(open(os.path.join(video, 'ground_truth', 'layers.json')))
  assert gt['layer_ids'] == [0, 1, 2]
  for name in gt['frames']:
    layers = {k: cv2.imread(os.path.join(video, 'ground_truth', 'layers', f'{k:02d}', name), cv2.IMREAD_UNCHANGED)
              for k in gt['layer_ids']}
    comp = layers[0][..., :3].astype(float)
    for k in gt['composite_order'][0]:
      a = layers[k][..., 3:] / 255.
      comp = layers[k][..., :3] * a + comp * (1 - a)
    frame = cv2.imread(os.path.join(video, 'rgb_256', name)).astype(float)
    assert np.abs(comp - frame).max() <= 2  # PNG rounding of the layers
    for k in (1, 2):
      iuv = cv2.imread(os.path.join(video, 'iuv', f'{k:02d}', name), cv2.IMREAD_UNCHANGED)
      body = iuv[..., 2] > 0  # red channel (BGRA): part id * 10
      alpha = layers[k][..., 3]
      assert np.all(alpha[body] == 255)
      assert np.all(255 - iuv[..., 3][body] == k)
      assert np.sum((alpha > 0) & ~body) >= 8, 'each person casts a shadow outside its IUV'


def test_synthetic_retimed_ground_truth_with_zero_offset_is_the_video(tmp_path):
  path = str(tmp_path / 'v')
  synthetic.generate(path, people=2, frames=3, size=SIZE, retime_offsets=[0, 0])
  for name in ('0001.png', '0003.png'):
    np.testing.assert_array_equal(cv2.imread(os.path.join(path, 'ground_truth', 'retimed', name)),
                                  cv2.imread(os.path.join(path, 'rgb_256', name)))


def test_synthetic_command_line(tmp_path):
  out = str(tmp_path / 'cli')
  result = subprocess.run([sys.executable, '-m', 'data_prep.synthetic', out, '--people', '1', '--frames', '2',
                           '--size', '64x64', '--camera_pan', '8'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out)) == ['ground_truth', 'homographies.txt', 'iuv', 'keypoints.json',
                                     'metadata.json', 'rgb_256', 'rgb_512']
  keypoints = json.load(open(os.path.join(out, 'keypoints.json')))
  assert len(keypoints['0001.png'][0]['keypoints']) == 51


def _break(path, what):
  if what == 'no iuv':
    shutil.rmtree(os.path.join(path, 'iuv'))
  elif what == 'missing iuv frame':
    os.remove(os.path.join(path, 'iuv', '02', '0004.png'))
  elif what == 'unreadable png':
    open(os.path.join(path, 'iuv', '01', '0003.png'), 'w').write('not a png')
  elif what == 'wrong size png':
    cv2.imwrite(os.path.join(path, 'rgb_512', '0002.png'), np.zeros((10, 10, 3), np.uint8))
  elif what == 'size not multiple of 32':
    meta = json.load(open(os.path.join(path, 'metadata.json')))
    meta['size_LR'] = [100, 64]
    json.dump(meta, open(os.path.join(path, 'metadata.json'), 'w'))
  elif what == 'malformed metadata':
    open(os.path.join(path, 'metadata.json'), 'w').write('{"size_LR": [128, 64],')
  elif what == 'person id beyond n_textures':
    meta = json.load(open(os.path.join(path, 'metadata.json')))
    meta['n_textures'] = 25
    json.dump(meta, open(os.path.join(path, 'metadata.json'), 'w'))
  elif what == 'bad composite order':
    meta = json.load(open(os.path.join(path, 'metadata.json')))
    meta['composite_order'][2] = [1, 1]
    json.dump(meta, open(os.path.join(path, 'metadata.json'), 'w'))


@pytest.mark.parametrize('what,message', [
    ('no iuv', r'iuv is missing'),
    ('missing iuv frame', r'iuv/02 has 5 frames, .*rgb_256 has 6'),
    ('unreadable png', r'iuv/01/0003.png is missing or not a readable image'),
    ('wrong size png', r'rgb_512/0002.png is 10x10; expected 256x128'),
    ('size not multiple of 32', r'size_LR \[100, 64\] must be two positive multiples of 32'),
    ('malformed metadata', r'metadata.json is not valid JSON'),
    ('person id beyond n_textures', r'person id 2 needs n_textures >= 49, metadata.json has 25'),
    ('bad composite order', r'composite_order\[2\] = \[1, 1\] is not an ordering'),
])
def test_bad_video_folders_fail_with_the_file_and_leave_no_dataset(video, tmp_path, what, message):
  path = _copy(video, tmp_path)
  _break(path, what)
  data_dir = tmp_path / 'data'
  with pytest.raises(video_folder.DataError, match=message):
    build.build(path, str(data_dir))
  assert not data_dir.exists() or os.listdir(data_dir) == []


@pytest.mark.parametrize('content,message', [
    ('size: 128 64\n', r'first lines must be'),
    ('size: 128 64\nbounds: 0 10 0 5\n' + '1 0 0 0 1 0 0 0 1\n' * 2, r'has 2 homographies for 6 frames'),
    ('size: 128 64\nbounds: 0 10 0 5\n' + '1 0 0 0 1 0 0 0\n' * 6, r'9 entries'),
    ('bounds: 0 10 0 5\n', r'first lines must be'),
    ('size: 128 64\nbounds: 0 10 5 5\n' + '1 0 0 0 1 0 0 0 1\n' * 6, r'max > min'),
])
def test_malformed_homographies_are_explained(video, tmp_path, content, message):
  path = _copy(video, tmp_path)
  open(os.path.join(path, 'homographies.txt'), 'w').write(content)
  with pytest.raises(video_folder.DataError, match=message):
    video_folder.read_video_folder(path, use_homographies=True)
