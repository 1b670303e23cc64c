"""Loss terms of the reference (spec section 4). Inputs are NHWC, values in [-1, 1]."""

from typing import Dict, Mapping, Optional

import jax
import jax.numpy as jnp


def reconstruction_loss(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
  """L1 between the composite's RGB and the target RGB."""
  return jnp.mean(jnp.abs(reconstruction[..., :3] - target))


def alpha_regularization(reconstruction: jax.Array, lambda_l1: jax.Array, lambda_l0: jax.Array) -> jax.Array:
  """Sparsity of the composite alpha a in [0, 1]: L1 plus a sigmoid-squashed pseudo-L0."""
  alpha = reconstruction[..., 3] * 0.5 + 0.5
  pseudo_l0 = (jax.nn.sigmoid(5. * alpha) - 0.5) * 2.
  return lambda_l1 * jnp.mean(alpha) + lambda_l0 * jnp.mean(pseudo_l0)


def mask_loss(layer_alphas: jax.Array, trimaps: jax.Array, axis_name: Optional[str] = None) -> jax.Array:
  """L1 between per-layer alphas and trimaps (both [-1, 1]), positives and negatives balanced.

  Trimap value 0 (the band around each person) is ignored. The normalisers are
  sums over the whole batch; under pmap (axis_name) they span all devices, and
  each device returns its share scaled so that the mean over devices is the
  whole batch's loss.
  """
  error = jnp.abs(layer_alphas - trimaps)
  positive = jax.nn.relu(trimaps)
  negative = jax.nn.relu(-trimaps)
  positive_total, negative_total, devices = jnp.sum(positive), jnp.sum(negative), 1
  if axis_name is not None:
    positive_total, negative_total = jax.lax.psum((positive_total, negative_total), axis_name)
    devices = jax.lax.psum(1, axis_name)
  positive_loss = jnp.sum(positive * error) / (1. + positive_total)
  negative_loss = jnp.sum(negative * error) / (1. + negative_total)
  return 0.5 * devices * (positive_loss + negative_loss)


def layered_losses(outputs: Dict[str, jax.Array], target: jax.Array, trimaps: jax.Array,
                   weights: Mapping[str, jax.Array], axis_name: Optional[str] = None) -> Dict[str, jax.Array]:
  """All low-resolution-stage terms; weights holds lambda_alpha_l1, lambda_alpha_l0, lambda_mask.

  outputs from LayeredNeuralRenderer; target [B,H,W,3]; trimaps [B,L,H,W].
  """
  recon = reconstruction_loss(outputs['reconstruction'], target)
  alpha_reg = alpha_regularization(outputs['reconstruction'], weights['lambda_alpha_l1'],
                                   weights['lambda_alpha_l0'])
  mask = weights['lambda_mask'] * mask_loss(outputs['layers'][..., 3], trimaps, axis_name)
  return {'total': recon + alpha_reg + mask, 'recon': recon, 'alpha_reg': alpha_reg, 'mask': mask}
