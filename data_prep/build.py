"""Build the TFDS dataset of one video folder (one example per frame, array_record files).

  python -m data_prep.build --video_dir=VIDEO --data_dir=DIR [--use_homographies] [--use_mask_images]

Features per frame: rgb [H,W,3] and rgb_hr [2H,2W,3] uint8; uv [L,H,W,2] in [-1, 1];
trimap [L,H,W] in {-1, 0, 1}; pids [L,H,W]; frame_index. Layer 0 is the
background, the rest follow the frame's composite order (spec section 2).
The build writes to a staging folder renamed at the end, so a bad frame
found half-way leaves no dataset behind. Reading (`load_frames`) needs no TensorFlow.
"""

import argparse
import functools
import os
import shutil
from typing import Dict

import numpy as np

from data_prep import video_folder
from layered_jax import files
from layered_jax.input_pipeline import frame_features

DATASET_NAME = 'layered_video'
DATASET_VERSION = '1.0.0'


@functools.lru_cache(maxsize=None)
def _builder_class():
  """The builder class; TensorFlow Datasets is imported only to build."""
  import tensorflow_datasets as tfds

  class LayeredVideo(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One video's frames and layer inputs."""
    VERSION = tfds.core.Version(DATASET_VERSION)

    def __init__(self, video: video_folder.VideoFolder, band_width: int, use_mask_images: bool, **kwargs):
      self._video = video
      self._band_width = band_width
      self._use_mask_images = use_mask_images
      super().__init__(**kwargs)

    def _info(self):
      width, height = self._video.size_lr
      num_layers = 1 + len(self._video.layer_ids)
      features = {name: tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
                  if shape else dtype for name, (shape, dtype) in frame_features(num_layers, width, height).items()}
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'Layered video {self._video.root}',
          features=tfds.features.FeaturesDict(features),
          metadata=tfds.core.MetadataDict(
              video_dir=self._video.root, frame_names=self._video.frame_names,
              layer_ids=self._video.layer_ids, size_lr=list(self._video.size_lr),
              n_textures=self._video.n_textures,
              composite_order=[list(o) for o in self._video.composite_order]))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for index in range(self._video.num_frames):
        yield index, video_folder.frame_example(self._video, index, self._band_width, self._use_mask_images)

  return LayeredVideo


def build(video_dir: str, data_dir: str, band_width: int = 20, use_homographies: bool = False,
          use_mask_images: bool = False, overwrite: bool = False) -> str:
  """Builds the dataset and returns its directory (to pass to `load_frames`)."""
  video = video_folder.read_video_folder(video_dir, use_homographies)
  final = os.path.join(os.path.abspath(data_dir), DATASET_NAME)
  with files.staged_directory(final, overwrite) as staging:
    # TFDS writes DATA_DIR/<name>/<version>; build in a scratch folder, keep <version>.
    scratch = os.path.join(staging, 'scratch')
    builder = _builder_class()(video, band_width, use_mask_images, data_dir=scratch, file_format='array_record')
    builder.download_and_prepare()
    os.rename(os.path.join(scratch, DATASET_NAME, DATASET_VERSION), os.path.join(staging, DATASET_VERSION))
    shutil.rmtree(scratch)
  return os.path.join(final, DATASET_VERSION)


def load_frames(dataset_dir: str) -> Dict[str, np.ndarray]:
  """All frames of a built dataset as stacked arrays (by frame_index), without TensorFlow."""
  import tensorflow_datasets as tfds
  source = tfds.builder_from_directory(dataset_dir).as_data_source()['train']
  examples = [source[i] for i in range(len(source))]
  examples.sort(key=lambda e: int(e['frame_index']))
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def dataset_metadata(dataset_dir: str) -> Dict:
  """What the builder recorded: video_dir, frame_names, layer_ids, size_lr, n_textures, composite_order."""
  import tensorflow_datasets as tfds
  return dict(tfds.builder_from_directory(dataset_dir).info.metadata)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--video_dir', required=True, help='the video folder (rgb_256/, rgb_512/, iuv/, metadata.json)')
  parser.add_argument('--data_dir', required=True, help='where to write the dataset')
  parser.add_argument('--trimap_width', type=int, default=20, help='pixels of the ignored band around each person')
  parser.add_argument('--use_homographies', action='store_true', help='background UV from homographies.txt')
  parser.add_argument('--use_mask_images', action='store_true', help='mask/NN/ PNGs replace trimaps where present')
  parser.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
  args = parser.parse_args(argv)
  try:
    path = build(args.video_dir, args.data_dir, args.trimap_width, args.use_homographies, args.use_mask_images,
                 args.overwrite)
  except (video_folder.DataError, FileExistsError) as error:
    parser.exit(2, f'error: {error}\n')
  print(f'built {path}')


if __name__ == '__main__':
  main()
