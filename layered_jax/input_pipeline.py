"""Training batches from a video's frames, kept in device memory (spec section 2, augmentation).

A per-video dataset is small (tens to hundreds of frames), so all frames are
put on every local device once; each step gathers its frames there and
augments them with jitted array code, deterministically from (seed, epoch).

Augmentation, as the reference: with probability 0.75 everything is resized by
a random scale in [1, 1.25] and cropped back to (H, W) at a random offset
(nearest for uv and pids, bilinear for images and trimaps, PyTorch's
align_corners=False conventions), then the target gets a per-frame brightness
offset jitter_rgb * N(0, 1), clamped to [-1, 1]. The resize-and-crop is
computed as a sampling of the original grid, so shapes stay static under jit.
"""

from typing import Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Frames = Mapping[str, np.ndarray]  # rgb, rgb_hr uint8; uv, trimap, pids float32; frame_index
JITTER_PROBABILITY = 0.75
MAX_SCALE = 1.25


def epoch_indices(num_frames: int, global_batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """Frame indices for every step of an epoch, [steps, global_batch_size].

  An epoch is one pass over the frames in a random order; the last batch is
  filled from the start of a second permutation so that every batch is full.
  """
  rng = np.random.default_rng([seed, epoch])
  steps = -(-num_frames // global_batch_size)
  order = np.concatenate([rng.permutation(num_frames) for _ in range(1 + global_batch_size // num_frames + 1)])
  return order[:steps * global_batch_size].reshape(steps, global_batch_size)


def host_indices(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of each global batch, [steps, global_batch / processes]."""
  per_process = indices.shape[-1] // process_count
  if per_process * process_count != indices.shape[-1]:
    raise ValueError(f'global batch {indices.shape[-1]} does not split over {process_count} processes')
  return indices[..., process_index * per_process:(process_index + 1) * per_process]


def _source_coords(size: int, scaled: jax.Array, start: jax.Array):
  """For output pixels 0..size-1 of a crop at `start` of the input resized to `scaled` pixels."""
  ratio = size / scaled
  dst = jnp.arange(size) + start
  nearest = jnp.clip(jnp.floor(dst * ratio).astype(jnp.int32), 0, size - 1)
  src = jnp.maximum((dst + 0.5) * ratio - 0.5, 0.)
  low = jnp.minimum(jnp.floor(src).astype(jnp.int32), size - 1)
  high = jnp.minimum(low + 1, size - 1)
  return nearest, low, high, src - low


def _bilinear(x: jax.Array, rows, cols, axes=(0, 1)) -> jax.Array:
  _, y0, y1, wy = rows
  _, x0, x1, wx = cols
  ya, yb = jnp.take(x, y0, axis=axes[0]), jnp.take(x, y1, axis=axes[0])
  shape_y = [1] * x.ndim
  shape_y[axes[0]] = -1
  x = ya + (yb - ya) * wy.reshape(shape_y)
  xa, xb = jnp.take(x, x0, axis=axes[1]), jnp.take(x, x1, axis=axes[1])
  shape_x = [1] * x.ndim
  shape_x[axes[1]] = -1
  return xa + (xb - xa) * wx.reshape(shape_x)


def _nearest(x: jax.Array, rows, cols, axes=(0, 1)) -> jax.Array:
  return jnp.take(jnp.take(x, rows[0], axis=axes[0]), cols[0], axis=axes[1])


def resize_and_crop(frame: Mapping[str, jax.Array], scaled_hw, start_yx) -> Dict[str, jax.Array]:
  """PyTorch's F.interpolate(size=scaled_hw) then a crop at start_yx back to the frame's size.

  frame holds rgb [H,W,3] (float), uv [L,H,W,2], pids and trimap [L,H,W].
  """
  height, width = frame['rgb'].shape[:2]
  rows = _source_coords(height, scaled_hw[0], start_yx[0])
  cols = _source_coords(width, scaled_hw[1], start_yx[1])
  return {'rgb': _bilinear(frame['rgb'], rows, cols),
          'uv': _nearest(frame['uv'], rows, cols, (1, 2)),
          'pids': _nearest(frame['pids'], rows, cols, (1, 2)),
          'trimap': _bilinear(frame['trimap'], rows, cols, (1, 2))}


def augment_frame(rng: jax.Array, frame: Mapping[str, jax.Array], jitter_rgb: jax.Array,
                  scale_jitter: bool) -> Dict[str, jax.Array]:
  """One frame: uint8 images -> [-1, 1], random resize-and-crop (if scale_jitter), brightness jitter."""
  k_apply, k_scale, k_y, k_x, k_rgb = jax.random.split(rng, 5)
  height, width = frame['rgb'].shape[:2]
  out = {'uv': frame['uv'], 'pids': frame['pids'], 'trimap': frame['trimap'],
         'rgb': frame['rgb'].astype(jnp.float32) / 127.5 - 1}
  if scale_jitter:
    scale = jnp.where(jax.random.uniform(k_apply) < JITTER_PROBABILITY,
                      jax.random.uniform(k_scale, minval=1., maxval=MAX_SCALE), 1.)
    scaled = (jnp.floor(scale * height), jnp.floor(scale * width))
    start = (jnp.floor(jax.random.uniform(k_y) * (scaled[0] - height + 1)),
             jnp.floor(jax.random.uniform(k_x) * (scaled[1] - width + 1)))
    out = resize_and_crop(out, scaled, start)
  out['rgb'] = jnp.clip(out['rgb'] + jitter_rgb * jax.random.normal(k_rgb), -1, 1)
  return out


def make_batch_fn(scale_jitter: bool = True):
  """(keys [B], frames_on_device, indices [B], jitter_rgb) -> augmented batch, to be jitted or pmapped.

  One key per example, drawn for the global batch, so the same global batch is
  augmented identically however it is split over processes and devices.
  """

  def batch_fn(keys, frames, indices, jitter_rgb):
    selected = {k: jnp.take(frames[k], indices, axis=0) for k in ('rgb', 'uv', 'pids', 'trimap')}
    return jax.vmap(lambda key, frame: augment_frame(key, frame, jitter_rgb, scale_jitter))(keys, selected)

  return batch_fn


def upsampling_batch_fn(rng, frames, indices, crop_size: int = 256):
  """Upsampling stage: no jitter; the 2x target and one random crop offset per batch."""
  selected = {k: jnp.take(frames[k], indices, axis=0) for k in ('rgb_hr', 'uv', 'pids')}
  high_h, high_w = selected['rgb_hr'].shape[1:3]
  k_y, k_x = jax.random.split(rng)
  crop = (jax.random.randint(k_y, (), 0, high_h - crop_size + 1),
          jax.random.randint(k_x, (), 0, high_w - crop_size + 1))
  target = selected['rgb_hr'].astype(jnp.float32) / 127.5 - 1
  target = jax.lax.dynamic_slice(target, (0,) + crop + (0,), (target.shape[0], crop_size, crop_size, 3))
  return {'uv': selected['uv'], 'pids': selected['pids'], 'rgb': target, 'crop': jnp.stack(crop)}
