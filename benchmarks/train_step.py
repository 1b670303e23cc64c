"""Frames per second of one full train step (forward, backward, Adam), JAX against PyTorch.

  python -m benchmarks.train_step                      # 256x448, 2 and 4 layers, table
  python -m benchmarks.train_step --json               # one JSON object per line
  python -m benchmarks.train_step --dtype=bfloat16 --skip_torch   # accelerators
  python -m benchmarks.train_step --layers 3 --height 64 --width 128 --batch_size 8   # the quality runs' step

Both sides run the reference network (nf=64, 16-channel texture, 24 textures
per person) at batch 1 (or --batch_size) on the same random inputs, in one process (so both get
malloc on huge pages, see layered_jax/hugepages.py), timed in alternating
rounds whose median counts, so that a shared machine's drifting speed does not
favour either side. FLOPs per step come from XLA's cost analysis (the spec
quotes 148 GFLOP per frame at 2 layers). The JSON also holds the memory
planner's figure for the JAX step (XLA's buffer assignment) and, on
accelerators, the device's measured peak, to check one against the other.
"""

import argparse
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import (median_step_seconds, peak_tflops, print_row, speed_fields,  # noqa: E402
                               speed_header, xla_flops)
from layered_jax import hugepages, memory, train  # noqa: E402
from layered_jax.models import LayeredNeuralRenderer  # noqa: E402

LOSS_WEIGHTS = {'lambda_alpha_l1': 0.01, 'lambda_alpha_l0': 0.005, 'lambda_mask': 50.}


def random_batch(rng: np.random.Generator, batch_size: int, num_layers: int, height: int, width: int):
  shape = (batch_size, num_layers, height, width)
  return {
      'uv': rng.uniform(-1, 1, shape + (2,)).astype(np.float32),
      'pids': rng.integers(0, num_layers, shape).astype(np.float32),
      'trimap': rng.integers(-1, 2, shape).astype(np.float32),
      'rgb': rng.uniform(-1, 1, (batch_size, height, width, 3)).astype(np.float32),
  }


def jax_stepper(batch, num_filters: int, dtype: str):
  """A blocking JAX train step on `batch`, with XLA's FLOPs and planned bytes for it."""
  num_layers = batch['uv'].shape[1]
  module = LayeredNeuralRenderer(n_textures=24 * (num_layers - 1) + 1, num_filters=num_filters,
                                 dtype=jnp.dtype(dtype))
  batch = jax.device_put(batch)
  state = train.create_train_state(jax.random.PRNGKey(0), module, batch, 1e-3)
  step = jax.jit(train.train_step, donate_argnums=0)
  weights = jax.device_put(LOSS_WEIGHTS)
  compiled = step.lower(state, batch, weights).compile()
  flops = xla_flops(compiled)

  def run():
    nonlocal state
    state, terms = step(state, batch, weights)
    jax.block_until_ready(terms)

  return run, flops, memory.compiled_bytes(compiled)


def torch_stepper(batch, num_filters: int):
  """A blocking PyTorch train step of the reference definition (tests/torch_reference.py) on `batch`."""
  import torch
  from tests.torch_reference import TorchLNR, reconstruction_losses
  torch.set_num_threads(os.cpu_count() or 1)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  b, num_layers, h, w, _ = batch['uv'].shape
  net = TorchLNR(nf=num_filters, n_textures=24 * (num_layers - 1) + 1).to(device)
  optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
  uv = torch.from_numpy(batch['uv'].transpose(0, 1, 4, 2, 3).reshape(b, 2 * num_layers, h, w)).to(device)
  pids = torch.from_numpy(batch['pids']).to(device)
  trimap = torch.from_numpy(batch['trimap']).to(device)
  rgb = torch.from_numpy(batch['rgb'].transpose(0, 3, 1, 2).copy()).to(device)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

  def run():
    optimizer.zero_grad()
    total, *_ = reconstruction_losses(net(uv, pids), rgb, trimap)
    total.backward()
    optimizer.step()
    sync()

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--layers', type=int, nargs='+', default=[2, 4], help='layers per frame, background included')
  parser.add_argument('--height', type=int, default=256)
  parser.add_argument('--width', type=int, default=448)
  parser.add_argument('--num_filters', type=int, default=64)
  parser.add_argument('--batch_size', type=int, default=1, help='frames per step (the quality benchmark trains at 8)')
  parser.add_argument('--steps', type=int, default=2, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3, help='alternating JAX/PyTorch rounds; the median round counts')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--skip_torch', action='store_true')
  parser.add_argument('--json', action='store_true', help='one JSON object per configuration')
  args = parser.parse_args(argv)
  if not args.skip_torch:
    try:  # checked before the JAX step spends minutes compiling and running
      importlib.import_module('torch')
    except ImportError:
      parser.error('PyTorch is not installed (requirements.txt leaves it out): '
                   'pip install -r requirements-test.txt, or pass --skip_torch to time JAX alone')

  device = jax.devices()[0]
  peaks = peak_tflops(device.device_kind)
  if not args.json:
    print(f'device: {device.device_kind} ({jax.default_backend()}), {args.height}x{args.width}, '
          f'batch {args.batch_size}, nf={args.num_filters}, {args.dtype}')
    print(f'{"layers":>6} {speed_header(peaks)}')
  rows = []
  for num_layers in args.layers:
    batch = random_batch(np.random.default_rng(0), args.batch_size, num_layers, args.height, args.width)
    jax_step, flops, planned_bytes = jax_stepper(batch, args.num_filters, args.dtype)
    steppers = [jax_step] if args.skip_torch else [jax_step, torch_stepper(batch, args.num_filters)]
    seconds = median_step_seconds(steppers, args.steps, args.rounds)
    peak_bytes = (device.memory_stats() or {}).get('peak_bytes_in_use')
    row = {'layers': num_layers, 'height': args.height, 'width': args.width, 'dtype': args.dtype,
           'device': device.device_kind, 'batch_size': args.batch_size, **speed_fields(args.batch_size, seconds, flops, peaks),
           'planned_memory_gib': planned_bytes / 2 ** 30,
           'peak_memory_gib': None if peak_bytes is None else peak_bytes / 2 ** 30}
    rows.append(row)
    print_row(row, f'{num_layers:>6}', args.json)
  return rows


if __name__ == '__main__':
  hugepages.restart_with_huge_pages()
  main()
