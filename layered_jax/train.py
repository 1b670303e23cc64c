"""Training state and the low-resolution train step (spec section 4).

Pure functions over explicit state: `train_step` can be jitted (single device)
or pmapped with the module's `axis_name`, which then also averages gradients
and BatchNorm statistics across devices.
"""

from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from layered_jax import losses

Batch = Mapping[str, jax.Array]  # uv [B,L,H,W,2], pids [B,L,H,W], trimap [B,L,H,W], rgb [B,H,W,3]


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_train_state(rng: jax.Array, module: nn.Module, batch: Batch, learning_rate: float) -> TrainState:
  """Initialises the variables from a batch's shapes; Adam as the reference (betas 0.9, 0.999)."""
  variables = jax.jit(module.init)(rng, batch['uv'], batch['pids'])
  return TrainState.create(apply_fn=module.apply, params=variables['params'],
                           batch_stats=variables['batch_stats'], tx=optax.adam(learning_rate, 0.9, 0.999))


def train_step(state: TrainState, batch: Batch, loss_weights: Mapping[str, jax.Array],
               axis_name: str = None) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One Adam step on the low-resolution losses; returns the new state and the loss terms."""

  def loss_fn(params):
    outputs, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                      batch['uv'], batch['pids'], train=True, mutable=['batch_stats'])
    terms = losses.layered_losses(outputs, batch['rgb'], batch['trimap'], loss_weights)
    return terms['total'], (terms, updates['batch_stats'])

  grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads, terms = jax.lax.pmean((grads, terms), axis_name)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), terms
