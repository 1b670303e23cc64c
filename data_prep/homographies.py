"""Estimate homographies.txt from the frames (camera motion), with the people masked out.

  python -m data_prep.homographies --video_dir=VIDEO [--mask_dilation=16] [--overwrite]

The reference reads homographies.txt but never released the code that made it.
Here the frames (rgb_512, else rgb_256) are matched with ORB features and
RANSAC, ignoring pixels of people (their IUV layers, dilated, since people move
and cast shadows). Each frame is matched against frame 1 directly while they
overlap enough (no drift), otherwise against its predecessor, chaining the
result; each matrix maps world coordinates (aligned with frame 1) to that frame.
The bounds are the extent of all frames in the world. Output format: spec
section 1.
"""

import argparse
import os
import tempfile
from typing import Optional, Tuple

import cv2
import numpy as np

from data_prep.video_folder import HIGH_RES_DIR, IUV_DIR, LOW_RES_DIR, DataError, read_image
from layered_jax import errors

MIN_MATCHES = 12


def people_mask(video_dir: str, name: str, shape: Tuple[int, int], dilation: int) -> np.ndarray:
  """uint8 mask at `shape`, 255 where features may be used: everything but the (dilated) people."""
  covered = np.zeros(shape, bool)
  iuv_dir = os.path.join(video_dir, IUV_DIR)
  if os.path.isdir(iuv_dir):
    for layer in sorted(d for d in os.listdir(iuv_dir) if d.isdigit()):
      path = os.path.join(iuv_dir, layer, name)
      if os.path.exists(path):
        person = (cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., 2] > 0).astype(np.uint8)  # BGRA: R = part
        covered |= cv2.resize(person, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
  if dilation > 0:
    covered = cv2.dilate(covered.astype(np.uint8), np.ones((2 * dilation + 1,) * 2, np.uint8)) > 0
  return np.where(covered, 0, 255).astype(np.uint8)


def pairwise_homography(previous: np.ndarray, current: np.ndarray, mask_previous: np.ndarray,
                        mask_current: np.ndarray, detector, matcher) -> Optional[np.ndarray]:
  """3x3 matrix mapping pixels of `previous` to `current`, or None when too few features match."""
  kp_a, des_a = detector.detectAndCompute(cv2.cvtColor(previous, cv2.COLOR_RGB2GRAY), mask_previous)
  kp_b, des_b = detector.detectAndCompute(cv2.cvtColor(current, cv2.COLOR_RGB2GRAY), mask_current)
  if des_a is None or des_b is None or len(kp_a) < MIN_MATCHES or len(kp_b) < MIN_MATCHES:
    return None
  pairs = matcher.knnMatch(des_a, des_b, k=2)
  good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
  if len(good) < MIN_MATCHES:
    return None
  src = np.float32([kp_a[m.queryIdx].pt for m in good])
  dst = np.float32([kp_b[m.trainIdx].pt for m in good])
  matrix, inliers = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 1.5)
  if matrix is None or inliers.sum() < MIN_MATCHES:
    return None
  return matrix / matrix[2, 2]


def estimate(video_dir: str, mask_dilation: int = 16) -> Tuple[np.ndarray, Tuple[int, int], Tuple[float, ...]]:
  """(matrices [frames, 3, 3] world -> frame, size (W, H), bounds (xmin, xmax, ymin, ymax))."""
  # The 2x frames give more and better-localised features; the file records the size used.
  frames_dir = os.path.join(video_dir, HIGH_RES_DIR)
  if not os.path.isdir(frames_dir):
    frames_dir = os.path.join(video_dir, LOW_RES_DIR)
  if not os.path.isdir(frames_dir):
    raise DataError(f'{frames_dir} is missing; run python -m data_prep.frames first')
  names = sorted(f for f in os.listdir(frames_dir) if f.endswith('.png'))
  if not names:
    raise DataError(f'{frames_dir} holds no PNG frames')
  first = read_image(os.path.join(frames_dir, names[0]))
  height, width = first.shape[:2]
  detector = cv2.ORB_create(nfeatures=3000, fastThreshold=5, edgeThreshold=8, patchSize=15)
  matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
  matrices = [np.eye(3)]
  mask_first = people_mask(video_dir, names[0], (height, width), mask_dilation)
  previous, mask_previous = first, mask_first
  for name in names[1:]:
    current = read_image(os.path.join(frames_dir, name), (width, height))
    mask_current = people_mask(video_dir, name, (height, width), mask_dilation)
    direct = pairwise_homography(first, current, mask_first, mask_current, detector, matcher)
    if direct is not None:
      matrices.append(direct)
    else:
      step = pairwise_homography(previous, current, mask_previous, mask_current, detector, matcher)
      if step is None:
        raise DataError(f'{os.path.join(frames_dir, name)}: too few background features match the previous '
                        'frame to estimate the camera motion; stabilise the video or write homographies.txt')
      matrices.append(step @ matrices[-1])
    previous, mask_previous = current, mask_current
  matrices = np.stack(matrices)
  corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64)
  world = np.einsum('fij,cj->fci', np.linalg.inv(matrices), corners)
  world = world[..., :2] / world[..., 2:]
  bounds = (world[..., 0].min(), world[..., 0].max(), world[..., 1].min(), world[..., 1].max())
  return matrices, (width, height), bounds


def write_homographies(path: str, matrices: np.ndarray, size: Tuple[int, int], bounds) -> None:
  """spec section 1 format, written to a temporary file and renamed."""
  lines = [f'size: {size[0]} {size[1]}', 'bounds: ' + ' '.join(f'{b:.6f}' for b in bounds)]
  lines += [' '.join(f'{v:.9g}' for v in m.ravel()) for m in matrices]
  handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.homographies-')
  with os.fdopen(handle, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(temp, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--video_dir', required=True)
  parser.add_argument('--mask_dilation', type=int, default=16,
                      help='pixels (at the 2x resolution) added around people before masking')
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  path = os.path.join(args.video_dir, 'homographies.txt')
  with errors.reported():
    if os.path.exists(path) and not args.overwrite:
      raise FileExistsError(f'{path} exists; pass --overwrite to replace it')
    matrices, size, bounds = estimate(args.video_dir, args.mask_dilation)
    write_homographies(path, matrices, size, bounds)
  print(f'wrote {path}: {len(matrices)} frames, world bounds {", ".join(f"{b:.1f}" for b in bounds)}')


if __name__ == '__main__':
  main()
