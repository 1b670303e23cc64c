"""The layout of a vid2vid clip dataset and its reader (no TensorFlow; TFDS only to open the files).

A dataset (built by `data_prep.vid2vid_build` or `data_prep.vid2vid_synthetic`)
holds one TFDS example per frame of each clip, in clip order, with splits
`train` and, when held-out clips were given, `test`. Per example (H, W the
stored size; K the number of reference-flow spacings; P people):

  clip, frame   int32      the clip (index into metadata['clips'][split]) and the frame in it
  rgb           uint8      [H, W, 3] the frame
  flow          float16    [K, H, W, 2] backward flow (dx, dy) in pixels from frame - k to frame, for each
                           k in metadata['spacings']: frame ~ warp(frame - k, flow), warp(img, f)[y, x] =
                           img[y + dy, x + dx] (bilinear, border, pixel i at coordinate i); 0 where frame < k
  conf          uint8      [K, H, W] 1 where the reference's rule holds (summed squared error of the warped
                           frame - k against frame, RGB in [-1, 1], below 0.02); 0 where frame < k
  visible       uint8      [K, H, W] synthetic only: 1 where the exact flow's source point is visible in both
                           frames (same surface, same shadowing)
  pose:   iuv       uint8   [H, W, 3] DensePose part (0 background, 1..24), U, V (0..255)
          keypoints float32 [P, 25, 3] BODY_25 (x, y in pixels, pixel i at i; score, 0 = missing)
  labels: labels    uint8   [H, W] class ids < label_nc;  instance uint16 [H, W] (when has_instance)
  edges:  edges     uint8   [H, W] Canny edges of the frame (0 or 255)

metadata: mode, size [W, H], spacings, max_t_step, n_frames_D, n_scales_temporal,
clips {split: [{name, length}]}, flow_source, conf_threshold, and per mode
num_people; label_nc, class_names, fg_labels, has_instance; canny thresholds.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

MODES = ('pose', 'labels', 'edges')
CONF_THRESHOLD = 0.02  # spec section 4: squared warp error summed over RGB in [-1, 1] units
NUM_KEYPOINTS = 25  # OpenPose BODY_25
NUM_PARTS = 24  # DensePose parts


def flow_spacings(max_t_step: int, n_frames_D: int, n_scales_temporal: int) -> List[int]:
  """Every source spacing a training step can ask for: t * n_frames_D**s for t <= max_t_step, s < scales.

  A clip sampled at spacing t has consecutive frames t apart in the source; temporal
  discriminator scale s looks at clip frames n_frames_D**s apart.
  """
  return sorted({t * n_frames_D ** s for t in range(1, max_t_step + 1) for s in range(n_scales_temporal)})


def frame_features(mode: str, width: int, height: int, num_spacings: int, num_people: int = 1,
                   has_instance: bool = False, has_visible: bool = False) -> Dict[str, Tuple[Tuple[int, ...], type]]:
  """(shape, dtype) of each feature of one example, as the builder stores it."""
  if mode not in MODES:
    raise ValueError(f'mode {mode!r} is not one of {MODES}')
  features = {
      'clip': ((), np.int32),
      'frame': ((), np.int32),
      'rgb': ((height, width, 3), np.uint8),
      'flow': ((num_spacings, height, width, 2), np.float16),
      'conf': ((num_spacings, height, width), np.uint8),
  }
  if has_visible:
    features['visible'] = ((num_spacings, height, width), np.uint8)
  if mode == 'pose':
    features['iuv'] = ((height, width, 3), np.uint8)
    features['keypoints'] = ((num_people, NUM_KEYPOINTS, 3), np.float32)
  elif mode == 'labels':
    features['labels'] = ((height, width), np.uint8)
    if has_instance:
      features['instance'] = ((height, width), np.uint16)
  else:
    features['edges'] = ((height, width), np.uint8)
  return features


@dataclasses.dataclass(frozen=True)
class ClipSet:
  """One split of a built dataset: random access to any frames of any clip."""
  directory: str
  split: str
  metadata: Dict
  clip_names: Tuple[str, ...]
  clip_lengths: Tuple[int, ...]
  source: object  # TFDS's array_record data source of the split

  @property
  def mode(self) -> str:
    return self.metadata['mode']

  @property
  def size(self) -> Tuple[int, int]:
    """(W, H) of the stored frames."""
    return tuple(self.metadata['size'])

  @property
  def spacings(self) -> List[int]:
    return list(self.metadata['spacings'])

  def read(self, clip: int, frames: Sequence[int]) -> Dict[str, np.ndarray]:
    """The given frames of one clip, every feature stacked on a leading axis."""
    offset = int(np.sum(self.clip_lengths[:clip]))
    frames = [int(f) for f in frames]
    if not 0 <= clip < len(self.clip_lengths) or min(frames) < 0 or max(frames) >= self.clip_lengths[clip]:
      raise IndexError(f'frames {frames} of clip {clip} are outside {self.directory} ({self.split})')
    examples = self.source.__getitems__([offset + f for f in frames])
    for f, example in zip(frames, examples):
      if int(example['clip']) != clip or int(example['frame']) != f:
        raise ValueError(f'{self.directory}: record {offset + f} holds clip {int(example["clip"])} frame '
                         f'{int(example["frame"])}, expected clip {clip} frame {f}; rebuild the dataset')
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}

  def read_clip(self, clip: int) -> Dict[str, np.ndarray]:
    return self.read(clip, range(self.clip_lengths[clip]))


def open_clips(dataset_dir: str, split: str = 'train') -> ClipSet:
  """A built dataset's split; TFDS is imported here only (no TensorFlow)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(dataset_dir)
  metadata = dict(builder.info.metadata)
  clips = metadata['clips'].get(split)
  if clips is None:
    raise ValueError(f'{dataset_dir} has no split {split!r}; it has {sorted(metadata["clips"])}')
  source = builder.as_data_source()[split]
  lengths = tuple(int(c['length']) for c in clips)
  if sum(lengths) != len(source):
    raise ValueError(f'{dataset_dir} ({split}) holds {len(source)} frames, its metadata {sum(lengths)}; rebuild it')
  return ClipSet(dataset_dir, split, metadata, tuple(c['name'] for c in clips), lengths, source)
