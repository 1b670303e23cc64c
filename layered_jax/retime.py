"""Re-time people: edit exported layers in time and render the new video.

  python -m layered_jax.retime --layers=EXPORT --spec=SPEC.json --output=OUT
  python -m layered_jax.retime --layers=EXPORT --align=1:12,2:20      # propose offsets

EXPORT is what `layered_jax.main` exports (layers/NN/FFFF.png + layers.json),
or a synthetic video's ground_truth/. SPEC (JSON, or YAML if PyYAML is there):

  {"length": 60,                     output frames (default: the source's)
   "order": [2, 1],                  back-to-front override of the people layers
   "blend": false,                   fractional source times: nearest frame, or blend the two
   "layers": {
     "1": {"offset": 8},             output frame f shows source frame f + 8
     "2": {"speed": 0.5},            source = offset + speed * f
     "3": {"keyframes": [[0, 0], [30, 10], [59, 59]]},  output time -> source time, piecewise linear
     "4": {"freeze": [{"from": 10, "to": 30, "source": 12}]},  hold a frame over output 10..30
     "5": {"hide": true},
     "6": {"duplicate": [{"offset": -6}, {"offset": -12}]}}}   extra copies (e.g. a trail)

Source times outside the video are clamped to its first/last frame. Layer 0
(the background) follows the output frame unless the spec says otherwise;
people are composited back to front in the order of the background's source
frame. Writes OUT/frames/FFFF.png, OUT/retimed.mp4, OUT/before.mp4 (the layers
composited as they were; .webm for both without imageio-ffmpeg), OUT/index.html
(before and after side by side, synchronized, with a frame slider) and
OUT/contact_sheet.png (before/after for a few frames).
"""

import argparse
import dataclasses
import json
import math
import numbers
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from layered_jax import errors, files, viewer
from layered_jax.models.layers import composite

TIME_KEYS = {'offset', 'speed', 'keyframes', 'freeze'}
LAYER_KEYS = TIME_KEYS | {'hide', 'duplicate'}


class SpecError(errors.UserError, ValueError):
  """A retiming spec that cannot be applied; the message says what is wrong."""


def _number(value, where: str) -> float:
  """A finite JSON/YAML number (not a string, bool or NaN)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise SpecError(f'{where} must be a finite number, not {value!r}')
  return float(value)


def _whole(value, where: str) -> int:
  number = _number(value, where)
  if number != int(number):
    raise SpecError(f'{where} must be a whole number, not {value!r}')
  return int(number)


def _of_type(value, kind: type, where: str, example: str):
  if not isinstance(value, kind):
    raise SpecError(f'{where} must be a {kind.__name__} like {example}, not {value!r}')
  return value


@dataclasses.dataclass(frozen=True)
class LayerVideo:
  root: str
  layer_ids: List[int]
  frames: List[str]
  composite_order: List[List[int]]
  fps: float

  @property
  def num_frames(self) -> int:
    return len(self.frames)

  def read(self, layer: int, index: int) -> np.ndarray:
    """RGBA float in [0, 1] of one layer's frame."""
    return files.read_rgba(os.path.join(self.root, 'layers', f'{layer:02d}', self.frames[index]))


def load_layers(export_dir: str) -> LayerVideo:
  path = os.path.join(export_dir, 'layers.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing: point --layers at an export (layers/ + layers.json)')
  with open(path) as f:
    info = json.load(f)
  return LayerVideo(os.path.abspath(export_dir), [int(k) for k in info['layer_ids']], list(info['frames']),
                    [list(map(int, o)) for o in info['composite_order']], float(info.get('fps', 24.)))


@dataclasses.dataclass(frozen=True)
class TimeMap:
  """Output frame -> source time for one copy of a layer."""
  offset: float = 0.
  speed: float = 1.
  keyframes: Optional[Tuple[Tuple[float, float], ...]] = None
  freezes: Tuple[Tuple[int, int, float], ...] = ()  # (from, to, source), inclusive

  def __call__(self, output_frames: np.ndarray) -> np.ndarray:
    f = output_frames.astype(np.float64)
    if self.keyframes is not None:
      out_t, src_t = zip(*self.keyframes)
      times = np.interp(f, out_t, src_t)
    else:
      times = self.offset + self.speed * f
    for start, end, source in self.freezes:
      times = np.where((f >= start) & (f <= end), source, times)
    return times


@dataclasses.dataclass(frozen=True)
class Plan:
  length: int
  copies: Dict[int, List[TimeMap]]  # layer id -> time maps (original first, then duplicates); hidden: absent
  order: Optional[List[int]]
  blend: bool


def _time_map(spec: Mapping, where: str) -> TimeMap:
  _of_type(spec, dict, where, '{"offset": 8}')
  unknown = set(spec) - TIME_KEYS
  if unknown:
    raise SpecError(f'{where}: unknown keys {sorted(unknown)}; a time map takes {sorted(TIME_KEYS)}')
  if 'keyframes' in spec and ({'offset', 'speed'} & set(spec)):
    raise SpecError(f'{where}: keyframes replace offset and speed; give one or the other')
  speed = _number(spec.get('speed', 1.), f'{where}: speed')
  if speed <= 0:
    raise SpecError(f'{where}: speed {speed} must be positive (use keyframes to play backwards)')
  keyframes = None
  if 'keyframes' in spec:
    points = _of_type(spec['keyframes'], list, f'{where}: keyframes', '[[output_frame, source_frame], ...]')
    if not all(isinstance(p, list) and len(p) == 2 for p in points):
      raise SpecError(f'{where}: keyframes must be [[output_frame, source_frame], ...], not {points!r}')
    keyframes = tuple((_number(a, f'{where}: keyframe {a!r}'), _number(b, f'{where}: keyframe {b!r}'))
                      for a, b in points)
    outs = [k[0] for k in keyframes]
    if len(keyframes) < 2 or any(b <= a for a, b in zip(outs, outs[1:])):
      raise SpecError(f'{where}: keyframes need at least two points with increasing output frames')
  freezes = []
  for freeze in _of_type(spec.get('freeze', []), list, f'{where}: freeze', '[{"from": 10, "to": 30}]'):
    if not isinstance(freeze, dict) or not {'from', 'to'} <= set(freeze) <= {'from', 'to', 'source'}:
      raise SpecError(f'{where}: each freeze is {{"from": frame, "to": frame, "source": frame}}, not {freeze!r}')
    start, end = _whole(freeze['from'], f'{where}: freeze "from"'), _whole(freeze['to'], f'{where}: freeze "to"')
    if end < start:
      raise SpecError(f'{where}: freeze from {start} to {end} ends before it starts')
    source = freeze.get('source')
    freezes.append((start, end, None if source is None else _number(source, f'{where}: freeze "source"')))
  freezes.sort()
  for (a0, a1, _), (b0, b1, _) in zip(freezes, freezes[1:]):
    if b0 <= a1:
      raise SpecError(f'{where}: freezes {a0}-{a1} and {b0}-{b1} overlap')
  partial = TimeMap(_number(spec.get('offset', 0.), f'{where}: offset'), speed, keyframes)
  # A freeze without "source" holds the frame shown at its start.
  resolved = tuple((a, b, float(s) if s is not None else float(partial(np.array([a]))[0]))
                   for a, b, s in freezes)
  return dataclasses.replace(partial, freezes=resolved)


def parse_spec(spec: Mapping, video: LayerVideo) -> Plan:
  """Checks a spec against the layers and turns it into per-layer time maps."""
  _of_type(spec, dict, 'the spec', '{"layers": {"1": {"offset": 8}}}')
  unknown = set(spec) - {'length', 'order', 'blend', 'layers'}
  if unknown:
    raise SpecError(f'unknown top-level keys {sorted(unknown)}; use length, order, blend, layers')
  length = _whole(spec.get('length', video.num_frames), 'length')
  if length <= 0:
    raise SpecError(f'length {length} must be positive')
  layers = {str(k): v for k, v in _of_type(spec.get('layers', {}), dict, 'layers', '{"1": {"offset": 8}}').items()}
  bad_ids = sorted(k for k in layers if not k.isdigit() or int(k) not in video.layer_ids)
  if bad_ids:
    raise SpecError(f'unknown layer ids {bad_ids}; this video has {video.layer_ids}')
  copies = {}
  for layer in video.layer_ids:
    entry = _of_type(layers.get(str(layer), {}), dict, f'layer {layer}', '{"offset": 8}')
    unknown = set(entry) - LAYER_KEYS
    if unknown:
      raise SpecError(f'layer {layer}: unknown keys {sorted(unknown)}; use {sorted(LAYER_KEYS)}')
    if entry.get('hide'):
      if layer == 0:
        raise SpecError('layer 0 is the background; it cannot be hidden')
      continue
    maps = [_time_map({k: v for k, v in entry.items() if k in TIME_KEYS}, f'layer {layer}')]
    duplicates = _of_type(entry.get('duplicate', []), list, f'layer {layer}: duplicate', '[{"offset": -4}]')
    maps += [_time_map(d, f'layer {layer} duplicate {i + 1}') for i, d in enumerate(duplicates)]
    copies[layer] = maps
  order = spec.get('order')
  if order is not None:
    order = [_whole(k, 'order entry') for k in _of_type(order, list, 'order', '[2, 1]')]
    people = sorted(k for k in video.layer_ids if k != 0)
    if sorted(order) != people:
      raise SpecError(f'order {order} must list each people layer once: {people}')
  return Plan(length, copies, order, bool(spec.get('blend', False)))


def _sample(video: LayerVideo, layer: int, time: float, blend: bool, cache: Dict) -> np.ndarray:
  """A layer at a (clamped, possibly fractional) source time; blending is on premultiplied colour."""
  time = float(np.clip(time, 0, video.num_frames - 1))

  def frame(i):
    if (layer, i) not in cache:
      cache[(layer, i)] = video.read(layer, i)
    return cache[(layer, i)]

  if not blend or time == int(time):
    return frame(int(np.floor(time + 0.5)))
  low, weight = int(np.floor(time)), time - np.floor(time)
  a, b = frame(low), frame(min(low + 1, video.num_frames - 1))
  alpha = (1 - weight) * a[..., 3:] + weight * b[..., 3:]
  color = (1 - weight) * a[..., :3] * a[..., 3:] + weight * b[..., :3] * b[..., 3:]
  return np.concatenate([color / np.maximum(alpha, 1e-6), alpha], -1)


def render_frame(video: LayerVideo, plan: Plan, f: int, cache: Dict) -> np.ndarray:
  """Output frame f as RGB float in [0, 1]."""
  background_time = plan.copies[0][0](np.array([f]))[0]
  background_index = int(np.clip(np.floor(background_time + 0.5), 0, video.num_frames - 1))
  order = plan.order or video.composite_order[background_index]
  stack = [_sample(video, 0, background_time, plan.blend, cache)]
  for layer in order:
    for time_map in reversed(plan.copies.get(layer, [])):  # duplicates behind the original
      stack.append(_sample(video, layer, time_map(np.array([f]))[0], plan.blend, cache))
  layers = np.stack(stack)[None] * 2 - 1
  return np.asarray(composite(layers))[0, ..., :3] * 0.5 + 0.5


def retime(export_dir: str, spec: Mapping, output: str, overwrite: bool = False) -> str:
  """Renders the re-timed video into `output`; returns it."""
  video = load_layers(export_dir)
  plan = parse_spec(spec, video)
  identity = parse_spec({'length': plan.length}, video)
  cache: Dict = {}
  with files.staged_directory(output, overwrite) as staging:
    os.makedirs(os.path.join(staging, 'frames'))
    frames, before = [], []
    for f in range(plan.length):
      frame = files.to_uint8(render_frame(video, plan, f, cache))
      files.write_png(os.path.join(staging, 'frames', f'{f + 1:04d}.png'), frame)
      frames.append(frame)
      before.append(files.to_uint8(render_frame(video, identity, f, cache)))
    after_file = files.write_video(os.path.join(staging, 'retimed'), frames, video.fps)
    before_file = files.write_video(os.path.join(staging, 'before'), before, video.fps)
    picks = np.linspace(0, plan.length - 1, min(4, plan.length)).round().astype(int)
    sheet = np.concatenate([np.concatenate([before[f] for f in picks], 1),
                            np.concatenate([frames[f] for f in picks], 1)], 0)
    files.write_png(os.path.join(staging, 'contact_sheet.png'), sheet)
    height, width = frames[0].shape[:2]
    facts = [('layers', video.root), ('spec', json.dumps(spec)),
             ('frames', f'{plan.length} (source: {video.num_frames})'), ('size', f'{width}x{height}'),
             ('fps', f'{video.fps:g}'),
             ('files', f'frames/FFFF.png, {os.path.basename(after_file)}, {os.path.basename(before_file)}, '
                       'contact_sheet.png')]
    viewer.write_page(os.path.join(staging, 'index.html'), f'Retimed {os.path.basename(video.root)}',
                      [viewer.Panel('before', os.path.basename(before_file)),
                       viewer.Panel('after (retimed)', os.path.basename(after_file))],
                      plan.length, video.fps, (width, height), facts)
  return os.path.abspath(output)


def propose_offsets(events: Sequence[Tuple[int, int]]) -> Dict[int, int]:
  """{layer: offset} that shows each layer's event at the first layer's event frame."""
  reference_frame = events[0][1]
  return {layer: frame - reference_frame for layer, frame in events[1:]}


def _load_spec(path: str) -> Dict:
  with open(path) as f:
    text = f.read()
  if path.endswith(('.yaml', '.yml')):
    import yaml
    try:
      return yaml.safe_load(text)
    except yaml.YAMLError as error:
      raise SpecError(f'{path} is not valid YAML: {" ".join(str(error).split())}') from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as error:
    raise SpecError(f'{path} is not valid JSON: {error}') from None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--layers', required=True, help='an export folder (layers/ + layers.json)')
  parser.add_argument('--spec', help='the retiming spec (JSON or YAML)')
  parser.add_argument('--output', help='folder to write')
  parser.add_argument('--align', help='LAYER:FRAME,LAYER:FRAME,...: print offsets aligning these events')
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)
  try:
    if args.align:
      events = [tuple(int(v) for v in item.split(':')) for item in args.align.split(',')]
      video = load_layers(args.layers)
      bad = [layer for layer, _ in events if layer not in video.layer_ids]
      if len(events) < 2 or bad:
        raise SpecError(f'--align needs two or more LAYER:FRAME pairs of layers in {video.layer_ids}')
      lines = ', '.join(f'"{layer}": {{"offset": {offset}}}' for layer, offset in propose_offsets(events).items())
      print(f'to show every event at frame {events[0][1]} (layer {events[0][0]}\'s), use:')
      print(f'{{"layers": {{{lines}}}}}')
      return
    if not args.spec or not args.output:
      parser.error('--spec and --output are required (or --align)')
    out = retime(args.layers, _load_spec(args.spec), args.output, args.overwrite)
  except (SpecError, FileNotFoundError, FileExistsError, ValueError) as error:
    parser.exit(2, f'error: {error}\n')
  print(f'wrote {out}: open {out}/index.html (before and after side by side), frames/ and the videos')


if __name__ == '__main__':
  main()
