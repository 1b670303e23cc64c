"""Backward warping by a dense flow in pixels (bilinear, border padding)."""

import jax
import jax.numpy as jnp

from layered_jax.models.layers import at_least_f32

Array = jax.Array


def flow_warp(image: Array, flow: Array) -> Array:
  """out[y, x] = image[y + dy, x + dx], bilinear, coordinates clamped to the border.

  image [B, H, W, C]; flow [B, H, W, 2] in pixels, channels (dx, dy) along (width,
  height). This is grid_sample(align_corners=True, padding_mode='border') on the
  grid the reference builds, so a zero flow returns the image exactly. (The
  reference's call leaves align_corners at its default, False since PyTorch 1.3,
  which shifts and blurs a zero-flow warp by a fraction of a pixel.)
  Computed in float32 or wider; the output has the image's dtype.
  """
  b, h, w, c = image.shape
  flow = at_least_f32(flow)
  x = jnp.clip(jnp.arange(w, dtype=flow.dtype)[None, None, :] + flow[..., 0], 0, w - 1)
  y = jnp.clip(jnp.arange(h, dtype=flow.dtype)[None, :, None] + flow[..., 1], 0, h - 1)
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  wx = x - x0
  wy = y - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  x1 = jnp.minimum(x0 + 1, w - 1)
  y1 = jnp.minimum(y0 + 1, h - 1)
  flat = at_least_f32(image).reshape(b, h * w, c)

  def gather(yi, xi):
    return jnp.take_along_axis(flat, (yi * w + xi).reshape(b, h * w, 1), axis=1).reshape(b, h, w, c)

  wx, wy = wx[..., None], wy[..., None]
  out = ((gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx) * (1 - wy)
         + (gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx) * wy)
  return out.astype(image.dtype)
