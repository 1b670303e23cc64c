"""Reference checkpoints -> Flax variables -> Orbax and back, and the errors on bad files."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from layered_jax import convert
from tests.conftest import layered_uv, nhwc
from tests.torch_reference import TorchKp2UV, TorchLNR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def lnr_checkpoint(tmp_path, rng):
  net = TorchLNR(nf=8, texture_channels=8, texture_res=8, n_textures=73)
  net(torch.rand(2, 4, 32, 64) * 2 - 1, torch.ones(2, 2, 32, 64))  # non-trivial running stats
  path = str(tmp_path / 'latest_net_LNR.pth')
  torch.save(net.state_dict(), path)
  return net, path


def test_lnr_checkpoint_sizes_are_inferred_and_outputs_match(lnr_checkpoint):
  net, path = lnr_checkpoint
  module, variables = convert.load_torch(path, 'lnr')
  assert (module.n_textures, module.num_filters, module.texture_channels, module.texture_res) == (73, 8, 8, 8)
  uv, pids = torch.rand(1, 4, 32, 64) * 2 - 1, torch.randint(0, 4, (1, 2, 32, 64)).float()
  net.eval()
  want = nhwc(net(uv, pids)['reconstruction'])
  got = module.apply(variables, layered_uv(uv), pids.numpy(), use_running_average=True)['reconstruction']
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_data_parallel_prefix_is_accepted(tmp_path):
  net = TorchKp2UV(nf=8)
  path = str(tmp_path / 'kp2uv.pth')
  torch.save(torch.nn.DataParallel(net).state_dict(), path)
  assert all(k.startswith('module.') for k in torch.load(path))
  module, variables = convert.load_torch(path, 'kp2uv')
  image = torch.rand(1, 3, 256, 256) * 2 - 1
  np.testing.assert_allclose(module.apply(variables, nhwc(image))[0], nhwc(net(image)[0]), atol=1e-4)


def test_orbax_round_trip_and_state_dict_round_trip(lnr_checkpoint, tmp_path):
  _, path = lnr_checkpoint
  module, variables = convert.load_torch(path, 'lnr')
  out = str(tmp_path / 'converted')
  convert.save(out, module, variables)
  assert sorted(os.listdir(tmp_path)) == ['converted', 'latest_net_LNR.pth']  # no staging left
  loaded_module, loaded = convert.load(out)
  assert loaded_module == module
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)
  state = convert.state_dict_from_variables(loaded)
  original = torch.load(path)
  assert set(state) == set(original)
  for key, value in original.items():
    if not key.endswith('num_batches_tracked'):  # a counter the model never reads; written as 0
      np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
  net = TorchLNR(nf=8, texture_channels=8, texture_res=8, n_textures=73)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})  # strict


def test_save_refuses_to_overwrite_without_flag(lnr_checkpoint, tmp_path):
  module, variables = convert.load_torch(lnr_checkpoint[1], 'lnr')
  convert.save(str(tmp_path / 'out'), module, variables)
  with pytest.raises(FileExistsError, match='--overwrite'):
    convert.save(str(tmp_path / 'out'), module, variables)
  convert.save(str(tmp_path / 'out'), module, variables, overwrite=True)


def test_command_line_converts_kp2uv(tmp_path):
  path = str(tmp_path / 'kp2uv.pth')
  torch.save(TorchKp2UV(nf=8).state_dict(), path)
  out = str(tmp_path / 'kp2uv_flax')
  result = subprocess.run([sys.executable, '-m', 'layered_jax.convert', '--kind=kp2uv',
                           f'--checkpoint={path}', f'--output={out}'],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert 'kp2uv' in result.stdout
  module, _ = convert.load(out)
  assert module.num_filters == 8
  again = subprocess.run([sys.executable, '-m', 'layered_jax.convert', '--kind=kp2uv', f'--checkpoint={path}',
                          f'--output={out}'], cwd=REPO, capture_output=True, text=True)
  assert again.returncode == 2 and 'pass --overwrite' in again.stderr  # a clear error, no traceback


def _state(**changes):
  state = TorchKp2UV(nf=8).state_dict()
  for key, value in changes.items():
    if value is None:
      del state[key]
    else:
      state[key] = value
  return state


@pytest.mark.parametrize('changes,message', [
    ({'extra.weight': torch.zeros(3)}, r"unknown keys \['extra.weight'\]"),
    ({'uv_pred.conv.bias': None}, r"missing keys \['uv_pred.conv.bias'\]"),
    ({'decoder.2.conv.weight': torch.zeros(64, 16, 3, 3)},
     r'decoder.2.conv.weight has shape \(64, 16, 3, 3\), expected \(64, 16, 4, 4\)'),
])
def test_bad_checkpoints_name_the_offending_keys(changes, message):
  with pytest.raises(ValueError, match=message):
    convert.variables_from_state_dict(_state(**changes), 'kp2uv')


def test_wrong_kind_and_missing_file_are_explained(tmp_path):
  with pytest.raises(ValueError, match="not a lnr checkpoint: it has no 'texture'"):
    convert.variables_from_state_dict(_state(), 'lnr')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    convert.load_torch(str(tmp_path / 'nope.pth'), 'lnr')
  with pytest.raises(FileNotFoundError, match='model.json'):
    convert.load(str(tmp_path))


def test_command_line_without_pytorch_says_how_to_install_it(lnr_checkpoint, tmp_path, monkeypatch, capsys):
  _, path = lnr_checkpoint
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  with pytest.raises(SystemExit) as exit_info:
    convert.main(['--kind=lnr', f'--checkpoint={path}', f'--output={tmp_path / "out"}'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert f'reading {path} needs PyTorch: pip install torch==2.13.0' in err
  assert not os.path.exists(tmp_path / 'out')
