"""The low-resolution train step learns; the benchmarks run (frameworks, device counts)."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks import train_step as benchmark
from layered_jax import train
from layered_jax.models import LayeredNeuralRenderer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = {'lambda_alpha_l1': 0.01, 'lambda_alpha_l0': 0.005, 'lambda_mask': 50.}


def test_jitted_donated_steps_reduce_the_loss_on_a_fixed_batch():
  batch = jax.device_put(benchmark.random_batch(np.random.default_rng(0), 2, 3, 64, 128))
  module = LayeredNeuralRenderer(n_textures=49, num_filters=8)
  state = train.create_train_state(jax.random.PRNGKey(0), module, batch, 1e-3)
  stats_before = jax.tree_util.tree_map(np.asarray, state.batch_stats)
  step = jax.jit(train.train_step, donate_argnums=0)
  totals = []
  for _ in range(8):
    state, terms = step(state, batch, WEIGHTS)
    totals.append(float(terms['total']))
  assert int(state.step) == 8
  assert all(b < a for a, b in zip(totals, totals[1:])), totals  # every Adam step helps
  assert totals[-1] < 0.95 * totals[0], totals
  assert set(terms) == {'total', 'recon', 'alpha_reg', 'mask', 'grad_norm'}  # the norm feeds the NaN stop
  assert 0 < float(terms['grad_norm']) < np.inf
  moved = jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.batch_stats, stats_before)
  assert min(jax.tree_util.tree_leaves(moved)) > 0  # running statistics are updated


def test_benchmark_reports_both_frameworks(capsys):
  rows = benchmark.main(['--layers', '2', '--height', '64', '--width', '128', '--num_filters', '8',
                         '--batch_size', '2', '--steps', '1', '--json'])
  (row,) = rows
  assert row['batch_size'] == 2
  assert row['jax_fps'] > 0 and row['torch_fps'] > 0
  assert np.isclose(row['ratio'], row['jax_fps'] / row['torch_fps'])
  # XLA's count for nf=8 at 64x128 is far below the 148 GFLOP of the full-size step, and not zero.
  assert 0.05 < row['gflop_per_frame'] < 5
  assert row['planned_memory_gib'] > 0 and row['peak_memory_gib'] is None  # CPU devices report no peak
  assert '"jax_fps"' in capsys.readouterr().out


def test_benchmark_without_pytorch_says_how_to_get_it_before_timing_anything(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  monkeypatch.setattr(benchmark, 'jax_stepper', lambda *a: pytest.fail('timed JAX before the check'))
  with pytest.raises(SystemExit) as exit_info:
    benchmark.main(['--layers', '2'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert 'PyTorch is not installed' in err and '--skip_torch' in err and 'requirements-test.txt' in err


def test_benchmark_alternates_rounds_and_takes_the_median():
  calls = []

  def stepper(name, seconds):
    def run():
      calls.append(name)
      time.sleep(seconds)
    return run

  fast, slow = benchmark.median_step_seconds([stepper('a', 0.01), stepper('b', 0.03)], steps=2, rounds=3)
  assert calls == ['a', 'a', 'a', 'b', 'b', 'b'] * 3  # alternating rounds, each one untimed step and two timed
  assert 0.01 <= fast < 0.025 and 0.03 <= slow < 0.045


def test_scaling_benchmark_runs_one_to_four_devices():
  out = subprocess.run([sys.executable, '-m', 'benchmarks.scaling', '--fake_cpu_devices=4', '--devices', '1', '2', '4',
                        '--height=64', '--width=128', '--num_filters=8', '--layers=2', '--steps=1', '--json'],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert [(r['devices'], r['global_batch']) for r in rows] == [(1, 1), (2, 2), (4, 4)]
  assert all(r['steps_per_sec'] > 0 and np.isclose(r['frames_per_sec'], r['steps_per_sec'] * r['devices'])
             for r in rows)
  assert rows[0]['efficiency'] == 1.
  too_many = subprocess.run([sys.executable, '-m', 'benchmarks.scaling', '--fake_cpu_devices=2', '--devices', '4'],
                            cwd=REPO, capture_output=True, text=True)
  assert too_many.returncode != 0 and '4 devices asked for, this machine has 2' in too_many.stderr


def test_models_train_step_planner_and_benchmarks_import_without_tf_tfds_clu_ml_collections_cv2():
  """The GPU images have jax, flax, optax and orbax but none of these (brief: keep them importable)."""
  script = '''
import importlib.machinery, sys
find = importlib.machinery.PathFinder.find_spec
hidden = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections', 'cv2')
importlib.machinery.PathFinder.find_spec = classmethod(
    lambda cls, name, path=None, target=None: None if name.split('.')[0] in hidden else find(name, path, target))
import benchmarks.train_step, benchmarks.scaling, layered_jax.train, layered_jax.models, layered_jax.losses
import layered_jax.input_pipeline, layered_jax.memory, layered_jax.loop, layered_jax.dataset, layered_jax.errors
import benchmarks.vid2vid_step, layered_jax.vid2vid.step, layered_jax.convert
assert not [m for m in hidden if m in sys.modules]
'''
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
