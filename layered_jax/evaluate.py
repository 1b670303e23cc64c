"""Exported layers against a synthetic video's ground truth (data_prep.synthetic).

For each person layer: the IoU of its alpha with the true layer's (person and
shadow), and the shadow recall, the share of the person's true shadow pixels
(visible ones, not covered by a layer in front) that the exported layer holds.
"""

import json
import os
from typing import Dict

import numpy as np

from layered_jax import files

ALPHA_ON = 0.5  # exported alpha above this counts as covered, for the IoU
SHADOW_ON = 0.2  # a shadow is semi-transparent: a lower bar for the recall


def _alpha(path: str) -> np.ndarray:
  return files.read_rgba(path)[..., 3]


def layer_scores(export_dir: str, video_dir: str) -> Dict[str, Dict[str, float]]:
  """{'01': {'alpha_iou': ..., 'shadow_recall': ...}, ...} over all frames."""
  truth_dir = os.path.join(video_dir, 'ground_truth')
  with open(os.path.join(truth_dir, 'layers.json')) as f:
    truth = json.load(f)
  with open(os.path.join(export_dir, 'layers.json')) as f:
    exported = json.load(f)
  if exported['size'] != truth['size']:
    raise ValueError(f'{export_dir} is {exported["size"]}, the ground truth {truth["size"]}: '
                     'compare a low-resolution export (--config.export_high_res=False)')
  scores = {}
  for k in truth['layer_ids'][1:]:
    intersection = union = shadow_hits = shadow_total = 0
    for i, name in enumerate(truth['frames']):
      true_alpha = _alpha(os.path.join(truth_dir, 'layers', f'{k:02d}', name))
      got = _alpha(os.path.join(export_dir, 'layers', f'{k:02d}', name))
      order = truth['composite_order'][i]
      in_front = np.zeros_like(true_alpha, bool)
      for j in order[order.index(k) + 1:]:
        in_front |= _alpha(os.path.join(truth_dir, 'layers', f'{j:02d}', name)) > 0
      true_mask, got_mask = true_alpha > 0, got > ALPHA_ON
      intersection += np.sum(true_mask & got_mask)
      union += np.sum(true_mask | got_mask)
      shadow = (true_alpha > 0) & (true_alpha < 1) & ~in_front
      shadow_hits += np.sum(got[shadow] > SHADOW_ON)
      shadow_total += np.sum(shadow)
    scores[f'{k:02d}'] = {'alpha_iou': float(intersection / max(union, 1)),
                          'shadow_recall': float(shadow_hits / max(shadow_total, 1))}
  return scores
