"""Convert reference PyTorch checkpoints (latest_net_LNR.pth, kp2uv.pth) to Flax + Orbax.

  python -m layered_jax.convert --kind=lnr --checkpoint=latest_net_LNR.pth --output=DIR
  python -m layered_jax.convert --kind=kp2uv --checkpoint=kp2uv.pth --output=DIR

DIR gets `model.json` (kind and sizes) and `variables/` (an Orbax checkpoint of
{'params', 'batch_stats'}); `load(DIR)` gives back (module, variables).
Flax module names mirror the reference's, so one rule maps each variable to
its state-dict key: containers `unet`/`upsampler` drop out, `name_N` is
`name.N`, kernel/scale are `weight`, mean/var are `running_mean/var`.
"""

import argparse
import json
import os
import pickle
from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layered_jax import errors, files
from layered_jax.models import Kp2UV, LayeredNeuralRenderer

KINDS = ('lnr', 'kp2uv')
_CONTAINERS = ('unet', 'upsampler')
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
               'var': 'running_var', 'texture': 'texture'}
_IGNORED_SUFFIX = '.num_batches_tracked'  # BatchNorm's step counter: not used by the model.
_SIZE_FIELDS = {'lnr': ('n_textures', 'num_filters', 'texture_channels', 'texture_res'),
                'kp2uv': ('num_filters',)}

Variables = Dict[str, Any]


def build_module(kind: str, **sizes: int) -> nn.Module:
  """The Flax module of a checkpoint kind ('lnr' or 'kp2uv') with the given sizes."""
  if kind == 'lnr':
    return LayeredNeuralRenderer(**sizes)
  if kind == 'kp2uv':
    return Kp2UV(**sizes)
  raise ValueError(f'unknown checkpoint kind {kind!r}; expected one of {KINDS}')


def torch_key(path: Tuple[str, ...]) -> str:
  """('params', 'unet', 'encoder_1', 'norm', 'scale') -> 'encoder.1.norm.weight'."""
  parts = []
  for name in path[1:-1]:
    if name in _CONTAINERS:
      continue
    stem, _, index = name.rpartition('_')
    parts.append(f'{stem}.{index}' if index.isdigit() else name)
  return '.'.join(parts + [_LEAF_NAMES[path[-1]]])


def _is_transposed(path: Tuple[str, ...]) -> bool:
  return any(name.startswith('decoder_') for name in path)


def _to_flax(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == 'texture':  # [1, C, T, T*N] -> [T, T*N, C]
    return value[0].transpose(1, 2, 0)
  if path[-1] == 'kernel':  # conv [O, I, kh, kw], convT [I, O, kh, kw] -> [kh, kw, I, O]
    return value.transpose((2, 3, 0, 1) if _is_transposed(path) else (2, 3, 1, 0))
  return value


def _to_torch(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == 'texture':
    return value.transpose(2, 0, 1)[None]
  if path[-1] == 'kernel':
    return value.transpose((2, 3, 0, 1) if _is_transposed(path) else (3, 2, 0, 1))
  return value


def infer_sizes(kind: str, state_dict: Mapping[str, np.ndarray]) -> Dict[str, int]:
  """Module sizes implied by a reference state dict (n_textures from the texture's width)."""
  try:
    num_filters = int(state_dict['encoder.0.conv.weight'].shape[0])
    if kind == 'kp2uv':
      return {'num_filters': num_filters}
    _, channels, res, width = state_dict['texture'].shape
  except KeyError as missing:
    raise ValueError(f'not a {kind} checkpoint: it has no {missing} entry') from None
  if width % res:
    raise ValueError(f'texture of shape {tuple(state_dict["texture"].shape)} is not a row of square tiles')
  return {'num_filters': num_filters, 'texture_channels': int(channels), 'texture_res': int(res),
          'n_textures': int(width // res)}


def _abstract_variables(module: nn.Module, kind: str) -> Variables:
  if kind == 'lnr':
    size = 32  # any multiple of 32: the variables do not depend on it
    args = (jnp.zeros((1, 1, size, size, 2)), jnp.zeros((1, 1, size, size)),
            jnp.zeros((1, 1, 2 * size, 2 * size, 2)))
  else:
    args = (jnp.zeros((1, 256, 256, 3)),)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)


def _flat(tree: Variables) -> Dict[Tuple[str, ...], Any]:
  return {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(flat: Dict[Tuple[str, ...], Any]) -> Variables:
  tree: Variables = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def strip_data_parallel(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """Drop the `module.` prefix that torch.nn.DataParallel adds to every key."""
  return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def variables_from_state_dict(state_dict: Mapping[str, Any], kind: str,
                              source: str = 'state dict') -> Tuple[nn.Module, Variables]:
  """(module, variables) from a reference state dict; errors name every bad key."""
  state = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
           for k, v in strip_data_parallel(state_dict).items() if not k.endswith(_IGNORED_SUFFIX)}
  module = build_module(kind, **infer_sizes(kind, state))
  expected = _flat(_abstract_variables(module, kind))
  keys = {torch_key(path): path for path in expected}
  problems = []
  unknown = sorted(set(state) - set(keys))
  missing = sorted(set(keys) - set(state))
  if unknown:
    problems.append(f'unknown keys {unknown}')
  if missing:
    problems.append(f'missing keys {missing}')
  flat = {}
  for key, path in keys.items():
    if key in state:
      value = _to_flax(path, state[key].astype(np.float32))
      if value.shape != expected[path].shape:
        problems.append(f'{key} has shape {tuple(state[key].shape)}, expected '
                        f'{tuple(_to_torch(path, np.zeros(expected[path].shape)).shape)}')
      flat[path] = value
  if problems:
    raise ValueError(f'{source} is not a valid {kind} checkpoint: ' + '; '.join(problems))
  return module, _unflatten(flat)


def state_dict_from_variables(variables: Variables) -> Dict[str, np.ndarray]:
  """The reference's state dict (numpy arrays) for Flax variables of either kind."""
  state = {}
  for path, value in _flat(variables).items():
    key = torch_key(path)
    state[key] = np.ascontiguousarray(_to_torch(path, np.asarray(value)))
    if key.endswith('.running_var'):
      state[key[:-len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  return state


def load_torch(path: str, kind: str) -> Tuple[nn.Module, Variables]:
  """Read a reference .pth checkpoint (needs torch) into (module, variables)."""
  if os.path.isdir(path):
    raise errors.DataError(f'{path} is a folder; give the .pth file itself (a folder written by layered_jax.convert '
                           'is read with convert.load)')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  try:
    import torch  # Only reading .pth files needs PyTorch; requirements.txt leaves it out.
  except ImportError:
    raise ImportError(f'reading {path} needs PyTorch: pip install torch==2.13.0 (the CPU build is enough), '
                      'or pip install -r requirements-test.txt') from None
  try:
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, AttributeError) as error:
    # torch's messages for these (a text file gives KeyError: 101) do not say what the file is.
    raise errors.DataError(f'{path} is not a PyTorch state dict saved with torch.save ({type(error).__name__}); give '
                           'the reference\'s .pth file (e.g. latest_net_LNR.pth or kp2uv.pth)') from None
  if not isinstance(state_dict, Mapping):
    raise errors.DataError(f'{path} holds a {type(state_dict).__name__}, not a state dict')
  return variables_from_state_dict(state_dict, kind, source=path)


def save(output_dir: str, module: nn.Module, variables: Variables, overwrite: bool = False) -> None:
  """Write model.json and an Orbax checkpoint; nothing is left behind if it fails."""
  import orbax.checkpoint as ocp
  kind = 'lnr' if isinstance(module, LayeredNeuralRenderer) else 'kp2uv'
  sizes = {name: getattr(module, name) for name in _SIZE_FIELDS[kind]}
  with files.staged_directory(output_dir, overwrite) as staging:
    with open(os.path.join(staging, 'model.json'), 'w') as f:
      json.dump({'kind': kind, 'sizes': sizes}, f, indent=2)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(staging, 'variables'), variables)
    checkpointer.wait_until_finished()


def load(checkpoint_dir: str) -> Tuple[nn.Module, Variables]:
  """(module, variables) from a directory written by `save`."""
  import orbax.checkpoint as ocp
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  meta_path = os.path.join(checkpoint_dir, 'model.json')
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: is {checkpoint_dir} the output of layered_jax.convert?')
  with open(meta_path) as f:
    meta = json.load(f)
  module = build_module(meta['kind'], **meta['sizes'])
  target = _abstract_variables(module, meta['kind'])
  variables = ocp.StandardCheckpointer().restore(os.path.join(checkpoint_dir, 'variables'), target)
  return module, variables


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--kind', required=True, choices=KINDS,
                      help='lnr: latest_net_LNR.pth; kp2uv: the published kp2uv.pth')
  parser.add_argument('--checkpoint', required=True, help='the PyTorch .pth state dict to convert')
  parser.add_argument('--output', required=True, help='directory to write (model.json + Orbax variables/)')
  parser.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
  args = parser.parse_args(argv)
  try:
    module, variables = load_torch(args.checkpoint, args.kind)
    save(args.output, module, variables, overwrite=args.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
    parser.exit(2, f'error: {error}\n')
  count = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables['params']))
  print(f'wrote {args.output}: {args.kind}, {count / 1e6:.2f} M parameters')


if __name__ == '__main__':
  main()
