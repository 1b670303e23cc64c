"""Measures one train step's peak memory on CPU in a fresh process, next to the planner's figure.

  python tests/memory_run.py LAYERS HEIGHT WIDTH NUM_FILTERS BATCH

Prints JSON: planned (memory.step_bytes) and measured, the bytes of the step's
argument arrays plus the growth of the process's peak resident memory while two
steps run (Linux: /proc/self/clear_refs resets the peak).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.train_step import LOSS_WEIGHTS, random_batch  # noqa: E402
from configs import default  # noqa: E402
from layered_jax import memory, train  # noqa: E402


def resident_bytes():
  status = dict(line.split(':', 1) for line in open('/proc/self/status'))
  return int(status['VmRSS'].split()[0]) * 1024, int(status['VmHWM'].split()[0]) * 1024


def main():
  num_layers, height, width, num_filters, batch_size = (int(a) for a in sys.argv[1:6])
  config = default.get_config()
  config.num_filters = num_filters
  n_textures = 24 * (num_layers - 1) + 1
  planned = memory.step_bytes(config, 'layers', n_textures, num_layers, width, height, batch_size)

  batch = jax.device_put(random_batch(np.random.default_rng(0), batch_size, num_layers, height, width))
  module = train.make_module(config, n_textures)
  state = train.create_train_state(jax.random.PRNGKey(0), module, batch, config.lr)
  weights = {k: jnp.float32(v) for k, v in LOSS_WEIGHTS.items()}
  step = jax.jit(train.train_step, donate_argnums=0).lower(state, batch, weights).compile()
  arguments = sum(x.nbytes for x in jax.tree_util.tree_leaves((state, batch, weights)) if hasattr(x, 'nbytes'))
  jax.block_until_ready((state, batch))
  before, _ = resident_bytes()
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
  for _ in range(2):
    state, terms = step(state, batch, weights)
    jax.block_until_ready(terms)
  _, peak = resident_bytes()
  print(json.dumps({'planned': planned, 'measured': arguments + peak - before}))


if __name__ == '__main__':
  main()
