"""vid2vid input pipeline: sampling, encodings, the reference's scale-and-crop (against PIL), dropping, batches."""

import dataclasses
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from PIL import Image

from data_prep import vid2vid_synthetic
from layered_jax.vid2vid import data, input_pipeline as ip, skeleton

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 128, 96


@pytest.fixture(scope='module')
def pose(tmp_path_factory):
  path = vid2vid_synthetic.generate(str(tmp_path_factory.mktemp('pose')), 'pose', frames=8, clips=2, test_clips=0,
                                    max_t_step=2, seed=3)
  return data.open_clips(path)


@pytest.fixture(scope='module')
def labels(tmp_path_factory):
  path = vid2vid_synthetic.generate(str(tmp_path_factory.mktemp('labels')), 'labels', people=2, frames=7, clips=2,
                                    test_clips=0)
  return data.open_clips(path)


def run(clips, options, samples, keys, train=True):
  host = ip.gather(clips, np.asarray(samples), options)
  return jax.tree_util.tree_map(np.asarray, jax.jit(ip.make_batch_fn(clips.metadata, options, train))(keys, host))


def test_epoch_samples_visit_every_start_once_with_spacings_that_fit():
  lengths = (10, 6)
  samples = ip.epoch_samples(lengths, 4, 3, 4, seed=1, epoch=2)
  assert samples.shape == (3, 4, 3)  # 7 + 3 start frames, batches of 4 (the last filled from a new permutation)
  np.testing.assert_array_equal(samples, ip.epoch_samples(lengths, 4, 3, 4, seed=1, epoch=2))
  assert not np.array_equal(samples, ip.epoch_samples(lengths, 4, 3, 4, seed=1, epoch=3))
  clip, start, t_step = samples.reshape(-1, 3).T
  assert np.all(start + 3 * t_step < np.array(lengths)[clip])
  assert np.all(t_step[clip == 1] == 1)  # 6 frames leave no room for a spacing of 2
  assert set(t_step[clip == 0]) <= {1, 2, 3}
  many = ip.epoch_samples((40,), 4, 3, 8, seed=0, epoch=0).reshape(-1, 3)
  assert set(many[:, 2]) == {1, 2, 3}
  with pytest.raises(ValueError, match='n_frames_total 7 is longer than the shortest clip'):
    ip.epoch_samples(lengths, 7, 1, 2, 0, 0)


def test_gather_takes_each_temporal_scale_from_its_spacing(pose):
  options = ip.ClipOptions(n_frames_total=4, max_t_step=2, n_frames_D=3, n_scales_temporal=2)
  got = ip.gather(pose, np.array([[1, 0, 2]]), options)
  stored = pose.read(1, [0, 2, 4, 6])
  assert got['flow'].shape == (1, 2, 4, H, W, 2) and got['keypoints'].shape == (1, 4, 1, 25, 3)
  np.testing.assert_array_equal(got['rgb'][0], stored['rgb'])
  k2, k6 = pose.spacings.index(2), pose.spacings.index(6)
  np.testing.assert_array_equal(got['flow'][0, 0, 1:], stored['flow'][1:, k2])  # consecutive clip frames
  np.testing.assert_array_equal(got['flow'][0, 1, 3], stored['flow'][3, k6])  # 3 clip frames back
  assert stored['conf'][3, k6].any() and not got['conf'][0, 1, :3].any()  # before the clip: none
  assert not got['flow'][0, :, 0].any() and not got['conf'][0, :, 0].any()
  with pytest.raises(ValueError, match='no flows 9 frames apart'):
    ip.gather(pose, np.array([[0, 0, 3]]), dataclasses.replace(options, n_frames_total=2, max_t_step=3))


def test_encodings_without_augmentation(pose, labels):
  options = ip.ClipOptions(n_frames_total=8, n_scales_temporal=2)  # as eval_clip below: compiled once
  key = jax.random.PRNGKey(0)[None]
  batch = run(pose, options, [[0, 0, 1]], key, train=False)
  stored = pose.read_clip(0)
  np.testing.assert_allclose(batch['frames'][0], stored['rgb'] / 127.5 - 1, atol=1e-5)
  inputs = batch['inputs'][0]
  assert inputs.shape == (8, H, W, 6) and ip.input_channels(pose.metadata, options) == 6
  np.testing.assert_allclose(inputs[..., 0], stored['iuv'][..., 0] / 12 - 1, atol=1e-5)  # part 24 -> 1
  np.testing.assert_allclose(inputs[..., 1:3], stored['iuv'][..., 1:] / 127.5 - 1, atol=1e-5)
  bones = np.stack([skeleton.render(k, H, W, 3 * H / 512) for k in stored['keypoints']])
  np.testing.assert_allclose(inputs[..., 3:], bones / 127.5 - 1, atol=1e-5)
  assert (inputs[..., 3:] > -1).any(-1).mean() > 0.01
  np.testing.assert_allclose(batch['flow'][0, 1:], stored['flow'][1:, 0], atol=1e-3)
  np.testing.assert_array_equal(batch['conf'][0, 1:, ..., 0], stored['conf'][1:, 0])

  options = ip.ClipOptions(n_frames_total=3, n_scales_temporal=1, use_instance=True)
  batch = run(labels, options, [[1, 0, 1]], key, train=False)
  stored = labels.read(1, range(3))
  inputs = batch['inputs'][0]
  assert inputs.shape == (3, H, W, 11) and ip.input_channels(labels.metadata, options) == 11
  np.testing.assert_array_equal(inputs[..., :10].sum(-1), 1)
  np.testing.assert_array_equal(inputs[..., :10].argmax(-1), stored['labels'])
  instance = stored['instance'].astype(int)
  edges = np.zeros(instance.shape, bool)
  for axis in (1, 2):
    step = np.diff(instance, axis=axis) != 0
    pad = [(0, 0)] * 3
    pad[axis] = (1, 0)
    edges |= np.pad(step, pad)
    pad[axis] = (0, 1)
    edges |= np.pad(step, pad)
  np.testing.assert_array_equal(inputs[..., 10], edges)
  assert edges.sum() > 100


def test_scale_crop_and_dropping_follow_the_reference(pose):
  options = ip.ClipOptions(n_frames_total=4, max_t_step=2, n_scales_temporal=1, fine_size=128, load_size=192,
                           random_drop_prob=0.5)
  keys = jax.random.split(jax.random.PRNGKey(4), 2)
  batch = run(pose, options, [[0, 1, 1], [1, 0, 2]], keys)
  for i, (clip, start, step) in enumerate([[0, 1, 1], [1, 0, 2]]):
    sy, sx, crop_y, crop_x, flip = jax.jit(ip._crop_params, static_argnums=(1, 2, 3))(
        jax.random.split(keys[i], 3)[0], (W, H), options, True)
    new_w, new_h = round(float(sx) * W), round(float(sy) * H)
    crop_x, crop_y = int(crop_x), int(crop_y)
    assert 128 <= new_h <= 196 and new_h % 4 == 0 and new_w == round(new_h * W // H / 4) * 4 and not flip
    assert 0 <= crop_y <= new_h // 8 and crop_x <= new_w - 96
    box = (crop_x, crop_y, crop_x + 96, crop_y + 128)
    stored = pose.read(clip, start + step * np.arange(4))
    for t in range(4):
      want = np.asarray(Image.fromarray(stored['rgb'][t]).resize((new_w, new_h), Image.BICUBIC).crop(box))
      error = np.abs((batch['frames'][i, t] + 1) * 127.5 - want)  # PIL rounds its output, and computes in fixed point
      assert error.max() < 2 and error.mean() < 0.3, (error.max(), error.mean())
      part = np.asarray(Image.fromarray(stored['iuv'][t]).resize((new_w, new_h), Image.NEAREST).crop(box))[..., 0]
      got = np.round((batch['inputs'][i, t, ..., 0] + 1) * 12).astype(int)
      # PIL steps its sample positions incrementally: where one lands exactly between two pixels it may take
      # the lower one. Compare away from those ties.
      ties = [np.abs(p - np.round(p)) < 1e-6 for p in ((np.arange(128) + crop_y + 0.5) * H / new_h,
                                                       (np.arange(96) + crop_x + 0.5) * W / new_w)]
      clear = ~ties[0][:, None] & ~ties[1][None, :]
      dropped = set(np.unique(part[clear & (got != part)]))
      assert not dropped & set(np.unique(got[got > 0]))  # a part is dropped whole or not at all
      np.testing.assert_array_equal(got[clear & (got > 0)], part[clear & (got > 0)])
      flow = cv2.resize(stored['flow'][t, pose.spacings.index(step)].astype(np.float32), (new_w, new_h),
                        interpolation=cv2.INTER_LINEAR)[crop_y:crop_y + 128, crop_x:crop_x + 96] * [sx, sy]
      if t:
        np.testing.assert_allclose(batch['flow'][i, t, 2:-2, 2:-2], flow[2:-2, 2:-2], atol=1e-2)
      kps = stored['keypoints'][t].copy()
      kps[..., :2] = (kps[..., :2] + 0.5) * [sx, sy] - 0.5 - [crop_x, crop_y]
      full = np.asarray(skeleton.render(kps, 128, 96, 3 * H / 512 * sy)).any(-1)
      drawn = (batch['inputs'][i, t, ..., 3:] > -1).any(-1)
      assert drawn.any() and not (drawn & ~full).any()  # dropped limbs are missing, nothing else moves
  parts = [set(np.unique(np.round((batch['inputs'][0, t, ..., 0] + 1) * 12))) for t in range(4)]
  assert len({frozenset(p) for p in parts}) > 1  # dropped per frame


def test_flips_mirror_everything_and_batches_split_over_hosts(labels):
  options = ip.ClipOptions(n_frames_total=4, max_t_step=1, n_scales_temporal=2, flip=True)
  samples = ip.epoch_samples(labels.clip_lengths, 4, 1, 8, seed=5, epoch=0)[0]
  keys = ip.step_keys(5, 0, 0, 8)
  batch = run(labels, options, samples, keys)
  plain = run(labels, options, samples, keys, train=False)
  flipped = [not np.array_equal(batch['inputs'][i], plain['inputs'][i]) for i in range(8)]
  assert 0 < sum(flipped) < 8
  for i, f in enumerate(flipped):
    mirror = (lambda x: x[:, :, ::-1]) if f else (lambda x: x)
    np.testing.assert_array_equal(batch['inputs'][i], mirror(plain['inputs'][i]))
    np.testing.assert_allclose(batch['frames'][i], mirror(plain['frames'][i]), atol=1e-5)
    np.testing.assert_allclose(batch['flow_d1'][i], mirror(plain['flow_d1'][i]) * ([-1, 1] if f else 1), atol=1e-5)
    np.testing.assert_array_equal(batch['visible'][i], mirror(plain['visible'][i]))
  # Each example depends on its sample and key only, so any split of the global batch over hosts and
  # devices (each taking its slice of both) gives the same examples: here, the batch in reverse order.
  backwards = run(labels, options, samples[::-1], keys[::-1])
  for key, value in batch.items():
    np.testing.assert_array_equal(backwards[key][::-1], value, err_msg=key)


def test_batches_are_per_device_and_deterministic(labels):
  options = ip.ClipOptions(n_frames_total=4, max_t_step=1, n_scales_temporal=2, flip=True)
  first = [jax.tree_util.tree_map(np.asarray, b) for b in ip.batches(labels, options, 2, seed=1, epoch=0)]
  again = [jax.tree_util.tree_map(np.asarray, b) for b in ip.batches(labels, options, 2, seed=1, epoch=0)]
  assert len(first) == 4  # (7 - 4 + 1) * 2 clips / 2
  assert first[0]['frames'].shape == (1, 2, 4, H, W, 3) and first[0]['conf_d1'].shape == (1, 2, 4, H, W, 1)
  for a, b in zip(first, again):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  starts = sorted((int(c), int(s)) for b in first for c, s in zip(b['clip'][0], b['start'][0]))
  assert starts == [(c, s) for c in (0, 1) for s in range(4)]


def test_eval_clip_and_output_sizes(pose):
  clip = ip.eval_clip(pose, 1, ip.ClipOptions(n_scales_temporal=2, n_frames_D=3))
  assert clip['frames'].shape == (8, H, W, 3) and clip['flow_d1'].shape == (8, H, W, 2)
  assert not np.asarray(clip['conf_d1'][:3]).any() and np.asarray(clip['conf_d1'][3:]).mean() > 0.5
  assert ip.output_size((1024, 512), ip.ClipOptions(fine_size=256, center_crop=True)) == (256, 256)
  assert ip.output_size((96, 128), ip.ClipOptions(fine_size=256)) == (192, 256)
  with pytest.raises(ValueError, match='center_crop needs wide frames'):
    ip.output_size((96, 128), ip.ClipOptions(center_crop=True))
  with pytest.raises(ValueError, match='pose clips cannot be flipped'):
    ip.make_batch_fn(pose.metadata, ip.ClipOptions(flip=True))


def test_skeleton_drawing():
  kps = np.zeros((1, 25, 3), np.float32)
  kps[0, 1] = (20, 10, 1)  # neck
  kps[0, 8] = (20, 40, 1)  # mid-hip: the torso limb (1, 8)
  kps[0, 0] = (20, 2, 1)  # nose: limb (0, 1) meets the torso at the neck
  kps[0, 2] = (30, 10, 0.005)  # a right shoulder below the score threshold: no limb
  image = np.asarray(skeleton.render(kps, 48, 40, 2.))
  np.testing.assert_array_equal(image[25, 20], (153, 0, 0))
  np.testing.assert_array_equal(image[25, 23], 0)  # beyond the half-width
  np.testing.assert_array_equal(image[2, 20], (153, 0, 51))
  np.testing.assert_array_equal(image[10, 20], np.floor((np.array([153, 0, 51]) + [153, 0, 0]) / 2))
  np.testing.assert_array_equal(image[10, 28], 0)
  keep = np.ones((1, skeleton.NUM_LIMBS), bool)
  keep[0, [i for i, (a, b, _) in enumerate(skeleton.LIMBS) if (a, b) == (1, 8)]] = False
  image = np.asarray(skeleton.render(kps, 48, 40, 2., keep))
  np.testing.assert_array_equal(image[25, 20], 0)
  np.testing.assert_array_equal(image[10, 20], (153, 0, 51))


def test_pipeline_needs_no_tensorflow(pose):
  script = f'''
import importlib.machinery, sys
find = importlib.machinery.PathFinder.find_spec
blocked = ('tensorflow', 'clu', 'ml_collections')
importlib.machinery.PathFinder.find_spec = classmethod(
    lambda cls, name, path=None, target=None: None if name.split('.')[0] in blocked else find(name, path, target))
import numpy as np
from layered_jax.vid2vid import data, input_pipeline
assert 'tensorflow_datasets' not in sys.modules
clips = data.open_clips({pose.directory!r})
host = input_pipeline.gather(clips, np.array([[0, 0, 1]]), input_pipeline.ClipOptions(n_frames_total=2))
assert host['rgb'].shape == (1, 2, 128, 96, 3) and 'tensorflow' not in sys.modules
'''
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
