"""Trains a tiny config in a fresh process (tests set the device count with XLA_FLAGS first).

  python tests/train_run.py WORKDIR VIDEO DATA_DIR OUT.npz [config overrides as key=value ...]

With COORDINATOR, NUM_PROCESSES and PROCESS_ID in the environment it joins a multi-process run
and writes OUT.npz with the process index before the suffix.

Saves the final step, the reconstruction of two fixed frames, a BatchNorm running mean and an
upsampler kernel, for comparison across device counts.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from data_prep import prepare  # noqa: E402
from layered_jax import dataset, distributed, train  # noqa: E402
from tests.test_train import tiny_config  # noqa: E402


def main():
  workdir, video, data_dir, out = sys.argv[1:5]
  if 'COORDINATOR' in os.environ:
    distributed.initialize(os.environ['COORDINATOR'], int(os.environ['NUM_PROCESSES']),
                           int(os.environ['PROCESS_ID']))
    out = out.replace('.npz', f'.{jax.process_index()}.npz')
  config = tiny_config(video, data_dir)
  for item in sys.argv[5:]:
    key, value = item.split('=')
    config[key] = type(config[key])(value)
  prepare.prepare_dataset(config, workdir)  # as main does: process 0 builds, the others wait
  distributed.barrier('dataset ready')
  state = train.train_and_evaluate(config, workdir)
  frames, meta = dataset.load(dataset.location(config, workdir))
  module = train.make_module(config, int(meta['n_textures']))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  out_lr = jax.jit(module.apply)(variables, frames['uv'][:2], frames['pids'][:2])
  leaves = jax.tree_util.tree_leaves(state.params)
  np.savez(out, devices=jax.device_count(), processes=jax.process_count(), step=int(state.step),
           params_digest=np.array([np.asarray(leaf, np.float64).sum() for leaf in leaves]),
           reconstruction=np.asarray(out_lr['reconstruction']),
           running_mean=np.asarray(state.batch_stats['unet']['encoder_1']['norm']['mean']),
           upsampler=np.asarray(state.params['upsampler']['upsample_block_4']['conv']['kernel']))


if __name__ == '__main__':
  main()
