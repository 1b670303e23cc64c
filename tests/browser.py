"""Headless Chromium for tests of the pages the project writes: serve a folder, open a page, read what it shows.

Uses Debian's chromium and chromedriver through Selenium (no driver download, no network). Without them the
browser tests skip, saying how to install them, unless LAYERED_JAX_REQUIRE_BROWSER=1 (set by .ci/run, which
installs them), where they fail instead. Use the `browser` fixture of conftest.py:

  def test_page(browser, tmp_path):
    with browser_lib.serve(folder) as url:
      browser.open(f'{url}/index.html')
      browser.wait('document.querySelector("video").readyState >= 2')
      pixels = browser.canvas_pixels('#composite')        # RGBA uint8 [H, W, 4]
"""

import base64
import contextlib
import functools
import http.server
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Iterator, Optional, Tuple

import cv2
import numpy as np
import pytest

REQUIRE_ENV = 'LAYERED_JAX_REQUIRE_BROWSER'
INSTALL = ('apt-get install chromium chromium-driver (Debian/Ubuntu) and pip install -r requirements-test.txt; '
           '.ci/run does both')
# Chromium on a machine without network stalls on refused connections unless told not to make them.
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-dev-shm-usage',
         '--disable-background-networking', '--disable-component-update', '--disable-sync', '--mute-audio',
         '--autoplay-policy=no-user-gesture-required', '--force-device-scale-factor=1', '--window-size=1600,1200')


def _executables() -> Tuple[Optional[str], Optional[str]]:
  browser = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
  return browser, shutil.which('chromedriver')


def unavailable(reason: str):
  """Skips the test, or fails it where the browser is required (CI)."""
  message = f'{reason}: {INSTALL}'
  if os.environ.get(REQUIRE_ENV) == '1':
    pytest.fail(message, pytrace=False)
  pytest.skip(message)


class Browser:
  """One headless Chromium, driven by Selenium; every call waits for what it asks."""

  def __init__(self, driver):
    self.driver = driver

  def open(self, url: str) -> None:
    self.driver.get(url)

  def run(self, script: str, *args) -> Any:
    """Runs a function body in the page (`return ...` gives a value; arguments are `arguments[i]`)."""
    return self.driver.execute_script(script, *args)

  def wait(self, condition: str, timeout: float = 20., *args) -> Any:
    """Waits until a JavaScript expression is truthy and returns its value; the error shows the expression."""
    deadline = time.monotonic() + timeout
    while True:
      value = self.run(f'return ({condition});', *args)
      if value:
        return value
      if time.monotonic() > deadline:
        raise TimeoutError(f'after {timeout:.0f} s the page still has not: {condition}')
      time.sleep(0.05)

  def canvas_pixels(self, selector: str) -> np.ndarray:
    """A canvas's pixels, RGBA uint8 [H, W, 4] (from an http:// page: file:// taints canvases that drew files)."""
    url = self.run('return document.querySelector(arguments[0]).toDataURL("image/png");', selector)
    return _decode_png(url)

  def video_pixels(self, selector: str, index: int = 0) -> np.ndarray:
    """The frame the index-th video matching selector shows now, RGB uint8 [videoHeight, videoWidth, 3]."""
    url = self.run("""
        const video = document.querySelectorAll(arguments[0])[arguments[1]];
        const canvas = document.createElement('canvas');
        canvas.width = video.videoWidth; canvas.height = video.videoHeight;
        canvas.getContext('2d').drawImage(video, 0, 0);
        return canvas.toDataURL('image/png');""", selector, index)
    return _decode_png(url)[..., :3]

  def box(self, selector: str, index: int = 0) -> Tuple[int, int, int, int]:
    """(x, y, width, height) of the index-th element matching selector, in screenshot pixels."""
    rect = self.run('const r = document.querySelectorAll(arguments[0])[arguments[1]].getBoundingClientRect();'
                    'return [r.left + scrollX, r.top + scrollY, r.width, r.height];', selector, index)
    return tuple(int(round(v)) for v in rect)

  def screenshot(self, path: str) -> np.ndarray:
    """Saves a screenshot of the whole page (grown to fit it) and returns it as RGB uint8."""
    width, height, chrome = self.run('const e = document.documentElement;'
                                     'return [e.scrollWidth, e.scrollHeight, outerHeight - innerHeight];')
    window = self.driver.get_window_size()
    if height > self.run('return innerHeight;'):
      self.driver.set_window_size(max(window['width'], width), height + chrome)
    self.run('window.scrollTo(0, 0);')
    # Two animation frames: what the page last drew (a seeked video, a canvas) reaches the screen.
    self.driver.execute_async_script('const done = arguments[0];'
                                     'requestAnimationFrame(() => requestAnimationFrame(() => done()));')
    self.driver.save_screenshot(path)
    image = cv2.imread(path)
    if image is None:
      raise OSError(f'no screenshot was written to {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_png(data_url: str) -> np.ndarray:
  data = base64.b64decode(data_url.split(',', 1)[1])
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


@contextlib.contextmanager
def start() -> Iterator[Browser]:
  """A headless Chromium (skips or fails, see above, when it or Selenium is missing)."""
  browser, driver = _executables()
  if not browser or not driver:
    unavailable('no chromium/chromedriver on PATH')
  try:
    from selenium import webdriver
  except ImportError:
    unavailable('selenium is not installed')
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  profile = tempfile.mkdtemp(prefix='layered_jax_chromium-')
  for flag in FLAGS + (f'--user-data-dir={profile}',):
    options.add_argument(flag)
  # An explicit driver path: Selenium Manager never tries to download one.
  session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
  try:
    session.set_script_timeout(30)
    yield Browser(session)
  finally:
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
  """Static files with byte ranges: Chromium seeks a video only when its server answers ranges."""

  def log_message(self, *args):
    pass

  def send_head(self):
    self._remaining = None
    match = re.fullmatch(r'bytes=(\d*)-(\d*)', self.headers.get('Range', ''))
    path = self.translate_path(self.path)
    if not match or not os.path.isfile(path):
      return super().send_head()
    size = os.path.getsize(path)
    start = int(match[1]) if match[1] else max(0, size - int(match[2] or 0))
    end = min(int(match[2]), size - 1) if match[1] and match[2] else size - 1
    if start >= size:
      self.send_error(416)
      return None
    f = open(path, 'rb')
    f.seek(start)
    self.send_response(206)
    self.send_header('Content-Type', self.guess_type(path))
    self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
    self.send_header('Content-Length', str(end - start + 1))
    self.send_header('Accept-Ranges', 'bytes')
    self.end_headers()
    self._remaining = end - start + 1
    return f

  def copyfile(self, source, outputfile):
    remaining = self._remaining
    if remaining is None:
      return super().copyfile(source, outputfile)
    while remaining > 0:
      chunk = source.read(min(remaining, 1 << 16))
      if not chunk:
        break
      outputfile.write(chunk)
      remaining -= len(chunk)


@contextlib.contextmanager
def serve(directory: str) -> Iterator[str]:
  """Serves a folder at http://127.0.0.1:PORT (returned) while the block runs."""
  handler = functools.partial(_RangeHandler, directory=directory)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()
