"""Train a layered neural renderer on one video and export its layers.

  python -m layered_jax.main --config=configs/reflection.py --workdir=work/reflection
  python -m layered_jax.main --config=configs/demo.py --workdir=work/demo
  python -m layered_jax.main --config=configs/reflection.py --workdir=work/reflection --config.mode=export

Every config field can be overridden, e.g. --config.batch_size=16. Runs resume
from the workdir's latest checkpoint.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from layered_jax import distributed, evaluate, export, hugepages, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard metrics, the dataset and the export go here.')
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process run '
                    '(not needed on SLURM or Cloud TPU, which JAX detects).')
flags.DEFINE_integer('num_processes', None, 'Number of processes in a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index in a multi-process run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  # Resumed runs and exports reuse the compiled programs of earlier runs in this workdir.
  jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.abspath(FLAGS.workdir), 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.)
  if config.mode not in ('train', 'export', 'train_and_export'):
    raise app.UsageError(f"--config.mode={config.mode}: use 'train', 'export' or 'train_and_export'")
  if config.mode in ('train', 'train_and_export'):
    train.train_and_evaluate(config, FLAGS.workdir)
  if config.mode in ('export', 'train_and_export'):
    out = export.export(config, FLAGS.workdir)  # every process restores; process 0 writes
    if distributed.is_primary():
      _report(config, out)
    distributed.barrier('export done')  # the others wait, so no process shuts down early


def _report(config, out: str) -> None:
  logging.info('layers written to %s', out)
  print(f'layers written to {out} (open {out}/index.html)')
  if config.synthetic and not (config.export_high_res and config.do_upsampling):
    for layer, scores in evaluate.layer_scores(out, config.dataroot).items():
      print(f'layer {layer} against the ground truth: alpha IoU {scores["alpha_iou"]:.2f}, '
            f'shadow recall {scores["shadow_recall"]:.2f}')


if __name__ == '__main__':
  hugepages.restart_with_huge_pages()
  app.run(main)
