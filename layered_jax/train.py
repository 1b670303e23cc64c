"""Training: state, the two stages' steps under pmap, the reference's schedule, and the loop.

Pure functions over explicit state. `train_step` and `upsample_train_step`
take the pmap axis name, across which gradients, loss terms and BatchNorm
statistics are averaged, so a global batch gives the same result on any
number of devices. The loop's machinery (checkpoints of finite states, the NaN
stop, progress lines, replication, config checks) is layered_jax.loop's, shared
with the other trainers. TensorFlow Datasets and CLU are imported by the loop
only: the state and steps import without them.
"""

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from layered_jax import dataset, errors, input_pipeline, loop, losses
from layered_jax.loop import first_replica, replicate
from layered_jax.models import LayeredNeuralRenderer
from layered_jax.models.layers import upsample2x_bilinear

Config = Any  # an ml_collections.ConfigDict; not imported, the GPU images lack ml_collections
Batch = Mapping[str, jax.Array]  # uv [B,L,H,W,2], pids [B,L,H,W], trimap [B,L,H,W], rgb [B,H,W,3]
MODES = ('train', 'export', 'train_and_export')
STAGES = ('layers', 'upsample')
BATCH_SIZE_OPTION = {'layers': 'batch_size', 'upsample': 'batch_size_upsample'}  # the config field per stage
DEVICE_FRAMES = ('rgb', 'rgb_hr', 'uv', 'pids', 'trimap')  # what every device holds of the whole video
LOSS_WEIGHT_NAMES = ('lambda_alpha_l1', 'lambda_alpha_l0', 'lambda_mask')
MODEL_SIZES = ('num_filters', 'texture_res', 'texture_channels')  # config fields the parameters' shapes follow
FIELD_RULES = {
    **{name: loop.POSITIVE_INT for name in ('n_epochs', 'batch_size', 'batch_size_upsample', 'num_filters',
                                            'texture_res', 'texture_channels', 'crop_size', 'log_every_steps',
                                            'image_every_epochs', 'checkpoint_every_epochs', 'keep_checkpoints')},
    **{name: loop.NON_NEGATIVE_INT for name in ('n_epochs_upsample', 'trimap_width', 'alpha_l1_rolloff_epoch',
                                                'jitter_epochs', 'seed')},
    **{name: loop.POSITIVE for name in ('lr', 'report_every_secs', 'fps')},
    **{name: loop.NON_NEGATIVE for name in ('lambda_alpha_l1', 'lambda_alpha_l0', 'lambda_mask', 'mask_thresh',
                                            'jitter_rgb')},
}


class TrainState(train_state.TrainState):
  batch_stats: Any


def make_module(config: Config, n_textures: int, axis_name: Optional[str] = None
                ) -> LayeredNeuralRenderer:
  return LayeredNeuralRenderer(n_textures=n_textures, num_filters=config.num_filters,
                               texture_channels=config.texture_channels, texture_res=config.texture_res,
                               crop_size=config.crop_size, axis_name=axis_name, dtype=jnp.dtype(config.dtype))


def make_optimizer(learning_rate: float, stage: str = 'layers') -> optax.GradientTransformation:
  """Adam as the reference (betas 0.9, 0.999, constant rate); the upsampling stage trains only the upsampler."""
  adam = optax.adam(learning_rate, 0.9, 0.999)
  if stage == 'layers':
    return adam
  labels = lambda params: {name: 'train' if name == 'upsampler' else 'frozen' for name in params}
  return optax.multi_transform({'train': adam, 'frozen': optax.set_to_zero()}, labels)


def init_variables(rng: jax.Array, module: nn.Module, batch: Batch, abstract: bool = False) -> Dict:
  """Every variable, the upsampler's included, from a batch's shapes (abstract: shapes only)."""

  def init(rng, uv, pids):
    return module.clone(axis_name=None).init(rng, uv, pids, upsample2x_bilinear(uv))

  if abstract:  # batch may hold jax.ShapeDtypeStruct
    one = lambda x: jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)
    return jax.eval_shape(init, rng, one(batch['uv']), one(batch['pids']))
  return jax.jit(init)(rng, batch['uv'][:1], batch['pids'][:1])


def make_train_state(module: nn.Module, variables: Mapping, learning_rate: float, stage: str = 'layers',
                     step: int = 0) -> TrainState:
  """A train state for a stage around existing variables, with a fresh optimizer state."""
  tx = make_optimizer(learning_rate, stage)
  return TrainState(step=step, apply_fn=module.apply, params=variables['params'],
                    batch_stats=variables['batch_stats'], tx=tx, opt_state=jax.jit(tx.init)(variables['params']))


def create_train_state(rng: jax.Array, module: nn.Module, batch: Batch, learning_rate: float,
                       stage: str = 'layers', abstract: bool = False) -> TrainState:
  """A new train state; abstract=True gives its shapes only (a restore target), computing nothing."""
  if abstract:
    return jax.eval_shape(lambda: make_train_state(module, init_variables(rng, module, batch, True),
                                                   learning_rate, stage))
  return make_train_state(module, init_variables(rng, module, batch), learning_rate, stage)


def train_step(state: TrainState, batch: Batch, loss_weights: Mapping[str, jax.Array],
               axis_name: Optional[str] = None) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One Adam step on the low-resolution losses; returns the new state and the loss terms."""

  def loss_fn(params):
    outputs, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                      batch['uv'], batch['pids'], train=True, mutable=['batch_stats'])
    terms = losses.layered_losses(outputs, batch['rgb'], batch['trimap'], loss_weights, axis_name)
    return terms['total'], (terms, updates['batch_stats'])

  grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads, terms = jax.lax.pmean((grads, terms), axis_name)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), dict(terms, grad_norm=optax.tree.norm(grads))


def upsample_train_step(state: TrainState, batch: Batch, axis_name: Optional[str] = None
                        ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """Upsampling stage: L1 of the 2x reconstruction on a crop (batch['crop'] = (y, x))."""
  uv_hr = upsample2x_bilinear(batch['uv'])

  def loss_fn(params):
    outputs, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                      batch['uv'], batch['pids'], uv_hr, train=True,
                                      crop=(batch['crop'][0], batch['crop'][1]), mutable=['batch_stats'])
    recon = losses.reconstruction_loss(outputs['reconstruction'], batch['rgb'])
    return recon, updates['batch_stats']

  (recon, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  terms = {'total': recon, 'recon': recon}
  if axis_name is not None:
    grads, terms = jax.lax.pmean((grads, terms), axis_name)
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), dict(terms, grad_norm=optax.tree.norm(grads))


def stage_step(stage: str, axis_name: Optional[str] = None):
  """A stage's step as f(state, batch, loss_weights) -> (state, terms: the loss terms and the gradient's norm)."""
  if stage == 'layers':
    return lambda state, batch, weights: train_step(state, batch, weights, axis_name)
  return lambda state, batch, weights: upsample_train_step(state, batch, axis_name)


def pmapped_step(stage: str, devices: Optional[Sequence[jax.Device]] = None):
  """A stage's step under pmap over the local (or given) devices; the state is donated."""
  return jax.pmap(stage_step(stage, loop.AXIS), axis_name=loop.AXIS, in_axes=(0, 0, None), donate_argnums=(0,),
                  devices=devices)


# --- The reference's schedule (spec section 4), in its 1-based epochs. ---

def initial_schedule(config: Config) -> Dict[str, float]:
  return {'lambda_alpha_l1': config.lambda_alpha_l1, 'lambda_alpha_l0': config.lambda_alpha_l0,
          'lambda_mask': config.lambda_mask, 'jitter_rgb': config.jitter_rgb,
          'mask_rolloff_epoch': float(config.mask_loss_rolloff_epoch)}


def upsample_schedule() -> Dict[str, float]:
  """The upsampling stage trains on the reconstruction alone, without jitter."""
  return {'lambda_alpha_l1': 0., 'lambda_alpha_l0': 0., 'lambda_mask': 0., 'jitter_rgb': 0.,
          'mask_rolloff_epoch': -1.}


def update_schedule(schedule: Mapping[str, float], epoch: int, previous_mask_loss: Optional[float],
                    config: Config, first_epoch: int = 1) -> Dict[str, float]:
  """Loss weights at the start of `epoch`, given the last mask loss of the epoch before.

  Alpha L1 stops at alpha_l1_rolloff_epoch; once the (weighted) mask loss falls
  under mask_thresh * lambda_mask, the mask weight drops 10x and reaches 0 at
  twice that epoch (or at 2 * mask_loss_rolloff_epoch when that is set);
  brightness jitter stops at jitter_epochs.
  """
  schedule = dict(schedule)
  if epoch == config.alpha_l1_rolloff_epoch:
    schedule['lambda_alpha_l1'] = 0.
  if schedule['mask_rolloff_epoch'] >= 0:
    if epoch == 2 * schedule['mask_rolloff_epoch']:
      schedule['lambda_mask'] = 0.
  elif epoch > first_epoch and previous_mask_loss is not None:
    if previous_mask_loss < config.mask_thresh * config.lambda_mask:
      schedule['mask_rolloff_epoch'] = float(epoch)
      schedule['lambda_mask'] *= 0.1
  if epoch == config.jitter_epochs:
    schedule['jitter_rgb'] = 0.
  return schedule


# --- The loop. ---

@dataclasses.dataclass
class Progress:
  """What a checkpoint holds besides the train state (and the identity of what it was trained on)."""
  stage: str
  epoch: int  # the last completed epoch (1-based, continuing across stages); 0 before training
  schedule: Dict[str, float]
  last_mask_loss: Optional[float]


def check_config(config: Config) -> None:
  """Fails before any compute on settings that cannot work, naming the field and what to change."""
  loop.check_fields(config, FIELD_RULES)
  loop.check_choices(config, {'mode': MODES, 'dtype': ('float32', 'bfloat16')})
  if not config.dataroot:
    raise errors.ConfigError('config.dataroot is empty: pass --config.dataroot=/path/to/video_folder')
  if not os.path.isdir(config.dataroot) and not config.get('synthetic'):
    raise errors.ConfigError(f'config.dataroot {config.dataroot} does not exist; point it at a video folder '
                             '(see data_prep) or use configs/demo.py for a synthetic one')
  loop.check_batch_split(config, list(BATCH_SIZE_OPTION.values()))


def run_identity(config: Config, meta: Mapping) -> Dict[str, Any]:
  """What a workdir's checkpoints are trained on: the dataset's identity and the model's sizes."""
  return {**meta['identity'], **{name: config[name] for name in MODEL_SIZES}}


def restore(config: Config, workdir: str, meta: Mapping, module: LayeredNeuralRenderer, sample: Batch
            ) -> Tuple[loop.Checkpoints, Optional[Tuple[TrainState, Progress]]]:
  """The workdir's checkpoints and the newest usable (state, progress), checked against this run's identity."""
  checkpoints = loop.Checkpoints(workdir, config.keep_checkpoints, run_identity(config, meta))
  rng = jax.random.PRNGKey(config.seed)
  restored = checkpoints.restore(
      lambda record: create_train_state(rng, module, sample, config.lr, record['stage'], abstract=True))
  if restored is None:
    return checkpoints, None
  state, record = restored
  return checkpoints, (state, Progress(**record))


def _visuals(module: LayeredNeuralRenderer, state: TrainState, frames: Mapping[str, np.ndarray]
             ) -> Dict[str, np.ndarray]:
  """Target, reconstruction, and each layer's RGBA (over a checkerboard) and alpha, in [0, 1]."""
  variables = first_replica({'params': state.params, 'batch_stats': state.batch_stats})
  out = jax.jit(module.clone(axis_name=None).apply)(variables, frames['uv'], frames['pids'])
  layers = np.asarray(out['layers']) * 0.5 + 0.5
  h, w = layers.shape[2:4]
  checker = ((np.indices((h, w)).sum(0) // 8) % 2 * 0.3 + 0.5)[..., None]
  visuals = {'target': frames['rgb'] / 255., 'reconstruction': np.asarray(out['reconstruction'])[..., :3] * 0.5 + 0.5}
  for i in range(layers.shape[1]):
    alpha = 1. if i == 0 else layers[:, i, ..., 3:]
    visuals[f'layer_{i:02d}_rgba'] = layers[:, i, ..., :3] * alpha + checker * (1 - alpha)
    visuals[f'layer_{i:02d}_alpha'] = np.repeat(layers[:, i, ..., 3:], 3, -1)
  return {k: np.clip(v, 0, 1) for k, v in visuals.items()}


def train_and_evaluate(config: Config, workdir: str) -> TrainState:
  """Trains both stages, resuming from workdir, writing metrics and checkpoints there.

  Reads the dataset data_prep.prepare built (layered_jax.main prepares it first).
  Returns the final state (on the host, unreplicated).
  """
  check_config(config)
  dataset_dir = dataset.location(config, workdir)
  frames, meta = dataset.load(dataset_dir)
  dataset.check_built_for(meta, config, dataset_dir)
  num_frames, num_layers, height, width = frames['uv'].shape[:4]
  if config.do_upsampling and config.n_epochs_upsample and config.crop_size > 2 * min(height, width):
    raise errors.ConfigError(f'config.crop_size={config.crop_size} is larger than the 2x frames '
                             f'({2 * width}x{2 * height}); use --config.crop_size={2 * min(height, width)} or less')
  n_textures = int(meta['n_textures'])
  module = make_module(config, n_textures, axis_name=loop.AXIS)
  sample = {k: jnp.asarray(frames[k][:1]) for k in ('uv', 'pids')}
  checkpoints, restored = restore(config, workdir, meta, module, sample)
  if restored is not None:
    state, progress = restored
    state_stage = progress.stage
    if jax.process_index() == 0:
      print(f'resuming from epoch {progress.epoch} ({progress.stage} stage)', flush=True)
  else:
    progress = Progress('layers', 0, initial_schedule(config), None)
    if config.init_checkpoint:
      variables = converted_variables(config.init_checkpoint, n_textures)
    else:
      variables = init_variables(jax.random.PRNGKey(config.seed), module, sample)
    state, state_stage = make_train_state(module, variables, config.lr), 'layers'

  writer = loop.metric_writer(workdir)
  frames_on_devices = replicate({k: frames[k] for k in DEVICE_FRAMES})
  visual_frames = {k: frames[k][:min(4, num_frames)] for k in ('uv', 'pids', 'rgb')}
  upsample_epochs = config.n_epochs_upsample if config.do_upsampling else 0
  stage_epochs = {'layers': (1, config.n_epochs),
                  'upsample': (config.n_epochs + 1, config.n_epochs + upsample_epochs)}
  for stage in STAGES[STAGES.index(progress.stage):]:
    first, last = stage_epochs[stage]
    if first > last:
      continue
    if progress.stage != stage:  # entering the upsampling stage: its own weights and optimizer
      progress = dataclasses.replace(progress, stage=stage, schedule=upsample_schedule(), last_mask_loss=None)
    if state_stage != stage:
      state = make_train_state(module, {'params': state.params, 'batch_stats': state.batch_stats}, config.lr,
                               stage, state.step)
    replicated, progress = _train_stage(config, workdir, module, stage, first, last, replicate(state),
                                        progress, frames_on_devices, num_frames, checkpoints, writer, visual_frames)
    state, state_stage = first_replica(replicated), stage
  writer.flush()
  return state


def converted_variables(path: str, n_textures: int) -> Dict:
  """Variables of a converted reference checkpoint (layered_jax.convert --kind=lnr), checked against the video."""
  from layered_jax import convert
  module, variables = convert.load(path)
  if module.n_textures != n_textures:
    raise errors.ConfigError(f'config.init_checkpoint {path} was trained with n_textures={module.n_textures}, '
                             f'this video has {n_textures}: convert a checkpoint of a video with as many people')
  return variables


def _scalars(terms: Mapping[str, Any]) -> Dict[str, float]:
  """A step's terms on the host: loss terms as loss/NAME, the gradient's global norm as grad_norm."""
  return {(k if k == 'grad_norm' else f'loss/{k}'): float(v) for k, v in first_replica(terms).items()}


def _train_stage(config, workdir, module, stage, first, last, state, progress, frames_on_devices, num_frames,
                 checkpoints, writer, visual_frames):
  """Epochs first..last of one stage; checkpoints at epoch ends, so a resume replays no step."""
  from clu import periodic_actions
  process_count, process_index = jax.process_count(), jax.process_index()
  devices = jax.local_device_count()
  batch_size = config[BATCH_SIZE_OPTION[stage]]
  steps_per_epoch = -(-num_frames // batch_size)
  p_step = pmapped_step(stage)
  if stage == 'layers':
    p_batch = jax.pmap(input_pipeline.make_batch_fn(scale_jitter=True), in_axes=(0, 0, 0, None))
  else:
    p_batch = jax.pmap(lambda rng, f, idx, jitter: input_pipeline.upsampling_batch_fn(rng, f, idx, config.crop_size),
                       in_axes=(None, 0, 0, None))
  total_steps = (last - first + 1) * steps_per_epoch
  log = loop.StepLog(loop.Reporter(f'{stage} stage', total_steps, config.report_every_secs), loop.DivergenceWatch(),
                     writer, checkpoints, _scalars, batch_size, int(first_replica(state.step)))
  profile = periodic_actions.Profile(logdir=workdir, num_profile_steps=5) if config.profile and process_index == 0 \
      else None
  compiled = False
  step_in_stage = (progress.epoch + 1 - first) * steps_per_epoch if progress.epoch >= first else 0
  for epoch in range(max(first, progress.epoch + 1), last + 1):
    where = f'epoch {epoch}'
    schedule = update_schedule(progress.schedule, epoch, progress.last_mask_loss, config, first)
    weights = {k: jnp.float32(schedule[k]) for k in LOSS_WEIGHT_NAMES}
    extra = {**{f'weights/{k}': v for k, v in schedule.items()}, 'learning_rate': config.lr, 'epoch': epoch}
    indices = input_pipeline.epoch_indices(num_frames, batch_size, config.seed, epoch)
    local = input_pipeline.host_indices(indices, process_index, process_count)
    for i, step_indices in enumerate(local):
      step_rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch), i)
      device_indices = step_indices.reshape(devices, -1)
      if stage == 'layers':
        keys = jax.random.split(step_rng, batch_size)[process_index * len(step_indices):][:len(step_indices)]
        batch = p_batch(keys.reshape(devices, -1, *keys.shape[1:]), frames_on_devices, device_indices,
                        jnp.float32(schedule['jitter_rgb']))
      else:
        batch = p_batch(step_rng, frames_on_devices, device_indices, 0.)
      if not compiled:  # compiled ahead of the first step (p_step reuses it) to check its memory
        log.reporter.compiling()
        _warn_if_too_large(config, stage, p_step.lower(state, batch, weights).compile(), frames_on_devices,
                           module.n_textures, batch_size // devices)
        compiled = True
      state, terms = p_step(state, batch, weights)
      step_in_stage += 1
      if profile:
        profile(step_in_stage)
      log(step_in_stage, step_in_stage % config.log_every_steps == 0 or step_in_stage == total_steps, terms,
          f'{where}/{last}', extra, lambda: int(first_replica(state.step)))
    last_terms = _scalars(terms)
    loop.stop_if_not_finite(last_terms, where, checkpoints)
    progress = dataclasses.replace(progress, epoch=epoch, schedule=schedule,
                                   last_mask_loss=last_terms.get('loss/mask'))
    if epoch % config.image_every_epochs == 0 and process_index == 0:
      writer.write_images(int(first_replica(state.step)), _visuals(module, state, visual_frames))
    if epoch % config.checkpoint_every_epochs == 0 or epoch == last:
      checkpoints.save(epoch, first_replica(state), progress)
  return state, progress


def _warn_if_too_large(config, stage: str, compiled, frames_on_devices, n_textures: int,
                       per_device_batch: int) -> None:
  """Logs a warning with the largest batch that fits when XLA's figures exceed a device's memory."""
  from layered_jax import memory
  limit = memory.device_memory()
  num_frames, num_layers, height, width = frames_on_devices['uv'].shape[1:5]
  video = memory.video_bytes(memory.frame_shapes(num_frames, num_layers, width, height))
  if limit is None or memory.compiled_bytes(compiled) + video <= memory.USABLE * limit:
    return
  plan = memory.plan_stage(config, stage, num_frames, n_textures, num_layers, width, height, per_device_batch)
  logging.warning(memory.too_large_message(plan, limit, BATCH_SIZE_OPTION[stage], jax.device_count())
                  or f'the {stage} stage may not fit in {limit / 2 ** 30:.2f} GiB per device')
