"""Reading a video's dataset, as data_prep.build writes it: frames, metadata, and what it was built from.

  DATA_DIR/layered_video/1.0.0/   (DATA_DIR: config.data_dir, default WORKDIR/data)

The training code only reads: data_prep.prepare builds the dataset (layered_jax.main calls it first). The
builder records its identity in the metadata: the video folder, a fingerprint of its content and the build
options; `check_built_for` compares it with a config before anything is computed. Reading needs no TensorFlow.
"""

import contextlib
import os
from typing import Any, Dict, Iterator, Mapping, Tuple

import numpy as np

from layered_jax import errors, loop

NAME = 'layered_video'
VERSION = '1.0.0'
BUILD_OPTIONS = ('trimap_width', 'use_homographies', 'use_mask_images')  # the config fields a dataset depends on


def frame_features(num_layers: int, width: int, height: int) -> Dict[str, Tuple[Tuple[int, ...], type]]:
  """(shape, dtype) of each feature of a frame (num_layers with the background)."""
  return {
      'rgb': ((height, width, 3), np.uint8),
      'rgb_hr': ((2 * height, 2 * width, 3), np.uint8),
      'uv': ((num_layers, height, width, 2), np.float32),
      'trimap': ((num_layers, height, width), np.float32),
      'pids': ((num_layers, height, width), np.float32),
      'frame_index': ((), np.int64),
  }


def data_dir(config: Any, workdir: str) -> str:
  return os.path.abspath(config.data_dir or os.path.join(workdir, 'data'))


def location(config: Any, workdir: str) -> str:
  """The dataset directory a run reads (to pass to `load`)."""
  return os.path.join(data_dir(config, workdir), NAME, VERSION)


def build_options(config: Any) -> Dict[str, Any]:
  return {name: config[name] for name in BUILD_OPTIONS}


@contextlib.contextmanager
def _reading(dataset_dir: str) -> Iterator[None]:
  """DataError when the dataset is missing or damaged (TFDS and array_record say so in many ways)."""
  if not os.path.isdir(dataset_dir):
    raise errors.DataError(f'no dataset in {dataset_dir}: python -m layered_jax.main builds it from config.dataroot '
                           '(or python -m data_prep.build)')
  try:
    yield
  except Exception as error:
    raise errors.DataError(f'the dataset in {dataset_dir} cannot be read ({errors.one_line(error)[:200]}); delete '
                           f'{os.path.dirname(os.path.dirname(dataset_dir))} and run again to rebuild it') from error


def load_frames(dataset_dir: str) -> Dict[str, np.ndarray]:
  """All frames of a built dataset as stacked arrays (by frame_index), without TensorFlow."""
  import tensorflow_datasets as tfds
  with _reading(dataset_dir):
    source = tfds.builder_from_directory(dataset_dir).as_data_source()['train']
    examples = [source[i] for i in range(len(source))]
  examples.sort(key=lambda e: int(e['frame_index']))
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def metadata(dataset_dir: str) -> Dict:
  """What the builder recorded: identity, video_dir, frame_names, layer_ids, size_lr, n_textures, composite_order."""
  import tensorflow_datasets as tfds
  with _reading(dataset_dir):
    return dict(tfds.builder_from_directory(dataset_dir).info.metadata)


def load(dataset_dir: str) -> Tuple[Dict[str, np.ndarray], Dict]:
  """(all frames as stacked arrays, the builder's metadata)."""
  return load_frames(dataset_dir), metadata(dataset_dir)


def check_built_for(meta: Mapping, config: Any, dataset_dir: str) -> None:
  """WorkdirError unless the dataset was built from config.dataroot with the config's build options."""
  recorded = meta.get('identity')
  wanted = {'video': os.path.abspath(config.dataroot), **build_options(config)}
  loop.check_identity(None if recorded is None else {k: recorded.get(k) for k in wanted}, wanted,
                      f'the dataset in {dataset_dir}', mismatch_fix(dataset_dir))


def mismatch_fix(dataset_dir: str) -> str:
  """What to do when a workdir's dataset is not the one a config asks for."""
  data_root = os.path.dirname(os.path.dirname(dataset_dir))
  return (f'a workdir holds one video\'s dataset and training: use a new --workdir (or --config.data_dir) for this '
          f'one, or delete {data_root} and the workdir\'s checkpoints to start over')
