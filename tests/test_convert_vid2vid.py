"""vid2vid generator and VGG19 checkpoints -> Flax -> Orbax and back, and the errors on bad files."""

import os

import numpy as np
import pytest
import torch

from layered_jax import convert
from tests import vid2vid_torch_reference as ref

INPUT_NC, T_G = 2, 3


def _generator_scales():
  coarse = ref.CompositeGenerator(INPUT_NC * T_G, 3 * (T_G - 1), ngf=8, n_down=3, n_blocks=3, fg=True)
  fine = ref.CompositeLocalGenerator(INPUT_NC * T_G, 3 * (T_G - 1), ngf=4, n_blocks_local=1, scale=1, n_down=3,
                                     fg=True)
  return coarse, fine


@pytest.fixture
def generator_files(tmp_path):
  coarse, fine = _generator_scales()
  torch.save(coarse.state_dict(), tmp_path / 'latest_net_G0.pth')
  torch.save(torch.nn.DataParallel(fine).state_dict(), tmp_path / 'latest_net_G1.pth')  # `module.` prefixed
  return coarse, fine, str(tmp_path / 'latest_net_G0.pth')


def test_generator_round_trip_through_the_command_line(generator_files, tmp_path, capsys):
  coarse, fine, path = generator_files
  out = str(tmp_path / 'converted')
  convert.main(['--kind=vid2vid_g', f'--checkpoint={path}', f'--output={out}'])
  printed = capsys.readouterr().out
  assert ('2 scale(s), ngf 8, n_downsample_G 3, n_blocks 3, n_blocks_local 1, input_nc 2 x n_frames_G 3, '
          'batch norm, fg') in printed
  module, variables = convert.load(out)
  assert (module.n_scales, module.ngf, module.n_blocks, module.n_blocks_local, module.fg) == (2, 8, 3, 1, True)
  state_dicts = convert.generator_state_dicts(module, variables)
  for original, state in zip((coarse.state_dict(), fine.state_dict()), state_dicts):
    assert set(state) == set(original)
    for key, value in original.items():
      if not key.endswith(convert._NORM_BUFFERS):  # never read by the reference; written fresh
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
  for net, state in zip(_generator_scales(), state_dicts):
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})  # strict


def test_scale_count_can_be_limited_or_required(generator_files, tmp_path):
  _, _, path = generator_files
  module, _ = convert.load_torch(path, 'vid2vid_g', n_scales=1)
  assert module.n_scales == 1
  with pytest.raises(FileNotFoundError, match=r'latest_net_G2.pth does not exist: --n_scales_spatial=3'):
    convert.load_torch(path, 'vid2vid_g', n_scales=3)
  with pytest.raises(ValueError, match='is a finer scale'):
    convert.load_torch(str(tmp_path / 'latest_net_G1.pth'), 'vid2vid_g')


def _broken(changes):
  """The coarse scale's state dict with entries added or replaced (a tensor) or removed (None)."""
  state = {**_generator_scales()[0].state_dict(), **changes}
  return {key: value for key, value in state.items() if value is not None}


@pytest.mark.parametrize('changes,message', [
    ({'model_down_seg.99.weight': torch.zeros(3)}, r"unknown keys \['G0.pth:model_down_seg.99.weight'\]"),
    ({'model_final_w.1.bias': None}, r"missing keys \['G0.pth:model_final_w.1.bias'\]"),
    ({'model_up_img.3.weight': torch.zeros(32, 16, 4, 4)},  # a transposed conv: [in, out, k, k]
     r'G0.pth:model_up_img.3.weight has shape \(32, 16, 4, 4\), expected \(32, 16, 3, 3\)'),
])
def test_bad_generator_checkpoints_name_the_offending_keys(changes, message):
  with pytest.raises(ValueError, match=r'not a vid2vid generator checkpoint of 1 scale\(s\) with the options its '
                     r'shapes imply \(1 scale\(s\), ngf 8.*\): .*' + message):
    convert.generator_from_state_dicts([_broken(changes)], ['G0.pth'])


def test_other_checkpoints_are_refused_with_what_they_lack():
  from tests.torch_reference import TorchKp2UV
  with pytest.raises(ValueError, match="kp2uv.pth is not a vid2vid generator .* no 'model_down_seg.1.weight'"):
    convert.variables_from_state_dict(TorchKp2UV(nf=8).state_dict(), 'vid2vid_g', source='kp2uv.pth')


def _torchvision_vgg19_state():
  """torchvision's vgg19 layout: features 0..34 and a classifier (small stand-ins: the loss does not use it)."""
  state = ref.VGG19().state_dict()
  for i in (0, 3, 6):
    state[f'classifier.{i}.weight'] = torch.zeros(4, 4)
    state[f'classifier.{i}.bias'] = torch.zeros(4)
  return state


def test_vgg19_round_trip_and_unused_entries(tmp_path, capsys):
  state = _torchvision_vgg19_state()
  assert 'features.34.weight' in state
  path = str(tmp_path / 'vgg19.pth')
  torch.save(state, path)
  out = str(tmp_path / 'vgg')
  convert.main(['--kind=vgg19', f'--checkpoint={path}', f'--output={out}'])
  assert 'vgg19' in capsys.readouterr().out
  module, variables = convert.load(out)
  back = convert.torch_state_from_flax(module, variables)
  assert set(back) == {f'features.{i}.{p}' for i in convert._VGG19_CONVS[:13] for p in ('weight', 'bias')}
  for key, value in back.items():
    np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)


def test_vgg19_errors(tmp_path):
  state = _torchvision_vgg19_state()
  state['features.1.running_mean'] = torch.zeros(64)
  with pytest.raises(ValueError, match='is it vgg19_bn'):
    convert.variables_from_state_dict(state, 'vgg19', source='vgg.pth')
  state = _torchvision_vgg19_state()
  state['features.28.weight'] = torch.zeros(512, 256, 3, 3)
  del state['features.0.bias']
  with pytest.raises(ValueError, match=r"vgg.pth does not fit VGG19: missing keys \['features.0.bias'\]; "
                     r'features.28.weight has shape \(512, 256, 3, 3\), expected \(512, 512, 3, 3\)'):
    convert.variables_from_state_dict(state, 'vgg19', source='vgg.pth')
  with pytest.raises(SystemExit):
    convert.main(['--kind=vgg19', f'--checkpoint={tmp_path / "x.pth"}', f'--output={tmp_path / "o"}',
                  '--n_scales_spatial=2'])
  assert not os.path.exists(tmp_path / 'o')
