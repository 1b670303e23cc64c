"""keypoints.json (AlphaPose PoseFlow) -> kp2uv -> full-frame IUV layers iuv/NN/ (spec section 3).

  python -m data_prep.keypoints --video_dir=VIDEO --kp2uv=CONVERTED [--batch_size=16]

CONVERTED is the output of `python -m layered_jax.convert --kind=kp2uv` (or a
kp2uv .pth file, which needs torch). Each person's skeleton is drawn the way
the reference draws it (the published kp2uv weights only work on that
drawing), kp2uv runs on batches under jit, and each predicted 256x256 crop is
scaled back and pasted into its layer (metadata.json `people_layers` groups
people into layers; default one person per layer, in id order).
"""

import argparse
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from data_prep.video_folder import IUV_DIR, LOW_RES_DIR, DataError, read_json
from layered_jax import errors, files

CANVAS = 256
INNER = 192  # the keypoints' bounding box is scaled to this and centred on the canvas
LIMBS = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (11, 12), (11, 13),
         (13, 15), (12, 14), (14, 16), (6, 12), (5, 11))
COLOR_SEQUENCE = (9, 14, 6, 7, 13, 16, 2, 11, 3, 5, 10, 15, 1, 8, 0, 12, 4)
# matplotlib's "hsv" colormap resampled to 17 entries (RGB).
HSV17 = np.array([
    (1.0, 0.0, 0.0), (1.0, 0.3691409941409941, 0.0), (1.0, 0.7382819882819882, 0.0),
    (0.8925770175770176, 1.0, 0.0), (0.5234360234360234, 1.0, 0.0), (0.15429502929502925, 1.0, 0.0),
    (0.0, 1.0, 0.21484500507147306), (0.0, 1.0, 0.5839836736365298), (0.0, 1.0, 0.9531223422015865),
    (0.0, 0.6777369589869588, 1.0), (0.0, 0.30859596484596485, 1.0), (0.0605450292950291, 0.0, 1.0),
    (0.4296860234360234, 0.0, 1.0), (0.7988270175770177, 0.0, 1.0), (1.0, 0.0, 0.8320319882819882),
    (1.0, 0.0, 0.4628909941409941), (1.0, 0.0, 0.09375)])
JOINT_HALF_SIZE = 3
LINE_WIDTH = 3
CONFIDENT = 1.  # scores below this dim the colour to score * 0.75 + 0.25


def read_keypoints(path: str) -> Dict[str, Dict[int, np.ndarray]]:
  """{frame name: {person id: keypoints [17, 3] (x, y, score)}}, checked."""
  data = read_json(path)
  if not isinstance(data, dict):
    raise DataError(f'{path} must map frame names to lists of people')
  frames = {}
  for name, people in data.items():
    frames[name] = {}
    for person in people if isinstance(people, list) else [None]:
      try:
        kps = np.asarray(person['keypoints'], np.float64).reshape(17, 3)
        person_id = int(person['idx'])
      except (TypeError, KeyError, ValueError):
        raise DataError(f'{path}: frame {name} has an entry that is not '
                        '{"keypoints": [x, y, score] * 17, "idx": person id}') from None
      if person_id < 1:
        raise DataError(f'{path}: frame {name} has person id {person_id}; ids start at 1')
      frames[name][person_id] = kps
  return frames


def crop_transform(keypoints: np.ndarray) -> Tuple[np.ndarray, float, np.ndarray]:
  """The map from frame pixels to the canvas: (box centre, scale); centre uses floor as the reference."""
  left, right = keypoints[:, 0].min(), keypoints[:, 0].max()
  top, bottom = keypoints[:, 1].min(), keypoints[:, 1].max()
  centre = np.array([(right + left) // 2, (bottom + top) // 2])
  side = max(right - left, bottom - top)
  return centre, INNER / side if side > 0 else 1., np.array([left, right, top, bottom])


def render_kp2uv_input(keypoints: np.ndarray) -> np.ndarray:
  """The skeleton image kp2uv expects: uint8 [256, 256, 3], keypoints [17, 3] in frame pixels."""
  keypoints = np.asarray(keypoints, np.float64)
  centre, scale, _ = crop_transform(keypoints)
  xy = (keypoints[:, :2] - centre) * scale + CANVAS // 2
  scores = keypoints[:, 2]
  weight = np.where(scores < CONFIDENT, scores * 0.75 + 0.25, 1.)
  image = Image.new('RGB', (CANVAS, CANVAS))
  draw = ImageDraw.Draw(image)
  for j in range(17):  # joints first, limbs on top
    x0, y0 = xy[j] - JOINT_HALF_SIZE
    x1, y1 = xy[j] + JOINT_HALF_SIZE
    if x0 < 0 or y0 < 0 or x1 > CANVAS or y1 > CANVAS:
      continue
    color = (255 * (HSV17[COLOR_SEQUENCE[j]] * weight[j])).astype(np.uint8)
    draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in color))
  for a, b in LIMBS:
    ends = np.concatenate([xy[a], xy[b]])
    if (ends < 0).any() or (ends > CANVAS).any():
      continue
    color = 0.5 * (HSV17[COLOR_SEQUENCE[a]] + HSV17[COLOR_SEQUENCE[b]]) * min(weight[a], weight[b])
    color = (255 * color).astype(np.uint8)
    draw.line(ends.tolist(), fill=tuple(int(c) for c in color), width=LINE_WIDTH)
  return np.asarray(image)


def paste_crop(layer: np.ndarray, crop: np.ndarray, keypoints: np.ndarray, person_id: int,
               frame_size: Tuple[int, int], keypoint_size: Tuple[int, int]) -> None:
  """Scales a 256x256 IUV crop back to the frame and writes its non-zero pixels into layer [H,W,4].

  frame_size is size_LR (W, H); keypoint_size is alphapose_input_size (W, H).
  """
  _, _, (left, right, top, bottom) = crop_transform(keypoints)
  side = max(bottom - top, right - left)
  # Same operation order as the reference, so that truncation to int agrees.
  out_hw = np.array(frame_size[::-1], np.float64)
  in_hw = np.array(keypoint_size[::-1], np.float64)
  out_h, out_w = (side * CANVAS / INNER * out_hw / in_hw).astype(int)
  if out_h <= 0 or out_w <= 0:
    return
  person = np.where(crop[..., :1] > 0, 255 - person_id, 0).astype(np.uint8)
  rgba = np.concatenate([crop, person], -1)
  rgba = np.asarray(Image.fromarray(rgba).resize((out_w, out_h), resample=Image.NEAREST))
  centre_x = int((left + right) // 2 * out_hw[1] / in_hw[1])
  centre_y = int((top + bottom) // 2 * out_hw[0] / in_hw[0])
  x0, y0 = centre_x - out_w // 2, centre_y - out_h // 2
  height, width = layer.shape[:2]
  ly0, ly1, lx0, lx1 = max(0, y0), min(height, y0 + out_h), max(0, x0), min(width, x0 + out_w)
  if ly1 <= ly0 or lx1 <= lx0:
    return
  window = rgba[ly0 - y0:ly1 - y0, lx0 - x0:lx1 - x0]
  covered = (window > 0).any(-1, keepdims=True)
  layer[ly0:ly1, lx0:lx1] = np.where(covered, window, layer[ly0:ly1, lx0:lx1])


def people_layers(metadata: Dict, people: Sequence[int]) -> List[List[int]]:
  return [list(map(int, group)) for group in metadata.get('people_layers', [[p] for p in sorted(people)])]


def _load_kp2uv(path: str):
  from layered_jax import convert
  if os.path.isdir(path):
    return convert.load(path)
  return convert.load_torch(path, 'kp2uv')


def predict_crops(images: np.ndarray, kp2uv_path: str, batch_size: int = 16) -> np.ndarray:
  """kp2uv on skeleton images (uint8 [N,256,256,3]) -> IUV crops (uint8 [N,256,256,3]), jitted batches."""
  import jax
  from layered_jax.models import iuv_image
  module, variables = _load_kp2uv(kp2uv_path)

  @jax.jit
  def predict(batch):
    logits, uv = module.apply(variables, batch.astype(np.float32) / 127.5 - 1)
    return iuv_image(logits, uv)

  out = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], batch.dtype)])
    out.append(np.asarray(predict(padded))[:len(batch)])
    print(f'kp2uv: {min(start + batch_size, len(images))}/{len(images)} skeletons', file=sys.stderr, flush=True)
  return np.concatenate(out) if out else np.zeros((0, CANVAS, CANVAS, 3), np.uint8)


def make_iuv_layers(video_dir: str, kp2uv_path: str, batch_size: int = 16, overwrite: bool = False) -> int:
  """Writes iuv/NN/<frame>.png for every frame of rgb_256/; returns the number of layers."""
  video_dir = os.path.abspath(video_dir)
  metadata = read_json(os.path.join(video_dir, 'metadata.json'))
  meta_path = os.path.join(video_dir, 'metadata.json')
  try:
    frame_size = tuple(int(v) for v in metadata['size_LR'])
    keypoint_size = tuple(int(v) for v in metadata['alphapose_input_size'])
  except (KeyError, TypeError, ValueError):
    raise DataError(f'{meta_path} needs size_LR and alphapose_input_size, [W, H] each') from None
  frames_dir = os.path.join(video_dir, LOW_RES_DIR)
  if not os.path.isdir(frames_dir):
    raise DataError(f'{frames_dir} is missing; run python -m data_prep.frames first')
  frame_names = sorted(f for f in os.listdir(frames_dir) if f.endswith('.png'))
  keypoints_path = os.path.join(video_dir, 'keypoints.json')
  keypoints = read_keypoints(keypoints_path)
  unknown = sorted(set(keypoints) - set(frame_names))
  if unknown:
    raise DataError(f'{keypoints_path} names frames that {frames_dir} does not have: {unknown[:5]}')
  people = sorted({p for frame in keypoints.values() for p in frame})
  groups = people_layers(metadata, people)
  n_textures = metadata.get('n_textures')
  if n_textures is not None and max(people, default=0) > (n_textures - 1) // 24:
    raise DataError(f'{keypoints_path} has person id {max(people)} but {meta_path} sets n_textures '
                    f'{n_textures}; set it to 24 * {max(people)} + 1')
  jobs = [(name, pid) for name in frame_names for pid in sorted(keypoints.get(name, {}))]
  crops = predict_crops(np.stack([render_kp2uv_input(keypoints[n][p]) for n, p in jobs])
                        if jobs else np.zeros((0, CANVAS, CANVAS, 3), np.uint8), kp2uv_path, batch_size)
  crop_of = dict(zip(jobs, crops))
  with files.staged_directory(os.path.join(video_dir, IUV_DIR), overwrite) as staging:
    for k, group in enumerate(groups, start=1):
      os.makedirs(os.path.join(staging, f'{k:02d}'))
      for name in frame_names:
        layer = np.zeros((frame_size[1], frame_size[0], 4), np.uint8)
        for pid in group:
          if (name, pid) in crop_of:
            paste_crop(layer, crop_of[(name, pid)], keypoints[name][pid], pid, frame_size, keypoint_size)
        files.write_png(os.path.join(staging, f'{k:02d}', name), layer)
  return len(groups)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--video_dir', required=True)
  parser.add_argument('--kp2uv', required=True, help='converted kp2uv folder (layered_jax.convert) or .pth')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  with errors.reported():
    layers = make_iuv_layers(args.video_dir, args.kp2uv, args.batch_size, args.overwrite)
  print(f'wrote {layers} IUV layers to {os.path.join(args.video_dir, IUV_DIR)}')


if __name__ == '__main__':
  main()
