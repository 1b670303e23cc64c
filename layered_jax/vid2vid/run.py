"""A vid2vid run as layered_jax.main starts it: the dataset, training, generation, and the baseline comparison.

With config.compare_baseline (configs/vid2vid_demo.py), a single-frame baseline (`baseline_config`: no flow,
n_frames_G = 1, no temporal discriminator, no temporal loss) is trained on the same clips for the same epochs
in WORKDIR/baseline and scored on the same held-out clips; the console prints both and their ratio.
"""

import json
import os
from typing import Any, Dict

from data_prep import prepare
from layered_jax import distributed
from layered_jax.vid2vid import generate, train

Config = Any


def baseline_config(config: Config, dataroot: str) -> Config:
  """The single-frame baseline of a config: each frame from its own labels, trained with the same budget."""
  baseline = config.copy_and_resolve_references()
  with baseline.unlocked():
    baseline.update(n_frames_G=1, no_flow=True, n_scales_temporal=0, lambda_T=0., compare_baseline=False,
                    dataroot=dataroot, generate_dir='',
                    score_from_frame=config.n_frames_G - 1)  # the frames the full model generates too
  return baseline


def run(config: Config, workdir: str) -> None:
  train.check_config(config)
  dataroot = prepare.prepare_vid2vid(config, workdir)
  distributed.barrier('dataset ready')
  results = _train_and_generate(config, workdir)
  if not config.get('compare_baseline') or config.mode == 'train':
    return
  baseline_dir = os.path.join(workdir, 'baseline')
  if distributed.is_primary():
    print('training the single-frame baseline (no flow, n_frames_G=1, no temporal discriminator) with the same '
          f'budget in {baseline_dir}', flush=True)
  baseline = _train_and_generate(baseline_config(config, dataroot), baseline_dir)
  if results is not None and baseline is not None:
    comparison = compare(results['mean'], baseline['mean'])
    with open(os.path.join(workdir, 'comparison.json'), 'w') as f:
      json.dump(comparison, f, indent=1)
    print(f'vid2vid:  {generate.report(results)}\nbaseline: {generate.report(baseline)}\n'
          f'warp error {comparison["warp_error_ratio"]:.2f}x the baseline\'s, PSNR {comparison["psnr_gain_db"]:+.2f} dB '
          f'(written to {os.path.join(workdir, "comparison.json")})', flush=True)


def compare(model: Dict[str, float], baseline: Dict[str, float]) -> Dict[str, Any]:
  return {'vid2vid': model, 'baseline': baseline, 'warp_error_ratio': model['warp_error'] / baseline['warp_error'],
          'psnr_gain_db': model['psnr'] - baseline['psnr']}


def _train_and_generate(config: Config, workdir: str):
  if config.mode in ('train', 'train_and_generate'):
    train.train_and_evaluate(config, workdir)
  if config.mode not in ('generate', 'train_and_generate'):
    return None
  results = generate.generate(config, workdir)  # process 0 renders and writes the held-out clips
  if results is not None:
    print(f'generated {len(results["clips"])} {results["split"]} clips in {results["out_dir"]} (open '
          f'{results["out_dir"]}/<clip>/index.html): {generate.report(results)}', flush=True)
  distributed.barrier('generation done')
  return results
