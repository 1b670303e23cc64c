"""Image and video files: PNG in and out, browser-playable videos out, and staging so a failure leaves nothing
half-written."""

import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import warnings
from typing import Iterator, Optional, Sequence

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


# Which encoder writes videos: 'h264' (imageio-ffmpeg's bundled ffmpeg, the default) or 'vp9' (OpenCV, the
# fallback when imageio-ffmpeg is missing). Setting this variable forces one.
VIDEO_CODEC_ENV = 'LAYERED_JAX_VIDEO_CODEC'
DISPLAY_SIZE = 512  # smaller frames are enlarged towards this many pixels (larger side) for viewing


@functools.lru_cache(maxsize=None)
def _ffmpeg() -> Optional[str]:
  """imageio-ffmpeg's bundled ffmpeg, or None when it is not installed."""
  try:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError):
    return None


def video_codec() -> str:
  """'h264' when imageio-ffmpeg is there, else 'vp9'; LAYERED_JAX_VIDEO_CODEC overrides."""
  codec = os.environ.get(VIDEO_CODEC_ENV, '').lower()
  if codec not in ('', 'h264', 'vp9'):
    raise ValueError(f'{VIDEO_CODEC_ENV}={codec}: use h264 or vp9')
  if codec == 'h264' and _ffmpeg() is None:
    raise RuntimeError(f'{VIDEO_CODEC_ENV}=h264 needs imageio-ffmpeg: pip install imageio-ffmpeg')
  if codec:
    return codec
  if _ffmpeg() is None:
    _warn_once('imageio-ffmpeg is not installed: videos are VP9 WebM written by OpenCV (older Safari does not '
               'play them); pip install imageio-ffmpeg for H.264 MP4')
    return 'vp9'
  return 'h264'


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
  logging.warning(message)


def display_scale(height: int, width: int) -> int:
  """The integer factor that enlarges small frames towards DISPLAY_SIZE (1 for frames that large or larger).

  Nearest-neighbour by an integer keeps every pixel sharp, and from 2x on each pixel's colour survives
  4:2:0 chroma subsampling, which otherwise averages neighbouring pixels' colours.
  """
  return max(1, DISPLAY_SIZE // max(height, width))


def write_video(path: str, frames: Sequence[np.ndarray], fps: float, scale: int = 0) -> str:
  """RGB uint8 frames [H, W, 3] -> a video every browser plays; returns the file written.

  H.264 (yuv420p, moov atom first) in `path`.mp4 through imageio-ffmpeg's ffmpeg, or, without
  imageio-ffmpeg, VP9 in `path`.webm through OpenCV (path's own .mp4/.webm extension is replaced).
  Frames are enlarged `scale` times with nearest neighbour (0: display_scale), then padded by
  repeating their last row/column to even sizes, which 4:2:0 needs.
  """
  root, ext = os.path.splitext(path)
  if ext not in ('.mp4', '.webm'):
    root = path
  if not len(frames):
    raise ValueError(f'{path}: no frames to write')
  height, width = frames[0].shape[:2]
  scale = scale or display_scale(height, width)
  pad = ((0, (height * scale) % 2), (0, (width * scale) % 2), (0, 0))

  def prepare(frame):
    if frame.shape[:2] != (height, width) or frame.dtype != np.uint8:
      raise ValueError(f'{path}: frames must all be uint8 {width}x{height}, got {frame.dtype} '
                       f'{frame.shape[1]}x{frame.shape[0]}')
    frame = np.repeat(np.repeat(frame[..., :3], scale, 0), scale, 1) if scale > 1 else frame[..., :3]
    return np.pad(frame, pad, mode='edge')

  size = (width * scale + pad[1][1], height * scale + pad[0][1])
  if video_codec() == 'h264':
    import imageio_ffmpeg
    path = root + '.mp4'
    # A keyframe every second keeps seeking quick; crf 18 is visually lossless for these images.
    writer = imageio_ffmpeg.write_frames(
        path, size, fps=fps, codec='libx264', quality=None, macro_block_size=1, ffmpeg_log_level='error',
        output_params=['-crf', '18', '-g', str(max(1, round(fps))), '-movflags', '+faststart'])
    with warnings.catch_warnings():  # JAX warns of every fork; this child runs ffmpeg at once, which is safe
      warnings.filterwarnings('ignore', r'os\.fork\(\) was called', RuntimeWarning)
      writer.send(None)  # starts ffmpeg
    try:
      for frame in frames:
        writer.send(np.ascontiguousarray(prepare(frame)))
    finally:
      writer.close()
    return path
  path = root + '.webm'
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'VP90'), fps, size)
  if not writer.isOpened():
    raise OSError(f'could not open {path} for writing (OpenCV without VP9): pip install imageio-ffmpeg')
  for frame in frames:
    writer.write(cv2.cvtColor(prepare(frame), cv2.COLOR_RGB2BGR))
  writer.release()
  return path
