"""From IUV layers to the network's inputs (spec section 2), in NumPy.

Per frame the layers are [background] + [iuv layer k for k in the frame's
composite order]; each gives a UV map in [-1, 1] into the texture atlas
(n_textures tiles side by side, tile 0 the background), a trimap (1 person,
-1 background, 0 the band between, ignored by the loss) and a person-id map.
"""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

TILES_PER_PERSON = 24
NUM_PARTS = 24


def background_uv(width: int, height: int, homography: Optional[np.ndarray] = None,
                  homography_size: Tuple[int, int] = (0, 0),
                  bounds: Tuple[float, float, float, float] = (0., 1., 0., 1.)) -> np.ndarray:
  """Background UV in [0, 1] (before the atlas scaling), [H, W, 2].

  Without a homography a ramp over the frame. With one, the ramp scaled to
  homography_size pixels is mapped by the inverse homography (frame -> world)
  and normalised by the world bounds (xmin, xmax, ymin, ymax).
  """
  u, v = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
  if homography is None:
    return np.stack([u, v], -1).astype(np.float32)
  points = np.stack([u * homography_size[0], v * homography_size[1], np.ones_like(u)], -1)
  world = points @ np.linalg.inv(homography).T
  x = world[..., 0] / world[..., 2]
  y = world[..., 1] / world[..., 2]
  xmin, xmax, ymin, ymax = bounds
  return np.stack([(x - xmin) / (xmax - xmin), (y - ymin) / (ymax - ymin)], -1).astype(np.float32)


def trimap_from_foreground(foreground: np.ndarray, width: int) -> np.ndarray:
  """1 on the person, -1 on background that survives erosion by a width x width square, else 0."""
  background = (~foreground).astype(np.float32)
  if width > 1:
    background = cv2.erode(background, np.ones((width, width), np.uint8))
  return foreground.astype(np.float32) - background


def decode_iuv(iuv: np.ndarray, n_textures: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """IUV PNG pixels (uint8 [H, W, 4]) -> (texture uv in atlas tiles [H,W,2], foreground, person ids).

  u is the tile index plus U in [0, 1]; background pixels have foreground False and pid 0.
  """
  iuv = iuv.astype(np.float32)
  part = np.minimum(np.round(iuv[..., 0] / 10), NUM_PARTS)
  foreground = part > 0
  max_pid = n_textures // TILES_PER_PERSON
  pids = np.minimum(np.round(255 - iuv[..., 3]) * foreground, max_pid)
  tile = part + foreground * TILES_PER_PERSON * (pids - 1)
  uv = np.stack([iuv[..., 1] / 255 + tile, iuv[..., 2] / 255], -1)
  return uv, foreground, pids.astype(np.float32)


def to_atlas(uv: np.ndarray, n_textures: int) -> np.ndarray:
  """Tile coordinates -> grid_sample coordinates in [-1, 1] over the atlas."""
  uv = uv * np.array([1. / n_textures, 1.], np.float32)
  return np.clip(uv * 2 - 1, -1, 1).astype(np.float32)


def frame_inputs(iuv_layers: Sequence[np.ndarray], n_textures: int, background: np.ndarray,
                 band_width: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Network inputs for one frame: uv [L,H,W,2], trimap [L,H,W], pids [L,H,W], L = 1 + len(iuv_layers).

  iuv_layers are already in the frame's back-to-front composite order; background is
  background_uv(...) for this frame.
  """
  height, width = background.shape[:2]
  uvs = [to_atlas(background, n_textures)]
  trimaps = [-np.ones((height, width), np.float32)]
  pids = [np.zeros((height, width), np.float32)]
  for iuv in iuv_layers:
    uv, foreground, pid = decode_iuv(iuv, n_textures)
    uv = np.where(foreground[..., None], uv, background)
    uvs.append(to_atlas(uv, n_textures))
    trimaps.append(trimap_from_foreground(foreground, band_width))
    pids.append(pid)
  return np.stack(uvs), np.stack(trimaps), np.stack(pids)
