"""Runs the original code (google/retiming) on a video folder, and puts its layers in our export layout.

  python -m benchmarks.retiming_original --retiming=../retiming --video=work/scene --workdir=work/original \\
      --seed=1 -- --batch_size 8 --n_epochs 200 --num_filters 64 --trimap_width 6 --mask_loss_rolloff_epoch 33

Everything after `--` goes to the original's train.py as is. The runner adds
what makes it run here and match our settings: `--gpu_ids -1` (CPU),
`--display_id 0` and `--no_html` (no visdom, no training web page),
`--n_epochs_upsample 0`, `--height`/`--width` equal to the video's size (so
nothing is resized), `--save_latest_freq` equal to `--n_epochs` (so test.py
reads the last epoch), `--checkpoints_dir` in the workdir. Then test.py
renders every frame (batch 1, BatchNorm on the frame's statistics, detail
transfer, as the original does) and its RGBA layers are copied into
WORKDIR/export in our layout (`layers/NN/FFFF.png`, `layers.json`), which
`layered_jax.evaluate` scores.

The original's code is never copied here: clone it yourself
(`git clone https://github.com/google/retiming`, any commit since 2020) and
pass its folder. It runs with torch 2.13 on CPU through the stand-ins in
`benchmarks/retiming_shims/` (torchvision's ToTensor, a minimal dominate,
`np.int`), which go first on PYTHONPATH.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Sequence


SHIMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'retiming_shims')
NAME = 'run'


def check_checkout(retiming: str) -> None:
  if not os.path.isfile(os.path.join(retiming, 'train.py')) or not os.path.isdir(os.path.join(retiming, 'models')):
    raise FileNotFoundError(f'{retiming} is not a checkout of google/retiming (no train.py, models/): '
                            'git clone https://github.com/google/retiming and pass its folder with --retiming')


def _environment(retiming: str) -> Dict[str, str]:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([SHIMS, os.path.abspath(retiming)])
  env.pop('GLIBC_TUNABLES', None)
  return env


def _video_size(video: str):
  with open(os.path.join(video, 'metadata.json')) as f:
    width, height = json.load(f)['size_LR']
  return width, height


def _option(args: Sequence[str], name: str, default=None):
  """The value of --name in an argument list (the last one given)."""
  values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == f'--{name}']
  return values[-1] if values else default


def train_arguments(video: str, workdir: str, seed: int, extra: Sequence[str]) -> List[str]:
  """train.py's arguments: ours for running here, then `extra` (the comparison's settings)."""
  width, height = _video_size(video)
  n_epochs = _option(extra, 'n_epochs', '2000')
  return ['--dataroot', os.path.abspath(video), '--name', NAME, '--checkpoints_dir', os.path.join(workdir, 'checkpoints'),
          '--gpu_ids', '-1', '--display_id', '0', '--no_html', '--n_epochs_upsample', '0', '--seed', str(seed),
          '--height', str(height), '--width', str(width), '--save_latest_freq', str(n_epochs)] + list(extra)


def test_arguments(video: str, workdir: str, extra: Sequence[str]) -> List[str]:
  """test.py's arguments: the model options of training, the latest checkpoint, results in the workdir."""
  width, height = _video_size(video)
  model_options = []
  for name in ('num_filters', 'texture_res', 'texture_channels', 'trimap_width'):
    value = _option(extra, name)
    if value is not None:
      model_options += [f'--{name}', value]
  flags = [f for f in ('--use_homographies',) if f in extra]
  return ['--dataroot', os.path.abspath(video), '--name', NAME, '--checkpoints_dir', os.path.join(workdir, 'checkpoints'),
          '--results_dir', os.path.join(workdir, 'results'), '--gpu_ids', '-1', '--height', str(height),
          '--width', str(width)] + model_options + flags


def run_script(retiming: str, script: str, arguments: Sequence[str], log_path: str, nice: int = 0) -> float:
  """Runs the original's script with the shims; returns its wall-clock seconds. Fails with the log's tail."""
  command = ([] if not nice else ['nice', '-n', str(nice)]) + [sys.executable, script] + list(arguments)
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    log.write(' '.join(command) + '\n')
    log.flush()
    result = subprocess.run(command, cwd=retiming, env=_environment(retiming), stdout=log, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - start
  if result.returncode:
    with open(log_path) as log:
      tail = log.read()[-3000:]
    raise RuntimeError(f'the original {script} failed ({result.returncode}); log {log_path}:\n{tail}')
  return seconds


def to_export(workdir: str, video: str, export_dir: str) -> None:
  """test.py's images/FFFF_rgba_lP.png (P = position in the frame's stack) -> export_dir/layers/NN/FFFF.png."""
  with open(os.path.join(video, 'metadata.json')) as f:
    metadata = json.load(f)
  images = os.path.join(workdir, 'results', NAME, 'test_latest', 'images')
  names = sorted(n for n in os.listdir(os.path.join(video, 'rgb_256')) if n.endswith('.png'))
  order = metadata.get('composite_order') or [list(range(1, len(os.listdir(os.path.join(video, 'iuv'))) + 1))] * len(names)
  ids = [0] + sorted(order[0])
  if os.path.exists(export_dir):
    shutil.rmtree(export_dir)
  for k in ids:
    os.makedirs(os.path.join(export_dir, 'layers', f'{k:02d}'))
  for i, name in enumerate(names):
    stem = os.path.splitext(name)[0]
    for position, k in enumerate([0] + list(order[i])):
      source = os.path.join(images, f'{stem}_rgba_l{position}.png')
      if not os.path.exists(source):
        raise FileNotFoundError(f'{source} is missing: did test.py run on {video}?')
      shutil.copyfile(source, os.path.join(export_dir, 'layers', f'{k:02d}', name))
  width, height = metadata['size_LR']
  with open(os.path.join(export_dir, 'layers.json'), 'w') as f:
    json.dump({'size': [width, height], 'layer_ids': ids, 'composite_order': [list(o) for o in order],
               'frames': names, 'source': os.path.abspath(video), 'code': 'google/retiming'}, f, indent=1)


def train_and_export(retiming: str, video: str, workdir: str, seed: int, extra: Sequence[str],
                     nice: int = 0) -> Dict[str, float]:
  """Trains, tests and exports; returns {'train_seconds', 'export_seconds'}."""
  check_checkout(retiming)
  os.makedirs(workdir, exist_ok=True)
  train_seconds = run_script(retiming, 'train.py', train_arguments(video, workdir, seed, extra),
                             os.path.join(workdir, 'train.log'), nice)
  export_seconds = run_script(retiming, 'test.py', test_arguments(video, workdir, extra),
                              os.path.join(workdir, 'test.log'), nice)
  to_export(workdir, video, os.path.join(workdir, 'export'))
  return {'train_seconds': train_seconds, 'export_seconds': export_seconds}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--retiming', required=True, help='a checkout of google/retiming')
  parser.add_argument('--video', required=True, help='a video folder (data_prep layout)')
  parser.add_argument('--workdir', required=True, help='checkpoints, results, logs and export/ go here')
  parser.add_argument('--seed', type=int, default=1)
  parser.add_argument('extra', nargs='*', help="train.py's options after --")
  args = parser.parse_args(argv)
  try:
    times = train_and_export(args.retiming, args.video, args.workdir, args.seed, args.extra)
  except (FileNotFoundError, RuntimeError) as error:
    parser.exit(2, f'error: {error}\n')
  print(json.dumps(times))
  from layered_jax import evaluate
  export_dir = os.path.join(args.workdir, 'export')
  print(json.dumps({'layers': evaluate.layer_scores(export_dir, args.video),
                    **evaluate.image_scores(export_dir, args.video)}, indent=1))


if __name__ == '__main__':
  main()
