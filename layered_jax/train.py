"""Training: state, the two stages' steps under pmap, the reference's schedule, and the loop.

Pure functions over explicit state. `train_step` and `upsample_train_step`
take the pmap axis name, across which gradients, loss terms and BatchNorm
statistics are averaged, so a global batch gives the same result on any
number of devices. TensorFlow Datasets and CLU are imported by the loop only:
the state and steps import without them.
"""

import dataclasses
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from layered_jax import distributed, input_pipeline, losses
from layered_jax.models import LayeredNeuralRenderer
from layered_jax.models.layers import upsample2x_bilinear

Config = Any  # an ml_collections.ConfigDict; not imported, the GPU images lack ml_collections
Batch = Mapping[str, jax.Array]  # uv [B,L,H,W,2], pids [B,L,H,W], trimap [B,L,H,W], rgb [B,H,W,3]
AXIS = 'batch'
STAGES = ('layers', 'upsample')
BATCH_SIZE_OPTION = {'layers': 'batch_size', 'upsample': 'batch_size_upsample'}  # the config field per stage
DEVICE_FRAMES = ('rgb', 'rgb_hr', 'uv', 'pids', 'trimap')  # what every device holds of the whole video
LOSS_WEIGHT_NAMES = ('lambda_alpha_l1', 'lambda_alpha_l0', 'lambda_mask')


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


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """One copy per local device (or per given device), laid out for pmap, broadcast on the host.

  The layout is the one pmap gives the outputs of a step with axis name AXIS, so
  feeding a step its own output does not compile it a second time.
  """
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding), tree)


def first_replica(tree: Any) -> Any:
  """Replica 0 of a pmapped tree, as NumPy on the host (no per-leaf device op)."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], tree)


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
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), terms


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
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), terms


def stage_step(stage: str, axis_name: Optional[str] = None):
  """A stage's step as f(state, batch, loss_weights); the upsampling stage has no weighted terms."""
  if stage == 'layers':
    return lambda state, batch, weights: train_step(state, batch, weights, axis_name)
  return lambda state, batch, weights: upsample_train_step(state, batch, axis_name)


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
  """What a checkpoint holds besides the train state."""
  stage: str
  epoch: int  # the last completed epoch (1-based, continuing across stages); 0 before training
  schedule: Dict[str, float]
  last_mask_loss: Optional[float]
  n_textures: int
  num_layers: int
  size_lr: Tuple[int, int]


def checkpoint_manager(workdir: str, keep: int):
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def _save(manager, state: TrainState, progress: Progress) -> None:
  import orbax.checkpoint as ocp
  manager.save(progress.epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(first_replica(state)),
      progress=ocp.args.JsonSave(dataclasses.asdict(progress))))
  manager.wait_until_finished()


def restore_progress(manager) -> Optional[Progress]:
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  meta = manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))['progress']
  meta['size_lr'] = tuple(meta['size_lr'])
  return Progress(**meta)


def restore_state(manager, abstract: TrainState) -> TrainState:
  """The latest checkpoint's train state; abstract from create_train_state(..., abstract=True)."""
  import orbax.checkpoint as ocp
  return manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))['state']


def check_config(config: Config) -> None:
  """Fails before any compute on settings that cannot work, saying what to change."""
  if not config.dataroot:
    raise ValueError('config.dataroot is empty: pass --config.dataroot=/path/to/video_folder')
  if not os.path.isdir(config.dataroot) and not config.get('synthetic'):
    raise ValueError(f'config.dataroot {config.dataroot} does not exist; point it at a video folder '
                     '(see data_prep) or use configs/demo.py for a synthetic one')
  devices = jax.device_count()
  for name in BATCH_SIZE_OPTION.values():
    if config[name] % devices:
      raise ValueError(f'config.{name}={config[name]} does not split over {devices} devices; '
                       f'use a multiple of {devices}')
  if not np.isfinite(config.lr) or config.lr <= 0:
    raise ValueError(f'config.lr={config.lr} must be a positive number (the reference uses 1e-3)')
  if config.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.dtype={config.dtype!r}: use 'float32' or 'bfloat16'")


def _check_compatible(progress: Progress, n_textures: int, num_layers: int, size_lr, workdir: str) -> None:
  have = (progress.n_textures, progress.num_layers, tuple(progress.size_lr))
  want = (n_textures, num_layers, tuple(size_lr))
  if have != want:
    raise ValueError(
        f'{workdir} holds a checkpoint for n_textures={have[0]}, {have[1]} layers, size {have[2][0]}x{have[2][1]}; '
        f'the dataset has n_textures={want[0]}, {want[1]} layers, size {want[2][0]}x{want[2][1]}. '
        'Use a new --workdir for this video.')


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

  Returns the final state (on the host, unreplicated).
  """
  from clu import metric_writers
  check_config(config)
  dataset_dir = input_pipeline.prepare_dataset(config, workdir)
  distributed.barrier('dataset ready')  # process 0 built it
  frames, meta = input_pipeline.load_dataset(dataset_dir)
  num_frames, num_layers = frames['uv'].shape[:2]
  size_lr = tuple(meta['size_lr'])
  n_textures = int(meta['n_textures'])
  module = make_module(config, n_textures, axis_name=AXIS)
  sample = {k: jnp.asarray(frames[k][:1]) for k in ('uv', 'pids')}
  rng = jax.random.PRNGKey(config.seed)

  manager = checkpoint_manager(workdir, config.keep_checkpoints)
  progress = restore_progress(manager)
  if progress is not None:
    _check_compatible(progress, n_textures, num_layers, size_lr, workdir)
    logging.info('resuming from epoch %d (%s stage)', progress.epoch, progress.stage)
    state_stage = progress.stage
    state = restore_state(manager, create_train_state(rng, module, sample, config.lr, state_stage, abstract=True))
  else:
    progress = Progress('layers', 0, initial_schedule(config), None, n_textures, num_layers, size_lr)
    if config.init_checkpoint:
      variables = converted_variables(config.init_checkpoint, n_textures)
    else:
      variables = init_variables(rng, module, sample)
    state, state_stage = make_train_state(module, variables, config.lr), 'layers'

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
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
                                        progress, frames_on_devices, num_frames, manager, writer, visual_frames)
    state, state_stage = first_replica(replicated), stage
  writer.flush()
  return state


def converted_variables(path: str, n_textures: int) -> Dict:
  """Variables of a converted reference checkpoint (layered_jax.convert --kind=lnr), checked against the video."""
  from layered_jax import convert
  module, variables = convert.load(path)
  if module.n_textures != n_textures:
    raise ValueError(f'{path} was trained with n_textures={module.n_textures}, this video has {n_textures}')
  return variables


def _train_stage(config, workdir, module, stage, first, last, state, progress, frames_on_devices, num_frames,
                 manager, writer, visual_frames):
  """Epochs first..last of one stage; checkpoints at epoch ends, so a resume replays no step."""
  from clu import periodic_actions
  process_count, process_index = jax.process_count(), jax.process_index()
  devices = jax.local_device_count()
  batch_size = config[BATCH_SIZE_OPTION[stage]]
  steps_per_epoch = -(-num_frames // batch_size)
  p_step = jax.pmap(stage_step(stage, AXIS), axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
  if stage == 'layers':
    p_batch = jax.pmap(input_pipeline.make_batch_fn(scale_jitter=True), in_axes=(0, 0, 0, None))
  else:
    p_batch = jax.pmap(lambda rng, f, idx, jitter: input_pipeline.upsampling_batch_fn(rng, f, idx, config.crop_size),
                       in_axes=(None, 0, 0, None))
  total_steps = (last - first + 1) * steps_per_epoch
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_secs=config.report_every_secs)
  hooks = [report]
  if config.profile and process_index == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  last_log, memory_checked = (time.time(), 0), False
  step_in_stage = (progress.epoch + 1 - first) * steps_per_epoch if progress.epoch >= first else 0
  for epoch in range(max(first, progress.epoch + 1), last + 1):
    schedule = update_schedule(progress.schedule, epoch, progress.last_mask_loss, config, first)
    weights = {k: jnp.float32(schedule[k]) for k in LOSS_WEIGHT_NAMES}
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
      if not memory_checked:  # compiled ahead of the first step (p_step reuses it) to check its memory
        _warn_if_too_large(config, stage, p_step.lower(state, batch, weights).compile(), frames_on_devices,
                           module.n_textures, batch_size // devices)
        memory_checked = True
      state, terms = p_step(state, batch, weights)
      step_in_stage += 1
      for hook in hooks:
        hook(step_in_stage)
      if step_in_stage % config.log_every_steps == 0 or step_in_stage == total_steps:
        now = time.time()
        rate = (step_in_stage - last_log[1]) / max(now - last_log[0], 1e-9)
        last_log = (now, step_in_stage)
        scalars = {f'loss/{k}': float(v) for k, v in first_replica(terms).items()}
        scalars.update({f'weights/{k}': v for k, v in schedule.items()})
        scalars.update({'learning_rate': config.lr, 'steps_per_sec': rate, 'frames_per_sec': rate * batch_size,
                        'epoch': epoch})
        _stop_if_not_finite(scalars, epoch, manager, workdir)
        writer.write_scalars(int(first_replica(state.step)), scalars)
    last_terms = first_replica(terms)
    _stop_if_not_finite({f'loss/{k}': float(v) for k, v in last_terms.items()}, epoch, manager, workdir)
    progress = dataclasses.replace(progress, epoch=epoch, schedule=schedule,
                                   last_mask_loss=float(last_terms['mask']) if 'mask' in last_terms else None)
    if epoch % config.image_every_epochs == 0 and process_index == 0:
      writer.write_images(int(first_replica(state.step)), _visuals(module, state, visual_frames))
    if epoch % config.checkpoint_every_epochs == 0 or epoch == last:
      _save(manager, state, progress)
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


def _stop_if_not_finite(scalars: Mapping[str, float], epoch: int, manager, workdir: str) -> None:
  bad = sorted(k for k, v in scalars.items() if k.startswith('loss/') and not np.isfinite(v))
  if bad:
    kept = manager.latest_step()
    kept = f'the last good checkpoint (epoch {kept}) is kept in {workdir}/checkpoints' if kept is not None \
        else 'no checkpoint had been written yet'
    raise FloatingPointError(f'{", ".join(bad)} became {scalars[bad[0]]} in epoch {epoch}; training stopped and '
                             f'{kept}. Lower --config.lr or check the data, then run again to resume.')
