"""Image and video files: PNG and mp4 in and out, and staging so a failure leaves nothing half-written."""

import contextlib
import os
import re
import shutil
import tempfile
from typing import Iterator, Sequence

import cv2
import numpy as np


@contextlib.contextmanager
def staged_directory(final: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a staging folder beside `final`; renamed to `final` if the block succeeds, removed if not.

  Staging folders of `final` left by a killed run are removed first.
  """
  final = os.path.abspath(final)
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f'{final} exists; pass --overwrite to replace it')
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  remove_stale_staging(final)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(final)}-', dir=parent)
  try:
    yield staging
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(staging, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(final: str) -> None:
  """Removes the staging folders of `final` (.NAME-xxxxxxxx beside it) that a killed run left."""
  parent = os.path.dirname(os.path.abspath(final))
  stale = re.compile(rf'\.{re.escape(os.path.basename(os.path.abspath(final)))}-[a-z0-9_]{{8}}')  # mkdtemp's names
  for name in os.listdir(parent) if os.path.isdir(parent) else ():
    if stale.fullmatch(name):
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Float [0, 1] -> uint8, rounded to the nearest level."""
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def read_rgba(path: str) -> np.ndarray:
  """An RGBA PNG as float32 [H, W, 4] in [0, 1]; the error names the file when it is missing or has no alpha."""
  image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if image is None or image.ndim != 3 or image.shape[2] != 4:
    raise FileNotFoundError(f'{path} is missing or not an RGBA PNG')
  return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA).astype(np.float32) / 255.


def write_png(path: str, image: np.ndarray) -> None:
  """RGB or RGBA uint8 [H, W, C] (OpenCV stores BGR(A))."""
  code = cv2.COLOR_RGBA2BGRA if image.shape[-1] == 4 else cv2.COLOR_RGB2BGR
  if not cv2.imwrite(path, cv2.cvtColor(image, code)):
    raise OSError(f'could not write {path}')


def write_video(path: str, frames: Sequence[np.ndarray], fps: float) -> None:
  """RGB uint8 frames [H, W, 3] -> an mp4 (OpenCV's mp4v codec)."""
  height, width = frames[0].shape[:2]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
  if not writer.isOpened():
    raise OSError(f'could not open {path} for writing')
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
