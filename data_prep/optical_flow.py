"""Reference flows for vid2vid: OpenCV's DIS flow, a NumPy warp, and the reference's confidence rule.

Flows are backward and in pixels, channels (dx, dy): frame_t ~ warp(frame_{t-k}, flow) with
warp(image, flow)[y, x] = image[y + dy, x + dx], bilinear, border padding, pixel i at coordinate i
(the convention of layered_jax.vid2vid.data).
"""

import functools

import cv2
import numpy as np

from layered_jax.vid2vid.data import CONF_THRESHOLD

DIS_PRESETS = {'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, 'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
               'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """Bilinear sampling of image [H, W, C] at (x + dx, y + dy), coordinates clamped to the border; float64."""
  height, width = image.shape[:2]
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  x = np.clip(xs + flow[..., 0], 0, width - 1)
  y = np.clip(ys + flow[..., 1], 0, height - 1)
  x0, y0 = np.minimum(np.floor(x).astype(int), width - 2), np.minimum(np.floor(y).astype(int), height - 2)
  x0, y0 = np.maximum(x0, 0), np.maximum(y0, 0)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
  image = image.astype(np.float64)
  top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
  bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
  return top * (1 - wy) + bottom * wy


@functools.lru_cache(maxsize=None)
def _dis(preset: str):
  return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def dis_flow(current: np.ndarray, previous: np.ndarray, preset: str = 'medium') -> np.ndarray:
  """DIS flow [H, W, 2] float32 such that current ~ warp(previous, flow); frames RGB uint8."""
  gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (current, previous)]
  return _dis(preset).calc(gray[0], gray[1], None)


def confidence(current: np.ndarray, previous: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """The reference's rule: 1 where sum over RGB of (warp(previous, flow) - current)^2 < 0.02 in [-1, 1] units."""
  error = (warp(previous, flow) - current.astype(np.float64)) / 127.5
  return (np.sum(error ** 2, axis=-1) < CONF_THRESHOLD).astype(np.uint8)


def end_point_error(flow: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
  """Mean Euclidean distance between two flows over the pixels where mask is set."""
  distance = np.linalg.norm(flow.astype(np.float64) - reference, axis=-1)
  return float(distance[mask.astype(bool)].mean())
