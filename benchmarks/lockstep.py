"""Ours and the original's training step in lockstep: same initial weights, same augmented batches.

  python -m benchmarks.lockstep --retiming=../retiming --video=work/scene [--num_filters 16] [--steps 40]

Builds the video's dataset, initialises our renderer, loads the same weights
into the original's LnrModel (google/retiming, through the shims of
`benchmarks/retiming_shims/`), then feeds both the batches our input pipeline
makes and prints, every few steps, both codes' total loss and how far their
weights have moved apart. Also prints, for one batch, each code's float32
gradient error against the original's model in float64.

What it separates: if both codes compute the same training step, the losses
agree closely from the same start, and our float32 gradients are as accurate
as PyTorch's; a difference in quality over seeds must then come from what
this leaves out, the random draws of initialisation and augmentation.
"""

import argparse
import importlib
import os
import sys
import tempfile
import types

import numpy as np

WEIGHTS = {'lambda_alpha_l1': .01, 'lambda_alpha_l0': .005, 'lambda_mask': 50.}


def _import_original(retiming: str):
  from benchmarks import retiming_original
  retiming_original.check_checkout(retiming)
  sys.path.insert(0, retiming_original.SHIMS)
  sys.path.insert(1, os.path.abspath(retiming))
  importlib.import_module('sitecustomize')  # np.int for the original
  from models import lnr_model, networks
  return lnr_model, networks


def _torch_batch(batch):
  import torch
  b, num_layers, h, w, _ = batch['uv'].shape
  as_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x))
  return {'image': as_torch(np.asarray(batch['rgb']).transpose(0, 3, 1, 2)),
          'uv_map': as_torch(np.asarray(batch['uv']).transpose(0, 1, 4, 2, 3).reshape(b, 2 * num_layers, h, w)),
          'pids': as_torch(np.asarray(batch['pids'])), 'mask': as_torch(np.asarray(batch['trimap'])),
          'image_path': [''] * b}


def _trainable(state_dict):
  return {k: np.asarray(v) for k, v in state_dict.items() if 'running' not in k and 'num_batches' not in k}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--retiming', required=True, help='a checkout of google/retiming')
  parser.add_argument('--video', required=True, help='a video folder (data_prep layout)')
  parser.add_argument('--num_filters', type=int, default=16)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--trimap_width', type=int, default=6)
  args = parser.parse_args(argv)
  lnr_model, networks = _import_original(args.retiming)
  import jax
  import jax.numpy as jnp
  import torch
  from data_prep import build
  from layered_jax import convert, input_pipeline, train
  from layered_jax.models import LayeredNeuralRenderer

  data_dir = tempfile.mkdtemp(prefix='lockstep-')
  frames = build.load_frames(build.build(args.video, data_dir, args.trimap_width))
  n_textures = int(build.dataset_metadata(os.path.join(data_dir, build.DATASET_NAME, build.DATASET_VERSION))
                   ['n_textures'])
  module = LayeredNeuralRenderer(n_textures=n_textures, num_filters=args.num_filters)
  variables = train.init_variables(jax.random.PRNGKey(0), module, {k: jnp.asarray(frames[k][:1])
                                                                   for k in ('uv', 'pids')})
  state = train.make_train_state(module, variables, 1e-3)
  opt = types.SimpleNamespace(
      isTrain=True, gpu_ids=[], checkpoints_dir=data_dir, name='lockstep', num_filters=args.num_filters,
      texture_channels=16, texture_res=16, n_textures=n_textures, do_upsampling=False, lr=1e-3, jitter_rgb=0.,
      mask_loss_rolloff_epoch=-1, mask_thresh=0.02, epoch_count=1, alpha_l1_rolloff_epoch=200, jitter_epochs=400,
      **WEIGHTS)
  model = lnr_model.LnrModel(opt)  # jitter 0: the brightness jitter is in our batches already
  weights0 = convert.state_dict_from_variables(variables)
  model.netLNR.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights0.items()})
  step = jax.jit(train.train_step)
  batch_fn = jax.jit(input_pipeline.make_batch_fn(True))
  on_device = {k: jnp.asarray(frames[k]) for k in ('rgb', 'uv', 'pids', 'trimap')}
  weights = {k: jnp.float32(v) for k, v in WEIGHTS.items()}
  num_frames, steps_per_epoch = len(frames['rgb']), -(-len(frames['rgb']) // args.batch_size)

  def batch_at(i):
    indices = input_pipeline.epoch_indices(num_frames, args.batch_size, 0, 1 + i // steps_per_epoch)[i % steps_per_epoch]
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), i), args.batch_size)
    return batch_fn(keys, on_device, jnp.asarray(indices), jnp.float32(0.2))

  first = batch_at(0)
  _gradient_precision(module, variables, first, weights, weights0, networks, n_textures, args.num_filters,
                      _torch_batch(first))
  print(f'\n{"step":>5}{"ours total":>13}{"original":>13}{"rel diff":>10}{"weights apart (median, max)":>32}')
  for i in range(args.steps):
    batch = batch_at(i)
    state, terms = step(state, batch, weights)
    model.set_input(_torch_batch(batch))
    model.optimize_parameters()
    if i % max(1, args.steps // 10) == 0 or i == args.steps - 1:
      ours = _trainable(convert.state_dict_from_variables({'params': state.params,
                                                            'batch_stats': variables['batch_stats']}))
      theirs = {k: v.detach().numpy() for k, v in model.netLNR.state_dict().items()}
      apart = [np.abs(ours[k] - theirs[k]).max() / (np.abs(theirs[k]).max() + 1e-12) for k in ours]
      mine, original = float(terms['total']), model.loss_total.item()
      print(f'{i:>5}{mine:>13.5f}{original:>13.5f}{abs(mine - original) / original:>10.1e}'
            f'{np.median(apart):>16.1e}{np.max(apart):>16.1e}', flush=True)


def _gradient_precision(module, variables, batch, weights, weights0, networks, n_textures, num_filters, torch_batch):
  """Median over tensors of max |g - g64| / max |g64|, for ours and the original in float32."""
  import jax
  import torch
  from layered_jax import convert, losses

  def loss_fn(params):
    outputs, _ = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch['uv'],
                              batch['pids'], train=True, mutable=['batch_stats'])
    return losses.layered_losses(outputs, batch['rgb'], batch['trimap'], weights)['total']

  grads = jax.jit(jax.grad(loss_fn))(variables['params'])
  ours = _trainable(convert.state_dict_from_variables({'params': grads, 'batch_stats': variables['batch_stats']}))

  def original(dtype):
    net = networks.LayeredNeuralRenderer(num_filters, 16, 16, n_textures)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights0.items()})
    net = net.to(dtype)
    out = net(torch_batch['uv_map'].to(dtype), torch_batch['pids'].to(dtype))
    rec = out['reconstruction']
    loss = (torch.nn.functional.l1_loss(rec[:, :3], torch_batch['image'].to(dtype))
            + networks.cal_alpha_reg(rec[:, 3] * .5 + .5, WEIGHTS['lambda_alpha_l1'], WEIGHTS['lambda_alpha_l0'])
            + WEIGHTS['lambda_mask'] * networks.MaskLoss()(out['layers'][:, :, 3], torch_batch['mask'].to(dtype)))
    loss.backward()
    return {k: p.grad.double().numpy() for k, p in net.named_parameters() if p.grad is not None}

  exact, theirs = original(torch.float64), original(torch.float32)
  error = lambda g: np.median([np.abs(g[k] - exact[k]).max() / (np.abs(exact[k]).max() + 1e-30) for k in exact])
  print(f'float32 gradient error against the original in float64 (median over tensors): ours {error(ours):.2e}, '
        f'original {error(theirs):.2e}')


if __name__ == '__main__':
  main()
