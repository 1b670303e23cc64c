"""The layered neural renderer: neural texture, per-layer UNet, compositing, upsampler."""

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from layered_jax.models.layers import (ConvBlock, Dtype, ResBlock, at_least_f32, composite, grid_sample,
                                       stack_channels, upsample2x_bilinear)
from layered_jax.models.unet import UNet

Array = jax.Array


class Upsampler(nn.Module):
  """Predicts a high-resolution RGBA residual from 85 upsampled channels."""
  num_filters: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ConvBlock(self.num_filters, 3, norm='instance', dtype=self.dtype, name='upsample_block_0')(x)
    for i in (1, 2, 3):
      x = ResBlock(dtype=self.dtype, name=f'upsample_block_{i}')(x)
    return ConvBlock(4, 3, activation=None, dtype=self.dtype, name='upsample_block_4')(x)


class LayeredNeuralRenderer(nn.Module):
  """Renders L RGBA layers per frame from UV maps and composites them back to front.

  Call: apply(variables, uv [B,L,H,W,2], pids [B,L,H,W], uv_hr=None, train=False)
  -> {'reconstruction': [B,H',W',4], 'layers': [B,L,H',W',4]}, values in [-1, 1].

  All L layers go through the UNet in one call (layers folded into the batch);
  BatchNorm statistics stay per layer. With `train=True` the running statistics
  are updated (apply with mutable=['batch_stats']). With `train=False` BatchNorm
  uses the current batch's statistics, as the reference does at test time,
  unless `use_running_average=True`.

  With uv_hr [B,L,2H,2W,2] the upsampling module refines the layers at 2x.
  `crop=(y, x)` (training) renders only the `crop_size` square window at that
  high-resolution offset.
  """
  n_textures: int = 25
  num_filters: int = 64
  texture_channels: int = 16
  texture_res: int = 16
  crop_size: int = 256
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, uv: Array, pids: Array, uv_hr: Optional[Array] = None, train: bool = False,
               crop: Optional[Tuple[Array, Array]] = None,
               use_running_average: bool = False) -> Dict[str, Array]:
    texture = self.param('texture', nn.initializers.normal(1.),
                         (self.texture_res, self.texture_res * self.n_textures, self.texture_channels))
    sampled = grid_sample(texture, uv)
    features = stack_channels([sampled, pids[..., None].astype(sampled.dtype)]).astype(self.dtype)
    unet = UNet(self.num_filters, 'batch', 4, 2, self.axis_name, self.dtype, name='unet')
    last = unet(features, use_batch_stats=train or not use_running_average, update_stats=train)
    rgba = ConvBlock(4, 4, activation='tanh', dtype=self.dtype, name='final_rgba')(last)
    rgba = at_least_f32(rgba)

    if uv_hr is not None:
      rgba = self._upsample(texture, rgba, last, pids, uv_hr, crop)
    return {'reconstruction': composite(rgba), 'layers': rgba}

  def _upsample(self, texture, rgba, last, pids, uv_hr, crop):
    low = stack_channels([rgba, pids[..., None].astype(rgba.dtype), last])
    high = upsample2x_bilinear(low)
    if crop is not None:
      window = (high.shape[0], high.shape[1], self.crop_size, self.crop_size)
      high = lax.dynamic_slice(high, (0, 0) + tuple(crop) + (0,), window + high.shape[-1:])
      uv_hr = lax.dynamic_slice(uv_hr, (0, 0) + tuple(crop) + (0,), window + (2,))
    rgba_up, pid_up, last_up = high[..., :4], high[..., 4:5], high[..., 5:]
    # Channel order of the reference: rgba, sampled texture, pid, last features.
    inputs = stack_channels([rgba_up, grid_sample(texture, uv_hr), pid_up, last_up]).astype(self.dtype)
    residual = Upsampler(self.num_filters, self.dtype, name='upsampler')(inputs)
    return jnp.clip(rgba_up + 0.01 * at_least_f32(residual), -1, 1)
