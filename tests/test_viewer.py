"""Videos and pages people open: the writer's codecs and sizes, and the export and retime pages in headless Chromium.

The export is built by export._write_export from a constructed model whose frames say which frame they are:
a white mark on the background at x = 16 f, layer 1 a red block (and its half-transparent shadow) at x = 12 f,
layer 2 a green block at x = 100 - 12 f, overlapping layer 1 on frames 4 and 5, in front on even frames.
"""

import json
import os
import re
import subprocess

import cv2
import numpy as np
import pytest

from layered_jax import export, files, retime, viewer
from tests import browser as browser_lib

N, H, W, FPS = 8, 64, 128, 10
SCALE = 4  # 128 px wide frames are shown 4x (files.display_scale)
ORDER = [[1, 2] if f % 2 == 0 else [2, 1] for f in range(N)]  # back to front


def _layer(k: int, f: int) -> np.ndarray:
  """Layer k of frame f, RGBA uint8."""
  image = np.zeros((H, W, 4), np.uint8)
  if k == 0:
    image[...] = (70, 90, 150, 255)
    image[:, :, 0] = np.linspace(40, 110, W).astype(np.uint8)  # a gradient: the place of every pixel matters
    image[58:64, 16 * f:16 * f + 8] = (255, 255, 255, 255)
  elif k == 1:
    image[8:40, 12 * f:12 * f + 16] = (230, 20, 20, 255)
    image[40:48, 12 * f:12 * f + 16] = (0, 0, 0, 128)  # a shadow
  else:
    image[24:56, 100 - 12 * f:124 - 12 * f] = (20, 220, 20, 255)
  return image


def _composite(layers, order) -> np.ndarray:
  """Back-to-front "over" of uint8 RGBA layers {id: image}, the layers listed in order; RGB float."""
  out = layers[0][..., :3].astype(np.float64)
  for k in order:
    alpha = layers[k][..., 3:] / 255.
    out = layers[k][..., :3] * alpha + out * (1 - alpha)
  return out


def _frame_of(pixels: np.ndarray, what: str) -> int:
  """Which frame a picture (RGB, shown SCALE x) shows, from its marks; -1 if none."""
  small = pixels[SCALE // 2::SCALE, SCALE // 2::SCALE].astype(int)
  r, g, b = small[..., 0], small[..., 1], small[..., 2]
  if what == 'layer 01':
    columns = np.nonzero(((r > 180) & (g < 70) & (b < 70))[20])[0]
    return int(columns[0]) // 12 if len(columns) else -1
  if what == 'layer 02':
    columns = np.nonzero(((g > 180) & (r < 70) & (b < 70))[50])[0]
    return (100 - int(columns[0])) // 12 if len(columns) else -1
  columns = np.nonzero(((r > 235) & (g > 235) & (b > 235))[61])[0]  # the background's white mark
  return int(columns[0]) // 16 if len(columns) else -1


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('export') / 'export')
  os.makedirs(out)
  rgb = np.stack([_composite({k: _layer(k, f) for k in (0, 1, 2)}, ORDER[f]).astype(np.uint8) for f in range(N)])

  def render(index, pids, target):  # the model: layers in the frame's stack order, in [-1, 1]
    f = int(index[0, 0])
    stack = np.stack([_layer(k, f) for k in [0] + ORDER[f]]).astype(np.float32) / 127.5 - 1
    return stack[None], rgb[f:f + 1].astype(np.float32) / 127.5 - 1

  frames = {'rgb': rgb, 'uv': np.arange(N).reshape(N, 1), 'pids': np.zeros((N, 1))}
  meta = {'frame_names': [f'{f + 1:04d}.png' for f in range(N)], 'composite_order': ORDER, 'layer_ids': [1, 2],
          'video_dir': '/data/walk'}
  export._write_export(out, frames, meta, render, False, FPS, {'steps': 300, 'epoch': 100, 'stage': 'layers'})
  return out


def _codec(path: str) -> str:
  """'h264 yuv420p 512x256' from ffmpeg's description of a video file."""
  info = subprocess.run([files._ffmpeg(), '-hide_banner', '-i', path], capture_output=True, text=True).stderr
  match = re.search(r'Video: (\w+).*?, (\w+)\(.*?, (\d+x\d+)', info)
  return ' '.join(match.groups()) if match else info


def _atoms(path: str):
  """The top-level MP4 boxes, in file order."""
  names = []
  with open(path, 'rb') as f:
    while header := f.read(8):
      size, name = int.from_bytes(header[:4], 'big'), header[4:].decode('latin-1')
      names.append(name)
      f.seek(size - 8, os.SEEK_CUR)
  return names


def _decode(path: str) -> np.ndarray:
  capture, frames = cv2.VideoCapture(path), []
  while True:
    ok, frame = capture.read()
    if not ok:
      return np.stack(frames)
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def _frames(count, height, width):
  return [_composite({k: _layer(k, f)[:height, :width] for k in (0, 1)}, [1]).astype(np.uint8)
          for f in range(count)]


def test_videos_are_h264_enlarged_even_sized_and_start_with_their_index(tmp_path):
  frames = _frames(N, H, W)
  path = files.write_video(str(tmp_path / 'clip.mp4'), frames, FPS)
  assert path == str(tmp_path / 'clip.mp4') and _codec(path) == 'h264 yuv420p 512x256'
  atoms = _atoms(path)
  assert atoms.index('moov') < atoms.index('mdat'), atoms  # +faststart: playback starts before the whole file
  decoded = _decode(path)
  assert decoded.shape == (N, 256, 512, 3)
  # Nearest-neighbour 4x: every 4x4 block is one pixel, and each pixel keeps its colour through 4:2:0.
  shown = decoded[:, 1::4, 1::4].astype(int)
  assert np.abs(shown - np.stack(frames)).mean() < 1.5 and [_frame_of(d, 'original') for d in decoded] == list(range(N))
  # Large odd-sized frames: not enlarged, padded to even sizes by repeating the edge.
  big = [np.repeat(np.repeat(f, 5, 0), 5, 1) for f in _frames(3, 63, 121)]  # 315x605
  path = files.write_video(str(tmp_path / 'big'), big, FPS)
  assert _codec(path) == 'h264 yuv420p 606x316'
  decoded = _decode(path).astype(int)
  assert np.abs(decoded[:, :315, :605] - np.stack(big)).mean() < 1.5
  assert np.abs(decoded[:, 315] - decoded[:, 314]).mean() < 2  # the repeated row and column
  assert np.abs(decoded[:, :, 605] - decoded[:, :, 604]).mean() < 2


def test_without_imageio_ffmpeg_videos_are_vp9_webm(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(files, '_ffmpeg', lambda: None)
  files._warn_once.cache_clear()
  assert files.video_codec() == 'vp9'
  assert 'pip install imageio-ffmpeg' in caplog.text  # the user learns why and what to do
  frames = _frames(N, H, W)
  path = files.write_video(str(tmp_path / 'clip.mp4'), frames, FPS)
  assert path == str(tmp_path / 'clip.webm')
  decoded = _decode(path)
  assert decoded.shape == (N, 256, 512, 3)
  assert [_frame_of(d, 'original') for d in decoded] == list(range(N))
  monkeypatch.setenv(files.VIDEO_CODEC_ENV, 'h264')
  with pytest.raises(RuntimeError, match='pip install imageio-ffmpeg'):
    files.write_video(str(tmp_path / 'again'), frames, FPS)


def test_export_writes_h264_videos_and_a_page_with_its_facts(export_dir):
  names = sorted(os.listdir(export_dir))
  assert [n for n in names if n.endswith(('.mp4', '.webm'))] == [
      'layer_00.mp4', 'layer_01.mp4', 'layer_02.mp4', 'original.mp4', 'reconstruction.mp4']
  for name in names:
    if name.endswith('.mp4'):
      assert _codec(os.path.join(export_dir, name)) == 'h264 yuv420p 512x256', name
  # Layers are shown over a checkerboard of 16-pixel cells where they are transparent.
  board = _decode(os.path.join(export_dir, 'layer_02.mp4'))[0, 1::4, 1::4].astype(int)
  cells = [board[y, x] for y, x in ((4, 4), (4, 20), (20, 4), (20, 20))]
  assert np.abs(np.array(cells) - np.array([150, 210, 210, 150])[:, None]).max() <= 4, cells
  info = json.load(open(os.path.join(export_dir, 'layers.json')))
  assert info['training'] == {'steps': 300, 'epoch': 100, 'stage': 'layers'}


def test_a_page_needs_one_picture_per_frame(tmp_path):
  path = str(tmp_path / 'index.html')
  with pytest.raises(ValueError, match='real needs one video or 8 images'):
    viewer.write_page(path, 't', [viewer.Panel('real', 'real.mp4', images=['a.png'] * N)], N, FPS, (W, H))
  with pytest.raises(ValueError, match='real needs one video or 8 images'):
    viewer.write_page(path, 't', [viewer.Panel('real', images=['a.png'] * 3)], N, FPS, (W, H))
  layers = viewer.Layers([0, 1], ['background', 'person'], [['a.png'] * N, ['b.png'] * (N - 1)], [[0, 1]] * N)
  with pytest.raises(ValueError, match='composite needs a name, 8 images'):
    viewer.write_page(path, 't', [layers], N, FPS, (W, H))
  assert not os.path.exists(path)


def _wait_videos(browser, width):
  """Waits until every video can show its frame; returns [readyState, videoWidth] per video."""
  return browser.wait(f"""(() => {{
      const videos = [...document.querySelectorAll('video')];
      const bad = videos.find(v => v.error);
      if (bad) throw new Error(bad.getAttribute('src') + ' failed: media error ' + bad.error.code);
      return videos.length && videos.every(v => v.readyState >= 2 && !v.seeking && v.videoWidth === {width})
          && videos.map(v => [v.readyState, v.videoWidth]);
    }})()""")


def _goto(browser, frame: int, drawn: str = ''):
  """Drags the slider to a frame; waits for the videos (and the composite, if drawn) to be there."""
  browser.run("const s = document.getElementById('slider'); s.value = arguments[0];"
              "s.dispatchEvent(new Event('input', {bubbles: true}));", frame)
  _wait_for_frame(browser, frame, drawn)


def _wait_for_frame(browser, frame, drawn=''):
  """Waits until every video is paused on the frame, has presented it and shows it (its still), and the
  composite drew it if drawn is given."""
  browser.wait("[...document.querySelectorAll('video')].every(v => v.paused && !v.seeking && v.readyState >= 2 && "
               f"Math.abs(v.currentTime - {(frame + 0.5) / FPS}) < 1e-3 && v.dataset.frame === '{frame}') && "
               "[...document.querySelectorAll('canvas.still')].every(c => !c.hidden && c.dataset.frame === "
               f"'{frame}')")
  if drawn:
    browser.wait(f"document.getElementById('composite').dataset.drawn === '{drawn}'")


def _shown(browser):
  """{caption: frame shown} for every video on the page."""
  captions = browser.run("return [...document.querySelectorAll('video')].map("
                         "v => v.closest('figure').querySelector('figcaption').textContent);")
  result = {}
  for i, caption in enumerate(captions):
    what = 'layer 01' if 'layer 01' in caption else 'layer 02' if 'layer 02' in caption else 'original'
    result[caption.split(' (')[0]] = _frame_of(browser.video_pixels('video', i), what)
  return result


def _layers_at(export_dir, f):
  return {k: files.to_uint8(files.read_rgba(os.path.join(export_dir, 'layers', f'{k:02d}', f'{f + 1:04d}.png')))
          for k in (0, 1, 2)}


def test_export_page_plays_scrubs_and_recomposites_in_chromium(browser, export_dir, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  with browser_lib.serve(export_dir) as url:
    browser.open(f'{url}/index.html')
    assert len(_wait_videos(browser, W * SCALE)) == 5
    facts = browser.run("return document.querySelector('table.facts').innerText;")
    for fact in ('8 (0001.png to 0008.png)', '128x64', '10', '00 background, 01 layer 01, 02 layer 02', '300 steps'):
      assert fact in facts, facts
    # The slider, the next button and the arrow keys move every video to the same frame.
    _goto(browser, 3, '3:0,2,1')
    assert _shown(browser) == {'original': 3, 'reconstruction': 3, 'background': 3, 'layer 01': 3, 'layer 02': 3}
    browser.driver.find_element(By.ID, 'next').click()
    _wait_for_frame(browser, 4, '4:0,1,2')
    browser.driver.find_element(By.ID, 'slider').send_keys(Keys.ARROW_RIGHT)
    _wait_for_frame(browser, 5, '5:0,2,1')
    assert set(_shown(browser).values()) == {5}
    assert 'frame 6 / 8 (0006.png)' in browser.run("return document.getElementById('label').textContent;")

    # The canvas composites the PNGs in each frame's order: frame 4 has layer 2 in front, frame 5 layer 1.
    for f, drawn in ((4, '4:0,1,2'), (5, '5:0,2,1')):
      _goto(browser, f, drawn)
      want = _composite(_layers_at(export_dir, f), ORDER[f])
      got = browser.canvas_pixels('#composite')
      assert got.shape == (H, W, 4) and np.abs(got[..., :3] - want).max() <= 2, f
    assert np.abs(_composite(_layers_at(export_dir, 5), [1, 2]) - want).max() > 100  # the order shows

    # Hiding layer 1 changes the canvas where layer 1 is opaque (as far as it shows) and nowhere else.
    layers = _layers_at(export_dir, 5)
    before = browser.canvas_pixels('#composite')[..., :3].astype(int)
    browser.driver.find_element(By.CSS_SELECTOR, 'input.toggle[data-layer="1"]').click()
    browser.wait("document.getElementById('composite').dataset.drawn === '5:0,2'")
    after = browser.canvas_pixels('#composite')[..., :3].astype(int)
    assert np.abs(after - _composite(layers, [2])).max() <= 2
    changed = np.abs(after - before).max(-1) > 4
    assert not np.any(changed & (layers[1][..., 3] == 0))
    assert np.all(changed[layers[1][..., 3] == 255]) and changed.sum() == np.count_nonzero(layers[1][..., 3])
    assert '"1":{"hide":true}' in browser.run("return document.getElementById('hide-note').textContent;")

    # What a user sees: the composite without layer 1, and the videos showing frame 5.
    shot = browser.screenshot(str(tmp_path / 'export_page.png'))
    x, y, w, h = browser.box('#composite')
    assert (w, h) == (W * SCALE, H * SCALE)
    seen = shot[y:y + h, x:x + w][SCALE // 2::SCALE, SCALE // 2::SCALE].astype(int)
    assert np.abs(seen - _composite(layers, [2])).mean() < 3
    x, y, w, h = browser.box('video')
    seen = shot[y:y + h, x:x + w]
    assert _frame_of(seen, 'original') == 5 and _frame_of(seen, 'layer 01') == 5
    assert np.abs(seen[SCALE // 2::SCALE, SCALE // 2::SCALE].astype(int) - _composite(layers, ORDER[5])).mean() < 4

    # Playing moves every video and the composite on together.
    browser.driver.find_element(By.ID, 'play').click()
    browser.wait("[...document.querySelectorAll('video')].every(v => !v.paused && v.currentTime > 0.25) && "
                 "window.viewer.frame() !== 5")
    browser.driver.find_element(By.ID, 'play').click()
    frame = browser.run('return window.viewer.frame();')
    _wait_for_frame(browser, frame, f'{frame}:0,' + ','.join(str(k) for k in ORDER[frame] if k != 1))
    assert set(_shown(browser).values()) == {frame}


def test_export_page_opened_from_disk_plays_and_draws(browser, export_dir, tmp_path):
  """file:// as a user double-clicking index.html: the videos play, and the canvas draws (read on a screenshot,
  as a file:// canvas that drew files cannot be read back)."""
  from selenium.webdriver.common.by import By
  browser.open(f'file://{export_dir}/index.html')
  _wait_videos(browser, W * SCALE)
  browser.wait("[...document.querySelectorAll('video')].every(v => !v.paused && v.currentTime > 0.2)")  # autoplay
  browser.driver.find_element(By.ID, 'play').click()  # pause
  frame = browser.run('return window.viewer.frame();')
  _wait_for_frame(browser, frame, f'{frame}:0,' + ','.join(map(str, ORDER[frame])))
  shot = browser.screenshot(str(tmp_path / 'export_page_file.png'))
  x, y, w, h = browser.box('#composite')
  seen = shot[y:y + h, x:x + w][SCALE // 2::SCALE, SCALE // 2::SCALE].astype(int)
  assert np.abs(seen - _composite(_layers_at(export_dir, frame), ORDER[frame])).mean() < 3, frame
  x, y, w, h = browser.box('video')
  assert _frame_of(shot[y:y + h, x:x + w], 'original') == frame


def test_retime_page_shows_before_and_after_in_step(browser, export_dir, tmp_path):
  out = retime.retime(export_dir, {'layers': {'1': {'offset': 2}}}, str(tmp_path / 'retimed'))
  assert sorted(n for n in os.listdir(out) if n.endswith('.mp4')) == ['before.mp4', 'retimed.mp4']
  assert _codec(os.path.join(out, 'retimed.mp4')) == 'h264 yuv420p 512x256'
  with browser_lib.serve(out) as url:
    browser.open(f'{url}/index.html')
    assert len(_wait_videos(browser, W * SCALE)) == 2
    _goto(browser, 3)
    before, after = (browser.video_pixels('video', i) for i in (0, 1))
    assert (_frame_of(before, 'original'), _frame_of(before, 'layer 01')) == (3, 3)
    assert (_frame_of(after, 'original'), _frame_of(after, 'layer 01')) == (3, 5)  # layer 1 two frames ahead
    shot = browser.screenshot(str(tmp_path / 'retime_page.png'))
    boxes = browser.run("return [...document.querySelectorAll('video')].map(v => {"
                        "const r = v.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; });")
    assert boxes[0][1] == boxes[1][1] and boxes[1][0] > boxes[0][0] + boxes[0][2]  # side by side
    seen = [shot[int(y):int(y + h), int(x):int(x + w)] for x, y, w, h in boxes]
    assert [_frame_of(s, 'layer 01') for s in seen] == [3, 5] and [_frame_of(s, 'original') for s in seen] == [3, 3]


def test_a_page_of_vp9_videos_and_image_sequences_plays_in_chromium(browser, tmp_path, monkeypatch):
  """The fallback codec plays in the browser, and image sequences follow the slider like videos."""
  monkeypatch.setenv(files.VIDEO_CODEC_ENV, 'vp9')
  frames = _frames(N, H, W)
  video = os.path.basename(files.write_video(str(tmp_path / 'generated'), frames, FPS))
  os.makedirs(tmp_path / 'real')
  for f, frame in enumerate(frames):
    files.write_png(str(tmp_path / 'real' / f'{f:04d}.png'), frame)
  panels = [viewer.Panel('generated', video), viewer.Panel('real', images=[f'real/{f:04d}.png' for f in range(N)])]
  viewer.write_page(str(tmp_path / 'index.html'), 'generated vs real', panels, N, FPS, (W, H), [('frames', str(N))],
                    autoplay=False)
  with browser_lib.serve(str(tmp_path)) as url:
    browser.open(f'{url}/index.html')
    assert video.endswith('.webm') and len(_wait_videos(browser, W * SCALE)) == 1
    _goto(browser, 6)
    browser.wait("(i => i.complete && i.naturalWidth === 128 && i.getAttribute('src') === 'real/0006.png')"
                 "(document.querySelector('img.panel'))")
    assert _frame_of(browser.video_pixels('video'), 'original') == 6
    shot = browser.screenshot(str(tmp_path / 'page.png'))
    x, y, w, h = browser.box('img.panel')
    assert (w, h) == (W * SCALE, H * SCALE) and _frame_of(shot[y:y + h, x:x + w], 'original') == 6
