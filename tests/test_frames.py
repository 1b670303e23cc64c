"""Frame extraction from a video file or a folder of images."""

import json
import os

import cv2
import numpy as np
import pytest

from data_prep import frames
from data_prep.video_folder import DataError


def _write_video(path, count, size=(160, 96)):
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10, size)
  assert writer.isOpened()
  for i in range(count):
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:, : (i + 1) * 10] = (40, 120, 200)
    writer.write(image)
  writer.release()


def test_video_file_gives_low_and_exactly_2x_frames_and_metadata(tmp_path):
  _write_video(str(tmp_path / 'clip.avi'), 4)
  out = tmp_path / 'video'
  (out / '.frames-k9x2ab7q' / 'rgb_256').mkdir(parents=True)  # a killed run's staging
  assert frames.extract(str(tmp_path / 'clip.avi'), str(out), size=(64, 32), people=2) == 4
  assert sorted(os.listdir(out)) == ['metadata.json', 'rgb_256', 'rgb_512']
  assert sorted(os.listdir(out / 'rgb_256')) == ['0001.png', '0002.png', '0003.png', '0004.png']
  assert cv2.imread(str(out / 'rgb_256' / '0003.png')).shape == (32, 64, 3)
  assert cv2.imread(str(out / 'rgb_512' / '0003.png')).shape == (64, 128, 3)
  meta = json.load(open(out / 'metadata.json'))
  assert meta == {'size_LR': [64, 32], 'alphapose_input_size': [160, 96], 'n_textures': 49}
  # The content follows the frames: frame 3 is coloured on its left 30 of 160 columns.
  low = cv2.imread(str(out / 'rgb_256' / '0003.png'))
  assert low[:, :10].mean() > 60 and low[:, 20:].mean() < 5


def test_folder_of_images_and_existing_metadata_is_kept(tmp_path):
  source = tmp_path / 'src'
  source.mkdir()
  for i in range(3):
    cv2.imwrite(str(source / f'frame_{i:03d}.jpg'), np.full((100, 200, 3), 50 * i, np.uint8))
  out = tmp_path / 'video'
  out.mkdir()
  json.dump({'people_layers': [[1, 2]]}, open(out / 'metadata.json', 'w'))
  assert frames.extract(str(source), str(out), size=(96, 64), max_frames=2) == 2
  meta = json.load(open(out / 'metadata.json'))
  assert meta['people_layers'] == [[1, 2]] and meta['size_LR'] == [96, 64]
  with pytest.raises(FileExistsError, match='--overwrite'):
    frames.extract(str(source), str(out), size=(96, 64))


@pytest.mark.parametrize('case,message', [
    ('size', 'multiples of 32'), ('missing', 'does not exist'), ('not a video', 'cannot be opened'),
    ('mixed sizes', 'frame 2 is 50x50, the first was 64x64'), ('empty folder', 'holds no images')])
def test_bad_inputs_are_explained_and_leave_nothing(tmp_path, case, message):
  source = tmp_path / 'src'
  size = (64, 32)
  if case == 'size':
    size = (60, 32)
    source = tmp_path
  elif case == 'not a video':
    source = tmp_path / 'clip.mp4'
    source.write_text('nope')
  elif case in ('mixed sizes', 'empty folder'):
    source.mkdir()
    if case == 'mixed sizes':
      cv2.imwrite(str(source / 'a.png'), np.zeros((64, 64, 3), np.uint8))
      cv2.imwrite(str(source / 'b.png'), np.zeros((50, 50, 3), np.uint8))
  out = tmp_path / 'video'
  with pytest.raises(DataError, match=message):
    frames.extract(str(source), str(out), size=size)
  assert not (out / 'rgb_256').exists() and not (out / 'metadata.json').exists()
