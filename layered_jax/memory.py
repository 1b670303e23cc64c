"""Accelerator memory per device: what a training stage needs, and the largest batch that fits.

  python -m layered_jax.memory --config=configs/reflection.py --memory_gb=16
  python -m layered_jax.memory --config=configs/reflection.py --layers=3 --size=448x256 --frames=120
  python -m layered_jax.memory --config=configs/vid2vid_pose.py --size=128x256 --memory_gb=80   (a vid2vid chunk)

The figures are XLA's own: the stage's train step is compiled for this
machine's backend at the run's shapes (abstract inputs, nothing is computed)
and its buffer assignment read: arguments + outputs - donated buffers +
temporaries. Each device also holds the whole video, since the input pipeline
keeps every frame on every device. Memory grows linearly with the per-device
batch, so a second compilation one frame larger gives the growth per frame and
with it the largest batch that fits. Run it on the kind of machine you will
train on: a CPU's buffer assignment differs from a GPU's.
"""

import argparse
import dataclasses
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from layered_jax import dataset, input_pipeline, train

Config = train.Config
GIB = 2 ** 30
# Share of a device's memory a plan may use: on CPU the measured peak runs 11-18% above XLA's figure
# (allocator and runtime overheads, tests/test_memory.py), and accelerators fragment too.
USABLE = 0.8


def compiled_bytes(compiled) -> int:
  """Device memory of one call of a compiled XLA program (per device for a pmapped one)."""
  stats = compiled.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
             + stats.temp_size_in_bytes)


def frame_shapes(num_frames: int, num_layers: int, width: int, height: int) -> Dict[str, jax.ShapeDtypeStruct]:
  """The video as dataset.load returns it (num_layers counts the background)."""
  return {name: jax.ShapeDtypeStruct((num_frames,) + shape, dtype)
          for name, (shape, dtype) in dataset.frame_features(num_layers, width, height).items()}


def video_bytes(frames: Dict[str, jax.ShapeDtypeStruct]) -> int:
  """What the training loop puts on every device: all frames' inputs and targets."""
  return sum(int(np.prod(frames[k].shape)) * np.dtype(frames[k].dtype).itemsize for k in train.DEVICE_FRAMES)


def _abstract_batch(config: Config, stage: str, frames, per_device_batch: int):
  indices = jax.ShapeDtypeStruct((per_device_batch,), jnp.int32)
  key = jax.eval_shape(jax.random.PRNGKey, 0)
  if stage == 'layers':
    keys = jax.eval_shape(lambda k: jax.random.split(k, per_device_batch), key)
    return jax.eval_shape(input_pipeline.make_batch_fn(), keys, frames, indices, jnp.float32(0))
  return jax.eval_shape(lambda r, f, i: input_pipeline.upsampling_batch_fn(r, f, i, config.crop_size),
                        key, frames, indices)


def step_bytes(config: Config, stage: str, n_textures: int, num_layers: int, width: int, height: int,
               per_device_batch: int) -> int:
  """Device memory of one train step of `stage` at a per-device batch, video excluded."""
  frames = frame_shapes(max(per_device_batch, 1), num_layers, width, height)
  batch = _abstract_batch(config, stage, frames, per_device_batch)
  module = train.make_module(config, n_textures)
  state = train.create_train_state(jax.random.PRNGKey(0), module, batch, config.lr, stage, abstract=True)
  weights = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in train.LOSS_WEIGHT_NAMES}
  return compiled_bytes(jax.jit(train.stage_step(stage), donate_argnums=0).lower(state, batch, weights).compile())


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """Memory of one stage on one device, in bytes."""
  stage: str
  per_device_batch: int
  step: int  # the train step at per_device_batch: state, gradients, batch, activations
  per_frame: int  # growth of `step` per extra frame in the per-device batch
  video: int  # the frames kept on every device

  def total(self, per_device_batch: Optional[int] = None) -> int:
    extra = 0 if per_device_batch is None else per_device_batch - self.per_device_batch
    return self.step + extra * self.per_frame + self.video

  def largest_batch(self, limit: int) -> int:
    """The largest per-device batch whose total fits in a device of `limit` bytes (0: not even one frame)."""
    room = int(USABLE * limit) - self.total(0)
    return max(0, room // self.per_frame) if self.per_frame > 0 else 0


def plan_stage(config: Config, stage: str, num_frames: int, n_textures: int, num_layers: int, width: int,
               height: int, per_device_batch: int) -> StagePlan:
  """Two compilations of the stage's step (at the batch and one frame more)."""
  sizes = [step_bytes(config, stage, n_textures, num_layers, width, height, b)
           for b in (per_device_batch, per_device_batch + 1)]
  video = video_bytes(frame_shapes(num_frames, num_layers, width, height))
  return StagePlan(stage, per_device_batch, sizes[0], sizes[1] - sizes[0], video)


def device_memory(device: Optional[jax.Device] = None) -> Optional[int]:
  """Bytes one device can hold: the accelerator's limit, or on CPU the machine's RAM over its local devices."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats()
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  if device.platform == 'cpu':
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // jax.local_device_count()
  return None


def too_large_message(plan: StagePlan, limit: int, batch_option: str, devices: int) -> Optional[str]:
  """None when the stage fits; else what it needs and what to change."""
  needed = plan.total()
  if needed <= USABLE * limit:
    return None
  largest = plan.largest_batch(limit)
  fix = (f'lower --config.{batch_option} to {largest * devices} or less (global, over {devices} devices)'
         if largest else 'not even one frame per device fits: use a smaller video or bfloat16')
  return (f'the {plan.stage} stage needs about {needed / GIB:.2f} GiB per device at {plan.per_device_batch} '
          f'frames per device (train step {plan.step / GIB:.2f} GiB, video {plan.video / GIB:.2f} GiB), '
          f'and a device holds {limit / GIB:.2f} GiB (plans keep {1 - USABLE:.0%} free); {fix}, add devices, '
          'or use --config.dtype=bfloat16.')


def _table(plans, limit: Optional[int]) -> str:
  rows = [('stage', 'batch/device', 'train step', 'per frame', 'video', 'total',
           'largest batch/device' if limit else '')]
  for p in plans:
    rows.append((p.stage, str(p.per_device_batch), f'{p.step / GIB:.2f} GiB', f'{p.per_frame / GIB:.3f} GiB',
                 f'{p.video / GIB:.2f} GiB', f'{p.total() / GIB:.2f} GiB',
                 str(p.largest_batch(limit)) if limit else ''))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _video_shape(config: Config, args) -> Dict[str, int]:
  """num_frames, num_layers, n_textures, width, height: from the flags, else the config's video folder."""
  shape = {}
  if config.dataroot and os.path.isdir(config.dataroot):
    from data_prep import video_folder
    video = video_folder.read_video_folder(config.dataroot)
    shape = {'num_frames': len(video.frame_names), 'num_layers': 1 + len(video.layer_ids),
             'n_textures': video.n_textures, 'width': video.size_lr[0], 'height': video.size_lr[1]}
  if args.frames:
    shape['num_frames'] = args.frames
  if args.layers:
    shape['num_layers'] = args.layers + 1
    shape['n_textures'] = 24 * args.layers + 1
  if args.size:
    shape['width'], shape['height'] = args.size
  missing = [k for k in ('num_frames', 'num_layers', 'width', 'height') if k not in shape]
  if missing:
    raise SystemExit(f'error: config.dataroot {config.dataroot!r} is not a video folder; '
                     'give --frames, --layers and --size')
  return shape


def main(argv=None):
  from data_prep.frames import parse_size
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='a configs/*.py file')
  parser.add_argument('--dataroot', help='the video folder (default: the config\'s)')
  parser.add_argument('--layers', type=int, help='person layers (the background is added); default: the video\'s')
  parser.add_argument('--size', type=parse_size, help='low-res WxH; default: the video\'s')
  parser.add_argument('--frames', type=int, help='frames in the video; default: the video\'s')
  parser.add_argument('--devices', type=int, default=None, help='devices the global batch splits over; '
                      'default: this machine\'s')
  parser.add_argument('--memory_gb', type=float, default=None, help='memory per device in GiB; '
                      'default: this machine\'s device')
  parser.add_argument('--batch_size', type=int, help='global batch of the layers stage (default: the config\'s)')
  parser.add_argument('--batch_size_upsample', type=int, help='global batch of the upsampling stage')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help='compute dtype (default: the config\'s)')
  args = parser.parse_args(argv)
  config = _load_config(args.config)
  if config.get('system') == 'vid2vid':
    if args.dtype:
      config.dtype = args.dtype
    if args.batch_size:
      config.batch_size = args.batch_size
    vid2vid_main(config, args)
    return
  for name in ('dataroot', 'batch_size', 'batch_size_upsample', 'dtype'):
    if getattr(args, name) is not None:
      config[name] = getattr(args, name)
  shape = _video_shape(config, args)
  devices = args.devices or jax.device_count()
  limit = int(args.memory_gb * GIB) if args.memory_gb else device_memory()
  stages = train.STAGES if config.do_upsampling else train.STAGES[:1]
  print(f'{shape["num_frames"]} frames of {shape["width"]}x{shape["height"]}, {shape["num_layers"]} layers '
        f'(background included), nf={config.num_filters}, {config.dtype}, {devices} devices, '
        f'{jax.default_backend()} buffer assignment; compiling...', flush=True)
  plans = []
  for stage in stages:
    batch = config[train.BATCH_SIZE_OPTION[stage]]
    if batch % devices:
      raise SystemExit(f'error: a global batch of {batch} does not split over {devices} devices')
    plans.append(plan_stage(config, stage, shape['num_frames'], shape['n_textures'], shape['num_layers'],
                            shape['width'], shape['height'], batch // devices))
  print(_table(plans, limit))
  if limit:
    for plan in plans:
      message = too_large_message(plan, limit, train.BATCH_SIZE_OPTION[plan.stage], devices)
      print(f'warning: {message}' if message else f'{plan.stage}: fits in {limit / GIB:.2f} GiB per device')


def vid2vid_chunk_bytes(config: Config, width: int, height: int, per_device_batch: int, input_nc: int) -> int:
  """XLA's figure for one vid2vid chunk step per device (config.max_frames_per_gpu frames of per_device_batch clips)."""
  from layered_jax import loop
  from layered_jax.vid2vid import step as v2v
  options = dataclasses.replace(v2v.Options.from_config(config), input_nc=input_nc,
                                no_vgg=config.no_vgg or not config.vgg19)
  models = v2v.build_models(options, loop.AXIS)
  t, t_g = config.max_frames_per_gpu, config.n_frames_G
  f32 = lambda *shape: jax.ShapeDtypeStruct((1, per_device_batch) + shape, jnp.float32)
  chunk = {'inputs': f32(t_g - 1 + t, height, width, input_nc), 'frames': f32(t_g - 1 + t, height, width, 3),
           'flow': f32(t, height, width, 2), 'conf': f32(t, height, width, 1)}
  chunk.update({f'flow_d{s}': f32(t, height, width, 2) for s in range(1, config.n_scales_temporal)})
  unbatched = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), chunk)
  carry = jax.eval_shape(lambda b: v2v.initial_carry(b, options, models.generator), unbatched)
  state = jax.eval_shape(lambda: v2v.create_state(jax.random.PRNGKey(0), models, options,
                                                  params=_abstract_params(models, options)))
  device = lambda tree: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((1,) + x.shape, x.dtype), tree)
  vgg = None
  if not options.no_vgg:
    vgg = device(jax.eval_shape(models.vgg.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  p_step = jax.pmap(v2v.make_train_step(models, options, loop.AXIS), axis_name=loop.AXIS,
                    in_axes=(0, 0, 0, None, None, None, None), donate_argnums=(0, 2), devices=jax.local_devices()[:1])
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  compiled = p_step.lower(device(state), chunk, device(carry), vgg, scalar(bool), scalar(jnp.float32),
                          scalar(bool)).compile()
  return compiled_bytes(compiled)


def _abstract_params(models, options):
  """The networks' parameters as zeros of the right shapes (create_state initialises them otherwise)."""
  o = options
  size = 2 ** (o.n_downsample_G + o.n_scales_spatial - 1)
  image_in = jnp.zeros((1, size, size, o.input_nc + o.output_nc))
  temporal_in = jnp.zeros((1, size, size, o.output_nc * o.n_frames_D + 2 * (o.n_frames_D - 1)))
  key = jax.random.PRNGKey(0)
  return {'G': models.generator.init(key, *models.generator.example_inputs())['params'],
          'D': models.discriminator.init(key, image_in)['params'],
          'D_T': tuple(d.init(key, temporal_in)['params'] for d in models.temporal)}


def vid2vid_main(config: Config, args) -> None:
  """Memory per device of a vid2vid config's chunk step, and the largest per-device batch that fits."""
  if args.size:
    width, height = args.size
  else:
    height = config.fineSize or 256
    width = height
  input_nc = config.input_nc or 6
  devices = args.devices or jax.device_count()
  limit = int(args.memory_gb * GIB) if args.memory_gb else device_memory()
  if config.batch_size % devices:
    raise SystemExit(f'error: a global batch of {config.batch_size} does not split over {devices} devices')
  batch = config.batch_size // devices
  print(f'vid2vid chunk of {config.max_frames_per_gpu} frames x {batch} clips per device, {width}x{height}, '
        f'input_nc {input_nc}, ngf {config.ngf}, {config.dtype}, {jax.default_backend()} buffer assignment; '
        'compiling...', flush=True)
  one = vid2vid_chunk_bytes(config, width, height, 1, input_nc)
  two = vid2vid_chunk_bytes(config, width, height, 2, input_nc)
  per_clip = max(two - one, 1)
  need = one + per_clip * (batch - 1)
  print(f'{need / GIB:.2f} GiB per device ({one / GIB:.2f} GiB with 1 clip, +{per_clip / GIB:.2f} GiB per clip)')
  if limit:
    largest = int((USABLE * limit - one) // per_clip) + 1
    verdict = 'fits' if need <= USABLE * limit else f'does not fit: use --config.batch_size={max(largest, 0) * devices}'
    print(f'{verdict} in {limit / GIB:.2f} GiB per device (at most {max(largest, 0)} clips per device)')


def _load_config(path: str) -> Config:
  import importlib.util
  if not os.path.isfile(path):
    raise SystemExit(f'error: no config file {path}')
  spec = importlib.util.spec_from_file_location('layered_jax_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


if __name__ == '__main__':
  main()
