"""Two processes on localhost (2 CPU devices each, gloo) train like one process with 4 devices."""

import glob
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from data_prep import synthetic
from tests.test_train import assert_same_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'tests', 'train_run.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
              **{k: str(v) for k, v in extra.items()})


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('mp') / 'walk')
  synthetic.generate(path, people=2, frames=8, size=(128, 64))
  return path


def test_two_processes_match_one_process_with_four_devices(tmp_path, video):
  data_dir = str(tmp_path / 'data')
  port = _free_port()
  workdir = str(tmp_path / 'two')
  short = ['n_epochs=1']  # one epoch of each stage (see assert_same_training)
  procs = [subprocess.Popen([sys.executable, SCRIPT, workdir, video, data_dir, str(tmp_path / 'two.npz'), *short],
                            cwd=REPO, env=_env(2, COORDINATOR=f'127.0.0.1:{port}', NUM_PROCESSES=2, PROCESS_ID=i),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  single = subprocess.run([sys.executable, SCRIPT, str(tmp_path / 'one'), video, data_dir, str(tmp_path / 'one.npz'),
                           *short],
                          cwd=REPO, env=_env(4), capture_output=True, text=True)
  assert single.returncode == 0, single.stderr[-3000:]

  first, second = (dict(np.load(tmp_path / f'two.{i}.npz')) for i in range(2))
  one = dict(np.load(tmp_path / 'one.npz'))
  assert (first['processes'], first['devices'], one['devices']) == (2, 4, 4)
  np.testing.assert_array_equal(first['params_digest'], second['params_digest'])  # identical parameters
  np.testing.assert_array_equal(first['reconstruction'], second['reconstruction'])
  assert first['step'] == one['step'] == 4
  assert_same_training(first, one)  # gloo also sums across processes in another order
  # One checkpoint series and one metrics stream, written once for the whole run.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', '2']
  assert len(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))) == 1


def test_the_launch_script_trains_and_generates_vid2vid(tmp_path):
  """launch/local_multiprocess.sh -> layered_jax.main (both systems share its start: JAX's backend untouched until
  distributed.initialize); every process restores for generation, process 0 writes."""
  workdir = tmp_path / 'work'
  flags = ['--config.ngf=4', '--config.ndf=4', '--config.n_blocks=1', '--config.niter=1', '--config.niter_decay=0',
           '--config.batch_size=4', '--config.synthetic.frames=8', '--config.compare_baseline=False']
  path = os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']  # the script runs `python`
  result = subprocess.run(['bash', 'launch/local_multiprocess.sh', '2', 'configs/vid2vid_demo.py', str(workdir), *flags],
                          cwd=REPO, env=_env(2, PORT=_free_port(), PATH=path), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(workdir / 'checkpoints') == ['1']
  assert sorted(os.listdir(workdir / 'generate' / 'clip00')) == ['frames', 'generated.mp4', 'index.html', 'labels.mp4',
                                                                 'real.mp4']
  assert result.stdout.count('generated 1 test clips') == 1  # from process 0 only
