"""The UNet shared by the layered renderer (BatchNorm) and kp2uv (InstanceNorm)."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from layered_jax.models.layers import ConvBlock, Dtype, stack_channels


class UNet(nn.Module):
  """Seven encoder blocks (five stride-2, two at 1/32 scale), five transposed-conv decoders.

  Skip order: decoder k concatenates (current features, encoder output 5-k).
  Returns the last decoder features at the input resolution.
  """
  num_filters: int = 64
  norm: str = 'batch'
  bottleneck_kernel: int = 4
  bottleneck_dilation: int = 2
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_batch_stats: bool = True, update_stats: bool = False) -> jax.Array:
    nf = self.num_filters

    def block(name, features, kernel, stride=1, dilation=1, transpose=False, norm=self.norm,
              activation='relu'):
      return ConvBlock(features, kernel, stride, dilation, transpose, norm, activation,
                       self.axis_name, self.dtype, name=name)

    encoders = [block('encoder_0', nf, 4, 2, norm=None)]
    encoders += [block(f'encoder_{i}', f, 4, 2, activation='leaky')
                 for i, f in enumerate((2 * nf, 4 * nf, 4 * nf, 4 * nf), start=1)]
    encoders += [block(f'encoder_{i}', 4 * nf, self.bottleneck_kernel, 1, self.bottleneck_dilation,
                       activation='leaky') for i in (5, 6)]
    decoders = [block(f'decoder_{i}', f, 4, transpose=True)
                for i, f in enumerate((4 * nf, 4 * nf, 2 * nf, nf, nf))]
    skips = []
    for i, encoder in enumerate(encoders):
      x = encoder(x, use_batch_stats, update_stats)
      if i < 5:
        skips.append(x)
    for decoder in decoders:
      x = decoder(stack_channels([x, skips.pop()]), use_batch_stats, update_stats)
    return x
