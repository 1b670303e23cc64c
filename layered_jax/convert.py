"""Convert reference PyTorch checkpoints to Flax + Orbax.

  python -m layered_jax.convert --kind=lnr --checkpoint=latest_net_LNR.pth --output=DIR
  python -m layered_jax.convert --kind=kp2uv --checkpoint=kp2uv.pth --output=DIR
  python -m layered_jax.convert --kind=vid2vid_g --checkpoint=latest_net_G0.pth --output=DIR
  python -m layered_jax.convert --kind=vgg19 --checkpoint=vgg19-dcbb9e9d.pth --output=DIR

vid2vid_g reads the coarse-to-fine generator's scales from latest_net_G0.pth and
the latest_net_G1.pth, latest_net_G2.pth ... beside it (all found, or
--n_scales_spatial of them) and infers its options (ngf, n_downsample_G,
n_blocks, n_blocks_local, input_nc, n_frames_G, fg, no_flow, norm) from the
shapes. vgg19 reads a torchvision vgg19 state dict (features to relu5_1; the
rest is not used).

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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layered_jax import errors
from layered_jax.models import Kp2UV, LayeredNeuralRenderer, layers
from layered_jax.vid2vid.models import VGG19, Generator

KINDS = ('lnr', 'kp2uv', 'vid2vid_g', 'vgg19')
_CONTAINERS = ('unet', 'upsampler')
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
               'var': 'running_var', 'texture': 'texture'}
_IGNORED_SUFFIX = '.num_batches_tracked'  # BatchNorm's step counter: not used by the model.
_SIZE_FIELDS = {'lnr': ('n_textures', 'num_filters', 'texture_channels', 'texture_res'),
                'kp2uv': ('num_filters',),
                'vid2vid_g': ('input_nc', 'n_frames_G', 'ngf', 'n_downsample', 'n_blocks', 'n_blocks_local',
                              'n_scales', 'output_nc', 'fg', 'no_flow', 'norm'),
                'vgg19': ()}
_MODULES = {'lnr': LayeredNeuralRenderer, 'kp2uv': Kp2UV, 'vid2vid_g': Generator, 'vgg19': VGG19}

Variables = Dict[str, Any]


def build_module(kind: str, **sizes: Any) -> nn.Module:
  """The Flax module of a checkpoint kind (one of KINDS) with the given sizes."""
  if kind not in _MODULES:
    raise ValueError(f'unknown checkpoint kind {kind!r}; expected one of {KINDS}')
  return _MODULES[kind](**sizes)


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
  if kind in _VID2VID_KINDS:
    return _layer_table(module, _example_args(module))[0]
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


def _numpy_state(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
          for k, v in strip_data_parallel(state_dict).items()}


def _key_problems(state: Mapping[str, Any], expected: Mapping[str, Any], allowed: Sequence[str] = ()) -> List[str]:
  """'unknown keys [...]' and 'missing keys [...]' of a state dict against the expected keys."""
  problems = []
  unknown = sorted(set(state) - set(expected) - set(allowed))
  missing = sorted(set(expected) - set(state))
  if unknown:
    problems.append(f'unknown keys {unknown}')
  if missing:
    problems.append(f'missing keys {missing}')
  return problems


def variables_from_state_dict(state_dict: Mapping[str, Any], kind: str,
                              source: str = 'state dict') -> Tuple[nn.Module, Variables]:
  """(module, variables) from a reference state dict; errors name every bad key."""
  if kind == 'vid2vid_g':
    return generator_from_state_dicts([state_dict], [source])
  if kind == 'vgg19':
    if any(k.endswith('running_mean') for k in state_dict):
      raise ValueError(f'{source} has BatchNorm entries: is it vgg19_bn? The perceptual loss uses plain vgg19')
    module = VGG19()
    return module, {'params': flax_from_torch_state(module, state_dict, source, _VGG19_UNUSED)['params']}
  state = {k: v for k, v in _numpy_state(state_dict).items() if not k.endswith(_IGNORED_SUFFIX)}
  module = build_module(kind, **infer_sizes(kind, state))
  expected = _flat(_abstract_variables(module, kind))
  keys = {torch_key(path): path for path in expected}
  problems = _key_problems(state, keys)
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


def read_state_dict(path: str) -> Mapping[str, Any]:
  """A .pth state dict (needs torch); the errors say what to install or what the file holds instead."""
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
                           'the reference\'s .pth file (e.g. latest_net_LNR.pth, kp2uv.pth, latest_net_G0.pth or vgg19.pth)') from None
  if not isinstance(state_dict, Mapping):
    raise errors.DataError(f'{path} holds a {type(state_dict).__name__}, not a state dict')
  return state_dict


def load_torch(path: str, kind: str, n_scales: Optional[int] = None) -> Tuple[nn.Module, Variables]:
  """Read a reference .pth checkpoint (needs torch) into (module, variables).

  vid2vid_g: `path` is the coarsest scale's file (latest_net_G0.pth); the finer
  scales' files beside it are read too (n_scales of them, or all there are).
  """
  if kind == 'vid2vid_g':
    paths = generator_files(path, n_scales)
    return generator_from_state_dicts([read_state_dict(p) for p in paths], paths)
  return variables_from_state_dict(read_state_dict(path), kind, source=path)


# vid2vid (layered_jax.vid2vid.models): a Flax variable's path is its reference key, '.'-joined; the
# generator's scales are prefixed netG<s> (the reference saves each scale to its own latest_net_G<s>.pth).
_VID2VID_KINDS = ('vid2vid_g', 'vgg19')
_NORM_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')  # never read: the reference never calls eval()
_VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_VGG19_UNUSED = ({f'features.{i}.{p}' for i in _VGG19_CONVS[13:] for p in ('weight', 'bias')}
                 | {f'classifier.{i}.{p}' for i in (0, 3, 6) for p in ('weight', 'bias')})  # beyond relu5_1


def _example_args(module: nn.Module) -> Tuple[Any, ...]:
  if isinstance(module, Generator):
    return module.example_inputs()
  return (jnp.zeros((1, 32, 32, 3)),)


def _layer_table(module: nn.Module, args: Sequence[Any]) -> Tuple[Variables, Dict[Tuple[str, ...], Tuple[str, int]]]:
  """module.init's abstract variables, and (type, input channels) of each Conv / BatchNorm / InstanceNorm by path."""
  table = {}

  def record(call, call_args, call_kwargs, context):
    layer = context.module
    if context.method_name == '__call__':
      if isinstance(layer, layers.Conv):
        table[layer.path] = ('conv_transpose' if layer.transpose else 'conv', call_args[0].shape[-1])
      elif isinstance(layer, (layers.BatchNorm, layers.InstanceNorm)):
        table[layer.path] = ('norm', call_args[0].shape[-1])
    return call(*call_args, **call_kwargs)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
  return variables, table


def _vid2vid_key(path: Tuple[str, ...]) -> str:
  """('params', 'netG0', 'model_down_seg', '1', 'kernel') -> 'netG0.model_down_seg.1.weight'."""
  return '.'.join(path[1:-1] + (_LEAF_NAMES[path[-1]],))


def _kernel_axes(kind: str) -> Tuple[int, ...]:
  """conv [O, I, kh, kw] and transposed conv [I, O, kh, kw] -> [kh, kw, I, O] (and back: the inverse)."""
  return (2, 3, 0, 1) if kind == 'conv_transpose' else (2, 3, 1, 0)


def flax_from_torch_state(module: nn.Module, state_dict: Mapping[str, Any], source: str = 'state dict',
                          ignored: Sequence[str] = (), args: Optional[Sequence[Any]] = None) -> Variables:
  """Variables of a layered_jax.vid2vid module from a state dict with its reference's keys; errors name each bad key.

  The norm layers' running statistics are accepted and dropped (never read by the
  reference); `ignored` keys are known entries the module does not use. `args`:
  example inputs (their channel counts matter) for modules other than Generator and VGG19.
  """
  state = _numpy_state(state_dict)
  abstract, table = _layer_table(module, args or _example_args(module))
  expected = _flat(abstract)
  keys = {_vid2vid_key(path): path for path in expected}
  buffers = {'.'.join(path + (b,)) for path, (kind, _) in table.items() if kind == 'norm' for b in _NORM_BUFFERS}
  problems = _key_problems(state, keys, buffers | set(ignored))
  flat = {}
  for key, path in keys.items():
    if key not in state:
      continue
    value = state[key].astype(np.float32)
    want = tuple(expected[path].shape)
    if path[-1] == 'kernel':
      axes = _kernel_axes(table[path[1:-1]][0])
      if value.ndim == 4:
        value = value.transpose(axes)
      want_torch = tuple(want[axes.index(i)] for i in range(4))
    else:
      want_torch = want
    if value.shape != want:
      problems.append(f'{key} has shape {tuple(state[key].shape)}, expected {want_torch}')
    flat[path] = value
  if problems:
    raise ValueError(f'{source} does not fit {type(module).__name__}: ' + '; '.join(problems))
  return _unflatten(flat)


def torch_state_from_flax(module: nn.Module, variables: Variables,
                          args: Optional[Sequence[Any]] = None) -> Dict[str, np.ndarray]:
  """The reference's state dict of a layered_jax.vid2vid module's variables, norm buffers included (fresh)."""
  _, table = _layer_table(module, args or _example_args(module))
  state = {}
  for path, value in _flat(variables).items():
    value = np.asarray(value)
    if path[-1] == 'kernel':
      value = value.transpose(np.argsort(_kernel_axes(table[path[1:-1]][0])))
    state[_vid2vid_key(path)] = np.ascontiguousarray(value)
  for path, (kind, channels) in table.items():
    if kind == 'norm':
      prefix = '.'.join(path)
      state.update({f'{prefix}.running_mean': np.zeros(channels, np.float32),
                    f'{prefix}.running_var': np.ones(channels, np.float32),
                    f'{prefix}.num_batches_tracked': np.zeros((), np.int64)})
  return state


def generator_files(path: str, n_scales: Optional[int] = None) -> List[str]:
  """latest_net_G0.pth -> [latest_net_G0.pth, latest_net_G1.pth, ...]: n_scales files, or every one present."""
  folder, name = os.path.split(path)
  stem, found, ext = name.rpartition('G0')
  if not found:
    if n_scales not in (None, 1):
      raise ValueError(f'{path}: name the scales\' files *G0.pth, *G1.pth, ... to convert {n_scales} scales')
    return [path]
  paths = [path]
  while n_scales is None or len(paths) < n_scales:
    candidate = os.path.join(folder, f'{stem}G{len(paths)}{ext}')
    if not os.path.isfile(candidate):
      if n_scales is not None:
        raise FileNotFoundError(f'{candidate} does not exist: --n_scales_spatial={n_scales} needs the files of '
                                f'scales 0..{n_scales - 1} side by side')
      break
    paths.append(candidate)
  return paths


def _resnet_blocks(state: Mapping[str, Any], container: str) -> int:
  return len({k.split('.')[1] for k in state if k.startswith(container + '.') and '.conv_block.' in k})


def infer_generator_sizes(state_dicts: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> Dict[str, Any]:
  """Generator options implied by the shapes of each scale's state dict (coarsest first)."""
  coarse = state_dicts[0]
  try:
    first = coarse['model_down_seg.1.weight']
    prev = coarse['model_down_img.1.weight']
    output_nc = int(coarse['model_final_img.1.weight'].shape[0])
  except KeyError as missing:
    raise ValueError(f'{sources[0]} is not a vid2vid generator (netG composite) checkpoint: it has no {missing} '
                     'entry') from None
  if 'model_res_img.0.conv_block.1.weight' not in coarse and any(k.startswith('model_up_img.0.conv_block') for k in coarse):
    raise ValueError(f'{sources[0]} is a finer scale (compositeLocal); pass the coarsest scale\'s latest_net_G0.pth')
  n_frames = int(prev.shape[1]) // output_nc + 1
  label_channels = int(first.shape[1])
  if int(prev.shape[1]) % output_nc or label_channels % n_frames:
    raise ValueError(f'{sources[0]}: {label_channels} label and {int(prev.shape[1])} previous-frame input channels '
                     f'do not split into n_frames_G frames of {output_nc}-channel outputs')
  n_down = sum(1 for k, v in coarse.items() if k.startswith('model_down_seg.') and k.count('.') == 2
               and k.endswith('.weight') and np.ndim(v) == 4) - 1
  sizes = {'input_nc': label_channels // n_frames, 'n_frames_G': n_frames, 'ngf': int(first.shape[0]),
           'n_downsample': n_down,
           'n_blocks': _resnet_blocks(coarse, 'model_down_seg') + _resnet_blocks(coarse, 'model_res_img'),
           'n_blocks_local': _resnet_blocks(state_dicts[1], 'model_up_img') if len(state_dicts) > 1 else 3,
           'n_scales': len(state_dicts), 'output_nc': output_nc,
           'fg': any(k.startswith('indv_') for k in coarse),
           'no_flow': not any(k.startswith('model_final_flow.') for k in coarse),
           'norm': 'batch' if 'model_down_seg.2.weight' in coarse else 'instance'}
  return sizes


def generator_from_state_dicts(state_dicts: Sequence[Mapping[str, Any]],
                               sources: Sequence[str]) -> Tuple[Generator, Variables]:
  """(Generator, variables) from the reference's per-scale generator state dicts (G0 first)."""
  state_dicts = [strip_data_parallel(sd) for sd in state_dicts]
  module = Generator(**infer_generator_sizes(state_dicts, sources))
  merged = {f'netG{s}.{k}': v for s, sd in enumerate(state_dicts) for k, v in sd.items()}
  try:
    variables = flax_from_torch_state(module, merged)
  except ValueError as error:
    message = str(error).split(': ', 1)[1]
    for s, source in enumerate(sources):  # name each file instead of the netG<s> prefix
      message = message.replace(f"'netG{s}.", f"'{source}:").replace(f'netG{s}.', f'{source}:')
    raise ValueError(f'not a vid2vid generator checkpoint of {module.n_scales} scale(s) with the options its '
                     f'shapes imply ({_describe(module)}): {message}') from None
  return module, {'params': variables['params']}


def generator_state_dicts(module: Generator, variables: Variables) -> List[Dict[str, np.ndarray]]:
  """The reference's per-scale state dicts (latest_net_G0.pth ...) of a Generator's variables."""
  state = torch_state_from_flax(module, variables)
  return [{k[len(f'netG{s}.'):]: v for k, v in state.items() if k.startswith(f'netG{s}.')}
          for s in range(module.n_scales)]


def _describe(module: nn.Module) -> str:
  if not isinstance(module, Generator):
    return type(module).__name__
  m = module
  return (f'{m.n_scales} scale(s), ngf {m.ngf}, n_downsample_G {m.n_downsample}, n_blocks {m.n_blocks}'
          + (f', n_blocks_local {m.n_blocks_local}' if m.n_scales > 1 else '')
          + f', input_nc {m.input_nc} x n_frames_G {m.n_frames_G}, {m.norm} norm'
          + (', fg' if m.fg else '') + (', no_flow' if m.no_flow else ''))


def save(output_dir: str, module: nn.Module, variables: Variables, overwrite: bool = False) -> None:
  """Write model.json and an Orbax checkpoint; nothing is left behind if it fails."""
  import orbax.checkpoint as ocp

  from layered_jax import files  # needs OpenCV, which the GPU images lack; converting on them does not
  kind = next(kind for kind, cls in _MODULES.items() if isinstance(module, cls))
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
                      help='lnr: latest_net_LNR.pth; kp2uv: the published kp2uv.pth; vid2vid_g: a vid2vid '
                      'generator (latest_net_G0.pth and its finer scales beside it); vgg19: torchvision vgg19 weights')
  parser.add_argument('--checkpoint', required=True, help='the PyTorch .pth state dict to convert')
  parser.add_argument('--n_scales_spatial', type=int, default=None,
                      help='vid2vid_g: convert this many scales (default: every latest_net_G<s>.pth found)')
  parser.add_argument('--output', required=True, help='directory to write (model.json + Orbax variables/)')
  parser.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
  args = parser.parse_args(argv)
  try:
    if args.n_scales_spatial is not None and args.kind != 'vid2vid_g':
      raise ValueError('--n_scales_spatial is for --kind=vid2vid_g')
    module, variables = load_torch(args.checkpoint, args.kind, args.n_scales_spatial)
    save(args.output, module, variables, overwrite=args.overwrite)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
    parser.exit(2, f'error: {error}\n')
  count = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables['params']))
  details = f' ({_describe(module)})' if isinstance(module, Generator) else ''
  print(f'wrote {args.output}: {args.kind}{details}, {count / 1e6:.2f} M parameters')


if __name__ == '__main__':
  main()
