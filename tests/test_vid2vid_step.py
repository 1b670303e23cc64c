"""vid2vid's chunk losses and gradients against the PyTorch definition, and the train step's bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from layered_jax import convert
from layered_jax.vid2vid import step
from tests import vid2vid_torch_reference as ref

B, T, H, W = 2, 3, 32, 24
OPTS = step.Options(input_nc=2, ngf=8, n_downsample_G=2, n_blocks=3, ndf=8, num_D=2, n_frames_G=3, n_frames_D=3,
                    n_scales_temporal=2)
TORCH_OPTS = {'n_frames_G': 3, 'n_frames_D': 3, 'n_layers_D': 3, 'num_D': 2, 'lambda_feat': 10., 'lambda_F': 10.,
              'lambda_T': 10.}


def _nhwc(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), -3, -1)


def _torch_nets():
  t_d = OPTS.n_frames_D
  generator = ref.CompositeGenerator(2 * 3, 3 * 2, ngf=8, n_down=2, n_blocks=3)
  disc = ref.MultiscaleDiscriminator(2 + 3, ndf=8, num_D=2)
  temporal = [ref.MultiscaleDiscriminator(3 * t_d + 2 * (t_d - 1), ndf=8, num_D=2) for _ in range(2)]
  return generator, disc, temporal, ref.VGG19()


D_ARGS = (jnp.zeros((1, 8, 8, 2 + 3)),)  # example inputs: labels + image,
T_ARGS = (jnp.zeros((1, 8, 8, 3 * 3 + 2 * 2)),)  # tD frames + tD-1 flows


def _flax_params(models, nets):
  """Flax parameters (and VGG19 variables) of the PyTorch nets, through the converter."""
  generator, disc, temporal, vgg = nets
  return {'G': convert.generator_from_state_dicts([generator.state_dict()], ['G0'])[1]['params'],
          'D': convert.flax_from_torch_state(models.discriminator, disc.state_dict(), args=D_ARGS)['params'],
          'D_T': tuple(convert.flax_from_torch_state(d, t.state_dict(), args=T_ARGS)['params']
                       for d, t in zip(models.temporal, temporal))}, \
      convert.flax_from_torch_state(models.vgg, vgg.state_dict(), ignored=convert._VGG19_UNUSED)


def _chunk(rng, history_len):
  f = lambda *shape: torch.from_numpy(rng.uniform(-1, 1, shape).astype(np.float32))
  batch = {'labels': f(B, T + 2, 2, H, W), 'real': f(B, T + 2, 3, H, W), 'flow': f(B, T, 2, H, W) * 3,
           'conf': torch.from_numpy((rng.uniform(size=(B, T, 1, H, W)) < 0.8).astype(np.float32))}
  history = {'real': f(B, history_len, 3, H, W), 'fake': f(B, history_len, 3, H, W),
             'flow': f(B, history_len, 2, H, W) * 3}
  return batch, history


def _setup(rng, history_len, no_first_img=False):
  """PyTorch nets and a chunk in float64, and the same in Flax (through the converter).

  Float64 on both sides: float32 rounding is amplified here (BatchNorm at the 8x6
  bottleneck; a zero previous frame gives the image encoder's first BatchNorm a
  constant input), so that PyTorch's own float32 gradients differ from its float64
  ones by up to 0.4% of a tensor's largest entry, and its first-chunk losses by 0.3%.
  """
  opts = step.Options(**{**OPTS.__dict__, 'no_first_img': no_first_img, 'dtype': 'float64'})
  nets = _torch_nets()
  for net in nets[:2] + tuple(nets[2]) + nets[3:]:
    net.double()
  batch, history = _chunk(rng, history_len)
  batch = {k: v.double() for k, v in batch.items()}
  history = {k: v.double() for k, v in history.items()}
  models = step.build_models(opts)
  params, vgg_vars = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), _flax_params(models, nets))
  carry = step.initial_carry({'real': jnp.asarray(_nhwc(batch['real']))}, opts, models.generator)
  if history_len:
    carry['history'] = {k: jnp.asarray(_nhwc(v)) for k, v in history.items()}
  jbatch = {k: jnp.asarray(_nhwc(v)) for k, v in batch.items()}
  return opts, nets, batch, history, models, params, vgg_vars, carry, jbatch


def _assert_terms_match(terms, terms_t):
  """Within 1e-5: the first chunk's BatchNorm of a constant channel (zero previous frames) multiplies float64
  rounding by up to 1/sqrt(eps) (measured 2e-6 there, 1e-14 elsewhere)."""
  assert set(terms) == set(terms_t)
  for name, value in terms_t.items():
    value = float(value.detach()) if torch.is_tensor(value) else value
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, err_msg=name)


def test_chunk_losses_and_gradients_match_torch(rng):
  """A later chunk: 6 frames of history, so both temporal scales see a group (the second's flows chained over 3)."""
  with jax.enable_x64(True):
    opts, nets, batch, history, models, params, vgg_vars, carry, jbatch = _setup(rng, 6)
    terms_t = ref.chunk_losses(nets, batch, batch['real'][:, :2], batch['real'][:, 1], history,
                               {**TORCH_OPTS, 'no_first_img': False})
    generator, disc, temporal, _ = nets
    groups = [('loss_G', generator), ('loss_D', disc)] + [(f'loss_D_T{s}', d) for s, d in enumerate(temporal)]
    grads_t = []
    for name, net in groups:
      named = dict(net.named_parameters())
      values = torch.autograd.grad(terms_t[name], list(named.values()), retain_graph=True)
      grads_t.append({k: v.numpy() for k, v in zip(named, values)})
    grad_fn = jax.jit(jax.grad(step.chunk_losses, has_aux=True), static_argnums=(4, 5, 6))
    grads, (terms, new_carry) = grad_fn(params, jbatch, carry, vgg_vars, models, opts, False)
  _assert_terms_match(terms, terms_t)
  # Each network's gradient, in the reference's layout, within 1e-3 of that tensor's largest entry
  # (conv biases before a BatchNorm have a zero gradient, up to rounding: 1e-14 here).
  got = [convert.generator_state_dicts(models.generator, {'params': grads['G']})[0],
         convert.torch_state_from_flax(models.discriminator, {'params': grads['D']}, D_ARGS)]
  got += [convert.torch_state_from_flax(models.temporal[s], {'params': grads['D_T'][s]}, T_ARGS) for s in range(2)]
  for (name, _), want, mine in zip(groups, grads_t, got):
    for key, value in want.items():
      np.testing.assert_allclose(mine[key], value, rtol=1e-3, atol=1e-3 * np.abs(value).max() + 1e-10,
                                 err_msg=f'{name} {key}')
  assert new_carry['history']['fake'].shape[1] == OPTS.history == 6
  np.testing.assert_array_equal(new_carry['prev'][0][:, -1], new_carry['last'])


def test_first_chunk_losses_match_torch(rng):
  """A clip's first chunk with no_first_img: zero previous frames, raw outputs only, the weight loss, no history
  (only the first temporal scale has a group)."""
  with jax.enable_x64(True):
    opts, nets, batch, history, models, params, vgg_vars, carry, jbatch = _setup(rng, 0, no_first_img=True)
    with torch.no_grad():
      terms_t = ref.chunk_losses(nets, batch, torch.zeros_like(batch['real'][:, :2]), batch['real'][:, 1], history,
                                 {**TORCH_OPTS, 'no_first_img': True}, use_raw_only=True)
    _, (terms, new_carry) = jax.jit(step.chunk_losses, static_argnums=(4, 5, 6))(
        params, jbatch, carry, vgg_vars, models, opts, True)
  assert 'loss_D_T1' not in terms and terms['W'] > 0
  _assert_terms_match(terms, terms_t)
  assert new_carry['history']['real'].shape[1] == T
