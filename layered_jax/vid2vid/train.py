"""vid2vid's training loop (vid2vid-spec section 5): clips in chunks, one pmapped step per chunk, resumable.

Each epoch draws its clips from (seed, epoch) (input_pipeline.batches), n_frames_total(epoch) frames each: the
config's value doubled every niter_step epochs, capped at the shortest training clip. A clip is generated in
chunks of max_frames_per_gpu frames (per device; the global batch of clips is split over the devices): chunk c
feeds the labels and real frames of clip frames c*T .. c*T + tG-2 + T and generates frames tG-1 + c*T onwards;
the generator's previous outputs and the temporal discriminators' history are carried from chunk to chunk
(frames that do not fill a whole chunk at a clip's end are not generated). Every chunk of every clip runs the
same compiled program (compiled ahead of time: a shape that would need another one is an error, not a silent
recompile). The learning rate is constant for niter epochs then falls linearly to lr/niter_decay in the last one;
the first niter_fix_global epochs train only the finest generator scale.

Checkpoints are written at epoch ends (with the progress record: epoch, chunk steps), so a resumed run replays
exactly the epochs a run without the stop would have run.
"""

import dataclasses
import functools
import os
from typing import Any, Dict, Mapping, Tuple

import jax
import numpy as np

from layered_jax import errors, loop
from layered_jax.vid2vid import data, input_pipeline, losses, step

Config = Any
MODES = ('train', 'generate', 'train_and_generate')
FIELD_RULES = {
    **{name: loop.POSITIVE_INT for name in (
        'ngf', 'ndf', 'n_blocks', 'n_downsample_G', 'n_frames_G', 'n_frames_D', 'n_scales_spatial', 'num_D',
        'n_layers_D', 'niter', 'batch_size', 'max_frames_per_gpu', 'n_frames_total', 'max_t_step',
        'keep_checkpoints', 'checkpoint_every_epochs', 'log_every_steps', 'image_every_epochs')},
    **{name: loop.NON_NEGATIVE_INT for name in ('n_scales_temporal', 'niter_decay', 'niter_step', 'niter_fix_global',
                                                'input_nc', 'label_nc', 'fineSize', 'loadSize', 'n_blocks_local')},
    **{name: loop.NON_NEGATIVE for name in ('lambda_feat', 'lambda_F', 'lambda_T', 'lambda_multiscale_l1',
                                            'random_drop_prob')},
    **{name: loop.POSITIVE for name in ('lr', 'report_every_secs', 'fps')},
}
MODEL_SIZES = ('ngf', 'ndf', 'n_blocks', 'n_blocks_local', 'n_downsample_G', 'n_frames_G', 'n_frames_D',
               'n_scales_spatial', 'n_scales_temporal', 'num_D', 'n_layers_D', 'fg', 'no_flow', 'norm', 'TTUR')
STEP_KEYS = ('inputs', 'frames', 'flow', 'conf')  # and flow_d<s>


def check_config(config: Config) -> None:
  """Fails before any compute on settings that cannot work, naming the field and what to change."""
  loop.check_fields(config, FIELD_RULES)
  loop.check_choices(config, {'mode': MODES, 'dtype': ('float32', 'bfloat16'), 'norm': ('batch', 'instance')})
  if not config.dataroot and not config.synthetic:
    raise errors.ConfigError('config.dataroot is empty: pass --config.dataroot=DIR, a dataset built by '
                             'data_prep.vid2vid_build (its NAME/1.0.0 folder); configs/vid2vid_demo.py builds one')
  if config.beta1 < 0 or config.beta1 >= 1:
    raise errors.ConfigError(f'config.beta1={config.beta1} must be in [0, 1)')
  if not 0 <= config.random_drop_prob <= 1:
    raise errors.ConfigError(f'config.random_drop_prob={config.random_drop_prob} must be in [0, 1]')
  if config.fineSize % 32:
    raise errors.ConfigError(f'config.fineSize={config.fineSize} must be a multiple of 32 (0: the stored height)')
  loop.check_batch_split(config, ['batch_size'])


def dataset_dir(config: Config, workdir: str) -> str:
  """The dataset a run reads: config.dataroot, or the synthetic one built in WORKDIR/data."""
  if config.dataroot:
    return os.path.abspath(config.dataroot)
  return os.path.join(os.path.abspath(workdir), 'data', f'synthetic_{config.synthetic.mode}', '1.0.0')


def open_split(config: Config, workdir: str, split: str) -> data.ClipSet:
  path = dataset_dir(config, workdir)
  try:
    return data.open_clips(path, split)
  except (OSError, ValueError, KeyError) as error:
    raise errors.DataError(f'config.dataroot {path}: {errors.one_line(error)}; build it with '
                           'python -m data_prep.vid2vid_build (see the README)') from None


def clip_options(config: Config, n_frames_total: int) -> input_pipeline.ClipOptions:
  return input_pipeline.ClipOptions(
      n_frames_total=n_frames_total, max_t_step=config.max_t_step, n_frames_D=config.n_frames_D,
      # The step reads the consecutive flows even without temporal discriminators (its warp losses).
      n_scales_temporal=max(config.n_scales_temporal, 1), fine_size=config.fineSize, load_size=config.loadSize,
      center_crop=config.center_crop, flip=config.flip, random_drop_prob=config.random_drop_prob,
      use_instance=config.use_instance)


def options_for(config: Config, metadata: Mapping) -> step.Options:
  """The step's options, input_nc and fg_labels from the dataset where the config leaves them open."""
  try:
    input_nc = input_pipeline.input_channels(metadata, clip_options(config, config.n_frames_total))
  except ValueError as error:
    raise errors.ConfigError(str(error)) from None
  if config.input_nc and config.input_nc != input_nc:
    raise errors.ConfigError(f'config.input_nc={config.input_nc} but the {metadata["mode"]} dataset gives '
                             f'{input_nc} channels; set --config.input_nc={input_nc} (or 0: from the dataset)')
  if metadata['mode'] == 'labels' and config.label_nc and config.label_nc != metadata['label_nc']:
    raise errors.ConfigError(f'config.label_nc={config.label_nc} but the dataset has {metadata["label_nc"]} '
                             'classes; set it to that (or 0: from the dataset)')
  options = step.Options.from_config(config)
  fg_labels = tuple(metadata.get('fg_labels') or ()) if config.fg else options.fg_labels
  if config.fg and metadata['mode'] != 'labels':
    raise errors.ConfigError(f'config.fg needs label maps (its foreground is a set of classes); this dataset is '
                             f'{metadata["mode"]}: set --config.fg=False')
  no_vgg = options.no_vgg or not config.vgg19
  return dataclasses.replace(options, input_nc=input_nc, fg_labels=fg_labels, no_vgg=no_vgg)


def check_dataset(config: Config, clips: data.ClipSet) -> None:
  """The dataset serves the clips the config asks for: spacings, lengths, sizes."""
  meta = clips.metadata
  needed = data.flow_spacings(config.max_t_step, config.n_frames_D, max(config.n_scales_temporal, 1))
  missing = sorted(set(needed) - set(meta['spacings']))
  if missing:
    raise errors.ConfigError(
        f'{clips.directory} has flows {meta["spacings"]} frames apart; max_t_step={config.max_t_step}, '
        f'n_frames_D={config.n_frames_D}, n_scales_temporal={config.n_scales_temporal} need {missing} too: lower '
        'them or rebuild the dataset with those options')
  shortest = min(clips.clip_lengths)
  if shortest < config.n_frames_G - 1 + config.max_frames_per_gpu:
    raise errors.ConfigError(f'the shortest clip of {clips.directory} has {shortest} frames; one chunk needs '
                             f'n_frames_G - 1 + max_frames_per_gpu = {config.n_frames_G - 1 + config.max_frames_per_gpu}')
  try:
    input_pipeline.output_size(clips.size, clip_options(config, config.n_frames_total))
  except ValueError as error:
    raise errors.ConfigError(f'config.fineSize / center_crop: {error}') from None


# --- The schedule (1-based epochs). ---

def n_epochs(config: Config) -> int:
  return config.niter + config.niter_decay


def frames_in_epoch(config: Config, epoch: int, shortest_clip: int) -> int:
  """n_frames_total of `epoch`: doubled every niter_step epochs, at most the shortest clip."""
  doublings = (epoch - 1) // config.niter_step if config.niter_step else 0
  return min(config.n_frames_total * 2 ** doublings, shortest_clip)


def lr_scale(config: Config, epoch: int) -> float:
  """The learning rate of `epoch` / lr: 1 for niter epochs, then 1 - k / niter_decay in decay epoch k + 1."""
  if epoch <= config.niter or not config.niter_decay:
    return 1.
  return 1. - (epoch - config.niter - 1) / config.niter_decay


def chunks_per_clip(config: Config, n_frames_total: int) -> int:
  return (n_frames_total - (config.n_frames_G - 1)) // config.max_frames_per_gpu


@dataclasses.dataclass
class Progress:
  """What a checkpoint holds besides the train state (and the identity of what it was trained on)."""
  epoch: int  # the last completed epoch; 0 before training
  chunks: int  # chunk steps run so far
  n_frames_total: int  # that epoch's clip length


def run_identity(config: Config, clips: data.ClipSet, options: step.Options) -> Dict[str, Any]:
  """What a workdir's checkpoints are trained on: the dataset and the model's sizes."""
  meta = clips.metadata
  return {'dataset': clips.directory, 'mode': meta['mode'], 'clips': meta['clips']['train'],
          'input_nc': options.input_nc, **{name: options.__dict__[name] for name in MODEL_SIZES}}


# --- Pieces the loop pmaps. ---

@functools.lru_cache(maxsize=None)
def _chunk_slicer(t_g: int, t: int, devices: Tuple[jax.Device, ...]):
  """batch [dev, B, N, ...], chunk index -> the chunk's step inputs (recompiled only when N changes)."""

  def take(batch, c):
    start = c * t
    out = {}
    for key, value in batch.items():
      if key in ('inputs', 'frames'):
        out[key] = jax.lax.dynamic_slice_in_dim(value, start, t_g - 1 + t, axis=1)
      elif key in ('flow', 'conf') or key.startswith('flow_d'):
        out[key] = jax.lax.dynamic_slice_in_dim(value, start + t_g - 1, t, axis=1)
    return out

  return jax.pmap(take, in_axes=(0, None), devices=devices)


def make_pmapped_step(models: step.Models, options: step.Options, devices):
  """The chunk step under pmap; the state and the carry are donated."""
  return jax.pmap(step.make_train_step(models, options, loop.AXIS), axis_name=loop.AXIS,
                  in_axes=(0, 0, 0, None, None, None, None), donate_argnums=(0, 2), devices=devices)


def initial_state(config: Config, models: step.Models, options: step.Options) -> step.State:
  params = None
  if config.init_checkpoint:
    from layered_jax import convert
    generator, variables = convert.load(config.init_checkpoint)
    params_g = variables['params']
    fresh = step.create_state(jax.random.PRNGKey(config.seed), models, options)
    if jax.tree_util.tree_structure(params_g) != jax.tree_util.tree_structure(fresh.params['G']):
      raise errors.ConfigError(f'config.init_checkpoint {config.init_checkpoint} is a generator of other sizes than '
                               'the config\'s (ngf, n_blocks, n_downsample_G, n_frames_G, input_nc ...): match them')
    params = {**fresh.params, 'G': params_g}
  return step.create_state(jax.random.PRNGKey(config.seed), models, options, params=params)


def _scalars(terms: Mapping[str, Any]) -> Dict[str, float]:
  """A step's terms on the host: the networks' losses as loss/NAME, their terms as terms/NAME."""
  host = loop.first_replica(terms)
  return {(f'loss/{k[5:]}' if k.startswith('loss_') else f'terms/{k}'): float(v) for k, v in host.items()}


def train_and_evaluate(config: Config, workdir: str) -> step.State:
  """Trains for niter + niter_decay epochs, resuming from workdir; returns the final state (host, unreplicated)."""
  check_config(config)
  clips = open_split(config, workdir, 'train')
  check_dataset(config, clips)
  options = options_for(config, clips.metadata)
  vgg_variables = None
  if not options.no_vgg:
    from layered_jax import convert
    vgg_variables = convert.load(losses.vgg_weights_path(config.vgg19))[1]
  devices = jax.local_devices()
  models = step.build_models(options, loop.AXIS)
  checkpoints = loop.Checkpoints(workdir, config.keep_checkpoints, run_identity(config, clips, options))
  state = initial_state(config, models, options)  # also the restore target
  restored = checkpoints.restore(lambda record: state)
  if restored is not None:
    state, record = restored
    progress = Progress(**record)
    if jax.process_index() == 0:
      print(f'resuming from epoch {progress.epoch} ({progress.chunks} chunk steps)', flush=True)
  else:
    progress = Progress(0, 0, frames_in_epoch(config, 1, min(clips.clip_lengths)))
  last = n_epochs(config)
  if progress.epoch >= last:
    return state
  return loop_epochs(config, workdir, clips, models, options, state, progress, checkpoints, vgg_variables, devices)


def loop_epochs(config, workdir, clips, models, options, state, progress, checkpoints, vgg_variables, devices):
  """Epochs progress.epoch + 1 .. niter + niter_decay."""
  last, shortest = n_epochs(config), min(clips.clip_lengths)
  t, t_g = config.max_frames_per_gpu, config.n_frames_G
  writer = loop.metric_writer(workdir)
  p_step = make_pmapped_step(models, options, devices)
  p_init = jax.pmap(lambda b: step.initial_carry(b, options, models.generator), devices=devices)
  state = loop.replicate(state, devices)
  vgg = loop.replicate(vgg_variables, devices) if vgg_variables is not None else None

  def chunk_steps(epoch):
    n = frames_in_epoch(config, epoch, shortest)
    samples = input_pipeline.epoch_samples(clips.clip_lengths, n, config.max_t_step, config.batch_size,
                                           config.seed, epoch)
    return len(samples) * chunks_per_clip(config, n)

  total = sum(chunk_steps(e) for e in range(progress.epoch + 1, last + 1))
  compiled, done, start = None, 0, progress.chunks
  log = loop.StepLog(loop.Reporter('vid2vid', total, config.report_every_secs), loop.DivergenceWatch('loss/G'),
                     writer, checkpoints, _scalars, config.batch_size * t, start)
  for epoch in range(progress.epoch + 1, last + 1):
    where = f'epoch {epoch}/{last}'
    n = frames_in_epoch(config, epoch, shortest)
    scale = np.float32(lr_scale(config, epoch))
    extra = {'learning_rate': config.lr * float(scale), 'epoch': epoch, 'n_frames_total': n}
    fix_global = np.bool_(epoch <= config.niter_fix_global)
    take = _chunk_slicer(t_g, t, tuple(devices))
    terms = None
    for batch in input_pipeline.batches(clips, clip_options(config, n), config.batch_size, config.seed, epoch,
                                        devices):
      for c in range(chunks_per_clip(config, n)):
        chunk = take(batch, np.int32(c))
        if c == 0:
          carry = p_init(chunk)
        raw_only = np.bool_(c == 0 and options.no_first_img)
        args = (state, chunk, carry, vgg, raw_only, scale, fix_global)
        if compiled is None:
          log.reporter.compiling()
          compiled = p_step.lower(*args).compile()
        state, carry, terms = compiled(*args)
        done += 1
        log(done, (start + done) % config.log_every_steps == 0, terms, where, extra, lambda: start + done)
    if terms is not None:
      loop.stop_if_not_finite(_scalars(terms), where, checkpoints)
    progress = Progress(epoch, start + done, n)
    if epoch % config.image_every_epochs == 0 and jax.process_index() == 0:
      _write_visuals(config, workdir, writer, models, options, loop.first_replica(state.params['G']),
                     progress.chunks)
    if epoch % config.checkpoint_every_epochs == 0 or epoch == last:
      checkpoints.save(epoch, loop.first_replica(state), progress)
  writer.flush()
  return loop.first_replica(state)


def _write_visuals(config, workdir, writer, models, options, params_g, step_count: int) -> None:
  """Labels, generated, real, flow and occlusion weight of the first frames of a clip, to TensorBoard."""
  from layered_jax.vid2vid import generate
  clips = _visual_clips(config, workdir)
  clip = input_pipeline.eval_clip(clips, 0, clip_options(config, config.n_frames_total))
  clip = jax.tree_util.tree_map(lambda x: x[:min(x.shape[0], config.n_frames_G + 3)] if np.ndim(x) else x, clip)
  out = generate.render(models.generator, params_g, options, clip)
  writer.write_images(step_count, generate.visuals(clips.mode, clip, out))


@functools.lru_cache(maxsize=4)
def _visual_clips_cached(path: str, split: str) -> data.ClipSet:
  return data.open_clips(path, split)


def _visual_clips(config, workdir) -> data.ClipSet:
  path = dataset_dir(config, workdir)
  meta_splits = _visual_clips_cached(path, 'train').metadata['clips']
  return _visual_clips_cached(path, 'test' if 'test' in meta_splits else 'train')
