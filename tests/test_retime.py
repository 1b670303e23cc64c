"""Retiming: against the synthetic ground truth, and each operation on layers whose frames encode time."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_prep import synthetic
from layered_jax import files, retime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, WIDTH = 10, 24
COLORS = {1: (255, 0, 0), 2: (0, 255, 0)}


def psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


@pytest.fixture(scope='module')
def walk(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('retime') / 'walk')
  synthetic.generate(path, people=2, frames=16, size=(128, 64), retime_offsets=[0, 5])
  return path


def test_offset_reproduces_the_ground_truth_retimed_video(walk, tmp_path):
  out = retime.retime(os.path.join(walk, 'ground_truth'), {'layers': {'2': {'offset': 5}}}, str(tmp_path / 'out'))
  for i in range(16):
    name = f'{i + 1:04d}.png'
    got = cv2.imread(os.path.join(out, 'frames', name))
    want = cv2.imread(os.path.join(walk, 'ground_truth', 'retimed', name))
    assert psnr(got, want) >= 40, (name, psnr(got, want))
  assert {'retimed.mp4', 'contact_sheet.png', 'frames'} <= set(os.listdir(out))
  sheet = cv2.imread(os.path.join(out, 'contact_sheet.png'))
  assert sheet.shape == (2 * 64, 4 * 128, 3)  # before / after rows, four frames


def test_identity_spec_reproduces_the_composite_of_the_layers(walk, tmp_path):
  out = retime.retime(os.path.join(walk, 'ground_truth'), {}, str(tmp_path / 'out'))
  video = retime.load_layers(os.path.join(walk, 'ground_truth'))
  for i in (0, 7, 15):
    name = f'{i + 1:04d}.png'
    comp = video.read(0, i)[..., :3]
    for k in video.composite_order[i]:
      layer = video.read(k, i)
      comp = layer[..., :3] * layer[..., 3:] + comp * (1 - layer[..., 3:])
    got = cv2.cvtColor(cv2.imread(os.path.join(out, 'frames', name)), cv2.COLOR_BGR2RGB)
    assert np.abs(got.astype(int) - files.to_uint8(comp).astype(int)).max() <= 1
    original = cv2.cvtColor(cv2.imread(os.path.join(walk, 'rgb_256', name)), cv2.COLOR_BGR2RGB)
    assert np.abs(got.astype(int) - original.astype(int)).max() <= 2


@pytest.fixture
def columns(tmp_path):
  """Layer k's frame i is opaque only in column i (layer 1 red, layer 2 green), over a black background."""
  root = tmp_path / 'columns'
  for k in (0, 1, 2):
    os.makedirs(root / 'layers' / f'{k:02d}')
    for i in range(FRAMES):
      image = np.zeros((4, WIDTH, 4), np.uint8)
      if k == 0:
        image[..., 3] = 255
      else:
        image[:, i, :3], image[:, i, 3] = COLORS[k], 255
      files.write_png(str(root / 'layers' / f'{k:02d}' / f'{i + 1:04d}.png'), image)
  json.dump({'fps': 10, 'size': [WIDTH, 4], 'layer_ids': [0, 1, 2], 'frames': [f'{i + 1:04d}.png' for i in range(FRAMES)],
             'composite_order': [[1, 2]] * FRAMES}, open(root / 'layers.json', 'w'))
  return str(root)


def _run(columns, spec):
  video = retime.load_layers(columns)
  plan = retime.parse_spec(spec, video)
  return [files.to_uint8(retime.render_frame(video, plan, f, {})) for f in range(plan.length)]


def _where(frame, layer):
  """Columns (and their strength) where a layer's colour shows."""
  channel = 0 if layer == 1 else 1
  row = frame[0, :, channel].astype(int)
  return {int(x): int(row[x]) for x in np.nonzero(row)[0]}


def test_offset_speed_and_clamping(columns):
  frames = _run(columns, {'length': 14, 'layers': {'1': {'offset': 3}, '2': {'speed': 0.5}}})
  assert len(frames) == 14
  for f, frame in enumerate(frames):
    assert _where(frame, 1) == {min(f + 3, FRAMES - 1): 255}  # clamped to the last frame
    assert _where(frame, 2) == {min(int(np.floor(0.5 * f + 0.5)), FRAMES - 1): 255}


def test_blended_frames_mix_the_two_neighbours(columns):
  frames = _run(columns, {'blend': True, 'layers': {'2': {'speed': 0.5}}})
  assert _where(frames[3], 2) == {1: 128, 2: 128}  # source time 1.5
  assert _where(frames[4], 2) == {2: 255}


def test_freeze_and_keyframes(columns):
  frames = _run(columns, {'layers': {'1': {'freeze': [{'from': 2, 'to': 5, 'source': 8}, {'from': 7, 'to': 8}]},
                                     '2': {'keyframes': [[0, 9], [9, 0]]}}})
  shown = [next(iter(_where(frame, 1))) for frame in frames]
  assert shown == [0, 1, 8, 8, 8, 8, 6, 7, 7, 9]  # the second freeze holds the frame at its start
  assert [next(iter(_where(frame, 2))) for frame in frames] == list(range(9, -1, -1))  # played backwards


def test_hide_duplicate_and_order(columns):
  frames = _run(columns, {'layers': {'1': {'hide': True}, '2': {'duplicate': [{'offset': -2}]}}})
  assert all(not _where(frame, 1) for frame in frames)
  assert _where(frames[5], 2) == {5: 255, 3: 255}  # the copy trails two frames behind
  # Both layers at column 4 on frame 4: the front layer wins, and the order can be overridden.
  default = _run(columns, {})[4][0, 4]
  swapped = _run(columns, {'order': [2, 1]})[4][0, 4]
  assert default.tolist() == [0, 255, 0] and swapped.tolist() == [255, 0, 0]


@pytest.mark.parametrize('spec,message', [
    ({'layers': {'7': {'offset': 1}}}, r'unknown layer ids \[\'7\'\]'),
    ({'layers': {'1': {'speed': -1}}}, 'must be positive'),
    ({'layers': {'1': {'freeze': [{'from': 2, 'to': 5}, {'from': 4, 'to': 6}]}}}, 'overlap'),
    ({'layers': {'1': {'keyframes': [[0, 0], [0, 5]]}}}, 'increasing output frames'),
    ({'layers': {'1': {'keyframes': [[0, 0], [5, 5]], 'offset': 2}}}, 'one or the other'),
    ({'layers': {'1': {'shift': 2}}}, r"unknown keys \['shift'\]"),
    ({'layers': {'0': {'hide': True}}}, 'background'),
    ({'order': [1]}, 'each people layer once'),
    ({'length': 0}, 'must be positive'),
    ({'speed': 2}, 'unknown top-level keys'),
])
def test_bad_specs_are_explained(columns, spec, message):
  with pytest.raises(retime.SpecError, match=message):
    retime.parse_spec(spec, retime.load_layers(columns))


def test_align_helper_proposes_the_offset_that_lines_events_up(columns, tmp_path):
  assert retime.propose_offsets([(1, 2), (2, 7)]) == {2: 5}
  result = subprocess.run([sys.executable, '-m', 'layered_jax.retime', f'--layers={columns}', '--align=1:2,2:7'],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  spec = json.loads(result.stdout.strip().splitlines()[-1])
  frame = _run(columns, spec)[2]
  assert _where(frame, 1) == {2: 255} and _where(frame, 2) == {7: 255}  # both events on output frame 2
  spec_path = tmp_path / 'spec.json'
  spec_path.write_text(json.dumps(spec))
  result = subprocess.run([sys.executable, '-m', 'layered_jax.retime', f'--layers={columns}', f'--spec={spec_path}',
                           f'--output={tmp_path / "out"}'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert len(os.listdir(tmp_path / 'out' / 'frames')) == FRAMES
  bad = subprocess.run([sys.executable, '-m', 'layered_jax.retime', f'--layers={columns}', '--align=1:2,9:7'],
                       cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and 'LAYER:FRAME' in bad.stderr


def test_yaml_specs_are_read_like_json(columns, tmp_path):
  path = tmp_path / 'spec.yaml'
  path.write_text('layers:\n  "1":\n    offset: 3\n')
  spec = retime._load_spec(str(path))
  assert spec == {'layers': {'1': {'offset': 3}}}
  assert _where(_run(columns, spec)[0], 1) == {3: 255}
  bad = tmp_path / 'spec.json'
  bad.write_text('{"layers": ')
  with pytest.raises(retime.SpecError, match='not valid JSON'):
    retime._load_spec(str(bad))
