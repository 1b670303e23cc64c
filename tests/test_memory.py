"""The memory planner: XLA's figures against a measured peak, linearity in the batch, the warning, the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import default
from data_prep import synthetic
from layered_jax import memory, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(num_filters=8):
  config = default.get_config()
  config.num_filters = num_filters
  config.crop_size = 64
  return config


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='needs Linux peak-RSS reset')
def test_planned_step_memory_matches_the_measured_peak_on_cpu():
  # 3 layers at 128x256, nf=16, batch 2: about 300 MB, mostly activations.
  out = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'memory_run.py'), '3', '128', '256', '16', '2'],
                       capture_output=True, text=True, check=True, cwd=REPO)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  planned, measured = result['planned'], result['measured']
  assert planned > 200e6
  # The plan leaves 1 - USABLE of a device free for what XLA does not count; the measured peak must fall in it.
  assert planned <= measured <= planned / memory.USABLE, result


def test_memory_grows_linearly_with_the_per_device_batch():
  config = _config()
  shape = dict(n_textures=49, num_layers=3, width=128, height=64)
  for stage in ('layers', 'upsample'):
    plan = memory.plan_stage(config, stage, num_frames=10, per_device_batch=1, **shape)
    assert plan.per_frame > 0
    at_four = memory.step_bytes(config, stage, per_device_batch=4, **shape)
    assert abs(plan.total(4) - plan.video - at_four) <= 0.05 * at_four, (stage, plan, at_four)


def test_video_bytes_count_every_frame_kept_on_a_device():
  frames = memory.frame_shapes(10, 3, 128, 64)
  per_frame = 64 * 128 * 3 + 128 * 256 * 3 + 3 * 64 * 128 * (2 + 1 + 1) * 4  # rgb, rgb_hr uint8; uv, pids, trimap
  assert memory.video_bytes(frames) == 10 * per_frame


def test_the_warning_names_the_largest_batch_that_fits():
  gib = memory.GIB
  plan = memory.StagePlan('layers', per_device_batch=8, step=int(9 * gib), per_frame=gib, video=gib)
  assert plan.total() == 10 * gib and plan.total(2) == 4 * gib
  assert memory.too_large_message(plan, int(13 * gib), 'batch_size', 2) is None  # 10 <= 0.8 * 13
  limit = 8 * gib  # 0.8 * 8 = 6.4 GiB: room for 2 GiB fixed + 4 frames
  assert plan.largest_batch(limit) == 4
  message = memory.too_large_message(plan, limit, 'batch_size', 2)
  assert '--config.batch_size to 8 or less' in message and '10.00 GiB' in message
  assert 'not even one frame' in memory.too_large_message(plan, int(2 * gib), 'batch_size', 2)


def test_training_warns_before_running_a_step_that_will_not_fit(monkeypatch, caplog):
  config = _config()
  monkeypatch.setattr(memory, 'device_memory', lambda device=None: 1000)
  frames = {'uv': jnp.zeros((1, 4, 3, 64, 128, 2))}
  compiled = jax.jit(lambda x: x + 1).lower(jnp.zeros(1000)).compile()
  train._warn_if_too_large(config, 'layers', compiled, frames, 49, 2)
  assert 'not even one frame per device fits' in caplog.text and 'the layers stage needs about' in caplog.text


def test_command_line_plans_both_stages_of_a_video(tmp_path):
  video = str(tmp_path / 'walk')
  synthetic.generate(video, people=2, frames=6, size=(128, 64))
  config = os.path.join(REPO, 'configs', 'demo.py')
  command = [sys.executable, '-m', 'layered_jax.memory', f'--config={config}', f'--dataroot={video}',
             '--frames=3', '--memory_gb=0.05']
  out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert '3 frames of 128x64, 3 layers' in out.stdout  # layers and size from the video, frames from the flag
  rows = [line.split() for line in out.stdout.splitlines() if line.startswith('layers ')]
  assert len(rows) == 1 and rows[0][1] == '4'  # the demo's batch of 4 on one device
  assert 'warning: the layers stage needs about' in out.stdout
  out = subprocess.run(command[:4] + [f'--dataroot={tmp_path}/none', '--layers=1'], capture_output=True, text=True,
                       cwd=REPO)
  assert out.returncode != 0 and 'give --frames, --layers and --size' in out.stderr
