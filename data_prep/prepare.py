"""The dataset a run reads: built from config.dataroot on first use, and checked against it on every later one.

`layered_jax.main` calls `prepare_dataset` before training or exporting (the training code only reads). A
dataset records what it was built from (the video folder, a fingerprint of its files, the build options); a
dataset made from anything else stops the run before any compute, saying what differs. With `config.synthetic`
set (configs/demo.py) a missing dataroot is first filled with a synthetic video, and the console says so.
"""

import os
from typing import Any

from data_prep import build, synthetic
from layered_jax import dataset, distributed, errors, files, loop


def prepare_dataset(config: Any, workdir: str) -> str:
  """The dataset directory of config.dataroot with the config's build options; process 0 builds or checks it.

  In a multi-process run the other processes return at once and wait at a barrier after this call.
  """
  location = dataset.location(config, workdir)
  if not distributed.is_primary():
    return location
  if config.get('synthetic') and not os.path.exists(config.dataroot):
    print(f'config.dataroot {config.dataroot} does not exist: generating a synthetic video there '
          '(config.synthetic is set; a config for a real video must not set it)', flush=True)
    try:
      synthetic.generate(config.dataroot, **config.synthetic)
    except (TypeError, ValueError) as error:
      raise errors.ConfigError(f'config.synthetic: {error}') from None
  options = dataset.build_options(config)
  wanted = build.source_identity(config.dataroot, options['trimap_width'], options['use_homographies'],
                                 options['use_mask_images'])
  files.remove_stale_staging(os.path.dirname(location))  # a build killed half-way
  if os.path.isdir(location):
    recorded = dataset.metadata(location).get('identity')
    loop.check_identity(recorded, wanted, f'the dataset in {location}', dataset.mismatch_fix(location))
    return location
  data_dir = dataset.data_dir(config, workdir)
  print(f'building the dataset of {config.dataroot} in {data_dir}', flush=True)
  build.build(config.dataroot, data_dir, options['trimap_width'], options['use_homographies'],
              options['use_mask_images'])
  return location


def prepare_vid2vid(config: Any, workdir: str) -> str:
  """A vid2vid run's dataset directory: config.dataroot (built by data_prep.vid2vid_build, checked when read), or,
  with config.synthetic set and no dataroot, a synthetic clip set built in WORKDIR/data on first use."""
  from data_prep import vid2vid_synthetic
  from layered_jax.vid2vid import train as vid2vid_train
  location = vid2vid_train.dataset_dir(config, workdir)
  if config.dataroot:
    if not os.path.isdir(location):
      raise errors.ConfigError(f'config.dataroot {location} does not exist; build a dataset there with '
                               'python -m data_prep.vid2vid_build (its NAME/1.0.0 folder)')
    return location
  if not distributed.is_primary() or os.path.isdir(location):
    return location
  data_dir = os.path.dirname(os.path.dirname(location))
  files.remove_stale_staging(os.path.dirname(location))
  print(f'building a synthetic {config.synthetic.mode} clip set in {data_dir} (config.synthetic)', flush=True)
  options = dict(config.synthetic)
  options.setdefault('max_t_step', config.max_t_step)
  options.setdefault('n_frames_D', config.n_frames_D)
  options.setdefault('n_scales_temporal', max(config.n_scales_temporal, 1))
  options.setdefault('n_frames_G', config.n_frames_G)
  if 'size' in options:
    options['size'] = tuple(options['size'])
  try:
    return vid2vid_synthetic.generate(data_dir, **options)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f'config.synthetic: {error}') from None
