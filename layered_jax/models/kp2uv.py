"""kp2uv: renders a DensePose-style IUV map of one person from a keypoint image."""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from layered_jax.models.layers import ConvBlock, Dtype, at_least_f32, stack_channels
from layered_jax.models.unet import UNet

NUM_PARTS = 24


class Kp2UV(nn.Module):
  """apply(variables, image [B,256,256,3] in [-1,1]) -> (part_logits [B,H,W,25], uv [B,H,W,48]).

  uv holds (u, v) in [-1, 1] for each of the 24 parts, part p at channels 2(p-1), 2(p-1)+1.
  """
  num_filters: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x = image.astype(self.dtype)
    features = UNet(self.num_filters, 'instance', 3, 1, dtype=self.dtype, name='unet')(x)
    features = stack_channels([features, x])
    part_logits = ConvBlock(NUM_PARTS + 1, 3, activation=None, dtype=self.dtype, name='id_pred')(features)
    uv = ConvBlock(2 * NUM_PARTS, 3, activation='tanh', dtype=self.dtype, name='uv_pred')(features)
    return at_least_f32(part_logits), at_least_f32(uv)


def iuv_image(part_logits: jax.Array, uv: jax.Array) -> jax.Array:
  """The uint8 IUV image the reference saves: R = part * 10, G, B = (uv + 1) / 2 * 255 truncated.

  part = argmax of the logits (0 = background, whose UV is -1, i.e. 0).
  """
  part = jnp.argmax(part_logits, axis=-1)
  pairs = uv.reshape(uv.shape[:-1] + (NUM_PARTS, 2))
  index = jnp.clip(part - 1, 0, NUM_PARTS - 1)[..., None, None]
  selected = jnp.take_along_axis(pairs, jnp.broadcast_to(index, part.shape + (1, 2)), axis=-2)[..., 0, :]
  selected = jnp.where((part > 0)[..., None], selected, -1.)
  gb = jnp.floor((selected + 1) / 2 * 255)
  return jnp.concatenate([(part * 10)[..., None], gb], axis=-1).astype(jnp.uint8)
