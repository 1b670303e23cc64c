"""vid2vid datasets: exact synthetic flow, DIS against it, the builders (synthetic, real folders, videos), bad inputs."""

import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data_prep import optical_flow, synthetic, vid2vid_build, vid2vid_synthetic
from layered_jax.vid2vid import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (96, 128)
# COCO-17 (AlphaPose) index of each BODY_25 keypoint, written out here independently of the builder; -1: none.
BODY25_FROM_COCO = [0, -1, 6, 8, 10, 5, 7, 9, -1, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, -1, -1, -1, -1, -1, -1]


def independent_warp(image, flow):
  """Bilinear sampling at (x + dx, y + dy) with clamped coordinates, in float64, pixel by pixel."""
  height, width = image.shape[:2]
  out = np.zeros(image.shape, np.float64)
  for y in range(height):
    for x in range(width):
      sx = min(max(x + flow[y, x, 0], 0), width - 1)
      sy = min(max(y + flow[y, x, 1], 0), height - 1)
      x0, y0 = int(np.floor(sx)), int(np.floor(sy))
      x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
      ax, ay = sx - x0, sy - y0
      out[y, x] = ((1 - ay) * ((1 - ax) * image[y0, x0] + ax * image[y0, x1])
                   + ay * ((1 - ax) * image[y1, x0] + ax * image[y1, x1]))
  return out


@pytest.fixture(scope='module')
def walk():
  """A training scene of two walkers (static camera) and its rendered frames."""
  train, _ = vid2vid_synthetic.clip_scenes(2, 10, SIZE, 1, 0, seed=1)
  return train[0], [vid2vid_synthetic.render_frame(train[0], t) for t in range(10)]


def test_warp_is_bilinear_with_border_clamping(rng):
  image = rng.uniform(0, 255, (9, 13, 3))
  flow = rng.normal(0, 4, (9, 13, 2))
  np.testing.assert_allclose(optical_flow.warp(image, flow), independent_warp(image, flow), atol=2e-3)
  np.testing.assert_array_equal(optical_flow.warp(image, np.zeros((9, 13, 2))), image.astype(np.float32))


@pytest.mark.parametrize('k', [1, 3])
def test_exact_flow_warps_the_earlier_frame_onto_the_later_one(walk, k):
  scene, maps = walk
  for t in (k, 9):
    flow, visible = vid2vid_synthetic.exact_flow(scene, t, k, maps[t], maps[t - k])
    visible = visible.astype(bool)
    error = np.abs(optical_flow.warp(maps[t - k]['rgb'], flow) - maps[t]['rgb']).max(-1) / 255
    body = visible & (maps[t]['person'] > 0)
    assert body.sum() > 500 and np.linalg.norm(flow[body], axis=-1).mean() > k  # the walkers move
    # Within bilinear interpolation of the striped textures and uint8 rounding.
    assert error[visible].mean() < 0.003 and error[body].mean() < 0.01, (error[visible].mean(), error[body].mean())
    assert error[visible].max() < 0.06, error[visible].max()
    unmoved = np.abs(maps[t - k]['rgb'].astype(float) - maps[t]['rgb']).max(-1) / 255
    assert unmoved[body].mean() > 0.1  # without the flow the body pixels would not match
    # Background uncovered since t - k (a walker stood there) is occluded; most pixels are visible.
    uncovered = (maps[t]['person'] == 0) & (maps[t - k]['person'] > 0)
    assert uncovered.any() and not visible[uncovered].any()
    assert 0.7 < visible.mean() < 0.99
    conf = optical_flow.confidence(maps[t]['rgb'], maps[t - k]['rgb'], flow)
    assert conf[visible].mean() > 0.99


def test_exact_flow_follows_a_panning_camera():
  train, _ = vid2vid_synthetic.clip_scenes(1, 9, SIZE, 1, 0, camera_pan=7.2, seed=2)
  scene = train[0]
  now, before = vid2vid_synthetic.render_frame(scene, 8), vid2vid_synthetic.render_frame(scene, 6)
  flow, visible = vid2vid_synthetic.exact_flow(scene, 8, 2, now, before)
  background = now['person'] == 0
  np.testing.assert_allclose(flow[background] - [scene.camera_x(8) - scene.camera_x(6), 0.], 0, atol=1e-5)
  error = np.abs(optical_flow.warp(before['rgb'], flow) - now['rgb']).max(-1) / 255
  assert error[visible.astype(bool)].mean() < 0.01


def test_dis_flow_against_the_exact_flow(walk):
  """OpenCV DIS (medium) between consecutive frames: end-point error on the visible pixels."""
  scene, maps = walk
  epe, epe_body, motion = [], [], []
  for t in range(1, 10):
    exact, visible = vid2vid_synthetic.exact_flow(scene, t, 1, maps[t], maps[t - 1])
    dis = optical_flow.dis_flow(maps[t]['rgb'], maps[t - 1]['rgb'])
    body = visible.astype(bool) & (maps[t]['person'] > 0)
    epe.append(optical_flow.end_point_error(dis, exact, visible))
    epe_body.append(optical_flow.end_point_error(dis, exact, body))
    motion.append(np.linalg.norm(exact[body], axis=-1).mean())
  print(f'DIS end-point error: {np.mean(epe):.2f} px on visible pixels, {np.mean(epe_body):.2f} px on the '
        f'walkers, whose pixels move {np.mean(motion):.2f} px')
  assert np.mean(epe) < 1.0 and np.mean(epe_body) < 1.2  # measured 0.70 and 0.66
  assert np.mean(epe_body) < 0.5 * np.mean(motion)


def test_synthetic_labels_and_iuv_agree_with_the_geometry(walk):
  _, maps = walk
  frame = maps[5]
  body = frame['person'] > 0
  for part, cls in vid2vid_synthetic.PART_CLASS.items():
    assert np.all(frame['classes'][frame['part'] == part] == cls)
  assert np.all(frame['classes'][~body] < len(synthetic.BACKGROUND_CLASSES))
  assert set(np.unique(frame['classes'][~body])) == {0, 1, 2, 3}  # sky, wall, posters, ground in view
  np.testing.assert_array_equal(frame['iuv'][..., 0], frame['part'])
  assert set(np.unique(frame['person'])) == {0, 1, 2}


@pytest.fixture(scope='module')
def synthetic_pose(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('synthetic'))
  return vid2vid_synthetic.generate(data_dir, 'pose', frames=8, clips=2, test_clips=1, max_t_step=2)


def test_synthetic_pose_dataset_holds_train_and_held_out_clips(synthetic_pose):
  train, test = data.open_clips(synthetic_pose, 'train'), data.open_clips(synthetic_pose, 'test')
  assert train.clip_lengths == (8, 8) and test.clip_lengths == (8,)
  assert train.spacings == [1, 2, 3, 6] and train.metadata['num_people'] == 1
  preview = os.path.join(os.path.dirname(synthetic_pose), 'preview')
  assert sorted(os.listdir(preview)) == ['test_00_clip00.png', 'train_00_clip00.png', 'train_01_clip01.png']
  sheet = cv2.imread(os.path.join(preview, 'train_01_clip01.png'))
  assert sheet.shape == (6 * 128, 4 * 96, 3)  # frame, IUV and skeleton, flow, confidence; 6 frames
  np.testing.assert_array_equal(sheet[:128, :96, ::-1], train.read(1, [0])['rgb'][0])
  clip = train.read_clip(1)
  scene = vid2vid_synthetic.clip_scenes(1, 8, SIZE, 2, 1)[0][1]
  for t in (0, 7):
    frame = vid2vid_synthetic.render_frame(scene, t)
    np.testing.assert_array_equal(clip['rgb'][t], frame['rgb'])
    np.testing.assert_array_equal(clip['iuv'][t], frame['iuv'])
  np.testing.assert_allclose(clip['keypoints'][3, 0, 8, :2], scene.walkers[0].joints(3)[11] - 0.5, atol=1e-5)
  assert np.all(clip['keypoints'][:, :, 19:, 2] == 0)  # no feet
  # Flows of frame t from t - k: zero with zero confidence where t < k, exact otherwise.
  k = train.spacings.index(3)
  assert not clip['flow'][:3, k].any() and not clip['conf'][:3, k].any()
  flow, visible = vid2vid_synthetic.exact_flow(scene, 5, 3, vid2vid_synthetic.render_frame(scene, 5),
                                               vid2vid_synthetic.render_frame(scene, 2))
  np.testing.assert_allclose(clip['flow'][5, k], flow, atol=0.02)  # float16
  np.testing.assert_array_equal(clip['visible'][5, k], visible)
  # Held-out clips: the same person (colours, height), another gait.
  scenes = vid2vid_synthetic.clip_scenes(1, 8, SIZE, 2, 1)
  held_out, trained = scenes[1][0].walkers[0], [s.walkers[0] for s in scenes[0]]
  assert all(np.array_equal(held_out.colors, w.colors) and held_out.height == w.height for w in trained)
  assert all(held_out.cadence > max(vid2vid_synthetic.TRAIN_CADENCE) > w.cadence for w in trained)


def test_synthetic_command_line_builds_labels_and_edges(tmp_path):
  for mode in ('labels', 'edges'):
    result = subprocess.run([sys.executable, '-m', 'data_prep.vid2vid_synthetic', f'--mode={mode}', '--frames=4',
                             '--clips=1', '--test_clips=0', f'--data_dir={tmp_path}'], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # Only the builder's own lines: no TFDS progress bars or banner.
    assert result.stdout.splitlines()[-1].startswith('built ') and len(result.stdout.splitlines()) == 1, result.stdout
    assert 'Generating' not in result.stderr and '%|' not in result.stderr, result.stderr[-2000:]
  labels = data.open_clips(str(tmp_path / 'synthetic_labels' / '1.0.0'))
  assert labels.metadata['class_names'] == list(vid2vid_synthetic.CLASS_NAMES)
  assert labels.metadata['fg_labels'] == [4, 5, 6, 7, 8, 9] and labels.metadata['has_instance']
  clip = labels.read_clip(0)
  assert clip['labels'].max() < 10 and set(np.unique(clip['instance'])) == {0, 1}
  edges = data.open_clips(str(tmp_path / 'synthetic_edges' / '1.0.0')).read_clip(0)
  np.testing.assert_array_equal(edges['edges'], vid2vid_build.canny_edges(edges['rgb']))
  assert sorted(os.listdir(tmp_path)) == ['synthetic_edges', 'synthetic_labels']  # no staging folders left


@pytest.fixture(scope='module')
def pose_folder(tmp_path_factory):
  """A video folder as data_prep.frames, AlphaPose and data_prep.keypoints leave it (made by the generator)."""
  path = str(tmp_path_factory.mktemp('real') / 'walk')
  synthetic.generate(path, people=2, frames=8, size=SIZE, seed=5)
  return path


def expected_body25(folder):
  """keypoints.json (COCO-17, at alphapose_input_size) -> [T, people, 25, 3] at the frames' size."""
  meta = json.load(open(os.path.join(folder, 'metadata.json')))
  scale = np.array(meta['size_LR']) / np.array(meta['alphapose_input_size'])
  frames = json.load(open(os.path.join(folder, 'keypoints.json')))
  out = []
  for name in sorted(frames):
    people = []
    for person in sorted(frames[name], key=lambda p: p['idx']):
      coco = np.array(person['keypoints']).reshape(17, 3)
      body = np.zeros((25, 3))
      for b, c in enumerate(BODY25_FROM_COCO):
        if c >= 0:
          body[b] = coco[c]
      body[1], body[8] = (coco[5] + coco[6]) / 2, (coco[11] + coco[12]) / 2
      body[:, :2] = np.where(body[:, 2:] > 0, (body[:, :2] + 0.5) * scale - 0.5, 0)
      people.append(body)
    out.append(people)
  return np.array(out)


def run_build(args, capsys):
  """vid2vid_build's command line in this process: (exit code, stderr)."""
  try:
    vid2vid_build.main(args)
    code = 0
  except SystemExit as exit_:
    code = exit_.code
  return code, capsys.readouterr().err


def test_pose_dataset_from_a_video_folder(pose_folder, tmp_path):
  result = subprocess.run([sys.executable, '-m', 'data_prep.vid2vid_build', '--mode=pose', f'--video={pose_folder}',
                           f'--data_dir={tmp_path}', '--max_t_step=1', '--n_scales_temporal=1'],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  clips = data.open_clips(str(tmp_path / 'vid2vid_pose' / '1.0.0'))
  assert clips.spacings == [1] and clips.metadata['flow_source'] == 'OpenCV DIS, medium preset'
  clip = clips.read_clip(0)
  names = sorted(os.listdir(os.path.join(pose_folder, 'rgb_256')))
  meta = json.load(open(os.path.join(pose_folder, 'metadata.json')))
  for t, name in enumerate(names):
    np.testing.assert_array_equal(clip['rgb'][t], cv2.imread(os.path.join(pose_folder, 'rgb_256', name))[..., ::-1])
    want = np.zeros(SIZE[::-1] + (3,), np.uint8)
    for layer in meta['composite_order'][t]:  # back to front
      iuv = cv2.imread(os.path.join(pose_folder, 'iuv', f'{layer:02d}', name))[..., ::-1]
      body = iuv[..., 0] > 0
      want[body] = np.stack([iuv[..., 0] // 10, iuv[..., 1], iuv[..., 2]], -1)[body]
    np.testing.assert_array_equal(clip['iuv'][t], want)
  np.testing.assert_allclose(clip['keypoints'], expected_body25(pose_folder), atol=1e-4)
  assert clip['conf'][1:, 0].mean() > 0.8  # DIS flows between consecutive frames mostly pass the rule
  warped = optical_flow.warp(clip['rgb'][3], clip['flow'][4, 0].astype(np.float32))
  ok = clip['conf'][4, 0].astype(bool)
  assert np.abs(warped - clip['rgb'][4])[ok].mean() < 4


def write_openpose(folder, target):
  """The AlphaPose keypoints.json of a folder as OpenPose's per-frame JSON (BODY_25) in target/."""
  os.makedirs(target)
  meta = json.load(open(os.path.join(folder, 'metadata.json')))
  scale = np.array(meta['alphapose_input_size']) / np.array(meta['size_LR'])
  for t, people in enumerate(expected_body25(folder)):
    for body in people:
      body[:, :2] = np.where(body[:, 2:] > 0, (body[:, :2] + 0.5) * scale - 0.5, 0)
    json.dump({'version': 1.3, 'people': [{'pose_keypoints_2d': p.ravel().tolist()} for p in people]},
              open(os.path.join(target, f'walk_{t:012d}_keypoints.json'), 'w'))


def test_openpose_keypoints_give_the_same_dataset(pose_folder, tmp_path, capsys):
  openpose = str(tmp_path / 'openpose')
  write_openpose(pose_folder, openpose)
  code, err = run_build(['--mode=pose', f'--video={pose_folder}', f'--keypoints={openpose}',
                         f'--data_dir={tmp_path}', '--max_t_step=1', '--n_scales_temporal=1'], capsys)
  assert code == 0, err
  clip = data.open_clips(str(tmp_path / 'vid2vid_pose' / '1.0.0')).read_clip(0)
  np.testing.assert_allclose(clip['keypoints'], expected_body25(pose_folder), atol=1e-4)


def test_edges_dataset_from_a_video_file(walk, tmp_path, capsys):
  _, maps = walk
  video = str(tmp_path / 'walk.avi')
  writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'MJPG'), 10, (192, 256))
  for frame in maps:
    writer.write(cv2.resize(frame['rgb'][..., ::-1], (192, 256)))
  writer.release()
  code, err = run_build(['--mode=edges', f'--video={video}', '--size=96x128', f'--data_dir={tmp_path}',
                         '--name=walk_edges'], capsys)
  assert code == 0, err
  clips = data.open_clips(str(tmp_path / 'walk_edges' / '1.0.0'))
  clip = clips.read_clip(0)
  assert clips.clip_names == ('walk.avi',) and clip['rgb'].shape == (10, 128, 96, 3)
  assert np.abs(clip['rgb'].astype(float) - [m['rgb'] for m in maps]).mean() < 6  # MJPG
  np.testing.assert_array_equal(clip['edges'], vid2vid_build.canny_edges(clip['rgb']))
  assert set(np.unique(clip['edges'])) == {0, 255} and clips.metadata['canny'] == [100, 200]


def write_labels(folder, frames=8, value=None, size=(48, 64)):
  os.makedirs(os.path.join(folder, 'labels'))
  for t in range(frames):
    label = np.full(size[::-1], t % 5, np.uint8)
    if value is not None and t == 2:
      label[3, 4] = value
    cv2.imwrite(os.path.join(folder, 'labels', f'{t + 1:04d}.png'), label)


def test_label_pngs_are_resized_with_nearest(pose_folder, tmp_path, capsys):
  folder = str(tmp_path / 'video')
  shutil.copytree(pose_folder, folder)
  write_labels(folder)
  code, err = run_build(['--mode=labels', f'--video={folder}', '--label_nc=5', '--fg_labels=3,4',
                         f'--data_dir={tmp_path}'], capsys)
  assert code == 0, err
  clips = data.open_clips(str(tmp_path / 'vid2vid_labels' / '1.0.0'))
  clip = clips.read_clip(0)
  assert clip['labels'].shape == (8, 128, 96)
  np.testing.assert_array_equal(clip['labels'][:, 0, 0], np.arange(8) % 5)
  assert clips.metadata['label_nc'] == 5 and clips.metadata['fg_labels'] == [3, 4]


def _break(folder, case):
  """Damages a copy of the pose folder; returns (extra arguments, text the error must contain)."""
  first = os.path.join(folder, 'rgb_256', '0001.png')
  if case == 'missing iuv frame':
    os.remove(os.path.join(folder, 'iuv', '02', '0005.png'))
    return [], r'iuv/02 has 7 IUV PNGs for 8 frames'
  if case == 'iuv size':
    cv2.imwrite(os.path.join(folder, 'iuv', '01', '0003.png'), np.zeros((64, 48, 4), np.uint8))
    return [], r'iuv/01/0003.png is 48x64; expected 96x128'
  if case == 'iuv values':
    cv2.imwrite(os.path.join(folder, 'iuv', '01', '0003.png'), np.full((128, 96, 4), 37, np.uint8))
    return [], r'iuv/01/0003.png: red values \[37\] are not a part id'
  if case == 'unreadable frame':
    open(first, 'wb').write(b'not a png')
    return [], r'rgb_256/0001.png is missing or not a readable image'
  if case == 'frame size':
    cv2.imwrite(os.path.join(folder, 'rgb_256', '0004.png'), np.zeros((64, 64, 3), np.uint8))
    return [], r'rgb_256/0004.png is 64x64; expected 96x128'
  if case == 'alphapose names':
    keypoints = json.load(open(os.path.join(folder, 'keypoints.json')))
    keypoints['0009.png'] = keypoints['0001.png']
    json.dump(keypoints, open(os.path.join(folder, 'keypoints.json'), 'w'))
    return [], r'keypoints.json names frames the video does not have: \[.0009.png.\]'
  if case == 'openpose count':
    write_openpose(folder, os.path.join(folder, 'op'))
    os.remove(os.path.join(folder, 'op', 'walk_000000000007_keypoints.json'))
    return [f'--keypoints={folder}/op'], r'/op has 7 OpenPose JSON files for 8 frames'
  if case == 'openpose coco':
    os.makedirs(os.path.join(folder, 'op'))
    for t in range(8):
      json.dump({'people': [{'pose_keypoints_2d': [1.] * 54}]}, open(os.path.join(folder, 'op', f'{t}.json'), 'w'))
    return [f'--keypoints={folder}/op'], r'op/0.json: pose_keypoints_2d has 54 values, BODY_25 has 75'
  if case == 'size':
    return ['--size=100x128'], r'100x128; vid2vid needs multiples of 32'
  if case == 'composite order':
    meta = json.load(open(os.path.join(folder, 'metadata.json')))
    meta['composite_order'] = meta['composite_order'][:5]
    json.dump(meta, open(os.path.join(folder, 'metadata.json'), 'w'))
    return [], r'walk/metadata.json: composite_order has 5 entries for 8 frames'
  if case == 'label values':
    write_labels(folder, value=9)
    return ['--mode=labels', '--label_nc=5'], r'labels/0003.png has label 9, at or above 5; --label_nc is 5'
  if case == 'label count':
    write_labels(folder, frames=7)
    return ['--mode=labels', '--label_nc=5'], r'labels has 7 label PNGs for 8 frames'
  if case == 'label colours':
    write_labels(folder)
    cv2.imwrite(os.path.join(folder, 'labels', '0006.png'), np.zeros((64, 48, 3), np.uint8))
    return ['--mode=labels', '--label_nc=5'], r'labels/0006.png has 3 channels; label maps must be single-channel'
  if case == 'label shape':
    write_labels(folder, size=(64, 64))
    return ['--mode=labels', '--label_nc=5'], r'label maps are 64x64, not the shape of the frames \(96x128\)'
  if case == 'short clip':
    for t in range(3, 9):
      for d in ('rgb_256', 'rgb_512', 'iuv/01', 'iuv/02'):
        os.remove(os.path.join(folder, d, f'{t:04d}.png'))
    meta = json.load(open(os.path.join(folder, 'metadata.json')))
    meta['composite_order'] = meta['composite_order'][:2]
    json.dump(meta, open(os.path.join(folder, 'metadata.json'), 'w'))
    keypoints = json.load(open(os.path.join(folder, 'keypoints.json')))
    json.dump({n: keypoints[n] for n in ('0001.png', '0002.png')}, open(os.path.join(folder, 'keypoints.json'), 'w'))
    return [], r'clip walk has 2 frames; the generator needs at least n_frames_G = 3'
  raise ValueError(case)


@pytest.mark.parametrize('case', ['missing iuv frame', 'iuv size', 'iuv values', 'unreadable frame', 'frame size',
                                  'alphapose names', 'openpose count', 'openpose coco', 'size', 'composite order',
                                  'label values',
                                  'label count', 'label colours', 'label shape', 'short clip'])
def test_bad_inputs_are_one_line_errors_and_write_nothing(pose_folder, tmp_path, capsys, case):
  folder = str(tmp_path / 'walk')
  shutil.copytree(pose_folder, folder)
  extra, message = _break(folder, case)
  args = ['--mode=pose', f'--video={folder}', f'--data_dir={tmp_path}/data'] + extra
  if any(a.startswith('--mode=') for a in extra):
    args = args[1:]
  code, err = run_build(args, capsys)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert re.search(message, lines[0]), lines[0]
  assert not os.path.exists(tmp_path / 'data')


def test_a_video_file_needs_a_size_and_a_failed_build_leaves_nothing(walk, tmp_path, capsys, monkeypatch):
  video = str(tmp_path / 'frames')
  os.makedirs(video)
  for t, frame in enumerate(walk[1][:4]):
    cv2.imwrite(os.path.join(video, f'f{t}.png'), frame['rgb'])
  code, err = run_build(['--mode=edges', f'--video={video}', f'--data_dir={tmp_path}/data'], capsys)
  assert code == 2 and 'give the dataset size with --size' in err

  def failing(clip, t, spacings, preset):
    if t == 2:
      raise vid2vid_build.DataError('flow failed half-way')
    return original(clip, t, spacings, preset)

  original = vid2vid_build.reference_flows
  monkeypatch.setattr(vid2vid_build, 'reference_flows', failing)
  code, err = run_build(['--mode=edges', f'--video={video}', '--size=96x128', f'--data_dir={tmp_path}/data'], capsys)
  assert code == 2 and 'flow failed half-way' in err
  assert os.listdir(tmp_path / 'data') == []  # no dataset, no staging folder
