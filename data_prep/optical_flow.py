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
  """Bilinear sampling of image [H, W, C] at (x + dx, y + dy), border pixels repeated outside; float32.

  OpenCV's remap with float32 maps and image interpolates without quantising the coordinates.
  """
  height, width = image.shape[:2]
  xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
  flow = flow.astype(np.float32)
  warped = cv2.remap(image.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
  return warped.reshape(image.shape)


@functools.lru_cache(maxsize=None)
def _dis(preset: str):
  return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def dis_flow(current: np.ndarray, previous: np.ndarray, preset: str = 'medium') -> np.ndarray:
  """DIS flow [H, W, 2] float32 such that current ~ warp(previous, flow); frames RGB uint8."""
  gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (current, previous)]
  return _dis(preset).calc(gray[0], gray[1], None)


def confidence(current: np.ndarray, previous: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """The reference's rule: 1 where sum over RGB of (warp(previous, flow) - current)^2 < 0.02 in [-1, 1] units."""
  error = (warp(previous, flow) - current.astype(np.float32)) / 127.5
  return (np.sum(error ** 2, axis=-1) < CONF_THRESHOLD).astype(np.uint8)


def end_point_error(flow: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
  """Mean Euclidean distance between two flows over the pixels where mask is set."""
  distance = np.linalg.norm(flow.astype(np.float64) - reference, axis=-1)
  return float(distance[mask.astype(bool)].mean())
