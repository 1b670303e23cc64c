"""Train a layered neural renderer on one video and export its layers, or train and run vid2vid.

  python -m layered_jax.main --config=configs/reflection.py --workdir=work/reflection
  python -m layered_jax.main --config=configs/demo.py --workdir=work/demo
  python -m layered_jax.main --config=configs/reflection.py --workdir=work/reflection --config.mode=export
  python -m layered_jax.main --config=configs/vid2vid_demo.py --workdir=work/vid2vid_demo   (vid2vid: the config
      says config.system='vid2vid'; --config.mode=generate renders the held-out clips)

Every config field can be overridden, e.g. --config.batch_size=16. Runs resume
from the workdir's latest checkpoint. The dataset is built into the workdir
(data_prep.prepare) before training or exporting, and checked on later runs.
A problem the user must fix is one `error:` line with exit status 2
(--traceback adds the traceback); --verbosity=0 shows the libraries' logs.
Compiled programs are cached in WORKDIR/jax_cache unless JAX_COMPILATION_CACHE_DIR is set.
"""

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from data_prep import prepare
from layered_jax import distributed, errors, evaluate, export, hugepages, loop, train
from layered_jax.vid2vid import run as vid2vid_run, train as vid2vid_train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard metrics, the dataset and the export go here.')
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process run '
                    '(not needed on SLURM or Cloud TPU, which JAX detects).')
flags.DEFINE_integer('num_processes', None, 'Number of processes in a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index in a multi-process run.')
flags.DEFINE_bool('traceback', False, 'On an error, print its traceback before the one-line message.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's flag parsing; a bad flag, config file or config override is one `error:` line (exit status 2)."""
  with errors.reported():
    try:
      argv = FLAGS(argv)
      FLAGS.config  # loads the config file, applying the overrides
    except flags.Error as error:
      raise errors.ConfigError(str(error)) from None
    except OSError as error:
      raise errors.ConfigError(f'--config: {error}') from None
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # ml_collections: an unknown field, a bad value
      text = str(error).replace('\\n', ' ').replace("\\'", "'").strip('\'"')
      raise errors.ConfigError(f'a --config override does not fit the config: {text}') from None
  return argv


def main(argv):
  with errors.reported(FLAGS.traceback, last_words=True):
    if len(argv) > 1:
      raise errors.ConfigError(f'unexpected arguments {argv[1:]}; flags look like --workdir=DIR')
    run(FLAGS.config, FLAGS.workdir)


def run(config, workdir: str) -> None:
  loop.quiet_logging(verbose=FLAGS['verbosity'].present)
  system = config.get('system', 'layers')
  if system not in ('layers', 'vid2vid'):
    raise errors.ConfigError(f"config.system={system!r}: use 'layers' or 'vid2vid'")
  # First, as JAX requires: the config checks count the devices of every process.
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  check = vid2vid_train.check_config if system == 'vid2vid' else train.check_config
  check(config)  # before any file is written or anything compiled
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    # Resumed runs and exports reuse the compiled programs of earlier runs in this workdir.
    jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.abspath(workdir), 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.)
  if system == 'vid2vid':
    vid2vid_run.run(config, workdir)
    return
  prepare.prepare_dataset(config, workdir)  # process 0 builds or checks the dataset
  distributed.barrier('dataset ready')
  if config.mode in ('train', 'train_and_export'):
    train.train_and_evaluate(config, workdir)
  if config.mode in ('export', 'train_and_export'):
    out = export.export(config, workdir)  # every process restores; process 0 writes
    if distributed.is_primary():
      _report(config, out)
    distributed.barrier('export done')  # the others wait, so no process shuts down early


def _report(config, out: str) -> None:
  """Where the layers are; with a synthetic video's ground truth beside the frames, how well they match it."""
  print(f'layers written to {out} (open {out}/index.html)')
  if not os.path.isfile(os.path.join(config.dataroot, 'ground_truth', 'layers.json')):
    return  # a real video: nothing to score against
  with open(os.path.join(out, 'layers.json')) as f:
    high_res = json.load(f)['high_res']
  if high_res:
    print('not scored against the ground truth, which is low-resolution: --config.mode=export '
          '--config.export_high_res=False scores the low-resolution layers')
    return
  for layer, scores in evaluate.layer_scores(out, config.dataroot).items():
    print(f'layer {layer} against the ground truth: alpha IoU {scores["alpha_iou"]:.2f}, '
          f'shadow recall {scores["shadow_recall"]:.2f}')


if __name__ == '__main__':
  hugepages.restart_with_huge_pages()
  app.run(main, flags_parser=parse_flags)
