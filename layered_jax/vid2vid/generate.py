"""vid2vid inference and its scores (vid2vid-spec section 6): a whole held-out label sequence, frame by frame.

`render` generates every frame of a clip in one lax.scan, each from the last tG-1 outputs: with no_first_img
(the pose setting) from zero previous frames, the first frame being the raw output; otherwise the first tG-1
frames are the real ones. `scores` compares the generated frames with the real ones: PSNR over the whole
frame and inside the person mask, and the warp error, the temporal-consistency score: the mean absolute
difference (RGB in [0, 1]) between generated frame t and generated frame t-1 warped by the ground-truth flow,
on the pixels visible in both frames (the synthetic clip sets' exact occlusion masks; the reference's flow
confidence on real videos). Lower is steadier; the real video's own warp error (lighting and shadows moving
with the people) is its floor.

`generate` writes, for each held-out clip, the generated frames (PNG), browser-playable videos of the
labels, the generated and the real clip, and a page showing them side by side; scores.json holds the scores.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from layered_jax import distributed, errors, files, viewer
from layered_jax.vid2vid import input_pipeline, step
from layered_jax.vid2vid.warp import flow_warp

Config = Any


def render(generator, params_g: Any, options: step.Options, clip: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Every frame of one clip (eval_clip's arrays [N, ...]) -> {'final', 'raw', 'flow', 'weight'} [N, ...] (host).

  With real first frames, frames 0 .. tG-2 of 'final' are the real ones and their other outputs zeros.
  """
  return {k: np.asarray(v) for k, v in _render(generator, options)(params_g, clip['inputs'], clip['frames']).items()}


def _render(generator, options: step.Options):
  t_g = options.n_frames_G
  fg_labels = options.fg_labels if options.fg else ()

  @jax.jit
  def run(params_g, labels, frames):
    n = labels.shape[0]
    labels, frames = labels[None], frames[None]
    if options.no_first_img:  # the first frame's window: its own labels repeated, zero previous frames
      labels = jnp.concatenate([jnp.repeat(labels[:, :1], t_g - 1, axis=1), labels], axis=1)
      prev = jnp.zeros_like(frames[:, :t_g - 1])
      raw_only = jnp.arange(n) == 0
    else:
      prev = frames[:, :t_g - 1]
      raw_only = jnp.zeros((n - (t_g - 1),), bool)
    out, _ = step.generate_chunk(generator, params_g, labels, generator.pyramid(prev), fg_labels, raw_only,
                                 unroll=1)
    out = {k: v[0] for k, v in out.items()}
    if not options.no_first_img and t_g > 1:
      out = {k: jnp.concatenate([(frames[0, :t_g - 1] if k == 'final' else jnp.zeros_like(v[:1]).repeat(t_g - 1, 0)),
                                 v]) for k, v in out.items()}
    return out

  return run


def person_mask(clip: Mapping[str, Any], metadata: Mapping) -> Optional[np.ndarray]:
  """[N, H, W, 1] 0/1 where the inputs show a person: pose, a DensePose part; labels, a foreground class."""
  inputs = np.asarray(clip['inputs'])
  if metadata['mode'] == 'pose':
    return (inputs[..., :1] > -1 + 1e-3).astype(np.float32)
  if metadata['mode'] == 'labels' and metadata.get('fg_labels'):
    return np.clip(inputs[..., list(metadata['fg_labels'])].sum(-1, keepdims=True), 0, 1)
  return None


def _psnr(mse: float) -> float:
  return float(10 * np.log10(1. / max(mse, 1e-12)))


def scores(generated: np.ndarray, clip: Mapping[str, Any], mask: Optional[np.ndarray], first: int) -> Dict[str, float]:
  """PSNR (full frame, inside `mask`) and warp error of frames first.. of `generated` ([N, H, W, 3] in [-1, 1])."""
  gen = (np.asarray(generated, np.float32)[first:] + 1) / 2
  real = (np.asarray(clip['frames'], np.float32)[first:] + 1) / 2
  error = np.square(gen - real)
  out = {'psnr': _psnr(error.mean())}
  if mask is not None:
    m = mask[first:]
    out['psnr_person'] = _psnr(float((error * m).sum() / max(m.sum() * 3, 1)))
  visible = np.asarray(clip['visible' if 'visible' in clip else 'conf'], np.float32)
  flow = np.asarray(clip['flow'], np.float32)
  warp = lambda frames: np.asarray(flow_warp(jnp.asarray(frames[:-1]), jnp.asarray(flow[first + 1:])))
  v = visible[first + 1:]
  count = max(v.sum() * 3, 1)
  out['warp_error'] = float((np.abs(gen[1:] - warp(gen)) * v).sum() / count)
  out['real_warp_error'] = float((np.abs(real[1:] - warp(real)) * v).sum() / count)
  return out


def label_image(inputs: np.ndarray, mode: str) -> np.ndarray:
  """Inputs [..., H, W, C] -> RGB in [0, 1]: pose, the IUV under the skeleton; labels, a colour per class."""
  inputs = np.asarray(inputs, np.float32)
  if mode == 'pose':
    return np.clip(np.maximum(inputs[..., :3], inputs[..., 3:6]) * 0.5 + 0.5, 0, 1)
  if mode == 'labels':
    palette = np.random.default_rng(7).uniform(0.1, 1, (inputs.shape[-1], 3))
    return palette[inputs.argmax(-1)]
  return np.repeat(inputs[..., :1] * 0.5 + 0.5, 3, -1)


def flow_image(flow: np.ndarray) -> np.ndarray:
  """Flow [..., H, W, 2] -> RGB in [0, 1]: direction as hue, length as saturation (saturated at 8 px)."""
  flow = np.asarray(flow, np.float32)
  angle = (np.degrees(np.arctan2(flow[..., 1], flow[..., 0])) % 360) / 2
  length = np.clip(np.hypot(flow[..., 0], flow[..., 1]) / 8, 0, 1) * 255
  hsv = np.stack([angle, length, np.full_like(angle, 255)], -1).astype(np.uint8)
  flat = hsv.reshape(-1, hsv.shape[-2], 3)
  return cv2.cvtColor(flat, cv2.COLOR_HSV2RGB).reshape(hsv.shape).astype(np.float32) / 255


def visuals(mode: str, clip: Mapping[str, Any], out: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """TensorBoard images [N, H, W, 3] in [0, 1]: labels, generated, real, flow and occlusion weight."""
  images = {'labels': label_image(clip['inputs'], mode), 'generated': np.asarray(out['final']) * 0.5 + 0.5,
            'real': np.asarray(clip['frames']) * 0.5 + 0.5}
  if 'flow' in out:
    images['flow'] = flow_image(out['flow'])
    images['weight'] = np.repeat(np.asarray(out['weight'], np.float32), 3, -1)
  return {k: np.clip(v, 0, 1) for k, v in images.items()}


def load_generator(config: Config, workdir: str, options: step.Options):
  """(generator, params): the workdir's latest checkpoint, or config.init_checkpoint (a converted generator)."""
  from layered_jax import loop
  from layered_jax.vid2vid import train
  models = step.build_models(options)
  checkpoints_dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if os.path.isdir(checkpoints_dir) and os.listdir(checkpoints_dir):
    clips = train.open_split(config, workdir, 'train')
    checkpoints = loop.Checkpoints(workdir, config.keep_checkpoints, train.run_identity(config, clips, options))
    restored = checkpoints.restore(lambda record: train.initial_state(config, models, options))
    if restored is not None:
      return models.generator, restored[0].params['G']
  if config.init_checkpoint:
    return models.generator, train.initial_state(config, models, options).params['G']
  raise errors.WorkdirError(f'{workdir} has no checkpoint to generate from: train first (--config.mode=train), or '
                            'set --config.init_checkpoint to a converted generator (layered_jax.convert)')


def generate(config: Config, workdir: str) -> Optional[Dict[str, Any]]:
  """Renders the held-out clips (the train split's when there are none), writes the outputs; returns the scores
  (None on processes other than 0)."""
  from layered_jax.vid2vid import train
  path = train.dataset_dir(config, workdir)
  metadata = train.open_split(config, workdir, 'train').metadata
  split = 'test' if 'test' in metadata['clips'] else 'train'
  clips = train.open_split(config, workdir, split)
  options = train.options_for(config, metadata)
  generator, params = load_generator(config, workdir, options)  # every process: restoring is collective
  if not distributed.is_primary():
    return None  # process 0 renders and writes
  count = len(clips.clip_lengths) if config.generate_clips < 0 else min(config.generate_clips, len(clips.clip_lengths))
  out_dir = os.path.abspath(config.generate_dir or os.path.join(workdir, 'generate'))
  first = max(config.get('score_from_frame', 0), 0 if options.no_first_img else options.n_frames_G - 1)
  results = {'dataset': path, 'split': split, 'first_scored_frame': first, 'clips': {}}
  try:
    with files.staged_directory(out_dir, overwrite=True) as staging:
      for index in range(count):
        clip = input_pipeline.eval_clip(clips, index, train.clip_options(config, clips.clip_lengths[index]))
        out = render(generator, params, options, clip)
        name = clips.clip_names[index]
        results['clips'][name] = scores(out['final'], clip, person_mask(clip, metadata), first)
        _write_clip(os.path.join(staging, name), name, clips.mode, clip, out, config.fps, results['clips'][name])
      means = {k: float(np.mean([c[k] for c in results['clips'].values()])) for k in next(iter(
          results['clips'].values()))}
      results['mean'] = means
      with open(os.path.join(staging, 'scores.json'), 'w') as f:
        json.dump(results, f, indent=1)
  except OSError as error:
    raise errors.OutputError(f'could not write {out_dir}: {errors.os_reason(error) or error}') from error
  results['out_dir'] = out_dir
  return results


def _write_clip(directory: str, name: str, mode: str, clip, out, fps: float, clip_scores: Mapping[str, float]) -> None:
  os.makedirs(os.path.join(directory, 'frames'))
  generated = files.to_uint8(np.clip(out['final'] * 0.5 + 0.5, 0, 1))
  for t, frame in enumerate(generated):
    files.write_png(os.path.join(directory, 'frames', f'{t:05d}.png'), frame)
  videos = {'labels': label_image(clip['inputs'], mode), 'generated': out['final'] * 0.5 + 0.5,
            'real': np.asarray(clip['frames']) * 0.5 + 0.5}
  panels = []
  for key, frames in videos.items():
    written = files.write_video(os.path.join(directory, key), list(files.to_uint8(np.clip(frames, 0, 1))), fps)
    panels.append(viewer.Panel(key, video=os.path.basename(written)))
  height, width = generated.shape[1:3]
  facts = [(k.replace('_', ' '), f'{v:.4g}') for k, v in clip_scores.items()]
  viewer.write_page(os.path.join(directory, 'index.html'), f'vid2vid: {name}', panels, len(generated), fps,
                    (width, height), facts)


def report(results: Mapping[str, Any]) -> str:
  """One line of the mean scores."""
  m = results['mean']
  person = f', person PSNR {m["psnr_person"]:.2f} dB' if 'psnr_person' in m else ''
  return (f'PSNR {m["psnr"]:.2f} dB{person}, warp error {m["warp_error"]:.4f} '
          f'(real video {m["real_warp_error"]:.4f})')

