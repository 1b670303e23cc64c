"""Build a vid2vid clip dataset (TFDS, array_record) from videos, for pose, labels or edges.

  python -m data_prep.vid2vid_build --mode=pose --video=work/myvideo --data_dir=work/data
  python -m data_prep.vid2vid_build --mode=edges --video=vtest.avi --size=256x192 --data_dir=work/data
  python -m data_prep.vid2vid_build --mode=labels --video=frames/ --labels=labels/ --label_nc=35 \\
      --size=512x256 --data_dir=work/data

Each --video is one clip (repeat it for more; --test_video adds held-out clips, the
`test` split). A --video is either
- a video folder (data_prep.frames' layout: rgb_256/ and metadata.json), whose
  frames are used at their size (or resized to --size). For pose it holds
  keypoints.json (AlphaPose, as data_prep.keypoints reads it, in the coordinates
  of metadata's alphapose_input_size) or openpose/ (OpenPose's per-frame
  *_keypoints.json, BODY_25, same coordinates), and iuv/NN/ (made by
  data_prep.keypoints; layers composited in metadata's composite_order); for
  labels, labels/ (single-channel PNGs of class ids, one per frame, in frame
  order, any size of the frames' aspect) and optionally instances/ (8 or 16-bit
  instance ids);
- or a video file or a folder of images (read with data_prep.frames), resized
  to --size. Its frames are named 0001.png, ... (a video) or keep their names.
--keypoints, --keypoint_size, --iuv, --labels and --instances give those inputs
explicitly (with a single --video).

Edges mode: Canny edges of each frame (one channel; --canny thresholds on the
grey frame at the dataset's size). Reference flows: OpenCV DIS (--dis_preset)
from each frame k frames back, for every spacing k a training step can ask for
(layered_jax.vid2vid.data.flow_spacings of --max_t_step, --n_frames_D,
--n_scales_temporal), with the reference's confidence rule. What the dataset
holds: layered_jax/vid2vid/data.py. A failure leaves nothing behind.
"""

import argparse
import dataclasses
import functools
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from data_prep.build import prepare_quietly
from data_prep import frames as frames_lib
from data_prep import keypoints as keypoints_lib
from data_prep import optical_flow
from data_prep.frames import parse_size
from data_prep.video_folder import IUV_DIR, LOW_RES_DIR, DataError, read_image, read_json
from layered_jax import files
from layered_jax.vid2vid import data

DATASET_VERSION = '1.0.0'
CANNY = (100, 200)
PREVIEW_FRAMES = 6  # rows of each clip's preview sheet
# BODY_25 keypoint <- COCO-17 keypoint (AlphaPose); neck and mid-hip are the midpoints of the shoulders and hips.
COCO_OF_BODY25 = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 9: 12, 10: 14, 11: 16, 12: 11, 13: 13, 14: 15,
                  15: 2, 16: 1, 17: 4, 18: 3}
BODY25_MIDPOINTS = {1: (5, 6), 8: (11, 12)}
FlowFn = Callable[[int, int], Dict[str, np.ndarray]]  # (frame, spacing) -> flow [H,W,2], conf [H,W] (+ visible)


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip in memory: frames, the mode's inputs (data.frame_features names), optional exact flows."""
  name: str
  rgb: np.ndarray  # [T, H, W, 3] uint8
  inputs: Dict[str, np.ndarray]  # iuv + keypoints | labels (+ instance) | edges, each with a leading T axis
  flow_fn: Optional[FlowFn] = None  # None: DIS at build time

  @property
  def num_frames(self) -> int:
    return len(self.rgb)


def coco_to_body25(keypoints: np.ndarray) -> np.ndarray:
  """[..., 17, 3] COCO keypoints -> [..., 25, 3] BODY_25 (feet missing: score 0)."""
  out = np.zeros(keypoints.shape[:-2] + (data.NUM_KEYPOINTS, 3), np.float32)
  for body25, coco in COCO_OF_BODY25.items():
    out[..., body25, :] = keypoints[..., coco, :]
  for body25, (a, b) in BODY25_MIDPOINTS.items():
    out[..., body25, :2] = (keypoints[..., a, :2] + keypoints[..., b, :2]) / 2
    out[..., body25, 2] = np.minimum(keypoints[..., a, 2], keypoints[..., b, 2])
  return out


def canny_edges(rgb: np.ndarray, thresholds: Tuple[int, int] = CANNY) -> np.ndarray:
  """Canny edges [T, H, W] (0 or 255) of RGB frames [T, H, W, 3]."""
  return np.stack([cv2.Canny(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), *thresholds) for f in rgb])


def _resize(images: np.ndarray, size: Tuple[int, int], interpolation: int) -> np.ndarray:
  if (images.shape[2], images.shape[1]) == tuple(size):
    return images
  return np.stack([cv2.resize(image, size, interpolation=interpolation) for image in images])


def _check_size(size: Tuple[int, int], what: str) -> None:
  if size[0] % 32 or size[1] % 32 or min(size) <= 0:
    raise DataError(f'{what} is {size[0]}x{size[1]}; vid2vid needs multiples of 32 (W x H): pass --size')


def _pngs(directory: str, what: str) -> List[str]:
  if not os.path.isdir(directory):
    raise DataError(f'{directory} is missing; {what}')
  return sorted(f for f in os.listdir(directory) if f.lower().endswith('.png'))


def _same_count(directory: str, names: Sequence[str], num_frames: int, what: str) -> None:
  if len(names) != num_frames:
    raise DataError(f'{directory} has {len(names)} {what} for {num_frames} frames; give one per frame '
                    '(matched in sorted order)')


def is_video_folder(path: str) -> bool:
  return os.path.isdir(os.path.join(path, LOW_RES_DIR))


def read_frames(source: str, size: Optional[Tuple[int, int]]) -> Tuple[List[str], np.ndarray, Tuple[int, int], Dict]:
  """(frame names, RGB frames [T, H, W, 3] at `size`, the source's own size, the folder's metadata or {})."""
  metadata = {}
  if is_video_folder(source):
    frames_dir = os.path.join(source, LOW_RES_DIR)
    names = _pngs(frames_dir, 'make it with python -m data_prep.frames')
    if not names:
      raise DataError(f'{frames_dir} holds no PNG frames; make them with python -m data_prep.frames')
    if os.path.exists(os.path.join(source, 'metadata.json')):
      metadata = read_json(os.path.join(source, 'metadata.json'))
    first = read_image(os.path.join(frames_dir, names[0]))
    source_size = (first.shape[1], first.shape[0])
    rgb = np.stack([first] + [read_image(os.path.join(frames_dir, n), source_size) for n in names[1:]])
  else:
    rgb, source_size = [], None
    for i, frame in enumerate(frames_lib.read_frames(source)):  # resized as read: a long video fits in memory
      source_size = source_size or (frame.shape[1], frame.shape[0])
      if (frame.shape[1], frame.shape[0]) != source_size:
        raise DataError(f'{source}: frame {i + 1} is {frame.shape[1]}x{frame.shape[0]}, the first '
                        f'{source_size[0]}x{source_size[1]}')
      if size is None:
        raise DataError(f'{source} is {source_size[0]}x{source_size[1]}; give the dataset size with --size WxH '
                        '(multiples of 32)')
      _check_size(size, '--size')
      rgb.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA))
    rgb = np.stack(rgb)
    names = (frames_lib.image_names(source) if os.path.isdir(source)
             else [f'{i + 1:04d}.png' for i in range(len(rgb))])
  size = tuple(size or source_size)
  _check_size(size, f'{source}: the frame size')
  return names, _resize(rgb, size, cv2.INTER_AREA), source_size, metadata


def read_openpose(directory: str, num_frames: int) -> List[List[np.ndarray]]:
  """Per frame, each person's BODY_25 keypoints [25, 3] from OpenPose's per-frame JSON files."""
  names = sorted(f for f in os.listdir(directory) if f.endswith('.json')) if os.path.isdir(directory) else []
  _same_count(directory, names, num_frames, 'OpenPose JSON files')
  people_per_frame = []
  for name in names:
    path = os.path.join(directory, name)
    people = read_json(path).get('people')
    if not isinstance(people, list):
      raise DataError(f'{path} has no "people" list; is it OpenPose output (--write_json)?')
    frame_people = []
    for person in people:
      values = np.asarray(person.get('pose_keypoints_2d', []) if isinstance(person, dict) else [], np.float32)
      if values.size != 3 * data.NUM_KEYPOINTS:
        raise DataError(f'{path}: pose_keypoints_2d has {values.size} values, BODY_25 has 75; run OpenPose '
                        'with --model_pose BODY_25')
      frame_people.append(values.reshape(data.NUM_KEYPOINTS, 3))
    people_per_frame.append(frame_people)
  return people_per_frame


def read_alphapose(path: str, names: Sequence[str]) -> List[List[np.ndarray]]:
  """Per frame, each person's BODY_25 keypoints (mapped from COCO-17), people in id order."""
  by_name = keypoints_lib.read_keypoints(path)
  unknown = sorted(set(by_name) - set(names))
  if unknown:
    raise DataError(f'{path} names frames the video does not have: {unknown[:3]}; its keys must be the frame '
                    f'names ({names[0]}, ...)')
  return [[coco_to_body25(kps) for _, kps in sorted(by_name.get(n, {}).items())] for n in names]


def pose_keypoints(path: str, names: Sequence[str], keypoint_size: Tuple[int, int],
                   size: Tuple[int, int]) -> np.ndarray:
  """[T, P, 25, 3] in dataset pixels (pixel i at i), P the most people in a frame; missing people are zeros."""
  people = read_openpose(path, len(names)) if os.path.isdir(path) else read_alphapose(path, names)
  count = max(1, max(len(p) for p in people))
  out = np.zeros((len(names), count, data.NUM_KEYPOINTS, 3), np.float32)
  scale = np.array(size, np.float32) / np.array(keypoint_size, np.float32)
  for t, frame_people in enumerate(people):
    for p, kps in enumerate(frame_people):
      present = kps[:, 2:] > 0
      out[t, p, :, :2] = np.where(present, (kps[:, :2] + 0.5) * scale - 0.5, 0.)
      out[t, p, :, 2] = kps[:, 2]
  return out


def read_iuv(path: str, num_frames: int, source_size: Tuple[int, int], size: Tuple[int, int],
             composite_order: Optional[Sequence[Sequence[int]]] = None, order_file: str = 'metadata.json'
             ) -> np.ndarray:
  """[T, H, W, 3] (part, U, V) from data_prep.keypoints' IUV layers (R = part * 10, G = U, B = V).

  `path` holds layer folders 01/, 02/, ... (composited back to front in composite_order,
  default by number) or the PNGs of a single layer.
  """
  if not os.path.isdir(path):
    raise DataError(f'{path} is missing; make the IUV layers with python -m data_prep.keypoints or pass --iuv')
  layer_ids = sorted(int(d) for d in os.listdir(path) if d.isdigit() and os.path.isdir(os.path.join(path, d)))
  layers = {k: os.path.join(path, f'{k:02d}') for k in layer_ids} or {1: path}
  names = {}
  for k, directory in layers.items():
    names[k] = _pngs(directory, 'it should hold one IUV PNG per frame')
    _same_count(directory, names[k], num_frames, 'IUV PNGs')
  order = composite_order
  if order is not None and len(order) != num_frames:
    raise DataError(f'{order_file}: composite_order has {len(order)} entries for {num_frames} frames; fix it or '
                    'remove it (layers are then composited by number)')
  out = np.zeros((num_frames, source_size[1], source_size[0], 3), np.uint8)
  for t in range(num_frames):
    for k in (order[t] if order is not None else sorted(layers)):
      if k not in layers:
        raise DataError(f'{order_file}: composite_order names layer {k}, {path} has {sorted(layers)}')
      file = os.path.join(layers[k], names[k][t])
      iuv = read_image(file, source_size)
      body = iuv[..., 0] > 0
      bad = np.unique(iuv[..., 0][(iuv[..., 0] % 10 != 0) | (iuv[..., 0] > 10 * data.NUM_PARTS)])
      if bad.size:
        raise DataError(f'{file}: red values {bad[:5].tolist()} are not a part id * 10 (0..240); IUV layers must '
                        'be data_prep.keypoints\' output')
      out[t][body] = np.stack([iuv[..., 0] // 10, iuv[..., 1], iuv[..., 2]], -1)[body]
  return _resize(out, size, cv2.INTER_NEAREST)


def read_maps(path: str, num_frames: int, frame_size: Tuple[int, int], size: Tuple[int, int], what: str,
              dtypes: Tuple[type, ...], limit: Optional[Tuple[int, str]] = None) -> np.ndarray:
  """[T, H, W] single-channel maps (labels or instance ids), one PNG per frame, resized with nearest.

  limit: (n, fix) refuses values >= n with that fix in the message.
  """
  names = _pngs(path, f'give one {what} PNG per frame')
  _same_count(path, names, num_frames, f'{what} PNGs')
  maps, first_size = [], None
  for name in names:
    file = os.path.join(path, name)
    image = cv2.imread(file, cv2.IMREAD_UNCHANGED) if os.path.isfile(file) else None
    if image is None:
      raise DataError(f'{file} is not a readable image')
    if image.ndim != 2:
      raise DataError(f'{file} has {image.shape[2]} channels; {what} maps must be single-channel ids, '
                      'not colour renderings')
    if image.dtype not in dtypes:
      raise DataError(f'{file} has {image.dtype} pixels; {what} maps must be {" or ".join(map(str, dtypes))}')
    if limit is not None and image.max() >= limit[0]:
      raise DataError(f'{file} has {what} {image.max()}, at or above {limit[0]}; {limit[1]}')
    first_size = first_size or (image.shape[1], image.shape[0])
    if (image.shape[1], image.shape[0]) != first_size:
      raise DataError(f'{file} is {image.shape[1]}x{image.shape[0]}, {names[0]} is {first_size[0]}x{first_size[1]}')
    maps.append(image)
  if abs(first_size[0] * frame_size[1] - first_size[1] * frame_size[0]) > 0.02 * first_size[0] * frame_size[1]:
    raise DataError(f'{path}: {what} maps are {first_size[0]}x{first_size[1]}, not the shape of the frames '
                    f'({frame_size[0]}x{frame_size[1]})')
  maps = np.stack(maps)
  return np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in maps]) if (
      first_size != tuple(size)) else maps


def read_clip(source: str, mode: str, size: Optional[Tuple[int, int]] = None, keypoints: Optional[str] = None,
              keypoint_size: Optional[Tuple[int, int]] = None, iuv: Optional[str] = None,
              labels: Optional[str] = None, instances: Optional[str] = None, label_nc: Optional[int] = None,
              canny: Tuple[int, int] = CANNY) -> Clip:
  """One clip from a video folder, video file or image folder, with the mode's inputs, checked."""
  source = os.path.abspath(source)
  if not os.path.exists(source):
    raise DataError(f'{source} does not exist')
  names, rgb, source_size, metadata = read_frames(source, size)
  size = (rgb.shape[2], rgb.shape[1])
  folder = source if is_video_folder(source) else None
  inputs = {}
  if mode == 'pose':
    if keypoints is None and folder:
      candidates = [os.path.join(folder, 'keypoints.json'), os.path.join(folder, 'openpose')]
      keypoints = next((c for c in candidates if os.path.exists(c)), None)
    if keypoints is None:
      raise DataError(f'{source}: pose needs keypoints: keypoints.json (AlphaPose) or openpose/ in the video '
                      'folder, or --keypoints')
    if not os.path.exists(keypoints):
      raise DataError(f'{keypoints} does not exist')
    if keypoint_size is None:
      keypoint_size = tuple(metadata.get('alphapose_input_size', source_size))
    inputs['keypoints'] = pose_keypoints(keypoints, names, keypoint_size, size)
    iuv = iuv or (folder and os.path.join(folder, IUV_DIR))
    if not iuv:
      raise DataError(f'{source}: pose needs IUV layers: iuv/ in the video folder (python -m data_prep.keypoints) '
                      'or --iuv')
    inputs['iuv'] = read_iuv(iuv, len(names), source_size, size, metadata.get('composite_order'),
                             os.path.join(source, 'metadata.json'))
  elif mode == 'labels':
    if label_nc is None:
      raise DataError('labels mode needs --label_nc (the number of classes)')
    labels = labels or (folder and os.path.join(folder, 'labels'))
    if not labels:
      raise DataError(f'{source}: labels mode needs labels/ in the video folder or --labels')
    inputs['labels'] = read_maps(labels, len(names), source_size, size, 'label', (np.uint8,),
                                 (label_nc, f'--label_nc is {label_nc}: raise it or remap the classes'))
    instances = instances or (folder and os.path.isdir(os.path.join(folder, 'instances'))
                              and os.path.join(folder, 'instances'))
    if instances:
      inputs['instance'] = read_maps(instances, len(names), source_size, size, 'instance',
                                     (np.uint8, np.uint16)).astype(np.uint16)
  elif mode == 'edges':
    inputs['edges'] = canny_edges(rgb, canny)
  else:
    raise DataError(f'mode {mode!r} is not one of {data.MODES}')
  return Clip(os.path.basename(source.rstrip('/')), rgb, inputs)


def reference_flows(clip: Clip, t: int, spacings: Sequence[int], preset: str = 'medium') -> Dict[str, np.ndarray]:
  """Flows and confidences of frame t from each spacing back ([K, H, W, 2] float16, [K, H, W] uint8)."""
  height, width = clip.rgb.shape[1:3]
  out = {'flow': np.zeros((len(spacings), height, width, 2), np.float16),
         'conf': np.zeros((len(spacings), height, width), np.uint8)}
  if clip.flow_fn is not None:
    out['visible'] = np.zeros((len(spacings), height, width), np.uint8)
  for i, k in enumerate(spacings):
    if t < k:
      continue
    if clip.flow_fn is not None:
      for key, value in clip.flow_fn(t, k).items():
        out[key][i] = value
    else:
      flow = optical_flow.dis_flow(clip.rgb[t], clip.rgb[t - k], preset)
      out['flow'][i] = flow
      out['conf'][i] = optical_flow.confidence(clip.rgb[t], clip.rgb[t - k], flow)
  return out


def _flow_colours(flow: np.ndarray) -> np.ndarray:
  """Flow [H, W, 2] as RGB: hue the direction, brightness the length (full at 8 px)."""
  length, angle = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
  hsv = np.stack([angle * 90 / np.pi, np.full_like(angle, 255), np.minimum(length * 32, 255)], -1).astype(np.uint8)
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def preview_sheet(examples: Sequence[Dict[str, np.ndarray]], mode: str) -> np.ndarray:
  """One row per example: the frame, its input, the flow from the previous frame, its confidence."""
  from layered_jax.vid2vid import input_pipeline, skeleton  # JAX, for the skeleton drawing
  palette = np.random.default_rng(0).integers(40, 256, (256, 3)).astype(np.uint8)
  rows = []
  for example in examples:
    height, width = example['rgb'].shape[:2]
    if mode == 'pose':
      part, u, v = np.moveaxis(example['iuv'].astype(np.int32), -1, 0)
      shown = np.stack([part * 10, u, v], -1).astype(np.uint8)
      half_width = input_pipeline.REFERENCE_STROKE * height / input_pipeline.REFERENCE_HEIGHT
      bones = np.asarray(skeleton.render(example['keypoints'], height, width, half_width)).astype(np.uint8)
      shown = np.where(bones.any(-1, keepdims=True), bones, shown)
    elif mode == 'labels':
      shown = palette[example['labels']]
    else:
      shown = np.repeat(example['edges'][..., None], 3, -1)
    conf = np.repeat(example['conf'][0][..., None] * 255, 3, -1).astype(np.uint8)
    rows.append(np.concatenate([example['rgb'], shown, _flow_colours(example['flow'][0]), conf], 1))
  return np.concatenate(rows, 0)


class _Progress:
  """Frames done of a total, printed every few seconds with an ETA."""

  def __init__(self, total: int, every_secs: float = 5.):
    self.total, self.done, self.every = total, 0, every_secs
    self.start = self.last = time.time()

  def step(self) -> None:
    self.done += 1
    now = time.time()
    if now - self.last >= self.every or self.done == self.total:
      self.last = now
      left = (now - self.start) / self.done * (self.total - self.done)
      print(f'{self.done}/{self.total} frames, {left:.0f} s left', file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=None)
def _builder_class():
  """The builder class; TensorFlow Datasets is imported only to build."""
  import tensorflow_datasets as tfds

  class Vid2VidClips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Clips of one vid2vid application: frames, inputs, reference flows."""
    VERSION = tfds.core.Version(DATASET_VERSION)

    def __init__(self, splits: Dict[str, Sequence[Clip]], features: Dict, metadata: Dict, preset: str, **kwargs):
      self._splits, self._features, self._metadata, self._preset = splits, features, metadata, preset
      self._progress = _Progress(sum(c.num_frames for clips in splits.values() for c in clips))
      self.previews = {}  # (split, clip index) -> examples of a few frames
      super().__init__(**kwargs)

    def _info(self):
      features = {name: tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
                  if shape else dtype for name, (shape, dtype) in self._features.items()}
      return tfds.core.DatasetInfo(builder=self, description=f'vid2vid {self._metadata["mode"]} clips',
                                   features=tfds.features.FeaturesDict(features), disable_shuffling=True,
                                   metadata=tfds.core.MetadataDict(**self._metadata))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(clips, split) for split, clips in self._splits.items()}

    def _generate_examples(self, clips, split):
      spacings = self._metadata['spacings']
      for index, clip in enumerate(clips):
        shown = set(np.linspace(0, clip.num_frames - 1, min(PREVIEW_FRAMES, clip.num_frames)).round().astype(int))
        for t in range(clip.num_frames):
          example = {'clip': np.int32(index), 'frame': np.int32(t), 'rgb': clip.rgb[t]}
          example.update({k: v[t] for k, v in clip.inputs.items()})
          example.update(reference_flows(clip, t, spacings, self._preset))
          if 'keypoints' in example:  # every clip padded to the dataset's number of people
            kps = np.zeros(self._features['keypoints'][0], np.float32)
            kps[:len(example['keypoints'])] = example['keypoints']
            example['keypoints'] = kps
          if t in shown:
            self.previews.setdefault((split, index), []).append(example)
          yield f'{index:05d}-{t:06d}', example
          self._progress.step()

  return Vid2VidClips


def build(train: Sequence[Clip], test: Sequence[Clip], data_dir: str, name: str, mode: str, max_t_step: int = 1,
          n_frames_D: int = 3, n_scales_temporal: int = 2, n_frames_G: int = 3, label_nc: Optional[int] = None,
          fg_labels: Sequence[int] = (), class_names: Optional[Sequence[str]] = None, canny: Tuple[int, int] = CANNY,
          dis_preset: str = 'medium', overwrite: bool = False) -> str:
  """Checks the clips agree, writes DATA_DIR/NAME/1.0.0 (staged) and returns that directory."""
  if not train:
    raise DataError('no training clips: give at least one --video')
  clips = list(train) + list(test)
  size = (clips[0].rgb.shape[2], clips[0].rgb.shape[1])
  for clip in clips:
    if (clip.rgb.shape[2], clip.rgb.shape[1]) != size:
      raise DataError(f'clip {clip.name} is {clip.rgb.shape[2]}x{clip.rgb.shape[1]}, clip {clips[0].name} '
                      f'{size[0]}x{size[1]}; give --size to resize them all')
    if clip.num_frames < n_frames_G:
      raise DataError(f'clip {clip.name} has {clip.num_frames} frames; the generator needs at least '
                      f'n_frames_G = {n_frames_G} per clip: use a longer clip')
    for key, value in clip.inputs.items():
      if len(value) != clip.num_frames:
        raise DataError(f'clip {clip.name} has {clip.num_frames} frames but {len(value)} {key}')
  if mode == 'labels':
    if label_nc is None or label_nc < 1 or label_nc > 256:
      raise DataError(f'label_nc {label_nc} must be in 1..256 (labels are stored as uint8)')
    bad = [c for c in fg_labels if not 0 <= c < label_nc]
    if bad:
      raise DataError(f'--fg_labels {bad} are not classes below label_nc {label_nc}')
    for clip in clips:
      if clip.inputs['labels'].max() >= label_nc:
        raise DataError(f'clip {clip.name} has class {clip.inputs["labels"].max()}, label_nc is {label_nc}')
    if len({'instance' in c.inputs for c in clips}) > 1:
      raise DataError('some clips have instance maps and some do not; give instances/ for all or none')
  spacings = data.flow_spacings(max_t_step, n_frames_D, n_scales_temporal)
  splits = {'train': list(train)} | ({'test': list(test)} if test else {})
  exact = clips[0].flow_fn is not None
  features = data.frame_features(
      mode, size[0], size[1], len(spacings),
      num_people=max((c.inputs['keypoints'].shape[1] for c in clips), default=1) if mode == 'pose' else 1,
      has_instance='instance' in clips[0].inputs, has_visible=exact)
  metadata = {'mode': mode, 'size': list(size), 'spacings': spacings, 'max_t_step': max_t_step,
              'n_frames_D': n_frames_D, 'n_scales_temporal': n_scales_temporal,
              'clips': {s: [{'name': c.name, 'length': c.num_frames} for c in cs] for s, cs in splits.items()},
              'flow_source': 'exact (synthetic geometry)' if exact else f'OpenCV DIS, {dis_preset} preset',
              'conf_threshold': data.CONF_THRESHOLD}
  if mode == 'pose':
    metadata['num_people'] = features['keypoints'][0][0]
  elif mode == 'labels':
    metadata.update(label_nc=label_nc, fg_labels=list(fg_labels), has_instance='instance' in features,
                    class_names=list(class_names) if class_names else None)
  else:
    metadata['canny'] = list(canny)
  final = os.path.join(os.path.abspath(data_dir), name)
  with files.staged_directory(final, overwrite) as staging:
    scratch = os.path.join(staging, 'scratch')
    builder = _builder_class()(splits, features, metadata, dis_preset, data_dir=scratch, file_format='array_record')
    prepare_quietly(builder, data_dir)
    os.rename(os.path.join(scratch, builder.name, DATASET_VERSION), os.path.join(staging, DATASET_VERSION))
    shutil.rmtree(scratch)
    os.makedirs(os.path.join(staging, 'preview'))
    for (split, index), examples in builder.previews.items():
      path = os.path.join(staging, 'preview', f'{split}_{index:02d}_{splits[split][index].name}.png')
      files.write_png(path, preview_sheet(examples, mode))
  return os.path.join(final, DATASET_VERSION)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
  """The options shared with data_prep.vid2vid_synthetic."""
  parser.add_argument('--data_dir', required=True, help='the dataset goes to DATA_DIR/NAME/1.0.0')
  parser.add_argument('--name', help='dataset name (default vid2vid_MODE)')
  parser.add_argument('--max_t_step', type=int, help='largest frame spacing of a training clip (default: 4 for '
                      'pose, as the reference pose script, else 1)')
  parser.add_argument('--n_frames_D', type=int, default=3, help='temporal discriminator frames (tD)')
  parser.add_argument('--n_scales_temporal', type=int, default=2, help='temporal discriminator scales')
  parser.add_argument('--n_frames_G', type=int, default=3, help='generator frames (tG): the shortest clip allowed')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing dataset')


def build_options(args: argparse.Namespace) -> Dict:
  return {'max_t_step': args.max_t_step or (4 if args.mode == 'pose' else 1), 'n_frames_D': args.n_frames_D,
          'n_scales_temporal': args.n_scales_temporal, 'n_frames_G': args.n_frames_G, 'overwrite': args.overwrite}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', required=True, choices=data.MODES)
  parser.add_argument('--video', action='append', required=True, help='a clip: video folder, video file or '
                      'folder of images (repeat for more clips)')
  parser.add_argument('--test_video', action='append', default=[], help='a held-out clip (the test split)')
  parser.add_argument('--size', type=parse_size, help='W x H of the dataset, multiples of 32 (default: the video '
                      "folder's frames)")
  parser.add_argument('--keypoints', help='AlphaPose JSON file or a folder of OpenPose per-frame JSON')
  parser.add_argument('--keypoint_size', type=parse_size, help='W x H of the frames the keypoints were found on '
                      "(default: metadata's alphapose_input_size, else the video's size)")
  parser.add_argument('--iuv', help='IUV layers (folders 01/, 02/, ... or the PNGs of one layer)')
  parser.add_argument('--labels', help='single-channel class-id PNGs, one per frame')
  parser.add_argument('--instances', help='instance-id PNGs (8 or 16-bit), one per frame')
  parser.add_argument('--label_nc', type=int, help='number of label classes (labels mode)')
  parser.add_argument('--fg_labels', type=lambda s: [int(v) for v in s.split(',') if v], default=[],
                      help='foreground classes, e.g. 24,25,26 (labels mode)')
  parser.add_argument('--canny', type=lambda s: tuple(int(v) for v in s.split(',')), default=CANNY,
                      help='Canny thresholds low,high (edges mode)')
  parser.add_argument('--dis_preset', default='medium', choices=sorted(optical_flow.DIS_PRESETS))
  add_build_arguments(parser)
  args = parser.parse_args(argv)
  explicit = [args.keypoints, args.keypoint_size, args.iuv, args.labels, args.instances]
  try:
    if any(explicit) and len(args.video) + len(args.test_video) > 1:
      raise DataError('--keypoints, --keypoint_size, --iuv, --labels and --instances apply to a single --video; '
                      'with several clips, put each clip\'s inputs in its video folder')
    read = functools.partial(read_clip, mode=args.mode, size=args.size, keypoints=args.keypoints,
                             keypoint_size=args.keypoint_size, iuv=args.iuv, labels=args.labels,
                             instances=args.instances, label_nc=args.label_nc, canny=args.canny)
    train, test = [read(v) for v in args.video], [read(v) for v in args.test_video]
    path = build(train, test, args.data_dir, args.name or f'vid2vid_{args.mode}', args.mode,
                 label_nc=args.label_nc, fg_labels=args.fg_labels, canny=args.canny, dis_preset=args.dis_preset,
                 **build_options(args))
  except (DataError, FileExistsError) as error:
    parser.exit(2, f'error: {error}\n')
  print(f'built {path}')


if __name__ == '__main__':
  main()
