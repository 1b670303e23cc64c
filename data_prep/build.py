"""Build the TFDS dataset of one video folder (one example per frame, array_record files).

  python -m data_prep.build --video_dir=VIDEO --data_dir=DIR [--use_homographies] [--use_mask_images]

Features per frame: rgb [H,W,3] and rgb_hr [2H,2W,3] uint8; uv [L,H,W,2] in [-1, 1];
trimap [L,H,W] in {-1, 0, 1}; pids [L,H,W]; frame_index. Layer 0 is the
background, the rest follow the frame's composite order (spec section 2).
The build writes to a staging folder renamed at the end, so a bad frame
found half-way leaves no dataset behind. Its metadata records its identity
(the video folder, a fingerprint of its files, the build options), which runs
compare with their config. Reading it is layered_jax.dataset's (no TensorFlow).
"""

import argparse
import contextlib
import functools
import io
import os
import shutil
import sys
from typing import Dict

from data_prep import video_folder
from layered_jax import dataset, errors, files


@functools.lru_cache(maxsize=None)
def _builder_class():
  """The builder class; TensorFlow Datasets is imported only to build."""
  import tensorflow_datasets as tfds

  class LayeredVideo(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One video's frames and layer inputs."""
    VERSION = tfds.core.Version(dataset.VERSION)

    def __init__(self, video: video_folder.VideoFolder, identity: Dict, console, **kwargs):
      self._video = video
      self._identity = identity
      self._console = console  # progress lines go here, not through TFDS's output
      super().__init__(**kwargs)

    def _info(self):
      width, height = self._video.size_lr
      shapes = dataset.frame_features(1 + len(self._video.layer_ids), width, height)
      features = {name: tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
                  if shape else dtype for name, (shape, dtype) in shapes.items()}
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'Layered video {self._video.root}',
          features=tfds.features.FeaturesDict(features),
          metadata=tfds.core.MetadataDict(
              identity=self._identity, video_dir=self._video.root, frame_names=self._video.frame_names,
              layer_ids=self._video.layer_ids, size_lr=list(self._video.size_lr),
              n_textures=self._video.n_textures,
              composite_order=[list(o) for o in self._video.composite_order]))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      count = self._video.num_frames
      for index in range(count):
        yield index, video_folder.frame_example(self._video, index, self._identity['trimap_width'],
                                                self._identity['use_mask_images'])
        if (index + 1) % 50 == 0 or index + 1 == count:
          print(f'dataset: {index + 1}/{count} frames', file=self._console, flush=True)

  return LayeredVideo


def identity(video: video_folder.VideoFolder, band_width: int, use_mask_images: bool) -> Dict:
  """What a dataset is built from: the video folder, its content's fingerprint and the build options."""
  return {'video': video.root, 'content': video_folder.fingerprint(video, use_mask_images),
          'trimap_width': band_width, 'use_homographies': video.homographies is not None,
          'use_mask_images': use_mask_images}


def source_identity(video_dir: str, band_width: int = 20, use_homographies: bool = False,
                    use_mask_images: bool = False) -> Dict:
  """The identity a dataset of this video folder with these options would record (reads and checks the folder)."""
  return identity(video_folder.read_video_folder(video_dir, use_homographies), band_width, use_mask_images)


def prepare_quietly(builder, data_dir: str) -> None:
  """Runs a TFDS builder without TFDS's progress bars and banner (the examples' generators print their own
  progress); a full disk or a read-only folder becomes one OutputError line naming data_dir."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # "Downloading and preparing dataset Unknown size ..."
      builder.download_and_prepare()
  except Exception as error:
    reason = errors.os_reason(error)
    if reason is None:
      raise
    raise errors.OutputError(f'could not write the dataset in {data_dir}: {reason}') from error


def build(video_dir: str, data_dir: str, band_width: int = 20, use_homographies: bool = False,
          use_mask_images: bool = False, overwrite: bool = False) -> str:
  """Builds the dataset and returns its directory (to pass to layered_jax.dataset.load)."""
  video = video_folder.read_video_folder(video_dir, use_homographies)
  final = os.path.join(os.path.abspath(data_dir), dataset.NAME)
  with files.staged_directory(final, overwrite) as staging:
    # TFDS writes DATA_DIR/<name>/<version>; build in a scratch folder, keep <version>.
    scratch = os.path.join(staging, 'scratch')
    builder = _builder_class()(video, identity(video, band_width, use_mask_images), sys.stdout, data_dir=scratch,
                               file_format='array_record')
    prepare_quietly(builder, data_dir)
    os.rename(os.path.join(scratch, dataset.NAME, dataset.VERSION), os.path.join(staging, dataset.VERSION))
    shutil.rmtree(scratch)
  return os.path.join(final, dataset.VERSION)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--video_dir', required=True, help='the video folder (rgb_256/, rgb_512/, iuv/, metadata.json)')
  parser.add_argument('--data_dir', required=True, help='where to write the dataset')
  parser.add_argument('--trimap_width', type=int, default=20, help='pixels of the ignored band around each person')
  parser.add_argument('--use_homographies', action='store_true', help='background UV from homographies.txt')
  parser.add_argument('--use_mask_images', action='store_true', help='mask/NN/ PNGs replace trimaps where present')
  parser.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
  args = parser.parse_args(argv)
  with errors.reported():
    path = build(args.video_dir, args.data_dir, args.trimap_width, args.use_homographies, args.use_mask_images,
                 args.overwrite)
  print(f'built {path}')


if __name__ == '__main__':
  main()
