"""Pages that show a project's output in a browser: synchronized players, a frame slider and stepping, the facts,
and optionally RGBA layers recomposited in the page with a show/hide toggle per layer.

One self-contained HTML file (styles, script and data inline) beside the files it shows, so it works when
opened from disk (file://) with no network. Videos come from `files.write_video`; layers are drawn from
their RGBA PNGs onto a canvas, back to front in each frame's composite order (the page only draws images,
never reads pixels back, which file:// pages may not do).

  items = [viewer.Panel('original', 'original.mp4'), viewer.Layers(...), viewer.Panel('layer 01', 'layer_01.mp4')]
  viewer.write_page('out/index.html', 'Layers of walk', items, num_frames=24, fps=10, size=(128, 64),
                    facts=[('frames', '24'), ('fps', '10')])
"""

import dataclasses
import html
import json
import os
import urllib.parse
from typing import Sequence, Tuple, Union

from layered_jax import files

CHECKER_CELL = 16  # pixels of one checkerboard cell at the frames' own size (export.over_checkerboard's)


@dataclasses.dataclass(frozen=True)
class Panel:
  """A picture that follows the page's frame: a video file or one image per frame (paths relative to the page)."""
  name: str
  video: str = ''
  images: Sequence[str] = ()
  checkerboard: bool = False  # show transparent images over a checkerboard


@dataclasses.dataclass(frozen=True)
class Layers:
  """RGBA layers the page composites on a canvas, each with a show/hide toggle.

  images[k][f] is layer ids[k]'s frame f (an RGBA PNG, relative to the page); order[f] lists the ids drawn at
  frame f, back to front. hide_note, if given, is shown with the retiming spec that hides the hidden layers.
  """
  ids: Sequence[int]
  names: Sequence[str]
  images: Sequence[Sequence[str]]
  order: Sequence[Sequence[int]]
  name: str = 'composite'
  hide_note: str = ''


def write_page(path: str, title: str, items: Sequence[Union[Panel, Layers]], num_frames: int, fps: float,
               size: Tuple[int, int], facts: Sequence[Tuple[str, str]] = (), frame_names: Sequence[str] = (),
               autoplay: bool = True) -> None:
  """Writes the page. size is the frames' (width, height); small frames are shown enlarged as the videos are."""
  width, height = size
  scale = files.display_scale(height, width)
  _check(path, items, num_frames)
  data = {'frames': num_frames, 'fps': fps, 'names': list(frame_names), 'autoplay': autoplay,
          'sequences': [[_url(u) for u in item.images] for item in items if isinstance(item, Panel) and item.images],
          'layers': next(({'ids': list(item.ids), 'names': list(item.names), 'order': [list(o) for o in item.order],
                           'images': [[_url(u) for u in i] for i in item.images], 'hide_note': item.hide_note}
                          for item in items if isinstance(item, Layers)), None)}
  figures, sequence = [], 0
  for item in items:
    name = html.escape(item.name)
    if isinstance(item, Layers):
      toggles = ''.join(f'<label><input type="checkbox" class="toggle" data-layer="{k}" checked> '
                        f'{html.escape(n)}</label> ' for k, n in zip(item.ids, item.names))
      figures.append(f'<figure id="composite-figure"><canvas id="composite" class="checker" width="{width}" '
                     f'height="{height}"></canvas><figcaption>{name}: {toggles}<div id="hide-note"></div>'
                     '</figcaption></figure>')
    elif item.video:
      figures.append(f'<figure><div class="screen"><video class="panel" src="{_url(item.video)}" muted loop '
                     f'playsinline preload="auto" width="{width * scale}" height="{height * scale}"></video>'
                     f'<canvas class="still" hidden></canvas></div><figcaption>{name} <a href="{_url(item.video)}">'
                     '(file)</a></figcaption></figure>')
    else:
      checker = ' checker' if item.checkerboard else ''
      figures.append(f'<figure><img class="panel{checker}" data-seq="{sequence}" alt="{name}" '
                     f'src="{_url(item.images[0])}" width="{width * scale}" height="{height * scale}">'
                     f'<figcaption>{name}</figcaption></figure>')
      sequence += 1
  rows = ''.join(f'<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>' for k, v in facts)
  style = (_STYLE.replace('WIDTH', str(width * scale)).replace('CELL', str(2 * CHECKER_CELL * scale)))
  payload = json.dumps(data).replace('<', '\\u003c')  # nothing in the data can close the script element
  with open(path, 'w') as f:
    f.write(f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{style}</style></head><body>\n<h1>{html.escape(title)}</h1>\n'
            f'<table class="facts">{rows}</table>\n{_CONTROLS}\n<div class="panels">{"".join(figures)}</div>\n'
            f'<p class="help">Space plays or pauses; the arrow keys step one frame. All pictures show the same '
            f'frame.</p>\n<script type="application/json" id="data">{payload}</script>\n'
            f'<script>{_SCRIPT}</script>\n</body></html>\n')


def _check(path: str, items: Sequence[Union[Panel, Layers]], num_frames: int) -> None:
  """Every item has one picture per frame."""
  if sum(isinstance(item, Layers) for item in items) > 1:
    raise ValueError(f'{path}: one Layers item per page')
  for item in items:
    if isinstance(item, Layers):
      counts = {len(item.order)} | {len(images) for images in item.images}
      if counts != {num_frames} or not len(item.ids) == len(item.names) == len(item.images):
        raise ValueError(f'{path}: {item.name} needs a name, {num_frames} images and {num_frames} composite '
                         f'orders per layer')
    elif bool(item.video) == bool(item.images) or len(item.images) not in (0, num_frames):
      raise ValueError(f'{path}: {item.name} needs one video or {num_frames} images (got {len(item.images)})')


def _url(path: str) -> str:
  """A relative path as a URL, safe in an attribute or in the data (quote leaves only [A-Za-z0-9_.~/-])."""
  return urllib.parse.quote(path.replace(os.sep, '/'))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f6f6f6;color:#222}
h1{font-size:20px;margin:0 0 8px}
table.facts{border-collapse:collapse;font-size:14px;margin-bottom:8px}
table.facts th{text-align:left;padding:1px 12px 1px 0;font-weight:600}
#controls{position:sticky;top:0;z-index:1;background:#f6f6f6;padding:8px 0;display:flex;gap:8px;
  align-items:center;flex-wrap:wrap}
#slider{flex:1;min-width:240px}
#label{font-variant-numeric:tabular-nums;min-width:170px}
.panels{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;width:WIDTHpx;max-width:100%}
figure video,figure canvas,figure img{display:block;width:100%;height:auto;image-rendering:pixelated;background:#000}
[hidden]{display:none!important}
.screen{position:relative}
.screen canvas.still{position:absolute;left:0;top:0;width:100%;height:100%;background:none}
figure .checker{background:repeating-conic-gradient(#d2d2d2 0 25%,#969696 0 50%) 0 0/CELLpx CELLpx}
figcaption{font-size:14px;margin-top:4px}
figcaption label{white-space:nowrap;margin-right:6px}
#hide-note{font-size:13px;margin-top:4px}
#hide-note code{background:#e8e8e8;padding:1px 4px}
.error{color:#b00020;font-weight:600}
.help{font-size:13px;color:#555}
"""

_CONTROLS = """<div id="controls">
<button id="play" type="button">Play</button>
<button id="prev" type="button" title="previous frame (left arrow)">&#9664; frame</button>
<button id="next" type="button" title="next frame (right arrow)">frame &#9654;</button>
<input id="slider" type="range" min="0" value="0" step="1" aria-label="frame">
<span id="label"></span>
<label>speed <select id="speed"><option>0.25</option><option>0.5</option><option selected>1</option>
<option>2</option></select></label>
</div>"""

# The clock: while playing, the first video plays and the others follow it (re-synced when they drift by more
# than a frame); without videos a timer plays. Paused, every video is seeked to the middle of the shown frame
# and shown through a canvas drawn from it (its "still"): after a pause and a seek, Chromium (150, headless)
# now and then goes on painting the frame it paused on, while the element, drawImage and
# requestVideoFrameCallback all have the new one.
_SCRIPT = r"""
(() => {
'use strict';
const data = JSON.parse(document.getElementById('data').textContent);
const n = data.frames, fps = data.fps;
const $ = id => document.getElementById(id);
const slider = $('slider'), label = $('label'), playButton = $('play'), speed = $('speed');
const videos = [...document.querySelectorAll('video.panel')];
const sequences = [...document.querySelectorAll('img.panel')];
let frame = 0, playing = false, clockStart = 0, touched = false;  // touched: the user took control
slider.max = n - 1;

const frameAt = t => Math.max(0, Math.min(n - 1, Math.floor(t * fps + 1e-4)));
const timeOf = i => (i + 0.5) / fps;
const rate = () => parseFloat(speed.value);

function showError(element, text) {
  const caption = element.closest('figure').querySelector('figcaption');
  if (!caption.querySelector('.error')) {
    const span = document.createElement('div');
    span.className = 'error';
    span.textContent = text;
    caption.appendChild(span);
  }
}
for (const video of videos) {
  video.addEventListener('error', () => {
    const code = video.error ? video.error.code : '?';
    showError(video, `this browser cannot play ${video.getAttribute('src')} (media error ${code}); ` +
                     'rewrite the videos with imageio-ffmpeg installed (H.264) or open the file in a video player');
  });
}

// Each video's data-frame says which frame it has presented (what the user sees), where the browser tells.
if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
  for (const video of videos) {
    const presented = (now, meta) => {
      video.dataset.frame = frameAt(meta.mediaTime);
      drawStill(video);
      video.requestVideoFrameCallback(presented);
    };
    video.requestVideoFrameCallback(presented);
  }
}

const stills = new Map(videos.map(video => [video, video.parentElement.querySelector('canvas.still')]));
function drawStill(video) {
  if (playing || video.seeking || video.readyState < 2) return;
  const still = stills.get(video);
  still.width = video.videoWidth;
  still.height = video.videoHeight;
  still.getContext('2d').drawImage(video, 0, 0);
  still.dataset.frame = frameAt(video.currentTime);
  still.hidden = false;
}
for (const video of videos) {
  video.addEventListener('seeked', () => drawStill(video));
  video.addEventListener('loadeddata', () => drawStill(video));
}

const composite = data.layers ? makeComposite(data.layers) : null;

function makeComposite(layers) {
  const canvas = $('composite'), context = canvas.getContext('2d');
  const visible = new Set(layers.ids);
  const cache = new Map();  // url -> Promise of a loaded image; the oldest are dropped
  let wanted = '';
  const load = url => {
    let image = cache.get(url);
    if (!image) {
      image = new Promise((resolve, reject) => {
        const element = new Image();
        element.onload = () => resolve(element);
        element.onerror = () => reject(url);
        element.src = url;
      });
      image.catch(() => {});
      cache.set(url, image);
      if (cache.size > 64 * layers.ids.length) cache.delete(cache.keys().next().value);
    }
    return image;
  };
  const urls = (i, ids) => ids.map(k => layers.images[layers.ids.indexOf(k)][i]);
  async function draw(i) {
    const ids = layers.order[i].filter(k => visible.has(k));
    const key = `${i}:${ids.join(',')}`;
    wanted = key;
    let images;
    try {
      images = await Promise.all(urls(i, ids).map(load));
    } catch (url) {
      showError(canvas, `cannot load ${url}`);
      return;
    }
    if (wanted !== key) return;  // a later frame or toggle asked meanwhile
    context.clearRect(0, 0, canvas.width, canvas.height);
    for (const image of images) context.drawImage(image, 0, 0, canvas.width, canvas.height);
    canvas.dataset.drawn = key;
    if (playing) for (let j = 1; j <= 8; j++) urls((i + j) % n, ids).forEach(load);  // ahead of playback
  }
  const note = $('hide-note');
  function describe() {
    const hidden = layers.ids.filter(k => k !== 0 && !visible.has(k));
    note.textContent = '';
    if (!hidden.length || !layers.hide_note) return;
    const spec = {layers: Object.fromEntries(hidden.map(k => [String(k), {hide: true}]))};
    note.append(layers.hide_note + ' ');
    const code = document.createElement('code');
    code.textContent = JSON.stringify(spec);
    note.append(code);
  }
  for (const box of document.querySelectorAll('input.toggle')) {
    box.addEventListener('change', () => {
      const k = parseInt(box.dataset.layer);
      if (box.checked) visible.add(k); else visible.delete(k);
      describe();
      draw(frame);
    });
  }
  return {draw};
}

function show(i) {
  frame = i;
  slider.value = i;
  label.textContent = `frame ${i + 1} / ${n}` + (data.names.length ? ` (${data.names[i]})` : '');
  for (const image of sequences) {
    const url = data.sequences[image.dataset.seq][i];
    if (image.getAttribute('src') !== url) image.src = url;
  }
  if (composite) composite.draw(i);
}

function seek(i) {
  touched = true;
  i = ((i % n) + n) % n;
  stop();
  for (const video of videos) video.currentTime = timeOf(i);
  show(i);
}

function play() {
  if (playing) return;
  playing = true;
  playButton.textContent = 'Pause';
  const t = timeOf(frame);
  for (const still of stills.values()) still.hidden = true;
  for (const video of videos) {
    video.playbackRate = rate();
    video.currentTime = t;
    video.play().catch(() => {});
  }
  clockStart = performance.now() - frame / fps / rate() * 1000;
  requestAnimationFrame(tick);
}

function stop() {  // playback, without seeking
  if (!playing) return;
  playing = false;
  playButton.textContent = 'Play';
  for (const video of videos) video.pause();
}

function pause() {  // and every video on the frame shown
  if (!playing) return;
  stop();
  for (const video of videos) video.currentTime = timeOf(frame);
}

function tick() {
  if (!playing) return;
  let i;
  if (videos.length) {
    const t = videos[0].currentTime;
    i = frameAt(t);
    for (const video of videos.slice(1)) {
      if (!video.seeking && Math.abs(video.currentTime - t) > 1.5 / fps) video.currentTime = t;
    }
  } else {
    i = Math.floor((performance.now() - clockStart) / 1000 * fps * rate()) % n;
  }
  if (i !== frame) show(i);
  requestAnimationFrame(tick);
}

const toggle = () => { touched = true; playing ? pause() : play(); };
playButton.addEventListener('click', toggle);
$('prev').addEventListener('click', () => seek(frame - 1));
$('next').addEventListener('click', () => seek(frame + 1));
slider.addEventListener('input', () => seek(parseInt(slider.value)));
speed.addEventListener('change', () => {
  for (const video of videos) video.playbackRate = rate();
  clockStart = performance.now() - frame / fps / rate() * 1000;
});
document.addEventListener('keydown', event => {
  const target = event.target, tag = target.tagName;
  if (tag === 'SELECT' || (tag === 'INPUT' && target !== slider) || tag === 'BUTTON') return;
  if (event.key === ' ') {
    toggle();
  } else if (target !== slider && (event.key === 'ArrowLeft' || event.key === 'ArrowRight')) {
    seek(frame + (event.key === 'ArrowLeft' ? -1 : 1));
  } else {
    return;
  }
  event.preventDefault();
});

show(0);
// Start together once every video can show its first frame.
Promise.all(videos.map(video => video.readyState >= 2 ? null :
    new Promise(resolve => video.addEventListener('loadeddata', resolve, {once: true})))).then(() => {
  if (data.autoplay && !touched) play();
});
window.viewer = {seek, play, pause, frame: () => frame, playing: () => playing};
})();
"""
