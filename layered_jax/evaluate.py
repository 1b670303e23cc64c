"""Exported layers against a synthetic video's ground truth (data_prep.synthetic).

For each person layer: the IoU of its alpha with the true layer's (person and
shadow), and the shadow recall, the share of the person's true shadow pixels
(visible ones, not covered by a layer in front) that the exported layer holds;
and its stray alpha, the mean exported alpha where the person's true layer is
empty (smudges of background taken into a person's layer).

For the video (`image_scores`): the background layer's PSNR against the true
background, also without its worst 2% of pixels, and its peak squared error
(what a user who removes a person sees); and the PSNR of the exported layers
composited back to front against the video's frames. PSNRs are in dB over all
frames, pixels and channels, in levels of 255.
"""

import json
import os
from typing import Dict, Tuple

import cv2
import numpy as np

from layered_jax import files

ALPHA_ON = 0.5  # alpha above this counts as covered, for the IoU (true and exported)
SHADOW_ON = 0.2  # a shadow is semi-transparent: a lower bar for the recall, and the least true alpha counted
WORST_SHARE = 0.02  # background_psnr_98 leaves out this share of the worst pixels


def _alpha(path: str) -> np.ndarray:
  return files.read_rgba(path)[..., 3]


def _read_meta(export_dir: str, video_dir: str) -> Tuple[Dict, Dict]:
  """(the ground truth's layers.json, the export's), checked to be of the same size."""
  with open(os.path.join(video_dir, 'ground_truth', 'layers.json')) as f:
    truth = json.load(f)
  with open(os.path.join(export_dir, 'layers.json')) as f:
    exported = json.load(f)
  if exported['size'] != truth['size']:
    raise ValueError(f'{export_dir} is {exported["size"]}, the ground truth {truth["size"]}: '
                     'compare a low-resolution export (--config.export_high_res=False)')
  return truth, exported


def layer_scores(export_dir: str, video_dir: str) -> Dict[str, Dict[str, float]]:
  """{'01': {'alpha_iou': ..., 'shadow_recall': ..., 'stray_alpha': ...}, ...} over all frames."""
  truth_dir = os.path.join(video_dir, 'ground_truth')
  truth, _ = _read_meta(export_dir, video_dir)
  scores = {}
  for k in truth['layer_ids'][1:]:
    intersection = union = shadow_hits = shadow_total = stray = empty = 0
    for i, name in enumerate(truth['frames']):
      true_alpha = _alpha(os.path.join(truth_dir, 'layers', f'{k:02d}', name))
      got = _alpha(os.path.join(export_dir, 'layers', f'{k:02d}', name))
      order = truth['composite_order'][i]
      in_front = np.zeros_like(true_alpha, bool)
      for j in order[order.index(k) + 1:]:
        in_front |= _alpha(os.path.join(truth_dir, 'layers', f'{j:02d}', name)) > 0
      true_mask, got_mask = true_alpha > ALPHA_ON, got > ALPHA_ON  # both thresholded: soft shadows fade out
      intersection += np.sum(true_mask & got_mask)
      union += np.sum(true_mask | got_mask)
      shadow = (true_alpha > SHADOW_ON) & (true_alpha < 1) & ~in_front
      shadow_hits += np.sum(got[shadow] > SHADOW_ON)
      shadow_total += np.sum(shadow)
      stray += np.sum(got[true_alpha == 0])
      empty += np.sum(true_alpha == 0)
    scores[f'{k:02d}'] = {'alpha_iou': float(intersection / max(union, 1)),
                          'shadow_recall': float(shadow_hits / max(shadow_total, 1)),
                          'stray_alpha': float(stray / max(empty, 1))}
  return scores


def psnr(squared_error_mean: float) -> float:
  """PSNR in dB of a mean squared error in levels of 255."""
  return float(10 * np.log10(255. ** 2 / max(squared_error_mean, 1e-12)))


def image_scores(export_dir: str, video_dir: str) -> Dict[str, float]:
  """background_psnr, background_psnr_98, background_peak_error, recomposited_psnr (see the module doc)."""
  truth, exported = _read_meta(export_dir, video_dir)
  background_errors, recomposite_errors = [], []
  for i, name in enumerate(truth['frames']):
    read = lambda *parts: files.read_rgba(os.path.join(*parts)) * 255.
    background = read(export_dir, 'layers', '00', name)[..., :3]
    true_background = read(video_dir, 'ground_truth', 'layers', '00', name)[..., :3]
    background_errors.append(np.square(background - true_background).mean(-1))
    composite = background
    for k in exported['composite_order'][i]:
      layer = read(export_dir, 'layers', f'{k:02d}', name)
      alpha = layer[..., 3:] / 255.
      composite = layer[..., :3] * alpha + composite * (1 - alpha)
    frame = cv2.cvtColor(cv2.imread(os.path.join(video_dir, 'rgb_256', name)), cv2.COLOR_BGR2RGB)
    recomposite_errors.append(np.square(np.round(composite) - frame).mean())
  errors = np.sort(np.concatenate([e.ravel() for e in background_errors]))
  kept = errors[:int(np.ceil(len(errors) * (1 - WORST_SHARE)))]
  return {'background_psnr': psnr(errors.mean()), 'background_psnr_98': psnr(kept.mean()),
          'background_peak_error': float(errors[-1]), 'recomposited_psnr': psnr(np.mean(recomposite_errors))}
