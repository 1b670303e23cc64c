"""A synthetic video in the layout of spec section 1, with ground truth.

  python -m data_prep.synthetic OUT --people 2 --frames 48 --size 224x128 [--camera_pan 32]
                                [--retime_offsets 0,8] [--shadow_length 1.6] [--shadow_blur 2]

People are articulated walkers made of capsules, each capsule a DensePose part
with known (U, V), so their IUV layers are exact. Each person casts a shadow on
the ground, which the IUV does not cover: the effect the model must learn to
put in that person's layer. `--shadow_length` stretches the shadows (a lower
sun), `--shadow_blur` softens their edges (a Gaussian of that many low-res
pixels). Written:

  OUT/rgb_256/, rgb_512/           frames at --size and 2x (names 0001.png, ...)
  OUT/iuv/NN/                      one RGBA IUV layer per person
  OUT/keypoints.json, metadata.json, homographies.txt (with --camera_pan)
  OUT/ground_truth/layers/NN/      RGBA per layer (00 = background), low resolution
  OUT/ground_truth/layers.json     frame names, composite order, size
  OUT/ground_truth/retimed/        frames with person k shifted by offset k (--retime_offsets)
"""

import argparse
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from data_prep.frames import parse_size
from layered_jax import files

# COCO-17 joints: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left, right).
# Capsules: (joint a, joint b, radius as a fraction of body height, DensePose part id, draw rank).
_CAPSULES = [
    (6, 8, .035, 16, 0), (8, 10, .03, 20, 0),      # right (far) arm
    (12, 14, .045, 7, 1), (14, 16, .04, 11, 1),    # right (far) leg
    (5, 11, .09, 2, 2),                            # torso: shoulders to hips
    (0, 0, .065, 23, 3),                           # head (a disc on the nose)
    (11, 13, .045, 8, 4), (13, 15, .04, 12, 4),    # left (near) leg
    (5, 7, .035, 15, 5), (7, 9, .03, 19, 5),       # left (near) arm
]
SHADOW_ALPHA = 0.55
SHADOW_SHEAR = (0.7, 0.5)  # a body point d above the ground lands (0.7 d, 0.5 d) from its foot
CONTACT_SHADOW = (0.22, 0.05, 0.3, 0.07)  # ellipse centre offset (x, y) and semi-axes, in body heights


@dataclasses.dataclass(frozen=True)
class Walker:
  person_id: int
  start_x: float  # world x of the hips at t=0, in low-res pixels
  ground_y: float  # y of the feet
  height: float
  speed: float  # pixels per frame
  phase: float
  colors: np.ndarray  # [25, 3] per-part base colour in [0, 1]
  cadence: float = 0.35  # radians of the gait cycle per frame

  def joints(self, t: float) -> np.ndarray:
    """[17, 2] joint positions in world low-res pixels at time t."""
    h = self.height
    swing = 0.45 * np.sin(self.cadence * t + self.phase)
    x = self.start_x + self.speed * t
    hip_y = self.ground_y - 0.5 * h
    shoulder_y = self.ground_y - 0.82 * h
    joints = np.zeros((17, 2))
    joints[0] = (x + 0.02 * h, self.ground_y - 0.93 * h)
    joints[1:3] = joints[0] + [[-0.02 * h, -0.02 * h], [0.02 * h, -0.02 * h]]
    joints[3:5] = joints[0] + [[-0.04 * h, 0.], [0.04 * h, 0.]]
    joints[5] = joints[6] = (x, shoulder_y)
    joints[11] = joints[12] = (x, hip_y)
    for side, sign in ((0, 1.), (1, -1.)):  # legs and arms swing in opposition
      leg = sign * swing
      knee = joints[11 + side] + 0.26 * h * np.array([np.sin(leg), np.cos(leg)])
      joints[13 + side] = knee
      joints[15 + side] = knee + 0.24 * h * np.array([np.sin(leg - 0.25 * abs(leg)), np.cos(leg)])
      arm = -0.8 * leg
      elbow = joints[5 + side] + 0.18 * h * np.array([np.sin(arm), np.cos(arm)])
      joints[7 + side] = elbow
      joints[9 + side] = elbow + 0.16 * h * np.array([np.sin(arm + 0.4), np.cos(arm + 0.4)])
    return joints


def _segment_coords(px, py, a, b):
  """Distance to segment ab, position along it (0..1) and signed offset across it."""
  d = b - a
  length_sq = max(float(d @ d), 1e-9)
  t = ((px - a[0]) * d[0] + (py - a[1]) * d[1]) / length_sq
  t_clamped = np.clip(t, 0., 1.)
  cx, cy = a[0] + t_clamped * d[0], a[1] + t_clamped * d[1]
  across = ((px - a[0]) * d[1] - (py - a[1]) * d[0]) / np.sqrt(length_sq)
  return np.hypot(px - cx, py - cy), t_clamped, across


HEAD_PART = 23


def body_capsules(walker: Walker, t: float) -> List[Tuple[int, np.ndarray, np.ndarray, float]]:
  """(DensePose part id, end a, end b, radius) of each capsule at time t, back to front.

  The head is a disc: a segment of length 1e-3 down from the nose.
  """
  joints = walker.joints(t)
  capsules = []
  for a, b, radius, part_id, _ in sorted(_CAPSULES, key=lambda c: c[4]):
    end = joints[0] + [0., 1e-3] if part_id == HEAD_PART else joints[b]
    capsules.append((part_id, joints[a], end, radius * walker.height))
  return capsules


def render_person(walker: Walker, t: float, px: np.ndarray, py: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Part ids, U, V and body mask of one person on the pixel grid (px, py in low-res units)."""
  part = np.zeros(px.shape, np.int32)
  u = np.zeros(px.shape, np.float32)
  v = np.zeros(px.shape, np.float32)
  for part_id, a, b, width in body_capsules(walker, t):
    dist, along, across = _segment_coords(px, py, a, b)
    if part_id == HEAD_PART:
      along = np.clip((py - a[1]) / (2 * width) + 0.5, 0, 1)
    inside = dist <= width
    part = np.where(inside, part_id, part)
    u = np.where(inside, along, u)
    v = np.where(inside, np.clip(across / (2 * width) + 0.5, 0, 1), v)
  return part, u, v, part > 0


def person_colors(walker: Walker, part, u, v) -> np.ndarray:
  """Appearance as a fixed function of (part, U, V): what the neural texture can learn."""
  base = walker.colors[part]
  stripes = 0.15 * np.sin(2 * np.pi * (3 * u + walker.person_id))[..., None]
  shade = 0.2 * (v[..., None] - 0.5)
  return np.clip(base + stripes - shade, 0, 1)


def shadow_mask(walker: Walker, t: float, px: np.ndarray, py: np.ndarray, length: float = 1.) -> np.ndarray:
  """Pixels of the ground shadow: the body projected onto the ground, plus a contact blob at the feet.

  A projected point is one whose sheared-back position lies on the body; `length`
  scales the shear (the shadow's reach).
  """
  depth = (py - walker.ground_y) / (SHADOW_SHEAR[1] * length)
  body_x = px - SHADOW_SHEAR[0] * length * depth
  body_y = walker.ground_y - depth
  _, _, _, body = render_person(walker, t, body_x, body_y)
  feet_x = walker.joints(t)[15:17, 0].mean()
  h = walker.height
  blob = (((px - feet_x - CONTACT_SHADOW[0] * h) / (CONTACT_SHADOW[2] * h)) ** 2
          + ((py - walker.ground_y - CONTACT_SHADOW[1] * h) / (CONTACT_SHADOW[3] * h)) ** 2) <= 1
  return (body & (depth > 0)) | blob


BACKGROUND_CLASSES = ('sky', 'wall', 'poster', 'ground')  # class ids 0..3 of make_background


def make_background(world_width: int, height: int, rng: np.random.Generator, plain: bool = False
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """A world (sky, wall, ground) at the given pixel size, in [0, 1], and its class ids (uint8, BACKGROUND_CLASSES).

  Textured: bricks, posters (corners for the homography tools) and a rippled
  ground. Plain: smooth bands only, which a small network learns in a few
  minutes, leaving the moving shadows as what is left to explain.
  """
  y, x = np.mgrid[0:height, 0:world_width] / height
  horizon = 0.62
  sky = np.array([0.55, 0.7, 0.9]) + 0.08 * np.sin(3 * x + 2 * y)[..., None]
  wall_color = rng.uniform(0.45, 0.75, 3)
  classes = np.where(y < 0.25, 0, np.where(y < horizon, 1, 3)).astype(np.uint8)
  if plain:
    ground = np.array([0.75, 0.7, 0.6]) - 0.1 * (y[..., None] - horizon)
    image = np.where((y < 0.25)[..., None], sky, np.where((y < horizon)[..., None], wall_color, ground))
    return image.astype(np.float32), classes
  bricks = ((np.floor(y * 14) % 2 == 0) ^ (np.floor(x * 7 + 0.5 * (np.floor(y * 14) % 2)) % 2 == 0))
  wall = wall_color * (0.85 + 0.15 * bricks[..., None])
  ground = np.array([0.55, 0.5, 0.4]) * (0.9 + 0.1 * np.sin(25 * x + 9 * y))[..., None]
  image = np.where((y < 0.25)[..., None], sky, np.where((y < horizon)[..., None], wall, ground))
  for _ in range(max(3, world_width // 40)):  # posters on the wall: corners for the homography tools
    cx, cy = rng.uniform(0, world_width / height), rng.uniform(0.3, 0.5)
    w, h = rng.uniform(0.05, 0.12, 2)
    inside = (np.abs(x - cx) < w) & (np.abs(y - cy) < h)
    image = np.where(inside[..., None], rng.uniform(0, 1, 3), image)
    classes[inside] = 2
  return image.astype(np.float32), classes


def make_walkers(people: int, frames: int, width: int, height: int, world_width: int,
                 rng: np.random.Generator) -> List[Walker]:
  walkers = []
  for k in range(people):
    ground = height * (0.80 + 0.12 * k / max(people - 1, 1))  # nearer people lower in the frame
    body = height * rng.uniform(0.42, 0.5) * (0.9 + 0.1 * k / max(people - 1, 1))
    direction = 1. if k % 2 == 0 else -1.
    travel = rng.uniform(0.3, 0.45) * width
    start = (0.2 * width + 0.6 * width * k / max(people - 1, 1) if direction > 0
             else world_width - 0.2 * width - 0.3 * width * k / max(people - 1, 1))
    start = float(np.clip(start - direction * travel / 2, 0.1 * width, world_width - 0.1 * width))
    colors = rng.uniform(0.15, 0.95, (25, 3))
    colors[23:25] = [0.85, 0.65, 0.5]  # skin
    walkers.append(Walker(k + 1, start, ground, body, direction * travel / max(frames - 1, 1),
                          rng.uniform(0, 2 * np.pi), colors))
  return walkers


@dataclasses.dataclass(frozen=True)
class Scene:
  width: int
  height: int
  frames: int
  camera_pan: float
  background: np.ndarray  # world at 2x, [2H, 2*world_width, 3]
  walkers: List[Walker]
  classes: Optional[np.ndarray] = None  # the background's class ids at 2x (BACKGROUND_CLASSES)
  shadow_length: float = 1.  # scales the shadows' reach
  shadow_blur: float = 0.  # Gaussian sigma of the shadows' edges, in low-res pixels (0: hard)

  def camera_x(self, frame: int) -> float:
    return self.camera_pan * frame / max(self.frames - 1, 1)

  def composite_order(self) -> List[int]:
    """Layer ids back to front: people farther away (higher on screen) first."""
    return [w.person_id for w in sorted(self.walkers, key=lambda w: w.ground_y)]

  def render(self, frame: int, scale: int, times: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    """Layers of one output frame at `scale` (1 low-res, 2 high-res); person k at times[k]."""
    times = [frame] * len(self.walkers) if times is None else times
    h, w = self.height * scale, self.width * scale
    py, px = (np.mgrid[0:h, 0:w] + 0.5) / scale
    shift = self.camera_x(frame)
    x0 = shift * 2
    # The camera moves by whole high-res pixels on the world image; subpixel shifts are interpolated.
    matrix = np.float32([[1, 0, x0], [0, 1, 0]])
    world_view = cv2.warpAffine(self.background, matrix, (2 * self.width, 2 * self.height),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    if scale == 1:
      world_view = cv2.resize(world_view, (self.width, self.height), interpolation=cv2.INTER_AREA)
    layers = {0: np.concatenate([world_view, np.ones((h, w, 1), np.float32)], -1)}
    iuv = {}
    for walker, t in zip(self.walkers, times):
      wx = px + shift  # frame -> world
      part, u, v, body = render_person(walker, t, wx, py)
      shadow = SHADOW_ALPHA * shadow_mask(walker, t, wx, py, self.shadow_length)
      if self.shadow_blur > 0:
        shadow = cv2.GaussianBlur(shadow, (0, 0), self.shadow_blur * scale)
      rgb = np.where(body[..., None], person_colors(walker, part, u, v), 0.)
      alpha = np.where(body, 1., shadow)
      layers[walker.person_id] = np.concatenate([rgb, alpha[..., None]], -1).astype(np.float32)
      iuv[walker.person_id] = np.stack([part * 10, np.floor(u * 255), np.floor(v * 255),
                                        np.where(body, 255 - walker.person_id, 0)], -1).astype(np.uint8)
    composite = layers[0][..., :3]
    for k in self.composite_order():
      a = layers[k][..., 3:]
      composite = layers[k][..., :3] * a + composite * (1 - a)
    return {'layers': layers, 'iuv': iuv, 'composite': composite}

  def keypoints(self, frame: int, scale: float) -> List[Dict]:
    shift = np.array([self.camera_x(frame), 0.])
    people = []
    for walker in self.walkers:
      joints = (walker.joints(frame) - shift) * scale
      people.append({'idx': walker.person_id, 'score': 1.,
                     'keypoints': np.concatenate([joints, np.ones((17, 1))], -1).ravel().round(3).tolist()})
    return people


def make_scene(people: int, frames: int, width: int, height: int, camera_pan: float = 0.,
               seed: int = 0, plain_background: bool = False, shadow_length: float = 1.,
               shadow_blur: float = 0.) -> Scene:
  rng = np.random.default_rng(seed)
  world_width = int(np.ceil(width + abs(camera_pan)))
  background, classes = make_background(2 * world_width, 2 * height, rng, plain_background)
  return Scene(width, height, frames, camera_pan, background,
               make_walkers(people, frames, width, height, world_width, rng), classes, shadow_length, shadow_blur)


def _write_png(path: str, image: np.ndarray) -> None:
  """float [0, 1] RGB(A) or uint8 RGB(A) -> PNG."""
  files.write_png(path, image if image.dtype == np.uint8 else files.to_uint8(image))


def generate(out_dir: str, people: int = 2, frames: int = 48, size: Tuple[int, int] = (224, 128),
             camera_pan: float = 0., retime_offsets: Optional[Sequence[int]] = None, seed: int = 0,
             fps: float = 24., plain_background: bool = False, shadow_length: float = 1.,
             shadow_blur: float = 0.) -> Scene:
  """Writes the synthetic video folder (atomically: a staging folder renamed at the end)."""
  width, height = size
  if width % 32 or height % 32:
    raise ValueError(f'size {width}x{height} must be multiples of 32 (the UNet halves it 5 times)')
  if retime_offsets is not None and len(retime_offsets) != people:
    raise ValueError(f'{len(retime_offsets)} retime offsets for {people} people')
  scene = make_scene(people, frames, width, height, camera_pan, seed, plain_background, shadow_length, shadow_blur)
  with files.staged_directory(out_dir) as staging:
    _write_folder(scene, staging, retime_offsets, fps)
  return scene


def _write_folder(scene: Scene, root: str, retime_offsets, fps: float) -> None:
  ids = [w.person_id for w in scene.walkers]
  names = [f'{i + 1:04d}.png' for i in range(scene.frames)]
  dirs = ['rgb_256', 'rgb_512'] + [f'iuv/{k:02d}' for k in ids]
  dirs += [f'ground_truth/layers/{k:02d}' for k in [0] + ids]
  dirs += ['ground_truth/retimed'] if retime_offsets is not None else []
  for d in dirs:
    os.makedirs(os.path.join(root, d))
  keypoints = {}
  for i, name in enumerate(names):
    low, high = scene.render(i, 1), scene.render(i, 2)
    _write_png(os.path.join(root, 'rgb_256', name), low['composite'])
    _write_png(os.path.join(root, 'rgb_512', name), high['composite'])
    for k in ids:
      _write_png(os.path.join(root, 'iuv', f'{k:02d}', name), low['iuv'][k])
    for k, layer in low['layers'].items():
      _write_png(os.path.join(root, 'ground_truth', 'layers', f'{k:02d}', name), layer)
    keypoints[name] = scene.keypoints(i, 2.)
    if retime_offsets is not None:
      times = [int(np.clip(i + o, 0, scene.frames - 1)) for o in retime_offsets]
      _write_png(os.path.join(root, 'ground_truth', 'retimed', name), scene.render(i, 1, times)['composite'])
  order = scene.composite_order()
  metadata = {'alphapose_input_size': [2 * scene.width, 2 * scene.height], 'size_LR': [scene.width, scene.height],
              'n_textures': 24 * len(ids) + 1, 'composite_order': [order] * scene.frames,
              'people_layers': [[k] for k in ids]}
  with open(os.path.join(root, 'metadata.json'), 'w') as f:
    json.dump(metadata, f, indent=1)
  with open(os.path.join(root, 'keypoints.json'), 'w') as f:
    json.dump(keypoints, f)
  with open(os.path.join(root, 'ground_truth', 'layers.json'), 'w') as f:
    json.dump({'fps': fps, 'size': [scene.width, scene.height], 'layer_ids': [0] + ids,
               'frames': names, 'composite_order': [order] * scene.frames,
               'retime_offsets': None if retime_offsets is None else list(retime_offsets)}, f, indent=1)
  if scene.camera_pan:
    with open(os.path.join(root, 'homographies.txt'), 'w') as f:
      world_width = scene.background.shape[1] / 2
      f.write(f'size: {scene.width} {scene.height}\n')
      f.write(f'bounds: 0 {world_width:g} 0 {scene.height}\n')
      for i in range(scene.frames):  # world (frame-1 aligned) -> frame i: a translation
        f.write(' '.join(f'{v:.6f}' for v in [1, 0, -scene.camera_x(i), 0, 1, 0, 0, 0, 1]) + '\n')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('out', help='folder to create')
  parser.add_argument('--people', type=int, default=2)
  parser.add_argument('--frames', type=int, default=48)
  parser.add_argument('--size', type=parse_size, default=(224, 128), help='low-res WxH, multiples of 32')
  parser.add_argument('--camera_pan', type=float, default=0., help='camera travel in low-res pixels')
  parser.add_argument('--retime_offsets', type=lambda s: [int(v) for v in s.split(',')], default=None,
                      help='per-person frame offsets for a ground-truth re-timed video, e.g. 0,8')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--plain_background', action='store_true', help='smooth bands instead of bricks and posters')
  parser.add_argument('--shadow_length', type=float, default=1., help='scale of the shadows\' reach')
  parser.add_argument('--shadow_blur', type=float, default=0., help='soft shadow edges: Gaussian sigma in pixels')
  args = parser.parse_args(argv)
  generate(args.out, args.people, args.frames, args.size, args.camera_pan, args.retime_offsets, args.seed,
           plain_background=args.plain_background, shadow_length=args.shadow_length, shadow_blur=args.shadow_blur)
  print(f'wrote {args.out}: {args.frames} frames of {args.size[0]}x{args.size[1]}, {args.people} people')


if __name__ == '__main__':
  main()
