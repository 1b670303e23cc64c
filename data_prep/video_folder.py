"""Reading and checking a video folder (spec section 1) before anything is built from it.

Every problem raises `DataError` naming the file, what is wrong, and what to do.
"""

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from data_prep import network_inputs
from layered_jax.errors import DataError  # the data tools' error; main reports it in one line

LOW_RES_DIR = 'rgb_256'
HIGH_RES_DIR = 'rgb_512'
IUV_DIR = 'iuv'
MASK_DIR = 'mask'


@dataclasses.dataclass(frozen=True)
class Homographies:
  size: Tuple[int, int]  # (W, H) the matrices were computed at
  bounds: Tuple[float, float, float, float]  # xmin, xmax, ymin, ymax of the world
  matrices: np.ndarray  # [frames, 3, 3], world -> frame


@dataclasses.dataclass(frozen=True)
class VideoFolder:
  root: str
  frame_names: List[str]
  size_lr: Tuple[int, int]  # (W, H)
  n_textures: int
  layer_ids: List[int]  # iuv layer numbers, 1-based
  composite_order: List[Tuple[int, ...]]  # per frame, iuv layer numbers back to front
  homographies: Optional[Homographies]
  metadata: Dict

  @property
  def num_frames(self) -> int:
    return len(self.frame_names)

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)


def _pngs(directory: str) -> List[str]:
  return sorted(f for f in os.listdir(directory) if f.lower().endswith('.png'))


def read_json(path: str) -> Dict:
  if not os.path.isfile(path):
    raise DataError(f'{path} is missing')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise DataError(f'{path} is not valid JSON ({error}); fix or regenerate it') from None


def read_image(path: str, size: Optional[Tuple[int, int]] = None, channels: int = 3) -> np.ndarray:
  """An RGB(A) or grey uint8 image, checked against the expected (W, H)."""
  flags = cv2.IMREAD_UNCHANGED
  image = cv2.imread(path, flags) if os.path.isfile(path) else None
  if image is None:
    raise DataError(f'{path} is missing or not a readable image')
  if image.dtype != np.uint8:
    raise DataError(f'{path} has {image.dtype} pixels; expected 8-bit')
  if image.ndim == 2:
    image = image[..., None]
  have = image.shape[2]
  if channels == 1:
    image = image[..., :1] if have < 3 else cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)[..., None]
  elif channels == 3:
    image = np.repeat(image, 3, -1) if have == 1 else cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
  elif channels == 4:
    if have != 4:
      raise DataError(f'{path} has {have} channels; IUV images must be RGBA (A = 255 - person id)')
    image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
  if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
    raise DataError(f'{path} is {image.shape[1]}x{image.shape[0]}; expected {size[0]}x{size[1]} (W x H)')
  return image


def read_homographies(path: str, frame_names: List[str]) -> Homographies:
  """homographies.txt, checked: every matrix finite and invertible (errors name the line and the frame)."""
  if not os.path.isfile(path):
    raise DataError(f'{path} is missing; write it or set use_homographies=False')
  with open(path) as f:
    lines = [(number, line.split()) for number, line in enumerate(f, start=1) if line.strip()]
  try:
    if len(lines) < 2 or lines[0][1][0] != 'size:' or lines[1][1][0] != 'bounds:':
      raise ValueError('the first lines must be "size: W H" and "bounds: xmin xmax ymin ymax"')
    size = (int(lines[0][1][1]), int(lines[0][1][2]))
    bounds = tuple(float(b) for b in lines[1][1][1:5])
    matrices = np.array([[float(v) for v in values] for _, values in lines[2:]], np.float64)
    if matrices.ndim != 2 or matrices.shape[1] != 9:
      raise ValueError('each frame line must hold the 9 entries of a 3x3 matrix')
  except (IndexError, ValueError) as error:
    raise DataError(f'{path} is malformed: {error}') from None
  if len(matrices) < len(frame_names):
    raise DataError(f'{path} has {len(matrices)} homographies for {len(frame_names)} frames')
  if len(bounds) != 4 or not np.all(np.isfinite(bounds)) or bounds[1] <= bounds[0] or bounds[3] <= bounds[2]:
    raise DataError(f'{path}: bounds must be xmin xmax ymin ymax with max > min')
  matrices = matrices[:len(frame_names)].reshape(-1, 3, 3)
  for (number, _), matrix, name in zip(lines[2:], matrices, frame_names):
    problem = ('has a non-finite entry' if not np.all(np.isfinite(matrix)) else
               'is singular (not invertible)' if np.linalg.matrix_rank(matrix) < 3 else None)
    if problem:
      raise DataError(f'{path} line {number} (frame {name}): the matrix {problem}; each line holds the 3x3 '
                      'world -> frame homography row by row: re-estimate it (python -m data_prep.homographies '
                      '--overwrite) or fix that line')
  return Homographies(size, bounds, matrices)


def read_video_folder(root: str, use_homographies: bool = False) -> VideoFolder:
  """Reads metadata and frame lists, and checks that they agree with each other."""
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise DataError(f'{root} is not a directory; point dataroot/--video_dir at a video folder')
  metadata = read_json(os.path.join(root, 'metadata.json'))
  meta_path = os.path.join(root, 'metadata.json')
  try:
    size_lr = tuple(int(s) for s in metadata['size_LR'])
    n_textures = int(metadata['n_textures'])
  except (KeyError, TypeError, ValueError) as error:
    raise DataError(f'{meta_path} needs size_LR [W, H] and n_textures (24 * people + 1): {error!r}') from None
  if len(size_lr) != 2 or size_lr[0] % 32 or size_lr[1] % 32 or min(size_lr) <= 0:
    raise DataError(f'{meta_path}: size_LR {list(size_lr)} must be two positive multiples of 32 '
                    '(the UNet halves the resolution 5 times); resize the frames')
  if n_textures < 1 or (n_textures - 1) % network_inputs.TILES_PER_PERSON:
    raise DataError(f'{meta_path}: n_textures {n_textures} must be 24 * people + 1')

  frames_dir = os.path.join(root, LOW_RES_DIR)
  if not os.path.isdir(frames_dir):
    raise DataError(f'{frames_dir} is missing; extract the frames with python -m data_prep.frames')
  frame_names = _pngs(frames_dir)
  if not frame_names:
    raise DataError(f'{frames_dir} holds no PNG frames')
  high_dir = os.path.join(root, HIGH_RES_DIR)
  if os.path.isdir(high_dir) and _pngs(high_dir) != frame_names:
    raise DataError(f'{high_dir} does not hold the same frame names as {frames_dir}')

  iuv_dir = os.path.join(root, IUV_DIR)
  if not os.path.isdir(iuv_dir):
    raise DataError(f'{iuv_dir} is missing; make it with python -m data_prep.keypoints')
  layer_ids = sorted(int(d) for d in os.listdir(iuv_dir) if d.isdigit())
  if not layer_ids:
    raise DataError(f'{iuv_dir} has no layer folders (01, 02, ...)')
  for layer in layer_ids:
    names = _pngs(os.path.join(iuv_dir, f'{layer:02d}'))
    if names != frame_names:
      raise DataError(f'{os.path.join(iuv_dir, f"{layer:02d}")} has {len(names)} frames, {frames_dir} has '
                      f'{len(frame_names)}; every layer needs one IUV PNG per frame, with the same names')

  order = metadata.get('composite_order')
  if order is None:
    order = [tuple(layer_ids)] * len(frame_names)
  if len(order) != len(frame_names):
    raise DataError(f'{meta_path}: composite_order has {len(order)} entries for {len(frame_names)} frames')
  order = [tuple(int(k) for k in frame_order) for frame_order in order]
  for i, frame_order in enumerate(order):
    if sorted(frame_order) != layer_ids:
      raise DataError(f'{meta_path}: composite_order[{i}] = {list(frame_order)} is not an ordering of the '
                      f'iuv layers {layer_ids}')
  homographies = None
  if use_homographies:
    homographies = read_homographies(os.path.join(root, 'homographies.txt'), frame_names)
  return VideoFolder(root, frame_names, size_lr, n_textures, layer_ids, order, homographies, metadata)


def fingerprint(video: VideoFolder, use_mask_images: bool = False) -> str:
  """A hash of the names and bytes of every file a dataset is built from, so that a changed video shows."""
  names = ['metadata.json'] + (['homographies.txt'] if video.homographies is not None else [])
  folders = [LOW_RES_DIR, HIGH_RES_DIR] + [os.path.join(IUV_DIR, f'{k:02d}') for k in video.layer_ids]
  folders += [os.path.join(MASK_DIR, f'{k:02d}') for k in video.layer_ids] if use_mask_images else []
  names += [os.path.join(folder, frame) for folder in folders for frame in video.frame_names]
  digest = hashlib.sha256()
  for name in names:
    if os.path.isfile(video.path(name)):
      with open(video.path(name), 'rb') as f:
        digest.update(name.encode() + b'\0' + hashlib.file_digest(f, 'sha256').digest())
  return digest.hexdigest()[:16]


def frame_example(video: VideoFolder, index: int, band_width: int = 20,
                  use_mask_images: bool = False) -> Dict[str, np.ndarray]:
  """Everything the model needs for frame `index`, checked on the way."""
  name = video.frame_names[index]
  width, height = video.size_lr
  rgb = read_image(video.path(LOW_RES_DIR, name), video.size_lr)
  rgb_hr = read_image(video.path(HIGH_RES_DIR, name), (2 * width, 2 * height))
  iuvs = [read_image(video.path(IUV_DIR, f'{k:02d}', name), video.size_lr, channels=4)
          for k in video.composite_order[index]]
  max_pid = max(int((255 - iuv[..., 3][iuv[..., 0] > 0]).max(initial=0)) for iuv in iuvs)
  if max_pid > video.n_textures // network_inputs.TILES_PER_PERSON:
    raise DataError(f'frame {name}: person id {max_pid} needs n_textures >= {24 * max_pid + 1}, '
                    f'metadata.json has {video.n_textures}')
  h = video.homographies
  background = network_inputs.background_uv(width, height, None if h is None else h.matrices[index],
                                            *(() if h is None else (h.size, h.bounds)))
  # IUV layers are at size_LR, so the band is band_width pixels wide (spec: int(20 * W_layer / W_LR)).
  uv, trimap, pids = network_inputs.frame_inputs(iuvs, video.n_textures, background, band_width)
  if use_mask_images:
    for position, layer in enumerate(video.composite_order[index], start=1):
      mask_path = video.path(MASK_DIR, f'{layer:02d}', name)
      if os.path.exists(mask_path):
        trimap[position] = read_image(mask_path, video.size_lr, channels=1)[..., 0] / 255. * 2 - 1
  return {'rgb': rgb, 'rgb_hr': rgb_hr, 'uv': uv, 'trimap': trimap, 'pids': pids,
          'frame_index': np.int64(index)}
