"""Train-step throughput against the number of devices, at a fixed batch per device (weak scaling).

  python -m benchmarks.scaling                           # every power of two up to this machine's devices
  python -m benchmarks.scaling --devices 1 2 4 8 --json
  python -m benchmarks.scaling --fake_cpu_devices=4 --height=64 --width=128 --num_filters=8
  python -m benchmarks.scaling --system=vid2vid --preset=pose256 --frames=3   # vid2vid chunk steps

Runs the pmapped low-resolution train step (forward, backward, cross-device
means of gradients and BatchNorm statistics, Adam) on the first N local
devices (--system=vid2vid: the vid2vid chunk step of layered_jax.vid2vid.train, with a
benchmarks.vid2vid_step preset's sizes, `frames` generated frames per clip). Efficiency is frames/s over N times the first row's frames/s per device. Fake CPU
devices share the machine's cores, so they exercise the code path, not speed.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from layered_jax import hugepages  # noqa: E402  (imports no jax, so fake devices can still be set up)


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--devices', type=int, nargs='+', help='device counts (default: powers of two up to all)')
  parser.add_argument('--per_device_batch', type=int, default=1)
  parser.add_argument('--layers', type=int, default=3, help='layers per frame, background included')
  parser.add_argument('--height', type=int, default=256)
  parser.add_argument('--width', type=int, default=448)
  parser.add_argument('--num_filters', type=int, default=64)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--steps', type=int, default=5, help='timed steps after one warm-up step')
  parser.add_argument('--fake_cpu_devices', type=int, default=0, help='run on this many CPU devices instead')
  parser.add_argument('--json', action='store_true', help='one JSON object per device count')
  parser.add_argument('--system', default='layers', choices=['layers', 'vid2vid'])
  parser.add_argument('--preset', default='pose256', help='vid2vid: a benchmarks.vid2vid_step preset')
  parser.add_argument('--frames', type=int, default=3, help='vid2vid: frames per chunk (max_frames_per_gpu)')
  return parser.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  if args.fake_cpu_devices:  # must precede the first import of jax
    os.environ['JAX_PLATFORMS'] = 'cpu'
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + f' --xla_force_host_platform_device_count={args.fake_cpu_devices}')
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks.train_step import LOSS_WEIGHTS, random_batch
  from layered_jax import loop, train
  from layered_jax.models import LayeredNeuralRenderer

  available = jax.local_devices()
  counts = args.devices or [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= len(available)]
  if max(counts) > len(available):
    raise SystemExit(f'error: {max(counts)} devices asked for, this machine has {len(available)} '
                     f'({available[0].device_kind}); use --fake_cpu_devices to try more on a CPU')
  if args.system == 'vid2vid':
    make_step, state, batch, extra, frames_per_example = _vid2vid(args, jax, np, loop)
  else:
    batch = random_batch(np.random.default_rng(0), args.per_device_batch, args.layers, args.height, args.width)
    module = LayeredNeuralRenderer(n_textures=24 * (args.layers - 1) + 1, num_filters=args.num_filters,
                                   axis_name=loop.AXIS, dtype=jnp.dtype(args.dtype))
    state = train.create_train_state(jax.random.PRNGKey(0), module, batch, 1e-3)
    extra = ({k: jnp.float32(v) for k, v in LOSS_WEIGHTS.items()},)
    make_step, frames_per_example = lambda devices: train.pmapped_step('layers', devices), 1
  if not args.json:
    what = f'vid2vid {args.preset}, {args.frames} frames per clip' if args.system == 'vid2vid' else \
        f'{args.height}x{args.width}, {args.layers} layers, nf={args.num_filters}'
    print(f'{available[0].device_kind} ({jax.default_backend()}), {what}, {args.dtype}, {args.per_device_batch} '
          f'{"clips" if args.system == "vid2vid" else "frames"} per device')
    print(f'{"devices":>7} {"global batch":>12} {"steps/s":>8} {"frames/s":>9} {"efficiency":>10}')
  rows, per_device = [], None
  for count in counts:
    devices = available[:count]
    step = make_step(devices)
    replicated, device_batch = loop.replicate(state, devices), loop.replicate(batch, devices)
    if args.system == 'vid2vid':  # the carry is donated: a fresh one per call
      run = lambda r: step(r, device_batch, loop.replicate(extra[0], devices), *extra[1:])[::2]
    else:
      run = lambda r: step(r, device_batch, *extra)
    replicated, terms = run(replicated)  # compile and warm up
    jax.block_until_ready(terms)
    start = time.perf_counter()
    for _ in range(args.steps):
      replicated, terms = run(replicated)
    jax.block_until_ready(terms)
    steps_per_sec = args.steps / (time.perf_counter() - start)
    frames_per_sec = steps_per_sec * args.per_device_batch * count * frames_per_example
    per_device = per_device or frames_per_sec / count  # of the first (smallest) count
    row = {'devices': count, 'device_kind': available[0].device_kind, 'global_batch': args.per_device_batch * count,
           'steps_per_sec': steps_per_sec, 'frames_per_sec': frames_per_sec,
           'efficiency': frames_per_sec / (count * per_device), 'height': args.height, 'width': args.width,
           'layers': args.layers, 'dtype': args.dtype}
    rows.append(row)
    if args.json:
      print(json.dumps(row), flush=True)
    else:
      print(f'{count:>7} {row["global_batch"]:>12} {steps_per_sec:>8.3f} {frames_per_sec:>9.3f} '
            f'{row["efficiency"]:>10.2f}', flush=True)
  return rows


def _vid2vid(args, jax, np, loop):
  """(make_step(devices), state, one device's chunk, (carry, vgg, raw_only, lr_scale, fix_global), frames per clip)."""
  from benchmarks.vid2vid_step import PRESETS, options_for
  from layered_jax.vid2vid import step as v2v, train as v2v_train
  options = options_for(args.preset, args.dtype, True)
  size = PRESETS[args.preset]
  models = v2v.build_models(options, loop.AXIS)
  rng = np.random.default_rng(0)
  lead, t, b, h, w = options.n_frames_G - 1 + args.frames, args.frames, args.per_device_batch, size['height'], \
      size['width']
  u = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
  chunk = {'inputs': u(b, lead, h, w, options.input_nc), 'frames': u(b, lead, h, w, 3), 'flow': 3 * u(b, t, h, w, 2),
           'conf': np.ones((b, t, h, w, 1), np.float32), 'flow_d1': 3 * u(b, t, h, w, 2)}
  carry = jax.tree_util.tree_map(np.asarray, v2v.initial_carry(chunk, options, models.generator))
  carry['count'] = np.int32(options.history)  # a later chunk: every temporal group runs
  state = v2v.create_state(jax.random.PRNGKey(0), models, options)
  make_step = lambda devices: v2v_train.make_pmapped_step(models, options, devices)
  return make_step, state, chunk, (carry, None, np.bool_(False), np.float32(1), np.bool_(False)), args.frames


if __name__ == '__main__':
  hugepages.restart_with_huge_pages()
  main()
