"""Camera motion estimated from the frames against the synthetic video's true homographies."""

import os

import cv2
import numpy as np
import pytest

from data_prep import homographies, synthetic, video_folder
from data_prep.video_folder import DataError


def _world_errors(true, estimated, size):
  """Distance (in true-homography pixels) between where both send a grid of frame points in the world."""
  ys, xs = np.mgrid[0:size[1]:8, 0:size[0]:8]
  points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
  errors = []
  for a, b in zip(true, estimated):
    wa, wb = np.linalg.inv(a) @ points, np.linalg.inv(b) @ points
    errors.append(np.abs(wa[:2] / wa[2] - wb[:2] / wb[2]).max(0))
  return np.array(errors)


def test_estimated_camera_pan_matches_the_truth(tmp_path):
  path = str(tmp_path / 'pan')
  synthetic.generate(path, people=2, frames=8, size=(224, 128), camera_pan=30)
  true = video_folder.read_homographies(os.path.join(path, 'homographies.txt'), [f'{i:04d}.png' for i in range(1, 9)])
  matrices, size, bounds = homographies.estimate(path)
  assert size == (448, 256)  # estimated on the 2x frames
  scale = np.diag([2., 2., 1.])
  true_2x = np.array([scale @ m @ np.linalg.inv(scale) for m in true.matrices])
  errors = _world_errors(true_2x, matrices, size) / 2  # in low-res pixels
  assert errors.max() < 1.5 and np.median(errors) < 0.3, errors.max(1)
  np.testing.assert_allclose(bounds, [0, 2 * 254, 0, 256], atol=3)
  # The written file is read back by the dataset code.
  homographies.write_homographies(os.path.join(path, 'homographies.txt'), matrices, size, bounds)
  folder = video_folder.read_video_folder(path, use_homographies=True)
  assert folder.homographies.size == (448, 256)
  np.testing.assert_allclose(folder.homographies.matrices, matrices, rtol=1e-6, atol=1e-6)


def test_featureless_frames_fail_with_a_way_out(tmp_path):
  path = str(tmp_path / 'flat')
  synthetic.generate(path, people=1, frames=2, size=(64, 64))
  for d in ('rgb_256', 'rgb_512'):
    for name in os.listdir(os.path.join(path, d)):
      image = cv2.imread(os.path.join(path, d, name))
      cv2.imwrite(os.path.join(path, d, name), np.full_like(image, 90))
  with pytest.raises(DataError, match='too few background features .* write homographies.txt'):
    homographies.estimate(path)
