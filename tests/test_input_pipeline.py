"""Augmentation against PyTorch's resize-and-crop, determinism, and per-host/per-device batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layered_jax import input_pipeline

H, W, L = 32, 64, 3


@pytest.fixture
def frames(rng):
  n = 5
  return {
      'rgb': rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
      'rgb_hr': rng.integers(0, 256, (n, 2 * H, 2 * W, 3), dtype=np.uint8),
      'uv': rng.uniform(-1, 1, (n, L, H, W, 2)).astype(np.float32),
      'pids': rng.integers(0, 3, (n, L, H, W)).astype(np.float32),
      'trimap': rng.integers(-1, 2, (n, L, H, W)).astype(np.float32),
      'frame_index': np.arange(n),
  }


@pytest.mark.parametrize('scale,start', [(1.0, (0, 0)), (1.25, (8, 16)), (1.13, (3, 5)), (1.2, (6, 12))])
def test_resize_and_crop_matches_torch_interpolate(frames, scale, start):
  scaled = (int(scale * H), int(scale * W))
  frame = {'rgb': frames['rgb'][0].astype(np.float32) / 127.5 - 1, 'uv': frames['uv'][0],
           'pids': frames['pids'][0], 'trimap': frames['trimap'][0]}
  got = jax.jit(input_pipeline.resize_and_crop)(frame, jnp.asarray(scaled, jnp.float32),
                                                  jnp.asarray(start, jnp.float32))

  def torch_resize_crop(x, mode):  # x [C, H, W]
    y = F.interpolate(torch.from_numpy(np.ascontiguousarray(x))[None], size=scaled, mode=mode)[0]
    return y[:, start[0]:start[0] + H, start[1]:start[1] + W].numpy()

  np.testing.assert_allclose(got['rgb'], torch_resize_crop(frame['rgb'].transpose(2, 0, 1), 'bilinear')
                             .transpose(1, 2, 0), atol=1e-5)
  np.testing.assert_allclose(got['trimap'], torch_resize_crop(frame['trimap'], 'bilinear'), atol=1e-5)
  np.testing.assert_array_equal(got['pids'], torch_resize_crop(frame['pids'], 'nearest'))
  uv = frame['uv'].transpose(0, 3, 1, 2).reshape(2 * L, H, W)
  np.testing.assert_array_equal(got['uv'], torch_resize_crop(uv, 'nearest').reshape(L, 2, H, W)
                                .transpose(0, 2, 3, 1))


def test_epoch_indices_visit_every_frame_deterministically():
  a = input_pipeline.epoch_indices(10, 4, seed=1, epoch=3)
  assert a.shape == (3, 4)
  assert set(a.ravel()[:10]) == set(range(10))  # one full pass before any repeat
  np.testing.assert_array_equal(a, input_pipeline.epoch_indices(10, 4, seed=1, epoch=3))
  assert not np.array_equal(a, input_pipeline.epoch_indices(10, 4, seed=1, epoch=4))
  assert input_pipeline.epoch_indices(3, 8, seed=0, epoch=0).shape == (1, 8)  # batch above frame count


def test_host_slices_partition_the_global_batch():
  indices = input_pipeline.epoch_indices(12, 8, seed=0, epoch=0)
  parts = [input_pipeline.host_indices(indices, p, 4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts, -1), indices)
  with pytest.raises(ValueError, match='does not split'):
    input_pipeline.host_indices(indices, 0, 3)


def test_batches_are_deterministic_jittered_and_in_range(frames):
  batch_fn = jax.jit(input_pipeline.make_batch_fn(scale_jitter=True))
  indices = jnp.array([0, 3, 3, 1])
  keys = jax.random.split(jax.random.PRNGKey(7), 4)
  a = batch_fn(keys, frames, indices, 0.2)
  b = batch_fn(keys, frames, indices, 0.2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert a['rgb'].shape == (4, H, W, 3) and a['uv'].shape == (4, L, H, W, 2)
  assert float(jnp.abs(a['rgb']).max()) <= 1
  # Same frame twice, different random draws: the augmentations differ.
  assert not np.allclose(a['rgb'][1], a['rgb'][2])
  plain = jax.jit(input_pipeline.make_batch_fn(scale_jitter=False))(keys, frames, indices, 0.)
  np.testing.assert_allclose(plain['rgb'][0], frames['rgb'][0] / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(plain['uv'][1], frames['uv'][3])


def test_brightness_jitter_is_one_offset_per_frame(frames):
  batch_fn = jax.jit(input_pipeline.make_batch_fn(scale_jitter=False))
  out = batch_fn(jax.random.split(jax.random.PRNGKey(0), 1), frames, jnp.array([2]), 0.2)
  offset = np.asarray(out['rgb'][0]) - (frames['rgb'][2] / 127.5 - 1)
  unclipped = np.abs(np.asarray(out['rgb'][0])) < 1
  assert np.ptp(offset[unclipped]) < 1e-5 and abs(offset[unclipped][0]) > 0


def test_upsampling_batches_crop_the_high_resolution_target(frames):
  out = jax.jit(input_pipeline.upsampling_batch_fn, static_argnums=3)(
      jax.random.PRNGKey(1), frames, jnp.array([4, 0]), 16)
  y, x = np.asarray(out['crop'])
  np.testing.assert_allclose(out['rgb'][0], frames['rgb_hr'][4, y:y + 16, x:x + 16] / 127.5 - 1, atol=1e-6)
  assert out['uv'].shape == (2, L, H, W, 2)
