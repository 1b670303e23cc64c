"""Synthetic vid2vid datasets with exact flow: people walking in front of a background.

  python -m data_prep.vid2vid_synthetic --mode=pose --data_dir=work/data [--size=96x128] [--frames=24]
      [--clips=2] [--test_clips=1] [--people=1] [--camera_pan=0] [--flow=exact|dis]

The people, background and rendering are data_prep.synthetic's (articulated
capsule walkers, DensePose parts with known U and V, ground shadows). Every clip
shows the same people (colours, height) in the same place; each clip has its own
motion (walking speed, direction, gait phase and cadence), and the held-out
clips (the `test` split, with their frames as ground truth) walk at cadences
outside the training clips' range: the pose application's protocol.

Inputs per mode: pose, the DensePose-style IUV of the visible body and the
walkers' joints as BODY_25 keypoints; labels, per-pixel classes (CLASS_NAMES:
sky, wall, poster, ground, then six body-part classes, the foreground) and
person ids as instance maps; edges, Canny edges of the frames. Flows are exact:
a body pixel is a point of one capsule, moved with that capsule's ends to the
earlier frame; a background pixel moves with the camera. `visible` marks the
pixels whose source point shows the same surface under the same shadows in both
frames (its bilinear neighbours included); `conf` applies the reference's rule to
the exact flow. --flow=dis computes the flows as for a real video instead.
"""

import argparse
import dataclasses
from typing import Dict, List, Tuple

import numpy as np

from data_prep import optical_flow, synthetic
from data_prep.frames import parse_size
from data_prep.video_folder import DataError
from data_prep.vid2vid_build import Clip, add_build_arguments, build, build_options, canny_edges, coco_to_body25
from layered_jax import files
from layered_jax.vid2vid import data

PERSON_CLASSES = ('head', 'torso', 'upper_arm', 'lower_arm', 'upper_leg', 'lower_leg')
CLASS_NAMES = synthetic.BACKGROUND_CLASSES + PERSON_CLASSES
FG_LABELS = tuple(range(len(synthetic.BACKGROUND_CLASSES), len(CLASS_NAMES)))
# DensePose part -> class id: head, torso, upper arms, lower arms, upper legs, lower legs.
PART_CLASS = {23: 4, 2: 5, 15: 6, 16: 6, 19: 7, 20: 7, 7: 8, 8: 8, 11: 9, 12: 9}
TRAIN_CADENCE = (0.26, 0.38)  # gait radians per frame; held-out clips walk outside this range
TEST_CADENCE = (0.40, 0.48)


def clip_scenes(people: int, frames: int, size: Tuple[int, int], clips: int, test_clips: int,
                camera_pan: float = 0., seed: int = 0, plain_background: bool = False
                ) -> Tuple[List[synthetic.Scene], List[synthetic.Scene]]:
  """(training scenes, held-out scenes): the same people and background, each clip its own motion."""
  width, height = size
  base = synthetic.make_scene(people, frames, width, height, camera_pan, seed, plain_background)
  spread = max(people - 1, 1)
  people_here = [dataclasses.replace(w, height=0.62 * height * (1 - 0.12 * k / spread),
                                     ground_y=height * (0.9 - 0.1 * k / spread))
                 for k, w in enumerate(base.walkers)]

  def scene(split: int, index: int, cadence: Tuple[float, float]) -> synthetic.Scene:
    rng = np.random.default_rng([seed, split, index])
    walkers = []
    for k, walker in enumerate(people_here):
      travel = rng.uniform(0.1, 0.35) * width * rng.choice([-1., 1.])
      centre = width * (k + 1) / (people + 1)
      walkers.append(dataclasses.replace(walker, start_x=centre - travel / 2, speed=travel / max(frames - 1, 1),
                                         phase=rng.uniform(0, 2 * np.pi), cadence=rng.uniform(*cadence)))
    return dataclasses.replace(base, walkers=walkers)

  return ([scene(0, i, TRAIN_CADENCE) for i in range(clips)],
          [scene(1, i, TEST_CADENCE) for i in range(test_clips)])


def render_frame(scene: synthetic.Scene, t: int) -> Dict[str, np.ndarray]:
  """Frame t: rgb, iuv (part, U, V), classes, and per pixel the visible person, part and shadow bits."""
  out = scene.render(t, 1)
  order = scene.composite_order()
  height, width = scene.height, scene.width
  person = np.zeros((height, width), np.int64)
  part = np.zeros((height, width), np.int64)
  iuv = np.zeros((height, width, 3), np.uint8)
  for pid in order:  # back to front
    layer = out['iuv'][pid]
    body = layer[..., 3] > 0
    person[body], part[body] = pid, layer[..., 0][body] // 10
    iuv[body] = np.stack([layer[..., 0] // 10, layer[..., 1], layer[..., 2]], -1)[body]
  rank = np.zeros(max(order) + 1, np.int64)
  rank[order] = np.arange(1, len(order) + 1)
  # Shadow bits: the shadows composited over the visible surface (a person's shadow covers what is behind them).
  shade = np.zeros((height, width), np.int64)
  for pid in order:
    shadow = (out['layers'][pid][..., 3] > 0) & (out['iuv'][pid][..., 3] == 0)
    shade |= np.where(shadow & (rank[person] < rank[pid]), 1 << pid, 0)
  ys, xs = np.mgrid[0:height, 0:width]
  world_cols = np.clip(np.floor(2 * (xs + 0.5 + scene.camera_x(t))).astype(int), 0, scene.classes.shape[1] - 1)
  classes = scene.classes[2 * ys + 1, world_cols]
  for part_id, class_id in PART_CLASS.items():
    classes = np.where(part == part_id, class_id, classes)
  return {'rgb': files.to_uint8(out['composite']), 'iuv': iuv, 'person': person, 'part': part, 'shade': shade,
          'classes': classes.astype(np.uint8)}


def body25_keypoints(scene: synthetic.Scene, t: int) -> np.ndarray:
  """[P, 25, 3] the walkers' joints in frame pixels (pixel i at i), feet missing."""
  shift = np.array([scene.camera_x(t), 0.])
  coco = np.stack([np.concatenate([w.joints(t) - shift - 0.5, np.ones((17, 1))], -1) for w in scene.walkers])
  return coco_to_body25(coco)


def _move_capsule_points(x: np.ndarray, y: np.ndarray, now, before) -> Tuple[np.ndarray, np.ndarray]:
  """World points on a capsule (ends a, b) now -> the same body points with the capsule's ends before.

  A point keeps its offset across the axis; along the axis it keeps its fraction of
  the segment, or its distance beyond the nearer end in the round caps.
  """
  def axes(a, b):
    d = b - a
    length = np.sqrt(d @ d)
    return d, length, d / length, np.array([d[1], -d[0]]) / length

  (a, b), (a2, b2) = now, before
  d, length, along, across = axes(a, b)
  d2, _, along2, across2 = axes(a2, b2)
  s = (x - a[0]) * along[0] + (y - a[1]) * along[1]
  n = (x - a[0]) * across[0] + (y - a[1]) * across[1]
  base = np.where((s < 0)[..., None], a2 + s[..., None] * along2,
                  np.where((s > length)[..., None], b2 + (s - length)[..., None] * along2,
                           a2 + (s / length)[..., None] * d2))
  moved = base + n[..., None] * across2
  return moved[..., 0], moved[..., 1]


def exact_flow(scene: synthetic.Scene, t: int, k: int, now: Dict[str, np.ndarray],
               before: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
  """(flow [H, W, 2] of frame t from frame t - k, visible [H, W] uint8); now, before: render_frame outputs."""
  height, width = now['person'].shape
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
  wx, wy = xs + 0.5 + scene.camera_x(t), ys + 0.5  # the renderer's world coordinates of the pixel centres
  qx, qy = wx.copy(), wy.copy()  # the background stays where it is in the world
  for walker in scene.walkers:
    capsules = zip(synthetic.body_capsules(walker, t), synthetic.body_capsules(walker, t - k))
    for (part_id, a, b, _), (_, a2, b2, _) in capsules:
      on = (now['person'] == walker.person_id) & (now['part'] == part_id)
      if on.any():
        qx[on], qy[on] = _move_capsule_points(wx[on], wy[on], (a, b), (a2, b2))
  sx, sy = qx - 0.5 - scene.camera_x(t - k), qy - 0.5
  flow = np.stack([sx - xs, sy - ys], -1).astype(np.float32)
  inside = (sx >= 0) & (sx <= width - 1) & (sy >= 0) & (sy <= height - 1)
  x0 = np.clip(np.floor(sx), 0, width - 1).astype(int)
  y0 = np.clip(np.floor(sy), 0, height - 1).astype(int)
  x1 = np.clip(np.where(sx - x0 > 1e-6, x0 + 1, x0), 0, width - 1)
  y1 = np.clip(np.where(sy - y0 > 1e-6, y0 + 1, y0), 0, height - 1)
  visible = inside
  for key in ('person', 'part', 'shade'):
    for yy in (y0, y1):
      for xx in (x0, x1):
        visible &= before[key][yy, xx] == now[key]
  return flow, visible.astype(np.uint8)


def make_clip(scene: synthetic.Scene, name: str, mode: str, exact: bool = True) -> Clip:
  """A Clip of every frame of the scene, with exact flows (or None: DIS at build time)."""
  maps = [render_frame(scene, t) for t in range(scene.frames)]
  rgb = np.stack([m['rgb'] for m in maps])
  if mode == 'pose':
    inputs = {'iuv': np.stack([m['iuv'] for m in maps]),
              'keypoints': np.stack([body25_keypoints(scene, t) for t in range(scene.frames)])}
  elif mode == 'labels':
    inputs = {'labels': np.stack([m['classes'] for m in maps]),
              'instance': np.stack([m['person'] for m in maps]).astype(np.uint16)}
  else:
    inputs = {'edges': canny_edges(rgb)}

  def flow_fn(t: int, k: int) -> Dict[str, np.ndarray]:
    flow, visible = exact_flow(scene, t, k, maps[t], maps[t - k])
    return {'flow': flow, 'visible': visible, 'conf': optical_flow.confidence(rgb[t], rgb[t - k], flow)}

  return Clip(name, rgb, inputs, flow_fn if exact else None)


def generate(data_dir: str, mode: str, name: str = None, size: Tuple[int, int] = (96, 128), frames: int = 24,
             clips: int = 2, test_clips: int = 1, people: int = 1, camera_pan: float = 0., seed: int = 0,
             plain_background: bool = False, exact: bool = True, **build_kwargs) -> str:
  """Renders the clips and builds DATA_DIR/NAME/1.0.0 (default name synthetic_MODE); returns its directory."""
  if mode not in data.MODES:
    raise DataError(f'mode {mode!r} is not one of {data.MODES}')
  if size[0] % 32 or size[1] % 32:
    raise DataError(f'size {size[0]}x{size[1]} must be multiples of 32 (W x H)')
  train, test = clip_scenes(people, frames, size, clips, test_clips, camera_pan, seed, plain_background)
  labels = {'label_nc': len(CLASS_NAMES), 'fg_labels': FG_LABELS, 'class_names': CLASS_NAMES} if (
      mode == 'labels') else {}
  return build([make_clip(s, f'clip{i:02d}', mode, exact) for i, s in enumerate(train)],
               [make_clip(s, f'clip{i:02d}', mode, exact) for i, s in enumerate(test)],
               data_dir, name or f'synthetic_{mode}', mode, **labels, **build_kwargs)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', required=True, choices=data.MODES)
  parser.add_argument('--size', type=parse_size, default=(96, 128), help='W x H, multiples of 32 (portrait: 96x128 '
                      'for tests, 192x256 for the demo)')
  parser.add_argument('--frames', type=int, default=24, help='frames per clip')
  parser.add_argument('--clips', type=int, default=2, help='training clips')
  parser.add_argument('--test_clips', type=int, default=1, help='held-out clips (other motion, same people)')
  parser.add_argument('--people', type=int, default=1)
  parser.add_argument('--camera_pan', type=float, default=0., help='camera travel over a clip, in pixels')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--plain_background', action='store_true', help='smooth bands instead of bricks and posters')
  parser.add_argument('--flow', choices=('exact', 'dis'), default='exact', help='reference flows: the exact ones, or '
                      'OpenCV DIS as for a real video')
  add_build_arguments(parser)
  args = parser.parse_args(argv)
  try:
    path = generate(args.data_dir, args.mode, args.name, args.size, args.frames, args.clips, args.test_clips,
                    args.people, args.camera_pan, args.seed, args.plain_background, args.flow == 'exact',
                    **build_options(args))
  except (DataError, FileExistsError) as error:
    parser.exit(2, f'error: {error}\n')
  print(f'built {path}')


if __name__ == '__main__':
  main()
