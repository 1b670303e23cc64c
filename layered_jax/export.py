"""Export the layers of a trained model (spec section 5).

  python -m layered_jax.main --config=configs/reflection.py --workdir=work/reflection --config.mode=export

Writes, atomically, EXPORT/ (default WORKDIR/export):
  layers/NN/FFFF.png      RGBA per layer; 00 is the background (alpha 1), NN is the iuv layer
                          number, the same in every frame whatever the composite order
  reconstruction/FFFF.png the model's composite
  layers.json             fps, size, layer ids and names, per-frame composite order, frame names
  original.mp4, reconstruction.mp4, layer_NN.mp4 (over a checkerboard; H.264, or .webm without imageio-ffmpeg)
  index.html              the viewer: synchronized videos, a frame slider, the layers recomposited with a
                          show/hide toggle per layer, and the export's facts
Frames are rendered one at a time with BatchNorm on that frame's statistics, as
the reference's test step does; detail transfer adds the part of the target
the model missed to the layers, top down, weighted by what shows through.
"""

import json
import os
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from layered_jax import dataset, distributed, errors, files, train, viewer
from layered_jax.models.layers import transmittance_from_above, upsample2x_bilinear


def transfer_detail(layers: jax.Array, target: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """layers [B,L,H,W,4], target [B,H,W,3], reconstruction [B,H,W,4], all in [-1, 1].

  rgb_i += (prod over layers j above i of (1 - a_j)) * (target - reconstruction), for i >= 1;
  the background keeps its colour. Clamped to [-1, 1].
  """
  residual = (target - reconstruction[..., :3])[:, None]
  shows = transmittance_from_above(layers[..., 3:] * 0.5 + 0.5)
  is_person = (jnp.arange(layers.shape[1]) > 0)[None, :, None, None, None]
  rgb = layers[..., :3] + jnp.where(is_person, shows, 0.) * residual
  return jnp.clip(jnp.concatenate([rgb, layers[..., 3:]], -1), -1, 1)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] -> uint8 as the reference saves images: (x + 1) / 2 * 255, truncated."""
  return ((np.clip(x, -1, 1) + 1) / 2 * 255).astype(np.uint8)


def over_checkerboard(rgba: np.ndarray, cell: int = 16) -> np.ndarray:
  height, width = rgba.shape[:2]
  board = ((np.indices((height, width)) // cell).sum(0) % 2 * 60 + 150)[..., None].astype(np.float32)
  alpha = rgba[..., 3:] / 255.
  return (rgba[..., :3] * alpha + board * (1 - alpha)).astype(np.uint8)


def load_variables(config: train.Config, workdir: str, meta, sample) -> Tuple[Dict, bool, Optional[Dict]]:
  """(variables, whether the upsampler was trained, training facts) from the workdir's newest usable checkpoint.

  The facts are {'steps', 'epoch', 'stage'}; None for a converted reference checkpoint.
  """
  n_textures = int(meta['n_textures'])
  checkpoints, restored = train.restore(config, workdir, meta, train.make_module(config, n_textures), sample)
  if restored is None:
    if config.init_checkpoint:  # a converted reference checkpoint, exported as is
      return train.converted_variables(config.init_checkpoint, n_textures), True, None
    raise errors.WorkdirError(f'no checkpoint in {checkpoints.directory}: train first (--config.mode=train) or set '
                              '--config.init_checkpoint to a converted reference checkpoint')
  state, progress = restored
  training = {'steps': int(state.step), 'epoch': progress.epoch, 'stage': progress.stage}
  return {'params': state.params, 'batch_stats': state.batch_stats}, progress.stage == 'upsample', training


def export(config: train.Config, workdir: str) -> str:
  """Renders every frame and writes the export folder; returns its path.

  Every process of a multi-process run calls it (restoring a checkpoint is collective);
  process 0 alone renders and writes. Reads the dataset data_prep.prepare built.
  """
  out_dir = os.path.abspath(config.export_dir or os.path.join(workdir, 'export'))
  dataset_dir = dataset.location(config, workdir)
  frames, meta = dataset.load(dataset_dir)
  dataset.check_built_for(meta, config, dataset_dir)
  n_textures = int(meta['n_textures'])
  sample = {k: jnp.asarray(frames[k][:1]) for k in ('uv', 'pids')}
  variables, upsampler_trained, training = load_variables(config, workdir, meta, sample)
  if not distributed.is_primary():
    return out_dir
  high_res = config.export_high_res and upsampler_trained
  module = train.make_module(config, n_textures)

  @jax.jit
  def render(uv, pids, target):
    uv_hr = upsample2x_bilinear(uv) if high_res else None
    out = module.apply(variables, uv, pids, uv_hr)
    layers = transfer_detail(out['layers'], target, out['reconstruction'])
    return layers.at[:, 0, ..., 3].set(1.), out['reconstruction']

  print(f'export: compiling the renderer, then {len(meta["frame_names"])} frames to {out_dir}', flush=True)
  with files.staged_directory(out_dir, overwrite=True) as staging:
    _write_export(staging, frames, meta, render, high_res, config.fps, training)
  return out_dir


def _write_export(out_dir, frames, meta, render, high_res: bool, fps: float,
                  training: Optional[Dict] = None) -> None:
  names = meta['frame_names']
  order = meta['composite_order']
  layer_ids = [0] + sorted(meta['layer_ids'])
  for k in layer_ids:
    os.makedirs(os.path.join(out_dir, 'layers', f'{k:02d}'))
  os.makedirs(os.path.join(out_dir, 'reconstruction'))
  videos = {'original': [], 'reconstruction': [], **{f'layer_{k:02d}': [] for k in layer_ids}}
  key = 'rgb_hr' if high_res else 'rgb'
  for i, name in enumerate(names):
    target = frames[key][i:i + 1].astype(np.float32) / 127.5 - 1
    layers, reconstruction = render(frames['uv'][i:i + 1], frames['pids'][i:i + 1], target)
    layers, reconstruction = to_uint8(np.asarray(layers[0])), to_uint8(np.asarray(reconstruction[0, ..., :3]))
    ids = [0] + list(order[i])  # position in the network's stack -> iuv layer id
    for position, k in enumerate(ids):
      files.write_png(os.path.join(out_dir, 'layers', f'{k:02d}', name), layers[position])
      videos[f'layer_{k:02d}'].append(over_checkerboard(layers[position]))
    files.write_png(os.path.join(out_dir, 'reconstruction', name), reconstruction)
    videos['original'].append(frames[key][i])
    videos['reconstruction'].append(reconstruction)
    if (i + 1) % 50 == 0 or i + 1 == len(names):
      print(f'export: {i + 1}/{len(names)} frames', flush=True)
  height, width = videos['original'][0].shape[:2]
  layer_names = ['background'] + [f'layer {k:02d}' for k in layer_ids[1:]]
  with open(os.path.join(out_dir, 'layers.json'), 'w') as f:
    json.dump({'fps': fps, 'size': [width, height], 'high_res': bool(high_res), 'layer_ids': layer_ids,
               'layer_names': layer_names, 'composite_order': [list(o) for o in order], 'frames': list(names),
               'source': meta['video_dir'], 'training': training}, f, indent=1)
  written = {video: os.path.basename(files.write_video(os.path.join(out_dir, video), images, fps))
             for video, images in videos.items()}
  _write_page(out_dir, written, layer_ids, layer_names, order, names, fps, (width, height), meta['video_dir'],
              high_res, training)


def _write_page(out_dir, videos: Dict[str, str], layer_ids, layer_names, order, names, fps, size, source,
                high_res, training) -> None:
  """index.html: the videos side by side, and the layers recomposited in the page with a toggle each."""
  layers = viewer.Layers(
      layer_ids, layer_names, [[f'layers/{k:02d}/{name}' for name in names] for k in layer_ids],
      [[0] + list(o) for o in order], name='layers composited in the page (untick to hide)',
      hide_note='To render the video without the hidden layers: python -m layered_jax.retime '
                '--layers=<this folder> --spec=spec.json --output=<new folder>, spec.json holding')
  items = [viewer.Panel('original', videos['original']), viewer.Panel('reconstruction', videos['reconstruction']),
           layers] + [viewer.Panel(f'{n} (RGBA over a checkerboard)', videos[f'layer_{k:02d}'])
                      for k, n in zip(layer_ids, layer_names)]
  steps = (f"{training['steps']} steps ({training['epoch']} epochs, last stage: {training['stage']})" if training
           else 'a converted reference checkpoint')
  facts = [('video', source), ('frames', f'{len(names)} ({names[0]} to {names[-1]})'),
           ('size', f'{size[0]}x{size[1]}' + (' (upsampled 2x)' if high_res else '')), ('fps', f'{fps:g}'),
           ('layers', ', '.join(f'{k:02d} {n}' for k, n in zip(layer_ids, layer_names))), ('training', steps),
           ('files', 'layers/NN/FFFF.png (RGBA), reconstruction/, layers.json, ' + ', '.join(videos.values()))]
  viewer.write_page(os.path.join(out_dir, 'index.html'), f'Layers of {os.path.basename(source)}', items,
                    len(names), fps, size, facts, names)
