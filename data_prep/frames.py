"""Frames of a video file or a folder of images -> rgb_256/, rgb_512/ and metadata.json.

  python -m data_prep.frames --input=video.mp4 --video_dir=VIDEO [--size=448x256] [--people=2]

Low resolution defaults to the reference's 448x256 (any multiples of 32);
high resolution is exactly 2x. Frames are named 0001.png, 0002.png, ...
metadata.json gets size_LR, alphapose_input_size (the input's own size: run
AlphaPose on the original frames) and, with --people, n_textures.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np

from data_prep.video_folder import HIGH_RES_DIR, LOW_RES_DIR, DataError
from layered_jax import errors, files

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


def image_names(folder: str) -> List[str]:
  """The images of a folder of frames, in frame order (sorted by name)."""
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise DataError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
  return names


def read_frames(source: str) -> Iterator[np.ndarray]:
  """BGR uint8 frames from a video file (OpenCV) or a folder of images (sorted by name)."""
  if os.path.isdir(source):
    for name in image_names(source):
      frame = cv2.imread(os.path.join(source, name), cv2.IMREAD_COLOR)
      if frame is None:
        raise DataError(f'{os.path.join(source, name)} is not a readable image')
      yield frame
    return
  if not os.path.isfile(source):
    raise DataError(f'{source} does not exist')
  capture = cv2.VideoCapture(source)
  if not capture.isOpened():
    raise DataError(f'{source} cannot be opened as a video (OpenCV); extract its frames to a folder instead')
  count = 0
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    count += 1
    yield frame
  capture.release()
  if not count:
    raise DataError(f'{source} has no decodable frames')


def extract(source: str, video_dir: str, size: Tuple[int, int] = (448, 256), people: Optional[int] = None,
            max_frames: Optional[int] = None, overwrite: bool = False) -> int:
  """Writes the frames and metadata.json into video_dir; returns the frame count."""
  width, height = size
  if width % 32 or height % 32 or width <= 0 or height <= 0:
    raise DataError(f'size {width}x{height}: both must be positive multiples of 32 (the UNet halves it 5 times)')
  video_dir = os.path.abspath(video_dir)
  targets = [os.path.join(video_dir, d) for d in (LOW_RES_DIR, HIGH_RES_DIR)]
  if any(os.path.exists(t) for t in targets) and not overwrite:
    raise FileExistsError(f'{video_dir} already has frames; pass --overwrite to replace them')
  os.makedirs(video_dir, exist_ok=True)
  files.remove_stale_staging(os.path.join(video_dir, 'frames'))  # .frames-xxxxxxxx that a killed run left
  staging = tempfile.mkdtemp(prefix='.frames-', dir=video_dir)
  try:
    for d in (LOW_RES_DIR, HIGH_RES_DIR):
      os.makedirs(os.path.join(staging, d))
    count, input_size = 0, None
    for frame in read_frames(source):
      if max_frames is not None and count >= max_frames:
        break
      input_size = input_size or (frame.shape[1], frame.shape[0])
      if (frame.shape[1], frame.shape[0]) != input_size:
        raise DataError(f'{source}: frame {count + 1} is {frame.shape[1]}x{frame.shape[0]}, '
                        f'the first was {input_size[0]}x{input_size[1]}')
      count += 1
      name = f'{count:04d}.png'
      for d, scale in ((LOW_RES_DIR, 1), (HIGH_RES_DIR, 2)):
        resized = cv2.resize(frame, (scale * width, scale * height), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(staging, d, name), resized)
      if count % 50 == 0:
        print(f'{count} frames', file=sys.stderr, flush=True)
    meta_path = os.path.join(video_dir, 'metadata.json')
    metadata = {}
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        metadata = json.load(f)
    metadata.update({'size_LR': [width, height], 'alphapose_input_size': list(input_size)})
    if people is not None:
      metadata['n_textures'] = 24 * people + 1
    for target, d in zip(targets, (LOW_RES_DIR, HIGH_RES_DIR)):
      if os.path.exists(target):
        shutil.rmtree(target)
      os.rename(os.path.join(staging, d), target)
    with open(meta_path, 'w') as f:
      json.dump(metadata, f, indent=1)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return count


def parse_size(text: str) -> Tuple[int, int]:
  """'448x256' -> (448, 256)."""
  try:
    width, height = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(f'size {text!r} must look like 448x256 (W x H)') from None
  return width, height


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--input', required=True, help='a video file, or a folder of frames')
  parser.add_argument('--video_dir', required=True, help='the video folder to write')
  parser.add_argument('--size', type=parse_size, default=(448, 256), help='low-res W x H, multiples of 32')
  parser.add_argument('--people', type=int, help='number of people: sets n_textures = 24 * people + 1')
  parser.add_argument('--max_frames', type=int, help='stop after this many frames')
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  with errors.reported():
    count = extract(args.input, args.video_dir, args.size, args.people, args.max_frames, args.overwrite)
  print(f'wrote {count} frames to {args.video_dir}')


if __name__ == '__main__':
  main()
