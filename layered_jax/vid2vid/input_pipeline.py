"""vid2vid training clips: sampling, the reference's scale-and-crop and pose dropping, per-device batches.

Sampling (spec section 1, the reference's pose sampler): an epoch visits every
start frame of every clip once (clips weighted by their length), in an order
drawn from (seed, epoch); each sample takes `n_frames_total` frames spaced
`t_step` apart, t_step uniform in 1..max_t_step (less where the clip is too
short), starting at that frame modulo the room the spacing leaves.

Augmentation (jitted, one draw per clip, all its frames alike), as the
reference's `randomScaleHeight_and_scaledCrop`: the clip is scaled to a random
height in [fine_size, load_size + 1] rounded to a multiple of 4 (width in
proportion), and a crop fine_size high and make_power_2(fine_size * W / H) wide
is taken, x normal around the centre (sd a third of the margin), y uniform in
the top eighth; `center_crop` then keeps the central half of the width (the
reference's pose setting, for landscape videos). Frames are resampled as PIL's
bicubic resize (antialiased, rounded to uint8 between its two passes); maps by
the nearest rule (PIL's, except for samples exactly between two pixels, where
PIL's incremental arithmetic may take the lower one); flows bilinear, multiplied
by the scale; skeletons are drawn after the crop from the moved keypoints.
`flip` mirrors a clip with probability 0.5 (labels and edges; the reference
never flips pose). Pose training drops each DensePose part and each skeleton
limb of each frame with probability random_drop_prob. Keypoints are stored and
drawn here, rather than stored as images, so that limbs can be dropped one at a
time and lines keep their width whatever the scale.

A batch, per device [devices, B / devices, ...], per clip (T = n_frames_total,
H x W the output size):
  frames     [T, H, W, 3]        targets in [-1, 1]
  inputs     [T, H, W, input_nc] pose: IUV (I = part / 24, U, V) then the skeleton, in [-1, 1];
                                 labels: one-hot of label_nc classes (+ instance edges, 0/1);
                                 edges: Canny edges in {-1, 1}
  flow       [T, H, W, 2]        reference flow from the previous clip frame (backward, pixels, see data.py)
  conf       [T, H, W, 1]        its confidence (0/1); frame 0 has flow 0 and conf 0
  flow_d{s}, conf_d{s}           s = 1 .. n_scales_temporal - 1: the same from n_frames_D**s clip frames back
                                 (temporal discriminator scale s; scale 0 uses flow/conf); 0 for earlier frames
  visible, visible_d{s}          (synthetic datasets) the exact occlusion masks of those flows
  clip, start, t_step            []  the sample: clip index, first source frame, source spacing
"""

import concurrent.futures
import dataclasses
import functools
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from layered_jax import input_pipeline
from layered_jax.vid2vid import data, skeleton

REFERENCE_STROKE = 3.  # the reference's skeleton half-width, in pixels of its 512-high source frames
REFERENCE_HEIGHT = 512


@dataclasses.dataclass(frozen=True)
class ClipOptions:
  """What a step asks of the pipeline; names follow the reference's options."""
  n_frames_total: int = 12
  max_t_step: int = 1
  n_frames_D: int = 3
  n_scales_temporal: int = 2
  fine_size: int = 0  # output height; 0: the stored height
  load_size: int = 0  # largest random height before the crop; 0: fine_size (no random scale)
  center_crop: bool = False  # keep the central half of the width (reference pose, landscape videos)
  flip: bool = False  # random horizontal flips (reference: labels and edges, not pose)
  random_drop_prob: float = 0.05  # pose: per frame, each DensePose part and each skeleton limb
  skeleton_width: float = 0.  # stroke half-width in stored pixels; 0: the reference's 3 px at 512 high
  use_instance: bool = False  # labels: add the instance-edge channel


def make_power_2(n: float, base: int = 32) -> int:
  return int(round(n / base) * base)


def output_size(stored_size: Tuple[int, int], options: ClipOptions) -> Tuple[int, int]:
  """(W, H) of the clips a batch holds."""
  width, height = stored_size
  fine = options.fine_size or height
  crop_w = make_power_2(fine * width // height)
  if options.center_crop:
    crop_w = 2 * (int(crop_w * 0.25) // 32 * 32)
  if crop_w <= 0 or fine % 32:
    raise ValueError(f'output {crop_w}x{fine} from {width}x{height} clips: the height (fine_size) must be a multiple '
                     'of 32 and the width must stay positive (center_crop needs wide frames)')
  return crop_w, fine


def input_channels(metadata: Mapping, options: ClipOptions) -> int:
  """input_nc of the generator for this dataset: pose 6, labels label_nc (+1 instance edges), edges 1."""
  mode = metadata['mode']
  if mode == 'pose':
    if options.flip:
      raise ValueError('pose clips cannot be flipped: DensePose parts and BODY_25 keypoints know left from right '
                       '(the reference does not flip them either); set flip=False')
    return 6
  if mode == 'labels':
    if options.use_instance and not metadata.get('has_instance'):
      raise ValueError('use_instance is set but the dataset has no instance maps')
    return int(metadata['label_nc']) + int(options.use_instance)
  return 1


def epoch_samples(clip_lengths: Sequence[int], n_frames_total: int, max_t_step: int, global_batch_size: int,
                  seed: int, epoch: int) -> np.ndarray:
  """[steps, global_batch_size, 3] samples (clip, start frame, t_step) of one epoch, the same on every host."""
  lengths = np.asarray(clip_lengths)
  if n_frames_total > lengths.min():
    raise ValueError(f'n_frames_total {n_frames_total} is longer than the shortest clip ({lengths.min()} frames); '
                     'lower it or drop that clip')
  starts = lengths - n_frames_total + 1
  order = input_pipeline.epoch_indices(int(starts.sum()), global_batch_size, seed, epoch)
  offsets = np.cumsum(starts) - starts
  clip = np.searchsorted(np.cumsum(starts), order, side='right')
  room = (lengths[clip] - 1) // max(n_frames_total - 1, 1)
  t_step = 1 + np.floor(np.random.default_rng([seed, epoch, 1]).random(order.shape) * np.minimum(max_t_step, room))
  t_step = t_step.astype(np.int64)
  start = (order - offsets[clip]) % np.maximum(1, lengths[clip] - (n_frames_total - 1) * t_step)
  return np.stack([clip, start, t_step], -1)


def gather(clips: data.ClipSet, samples: np.ndarray, options: ClipOptions,
           pool: Optional[concurrent.futures.Executor] = None) -> Dict[str, np.ndarray]:
  """Host arrays of the samples [n, 3]: stored features [n, T, ...], flows [n, scales, T, ...] (see the docstring).

  With a pool, the samples are read concurrently (decompression releases the GIL).
  """
  read = functools.partial(_gather_one, clips, options=options)
  out = list(pool.map(read, samples) if pool is not None else map(read, samples))
  return {k: np.stack([s[k] for s in out]) for k in out[0]}


def _gather_one(clips: data.ClipSet, sample: np.ndarray, options: ClipOptions) -> Dict[str, np.ndarray]:
  clip, start, t_step = (int(v) for v in sample)
  spacing_index = {k: i for i, k in enumerate(clips.spacings)}
  stored = clips.read(clip, start + t_step * np.arange(options.n_frames_total))
  out = {k: v for k, v in stored.items() if k not in ('clip', 'frame', 'flow', 'conf', 'visible')}
  for key in ('flow', 'conf', 'visible'):
    if key not in stored:
      continue
    scales = []
    for s in range(options.n_scales_temporal):
      gap = options.n_frames_D ** s
      if t_step * gap not in spacing_index:
        raise ValueError(f'{clips.directory} has no flows {t_step * gap} frames apart (it has {clips.spacings}); '
                         'rebuild it with max_t_step, n_frames_D and n_scales_temporal at least those of the config')
      values = stored[key][:, spacing_index[t_step * gap]].copy()
      values[:gap] = 0  # the frame gap clip frames back is not in the clip
      scales.append(values)
    out[key] = np.stack(scales)
  out.update(clip=np.int32(clip), start=np.int32(start), t_step=np.int32(t_step))
  return out


def _crop_params(key: jax.Array, stored_size: Tuple[int, int], options: ClipOptions, train: bool):
  """(scale_y, scale_x, crop_y, crop_x, flip) of one clip, the reference's get_img_params."""
  width, height = stored_size
  fine = options.fine_size or height
  load = max(options.load_size or fine, fine)
  crop_w = make_power_2(fine * width // height)
  k_h, k_x, k_y, k_flip = jax.random.split(key, 4)
  new_h = jax.random.randint(k_h, (), fine, load + 2) if train else jnp.asarray(fine)
  new_h = jnp.round(new_h / 4).astype(jnp.int32) * 4
  new_w = jnp.round(new_h * width // height / 4).astype(jnp.int32) * 4
  x_span = (new_w - crop_w) // 2
  centred = (jax.random.normal(k_x) * x_span / 3 + x_span).astype(jnp.int32) if train else x_span
  crop_x = jnp.maximum(0, jnp.minimum(2 * x_span, centred))
  y_room = jnp.minimum(jnp.maximum(0, new_h - fine), new_h // 8)
  crop_y = jax.random.randint(k_y, (), 0, y_room + 1) if train else jnp.asarray(0)
  if options.center_crop:
    crop_x = crop_x + crop_w // 2 - output_size(stored_size, options)[0] // 2
  flip = (jax.random.uniform(k_flip) < 0.5) & options.flip & train
  return new_h / height, new_w / width, crop_y, crop_x, flip


def _nearest_indices(out_size: int, in_size: int, scale, crop) -> jax.Array:
  """PIL's nearest resize then a crop: the input index of each output pixel."""
  return jnp.clip(jnp.floor((jnp.arange(out_size) + crop + 0.5) / scale).astype(jnp.int32), 0, in_size - 1)


def augment_clip(key: jax.Array, clip: Mapping[str, jax.Array], mode: str, stored_size: Tuple[int, int],
                 options: ClipOptions, train: bool = True, label_nc: int = 0) -> Dict[str, jax.Array]:
  """One clip (gather's arrays without the sample axis) -> the batch entries of the module docstring."""
  width, height = stored_size
  out_w, out_h = output_size(stored_size, options)
  k_crop, k_parts, k_limbs = jax.random.split(key, 3)
  sy, sx, crop_y, crop_x, flip = _crop_params(k_crop, stored_size, options, train)
  rows = _nearest_indices(out_h, height, sy, crop_y)
  cols = _nearest_indices(out_w, width, sx, crop_x)

  # Every array here is [T, H, W] or [T, H, W, C].
  def mirror(x):
    return jnp.where(flip, jnp.flip(x, 2), x)

  def nearest(x):
    return mirror(jnp.take(jnp.take(x, rows, axis=1), cols, axis=2))

  def resample(x, axis, size, scale, crop, method):
    shape = x.shape[:axis] + (size,) + x.shape[axis + 1:]
    return jax.image.scale_and_translate(x, shape, (axis,), scale[None], -jnp.asarray(crop, jnp.float32)[None],
                                         method=method, antialias=True)

  # Frames as PIL's bicubic resize: along the width first, rounded to uint8, then along the height.
  frames = jnp.clip(jnp.round(resample(clip['rgb'].astype(jnp.float32), 2, out_w, sx, crop_x, 'cubic')), 0, 255)
  frames = resample(frames, 1, out_h, sy, crop_y, 'cubic')
  out = {'frames': mirror(jnp.clip(frames / 127.5 - 1, -1, 1))}
  num_frames = clip['rgb'].shape[0]
  if mode == 'pose':
    iuv = nearest(clip['iuv']).astype(jnp.int32)
    part = iuv[..., 0]
    if train and options.random_drop_prob > 0:
      dropped = jax.random.bernoulli(k_parts, options.random_drop_prob, (num_frames, data.NUM_PARTS + 1))
      dropped = dropped.at[:, 0].set(False)
      iuv = jnp.where(jnp.take_along_axis(dropped, part.reshape(num_frames, -1), 1).reshape(part.shape)[..., None],
                      0, iuv)
    iuv = iuv.astype(jnp.float32) * jnp.array([255. / data.NUM_PARTS, 1., 1.])
    kps = clip['keypoints']
    xy = (kps[..., :2] + 0.5) * jnp.stack([sx, sy]) - 0.5 - jnp.stack([crop_x, crop_y])
    xy = xy.at[..., 0].set(jnp.where(flip, out_w - 1 - xy[..., 0], xy[..., 0]))
    kps = jnp.concatenate([xy, kps[..., 2:]], -1)
    half_width = (options.skeleton_width or REFERENCE_STROKE * height / REFERENCE_HEIGHT) * sy
    keep = None
    if train and options.random_drop_prob > 0:
      keep = ~jax.random.bernoulli(k_limbs, options.random_drop_prob, kps.shape[:2] + (skeleton.NUM_LIMBS,))
    draw = lambda k, m: skeleton.render(k, out_h, out_w, half_width, m)
    bones = jax.vmap(draw)(kps, keep) if keep is not None else jax.vmap(lambda k: draw(k, None))(kps)
    out['inputs'] = jnp.concatenate([iuv, bones], -1) / 127.5 - 1
  elif mode == 'labels':
    inputs = jax.nn.one_hot(nearest(clip['labels']).astype(jnp.int32), label_nc)
    if options.use_instance:
      inputs = jnp.concatenate([inputs, instance_edges(nearest(clip['instance']))[..., None]], -1)
    out['inputs'] = inputs
  else:
    out['inputs'] = nearest(clip['edges'])[..., None].astype(jnp.float32) / 127.5 - 1
  for key in ('flow', 'conf', 'visible'):
    if key not in clip:
      continue
    for s in range(options.n_scales_temporal):
      name = key if s == 0 else f'{key}_d{s}'
      if key == 'flow':
        flow = resample(clip['flow'][s].astype(jnp.float32), 2, out_w, sx, crop_x, 'linear')
        flow = mirror(resample(flow, 1, out_h, sy, crop_y, 'linear')) * jnp.stack([sx, sy])
        out[name] = flow * jnp.where(flip, jnp.array([-1., 1.]), 1.)
      else:
        out[name] = nearest(clip[key][s])[..., None].astype(jnp.float32)
  for key in ('clip', 'start', 't_step'):
    out[key] = clip[key]
  return out


def instance_edges(instance: jax.Array) -> jax.Array:
  """1 where a pixel's instance id differs from a 4-neighbour's (both sides of a boundary), as pix2pixHD."""
  edge = jnp.zeros(instance.shape, bool)
  dx = instance[..., :, 1:] != instance[..., :, :-1]
  dy = instance[..., 1:, :] != instance[..., :-1, :]
  edge = edge.at[..., :, 1:].max(dx).at[..., :, :-1].max(dx)
  edge = edge.at[..., 1:, :].max(dy).at[..., :-1, :].max(dy)
  return edge.astype(jnp.float32)


def make_batch_fn(metadata: Mapping, options: ClipOptions, train: bool = True):
  """(keys [b, 2], gathered arrays [b, ...]) -> augmented batch; to be jitted or pmapped.

  The same function object for the same dataset layout and options, so jit and pmap compile it once.
  """
  input_channels(metadata, options)  # refuses options the dataset cannot serve
  return _batch_fn(metadata['mode'], tuple(metadata['size']), int(metadata.get('label_nc') or 0), options, train)


@functools.lru_cache(maxsize=None)
def _batch_fn(mode: str, stored_size: Tuple[int, int], label_nc: int, options: ClipOptions, train: bool):
  def batch_fn(keys, clips):
    return jax.vmap(lambda k, c: augment_clip(k, c, mode, stored_size, options, train, label_nc))(keys, clips)

  return batch_fn


@functools.lru_cache(maxsize=None)
def _pmapped(batch_fn, devices: Tuple[jax.Device, ...]):
  return jax.pmap(batch_fn, devices=devices)


def step_keys(seed: int, epoch: int, step: int, global_batch_size: int) -> jax.Array:
  """One augmentation key per example of the global batch, so any split over hosts draws the same."""
  return jax.random.split(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), step),
                          global_batch_size)


def batches(clips: data.ClipSet, options: ClipOptions, global_batch_size: int, seed: int, epoch: int,
            devices: Optional[Sequence[jax.Device]] = None, train: bool = True, readers: int = 8
            ) -> Iterator[Dict[str, jax.Array]]:
  """This host's per-device batches of one epoch, [devices, B / devices, ...], the next one read ahead.

  `readers` threads read the clips of a batch concurrently.
  """
  devices = list(devices or jax.local_devices())
  samples = epoch_samples(clips.clip_lengths, options.n_frames_total, options.max_t_step, global_batch_size, seed,
                          epoch)
  positions = input_pipeline.host_indices(np.arange(global_batch_size), jax.process_index(), jax.process_count())
  if len(positions) % len(devices):
    raise ValueError(f'{len(positions)} clips per host do not split over {len(devices)} devices')
  p_batch = _pmapped(make_batch_fn(clips.metadata, options, train), tuple(devices))
  with concurrent.futures.ThreadPoolExecutor(1) as ahead, concurrent.futures.ThreadPoolExecutor(readers) as pool:
    pending = ahead.submit(gather, clips, samples[0][positions], options, pool)
    for step in range(len(samples)):
      host = pending.result()
      if step + 1 < len(samples):
        pending = ahead.submit(gather, clips, samples[step + 1][positions], options, pool)
      keys = step_keys(seed, epoch, step, global_batch_size)[positions]
      per_device = lambda x: x.reshape((len(devices), -1) + x.shape[1:])
      yield p_batch(per_device(keys), jax.tree_util.tree_map(per_device, host))


def eval_clip(clips: data.ClipSet, clip: int, options: ClipOptions) -> Dict[str, jax.Array]:
  """A whole clip at spacing 1, scaled and cropped deterministically, without dropping: [T, ...]."""
  options = dataclasses.replace(options, n_frames_total=clips.clip_lengths[clip])
  host = gather(clips, np.array([[clip, 0, 1]]), options)
  batch = jax.jit(make_batch_fn(clips.metadata, options, train=False))(jax.random.PRNGKey(0)[None], host)
  return jax.tree_util.tree_map(lambda x: x[0], batch)
