"""Frames per second of one vid2vid training step on a chunk (G, D, temporal Ds: forward, backward, Adam), JAX vs PyTorch.

  python -m benchmarks.vid2vid_step                         # pose 256x192 (ngf 128) and a small CPU size, table
  python -m benchmarks.vid2vid_step --presets small --json  # one JSON object per line
  python -m benchmarks.vid2vid_step --dtype=bfloat16 --skip_torch   # accelerators

One step is what the reference does per chunk (vid2vid-spec section 5): the
generator makes `--frames` frames one after another (pose settings: 3, batch 1,
6 input channels, tG 3), then the image D (real, final and raw), the VGG19 loss,
the flow, warp and weight losses and both temporal Ds (with a full history of
earlier frames, so both see a group) give the losses, and Adam updates G, D and
each temporal D. Both sides start from the same weights (the PyTorch definition's,
tests/vid2vid_torch_reference.py, converted) on the same random inputs, and are
timed in alternating rounds in one process (benchmarks/timing.py). VGG19 has
random weights: its cost does not depend on them. With --skip_torch and no
PyTorch installed, JAX starts from its own initialisation.
"""

import argparse
import contextlib
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import (median_step_seconds, peak_tflops, print_row, speed_fields,  # noqa: E402
                               speed_header, xla_flops)
from layered_jax import hugepages, memory  # noqa: E402
from layered_jax.models import layers  # noqa: E402
from layered_jax.vid2vid import step as v2v  # noqa: E402

# Pose 256p (scripts/pose/train_256p.sh: ngf 128, input_nc 6, num_D 2, 3 frames per GPU), a size this CPU
# steps through in seconds (vid2vid-spec section 8's prototype size), and one for smoke tests.
PRESETS = {
    'pose256': dict(height=256, width=192, ngf=128, n_blocks=9, ndf=64),
    'small': dict(height=96, width=128, ngf=16, n_blocks=4, ndf=16),
    'tiny': dict(height=32, width=32, ngf=4, n_blocks=1, ndf=4),
}
COMPILER_OPTIONS = None  # XLA's defaults for the timed step (the smoke test turns its optimisations off)


def _xla_conv_padded(x, w, padding, stride=1, padding_mode='zeros'):
  """Conv2d as nn.Conv runs it: XLA's convolution and gradients (reflection padding done beforehand)."""
  if padding_mode == 'reflect':
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode='reflect')
    padding = 0
  return lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding), (padding, padding)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _xla_conv_transpose2x(x, w):
  """ConvTranspose2d(k, 2, padding 1, output_padding 4-k) as nn.ConvTranspose runs it: a dilated XLA convolution."""
  k = w.shape[0]
  return lax.conv_general_dilated(x, jnp.flip(w, (0, 1)), (1, 1), ((k - 2, 2),) * 2, lhs_dilation=(2, 2),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@contextlib.contextmanager
def xla_convolutions(enabled: bool):
  """Within: layered_jax's convolution layers use XLA's own convolutions (the plain nn.Conv/nn.ConvTranspose path)."""
  saved = layers.conv_padded, layers.conv_transpose2x
  if enabled:
    layers.conv_padded, layers.conv_transpose2x = _xla_conv_padded, _xla_conv_transpose2x
  try:
    yield
  finally:
    layers.conv_padded, layers.conv_transpose2x = saved


def options_for(preset: str, dtype: str, no_vgg: bool) -> v2v.Options:
  p = PRESETS[preset]
  return v2v.Options(input_nc=6, ngf=p['ngf'], n_blocks=p['n_blocks'], ndf=p['ndf'], num_D=2, n_frames_G=3,
                     n_frames_D=3, n_scales_temporal=2, no_first_img=True, no_vgg=no_vgg, dtype=dtype)


def random_chunk(rng: np.random.Generator, options: v2v.Options, batch: int, frames: int, height: int, width: int):
  """NCHW float32 arrays: inputs and frames [B, tG-1+T, C, H, W], flows and confidences [B, T, ...], history."""
  lead = options.n_frames_G - 1 + frames
  u = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
  chunk = {'inputs': u(batch, lead, options.input_nc, height, width), 'frames': u(batch, lead, 3, height, width),
           'flow': 3 * u(batch, frames, 2, height, width),
           'conf': (rng.uniform(size=(batch, frames, 1, height, width)) < 0.9).astype(np.float32)}
  history = {'real': u(batch, options.history, 3, height, width), 'fake': u(batch, options.history, 3, height, width),
             'flow': 3 * u(batch, options.history, 2, height, width)}
  return chunk, history


def torch_nets(options: v2v.Options):
  """The PyTorch definition's networks (tests/vid2vid_torch_reference.py) for these options."""
  from tests import vid2vid_torch_reference as ref
  o = options
  t_d = o.n_frames_D
  generator = ref.CompositeGenerator(o.input_nc * o.n_frames_G, 3 * (o.n_frames_G - 1), o.ngf, o.n_downsample_G,
                                     o.n_blocks)
  disc = ref.MultiscaleDiscriminator(o.input_nc + 3, o.ndf, o.n_layers_D, o.num_D)
  temporal = [ref.MultiscaleDiscriminator(3 * t_d + 2 * (t_d - 1), o.ndf, o.n_layers_D, o.num_D)
              for _ in range(o.n_scales_temporal)]
  return generator, disc, temporal, ref.VGG19()


def _nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(x, -3, -1))


def jax_stepper(nets, options: v2v.Options, chunk, history):
  """A blocking JAX step (jitted, state and carry donated), with XLA's FLOPs and planned bytes for it.

  Starts from the PyTorch nets' weights, or from a fresh init when nets is None.
  """
  from layered_jax import convert
  models = v2v.build_models(options)
  if nets is None:
    state = v2v.create_state(jax.random.PRNGKey(0), models, options)
    vgg_variables = None if options.no_vgg else jax.jit(models.vgg.init)(
        jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
  else:
    generator, disc, temporal, vgg = nets
    d_in = (jnp.zeros((1, 8, 8, options.input_nc + 3)),)
    t_in = (jnp.zeros((1, 8, 8, 3 * options.n_frames_D + 2 * (options.n_frames_D - 1))),)
    params = {'G': convert.generator_from_state_dicts([generator.state_dict()], ['G0'])[1]['params'],
              'D': convert.flax_from_torch_state(models.discriminator, disc.state_dict(), args=d_in)['params'],
              'D_T': tuple(convert.flax_from_torch_state(m, d.state_dict(), args=t_in)['params']
                           for m, d in zip(models.temporal, temporal))}
    vgg_variables = None if options.no_vgg else convert.flax_from_torch_state(
        models.vgg, vgg.state_dict(), ignored=convert._VGG19_UNUSED)
    state = v2v.create_state(jax.random.PRNGKey(0), models, options, params=params)
  batch = jax.device_put({k: _nhwc(v) for k, v in chunk.items()})
  carry = v2v.initial_carry(batch, options, models.generator)
  carry['history'] = jax.device_put({k: _nhwc(v) for k, v in history.items()})
  step = jax.jit(v2v.make_train_step(models, options), static_argnames='raw_only', donate_argnums=(0, 2))
  compiled = step.lower(state, batch, carry, vgg_variables).compile(compiler_options=COMPILER_OPTIONS)

  def run():
    nonlocal state, carry
    state, carry, terms = compiled(state, batch, carry, vgg_variables)
    jax.block_until_ready(terms)

  return run, xla_flops(compiled), memory.compiled_bytes(compiled)


def torch_stepper(nets, options: v2v.Options, chunk, history):
  """A blocking PyTorch step of the definition: the chunk's losses, then each network's backward and Adam step."""
  import torch
  from tests import vid2vid_torch_reference as ref
  torch.set_num_threads(os.cpu_count() or 1)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  generator, disc, temporal, vgg = nets
  for net in (generator, disc, vgg, *temporal):
    net.to(device)
  adam = lambda net: torch.optim.Adam(net.parameters(), lr=options.lr, betas=(options.beta1, 0.999))
  optimizers = [adam(generator), adam(disc)] + [adam(d) for d in temporal]
  batch = {k: torch.from_numpy(v).to(device) for k, v in chunk.items()}
  past = {k: torch.from_numpy(v).to(device) for k, v in history.items()}
  prev, last = batch['frames'][:, :options.n_frames_G - 1], batch['frames'][:, options.n_frames_G - 2]
  loss_opts = {'n_frames_G': options.n_frames_G, 'n_frames_D': options.n_frames_D, 'n_layers_D': options.n_layers_D,
               'num_D': options.num_D, 'lambda_feat': options.lambda_feat, 'lambda_F': options.lambda_F,
               'lambda_T': options.lambda_T, 'no_first_img': options.no_first_img}
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  if options.no_vgg:
    vgg = None

  def run():
    terms = ref.chunk_losses((generator, disc, temporal, vgg), batch, prev, last, past, loss_opts)
    names = ['loss_G', 'loss_D'] + [f'loss_D_T{s}' for s in range(len(temporal))]
    for name, optimizer in zip(names, optimizers):
      optimizer.zero_grad()
      terms[name].backward()
      optimizer.step()
    sync()

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--presets', nargs='+', default=['pose256', 'small'], choices=sorted(PRESETS))
  parser.add_argument('--frames', type=int, default=3, help='frames generated per chunk (per step)')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--steps', type=int, default=1, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3, help='alternating JAX/PyTorch rounds; the median round counts')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--no_vgg', action='store_true', help='leave the VGG19 loss out (on both sides)')
  parser.add_argument('--xla_convs', action='store_true',
                      help="time JAX with XLA's own convolutions (as plain nn.Conv/nn.ConvTranspose) instead of "
                      "layered_jax's sub-pixel and custom-gradient ones")
  parser.add_argument('--skip_torch', action='store_true')
  parser.add_argument('--json', action='store_true', help='one JSON object per configuration')
  args = parser.parse_args(argv)
  try:  # checked before the JAX step spends minutes compiling and running
    importlib.import_module('torch')
    have_torch = True
  except ImportError:
    have_torch = False
    if not args.skip_torch:
      parser.error('PyTorch is not installed (requirements.txt leaves it out): '
                   'pip install -r requirements-test.txt, or pass --skip_torch to time JAX alone')

  device = jax.devices()[0]
  peaks = peak_tflops(device.device_kind)
  if not args.json:
    print(f'device: {device.device_kind} ({jax.default_backend()}), batch {args.batch}, {args.frames} frames per '
          f'chunk, {args.dtype}' + (', no VGG' if args.no_vgg else '') + (", XLA's convolutions" if args.xla_convs else ''))
    print(f'{"preset":>8} {"HxW":^9} {"ngf":>4} {speed_header(peaks)}')
  rows = []
  for preset in args.presets:
    p = PRESETS[preset]
    options = options_for(preset, args.dtype, args.no_vgg)
    chunk, history = random_chunk(np.random.default_rng(0), options, args.batch, args.frames, p['height'], p['width'])
    nets = torch_nets(options) if have_torch else None  # both sides start from the same weights
    with xla_convolutions(args.xla_convs):  # traced and compiled inside
      jax_step, flops, planned_bytes = jax_stepper(nets, options, chunk, history)
    steppers = [jax_step] if args.skip_torch else [jax_step, torch_stepper(nets, options, chunk, history)]
    seconds = median_step_seconds(steppers, args.steps, args.rounds)
    frames = args.batch * args.frames
    row = {'preset': preset, 'height': p['height'], 'width': p['width'], 'ngf': p['ngf'], 'frames_per_step': frames,
           'dtype': args.dtype, 'vgg': not args.no_vgg, 'xla_convs': args.xla_convs, 'device': device.device_kind,
           **speed_fields(frames, seconds, flops, peaks), 'planned_memory_gib': planned_bytes / 2 ** 30}
    rows.append(row)
    print_row(row, f'{preset:>8} {p["height"]:>4}x{p["width"]:<4} {p["ngf"]:>4}', args.json)
  return rows


if __name__ == '__main__':
  hugepages.restart_with_huge_pages()
  main()
