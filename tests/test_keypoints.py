"""Skeleton rendering, crop pasting and the keypoints -> IUV tool."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from data_prep import keypoints as kp
from data_prep import synthetic
from data_prep.video_folder import DataError
from layered_jax import convert
from layered_jax.models import iuv_image
from tests.torch_reference import TorchKp2UV

matplotlib.use('Agg')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spec_skeleton_image(kps):
  """Spec section 3 drawing: box scaled to 192 and centred, 7x7 joints, then 3-px limbs."""
  cmap = matplotlib.colormaps['hsv'].resampled(17)
  seq = [9, 14, 6, 7, 13, 16, 2, 11, 3, 5, 10, 15, 1, 8, 0, 12, 4]
  pairs = [[0, 1], [0, 2], [1, 3], [2, 4], [5, 6], [5, 7], [7, 9], [6, 8], [8, 10], [11, 12], [11, 13],
           [13, 15], [12, 14], [14, 16], [6, 12], [5, 11]]
  kps = kps.copy()
  left, right, top, bottom = kps[:, 0].min(), kps[:, 0].max(), kps[:, 1].min(), kps[:, 1].max()
  kps[:, 0] -= (right + left) // 2
  kps[:, 1] -= (bottom + top) // 2
  kps[:, :2] *= 192. / max(right - left, bottom - top)
  kps[:, :2] += 128
  im = Image.new(size=(256, 256), mode='RGB')
  draw = ImageDraw.Draw(im)
  dim = lambda s: s * 0.75 + 0.25
  for i in range(17):
    x, y = kps[i, :2]
    if x - 3 < 0 or y - 3 < 0 or x + 3 > 256 or y + 3 > 256:
      continue
    color = np.array(cmap(seq[i]))
    if kps[i, 2] < 1:
      color[:3] *= dim(kps[i, 2])
    draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=tuple((255 * color).astype('uint8')))
  for a, b in pairs:
    (x1, y1), (x2, y2) = kps[a, :2], kps[b, :2]
    if min(x1, y1, x2, y2) < 0 or max(x1, y1, x2, y2) > 256:
      continue
    color = .5 * (np.array(cmap(seq[a])) + np.array(cmap(seq[b])))
    if min(kps[a, 2], kps[b, 2]) < 1:
      color[:3] *= dim(min(kps[a, 2], kps[b, 2]))
    draw.line([x1, y1, x2, y2], fill=tuple((255 * color).astype('uint8')), width=3)
  return np.array(im)


def test_colour_table_is_matplotlibs_hsv_17():
  cmap = matplotlib.colormaps['hsv'].resampled(17)
  np.testing.assert_array_equal(kp.HSV17, np.array([cmap(i)[:3] for i in range(17)]))


@pytest.mark.parametrize('seed', range(4))
def test_skeleton_image_is_pixel_identical_to_the_spec_drawing(seed):
  rng = np.random.default_rng(seed)
  kps = np.concatenate([rng.uniform(50, 400, (17, 2)), rng.uniform(0, 1.3, (17, 1))], -1)
  image = kp.render_kp2uv_input(kps)
  assert image.shape == (256, 256, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(image, spec_skeleton_image(kps))
  assert (image.sum(-1) > 0).mean() > 0.02  # something was drawn


def spec_paste(layer, crop, kps, pid, size_lr, kp_size):
  """Spec: side = max box side; crop resized (nearest) to side*256/192 scaled per axis, pasted centred."""
  left, right, top, bottom = kps[:, 0].min(), kps[:, 0].max(), kps[:, 1].min(), kps[:, 1].max()
  out = np.array(size_lr[::-1]) ; orig = np.array(kp_size[::-1])
  h, w = (max(bottom - top, right - left) * 256. / 192 * out / orig).astype(int)
  cx = int((left + right) // 2 * out[1] / orig[1])
  cy = int((top + bottom) // 2 * out[0] / orig[0])
  rgba = np.concatenate([crop, np.where(crop[..., :1] > 0, 255 - pid, 0)], -1).astype(np.uint8)
  rgba = np.array(Image.fromarray(rgba).resize((w, h), Image.NEAREST))
  for y in range(h):
    for x in range(w):
      fy, fx = cy - h // 2 + y, cx - w // 2 + x
      if 0 <= fy < layer.shape[0] and 0 <= fx < layer.shape[1] and rgba[y, x].any():
        layer[fy, fx] = rgba[y, x]


@pytest.mark.parametrize('centre', [(60, 40), (5, 3), (120, 62), (-10, 30)])
def test_paste_crop_matches_the_spec_including_frame_borders(centre):
  rng = np.random.default_rng(1)
  crop = rng.integers(0, 3, (256, 256, 3)).astype(np.uint8) * 80  # sparse non-zero pixels
  kps = np.zeros((17, 3))
  kps[:, 0] = centre[0] * 3 + rng.uniform(-40, 40, 17)  # keypoints in 3x larger AlphaPose pixels
  kps[:, 1] = centre[1] * 3 + rng.uniform(-60, 60, 17)
  got = np.full((64, 128, 4), 7, np.uint8)
  want = got.copy()
  kp.paste_crop(got, crop, kps, 2, (128, 64), (384, 192))
  spec_paste(want, crop, kps, 2, (128, 64), (384, 192))
  np.testing.assert_array_equal(got, want)


@pytest.fixture(scope='module')
def kp2uv_dir(tmp_path_factory):
  torch.manual_seed(0)
  out = str(tmp_path_factory.mktemp('kp2uv') / 'converted')
  convert.save(out, *convert.variables_from_state_dict(TorchKp2UV(nf=8).state_dict(), 'kp2uv'))
  return out


@pytest.fixture
def video(tmp_path):
  path = str(tmp_path / 'walk')
  synthetic.generate(path, people=2, frames=3, size=(128, 64))
  shutil.rmtree(os.path.join(path, 'iuv'))
  return path


def test_iuv_layers_are_kp2uv_crops_pasted_per_person(video, kp2uv_dir):
  assert kp.make_iuv_layers(video, kp2uv_dir, batch_size=4) == 2
  keypoints = kp.read_keypoints(os.path.join(video, 'keypoints.json'))
  module, variables = convert.load(kp2uv_dir)
  for layer in (1, 2):
    names = sorted(os.listdir(os.path.join(video, 'iuv', f'{layer:02d}')))
    assert names == ['0001.png', '0002.png', '0003.png']
    image = cv2.cvtColor(cv2.imread(os.path.join(video, 'iuv', f'{layer:02d}', '0002.png'),
                                    cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    skeleton = kp.render_kp2uv_input(keypoints['0002.png'][layer])
    logits, uv = module.apply(variables, skeleton[None].astype(np.float32) / 127.5 - 1)
    want = np.zeros((64, 128, 4), np.uint8)
    kp.paste_crop(want, np.asarray(iuv_image(logits, uv))[0], keypoints['0002.png'][layer], layer,
                  (128, 64), (256, 128))
    np.testing.assert_array_equal(image, want)
    assert set(np.unique(image[..., 3][image[..., 0] > 0])) == {255 - layer}


def test_people_layers_group_people_into_one_layer(video, kp2uv_dir):
  meta_path = os.path.join(video, 'metadata.json')
  meta = json.load(open(meta_path))
  meta['people_layers'] = [[1, 2]]
  json.dump(meta, open(meta_path, 'w'))
  assert kp.make_iuv_layers(video, kp2uv_dir) == 1
  image = cv2.imread(os.path.join(video, 'iuv', '01', '0001.png'), cv2.IMREAD_UNCHANGED)
  assert set(np.unique(255 - image[..., 3][image[..., 2] > 0])) == {1, 2}


@pytest.mark.parametrize('content,message', [
    ('[1, 2]', 'must map frame names'),
    ('{"0001.png": [{"keypoints": [1, 2, 3], "idx": 1}]}', 'not {"keypoints"'),
    ('{"0001.png": [{"keypoints": ' + json.dumps([1.] * 51) + ', "idx": 0}]}', 'ids start at 1'),
    ('{"0009.png": []}', 'names frames that .* does not have'),
    ('{"0001.png": [{"keypoints": ' + json.dumps([1.] * 51) + ', "idx": 3}]}', 'person id 3 .* n_textures 49'),
])
def test_bad_keypoints_are_explained(video, kp2uv_dir, content, message):
  open(os.path.join(video, 'keypoints.json'), 'w').write(content)
  with pytest.raises(DataError, match=message):
    kp.make_iuv_layers(video, kp2uv_dir)
  assert not os.path.exists(os.path.join(video, 'iuv'))


@pytest.mark.parametrize('module', ['data_prep.keypoints', 'data_prep.frames', 'data_prep.synthetic',
                                    'data_prep.build', 'data_prep.vid2vid_build', 'data_prep.vid2vid_synthetic'])
def test_command_lines_have_help(module):
  result = subprocess.run([sys.executable, '-m', module, '--help'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0 and 'video' in result.stdout.lower(), result.stderr[-500:]
