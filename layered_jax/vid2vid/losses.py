"""vid2vid's loss terms (vid2vid-spec section 4), as pure functions of NHWC arrays.

Discriminator outputs are lists (one per scale) of lists of block outputs, the
last block's being the patch scores, as MultiscaleDiscriminator returns them.
Every mean is over all elements, as PyTorch's MSELoss/L1Loss take it.
"""

import logging
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from layered_jax.models.layers import at_least_f32

Array = jax.Array
Features = Sequence[Sequence[Array]]

VGG_WEIGHTS = (1. / 32, 1. / 16, 1. / 8, 1. / 4, 1.)  # relu1_1 .. relu5_1
MULTISCALE_L1_WEIGHTS = (1., 0.5, 0.25, 0.125, 0.125)


def lsgan(predictions: Features, target_is_real: bool) -> Array:
  """LSGAN: sum over scales of mean((scores - target)^2), target 1 for real, 0 for fake."""
  target = 1. if target_is_real else 0.
  return sum(jnp.mean(jnp.square(at_least_f32(scale[-1]) - target)) for scale in predictions)


def feature_matching(fake: Features, real: Features, n_layers_D: int, num_D: int, lambda_feat: float) -> Array:
  """sum over scales i and blocks j < last of (1/num_D) (4/(n_layers_D+1)) L1(fake_ij, real_ij) lambda_feat.

  The real features are constants (the reference detaches them).
  """
  weight = 1. / num_D * 4. / (n_layers_D + 1) * lambda_feat
  total = 0.
  for fake_scale, real_scale in list(zip(fake, real))[:num_D]:
    for f, r in zip(fake_scale[:-1], real_scale[:-1]):
      total = total + weight * jnp.mean(jnp.abs(at_least_f32(f) - jax.lax.stop_gradient(at_least_f32(r))))
  return total


def masked_l1(a: Array, b: Array, mask: Array) -> Array:
  """mean over every element of |a m - b m|, mask [..., 1] broadcast over channels (not normalised by the mask)."""
  mask = jnp.broadcast_to(mask, a.shape)
  return jnp.mean(jnp.abs(at_least_f32(a) * mask - at_least_f32(b) * mask))


def _avg_pool2(x: Array) -> Array:
  """2x2 average pooling, stride 2 (odd trailing rows and columns dropped, as AvgPool2d(2, 2))."""
  h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
  x = x[..., :h, :w, :]
  x = x.reshape(x.shape[:-3] + (h // 2, 2, w // 2, 2, x.shape[-1]))
  return x.mean(axis=(-4, -2))


def vgg_loss(vgg, vgg_variables, fakes: Sequence[Array], real: Array, normalize: bool = False) -> Array:
  """sum over fakes and relu1_1..relu5_1 of VGG_WEIGHTS[k] L1(vgg_k(fake), vgg_k(real)); real's are constants.

  One VGG pass over the fakes and one over the real frames: a separate pass keeps
  autodiff from computing an input gradient for the real frames, a third of the
  backward pass. The reference feeds images in [-1, 1] to ImageNet
  VGG19 as they are; `normalize` maps them to ImageNet's normalised range first
  (what torchvision's weights expect). Images wider than 1024 are halved first
  (2x2 average), as the reference does.
  """
  images = [at_least_f32(f) for f in fakes] + [jax.lax.stop_gradient(at_least_f32(real))]
  while images[0].shape[-2] > 1024:
    images = [_avg_pool2(x) for x in images]
  if normalize:
    mean = jnp.array([0.485, 0.456, 0.406])
    std = jnp.array([0.229, 0.224, 0.225])
    images = [((x + 1) / 2 - mean) / std for x in images]
  n = real.shape[0]
  targets = vgg.apply(vgg_variables, images[-1])
  total = 0.
  for weight, features, target in zip(VGG_WEIGHTS, vgg.apply(vgg_variables, jnp.concatenate(images[:-1], 0)), targets):
    target = jax.lax.stop_gradient(at_least_f32(target))
    for i in range(len(fakes)):
      total = total + weight * jnp.mean(jnp.abs(at_least_f32(features[i * n:(i + 1) * n]) - target))
  return total


def multiscale_l1(a: Array, b: Array, mask: Optional[Array] = None, n_scales: int = 5) -> Array:
  """sum over 5 halvings (2x2 average) of weight_s * L1(a, b), weights 1, 1/2, 1/4, 1/8, 1/8; optionally masked.

  The reference defines this loss (MultiscaleL1Loss) without using it; here it is
  the optional image term when no VGG19 weights are available (lambda_multiscale_l1).
  """
  total = 0.
  a, b = at_least_f32(a), at_least_f32(b)
  for i, weight in enumerate(MULTISCALE_L1_WEIGHTS[:n_scales]):
    if i:
      a, b = _avg_pool2(a), _avg_pool2(b)
      mask = None if mask is None else _avg_pool2(mask)
    total = total + weight * (jnp.mean(jnp.abs(a - b)) if mask is None else masked_l1(a, b, mask))
  return total


def vgg_weights_path(path: str) -> Optional[str]:
  """The converted VGG19 directory to use, or None (no_vgg) with one log line saying why."""
  if not path:
    logging.warning('no VGG19 weights given (config.vgg19): training without the VGG perceptual loss (no_vgg); '
                    'convert torchvision vgg19 weights with `python -m layered_jax.convert --kind=vgg19` to use it')
    return None
  if not os.path.isfile(os.path.join(path, 'model.json')):
    raise FileNotFoundError(f'{path} is not a converted VGG19 (no model.json): run python -m layered_jax.convert '
                            f'--kind=vgg19 --checkpoint=vgg19.pth --output={path}')
  return path
