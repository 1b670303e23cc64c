"""vid2vid's chunk losses and gradients against the PyTorch definition, and the train step's bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from layered_jax import convert
from layered_jax.vid2vid import losses, step
from tests import vid2vid_torch_reference as ref
from tests.conftest import run_once

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
  batch = {'inputs': f(B, T + 2, 2, H, W), 'frames': f(B, T + 2, 3, H, W), 'flow': f(B, T, 2, H, W) * 3,
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
  carry = step.initial_carry({'frames': jnp.asarray(_nhwc(batch['frames']))}, opts, models.generator)
  if history_len:
    carry['history'] = {k: jnp.asarray(_nhwc(v)) for k, v in history.items()}
    carry['count'] = jnp.int32(history_len)
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
    terms_t = ref.chunk_losses(nets, batch, batch['frames'][:, :2], batch['frames'][:, 1], history,
                               {**TORCH_OPTS, 'no_first_img': False})
    generator, disc, temporal, _ = nets
    groups = [('loss_G', generator), ('loss_D', disc)] + [(f'loss_D_T{s}', d) for s, d in enumerate(temporal)]
    grads_t = []
    for name, net in groups:
      named = dict(net.named_parameters())
      values = torch.autograd.grad(terms_t[name], list(named.values()), retain_graph=True)
      grads_t.append({k: v.numpy() for k, v in zip(named, values)})
    grads, (terms, new_carry) = run_once(jax.grad(step.chunk_losses, has_aux=True), params, jbatch, carry, vgg_vars,
                                         models, opts, False, static_argnums=(4, 5, 6))
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
      terms_t = ref.chunk_losses(nets, batch, torch.zeros_like(batch['frames'][:, :2]), batch['frames'][:, 1], history,
                                 {**TORCH_OPTS, 'no_first_img': True}, use_raw_only=True)
    _, (terms, new_carry) = run_once(step.chunk_losses, params, jbatch, carry, vgg_vars, models, opts, True,
                                     static_argnums=(4, 5, 6))
  assert terms['W'] > 0
  # The second temporal scale has no group with real history yet: its terms are 0 (the reference has none).
  for name in ('loss_D_T1', 'D_T_real1', 'D_T_fake1', 'G_T_GAN1', 'G_T_GAN_Feat1'):
    assert float(terms.pop(name)) == 0, name
  _assert_terms_match(terms, terms_t)
  assert new_carry['history']['real'].shape[1] == OPTS.history and int(new_carry['count']) == T
  np.testing.assert_array_equal(new_carry['history']['real'][:, -T:], jbatch['frames'][:, 2:])


def test_temporal_groups_end_at_the_newest_frame_every_tD_frames():
  assert step.temporal_groups(9, 3, 3, 0) == [(6, 7, 8)]
  assert step.temporal_groups(9, 3, 3, 1) == [(2, 5, 8)]
  assert step.temporal_groups(6, 3, 3, 1) == []  # 7 frames needed
  assert step.temporal_groups(12, 6, 3, 0) == [(9, 10, 11), (6, 7, 8)]
  assert step.temporal_groups(3, 2, 3, 0) == [(0, 1, 2)]  # ends on a new frame: one group


def test_temporal_inputs_take_precomputed_skip_flows_or_chain_the_consecutive_ones(rng):
  frames = jnp.asarray(rng.uniform(-1, 1, (1, 9, 4, 5, 3)), jnp.float32)
  flow = jnp.full((1, 9, 4, 5, 2), 0.5)  # a uniform translation chains to the sum of its steps
  skip = jnp.asarray(rng.normal(size=(1, 9, 4, 5, 2)), jnp.float32)
  with_skip = step.temporal_inputs(frames, {'flow': flow, 'flow_d1': skip}, [(2, 5, 8)], 1)
  np.testing.assert_array_equal(with_skip[..., :9], step.stack_frames(frames[:, [2, 5, 8]]))
  np.testing.assert_allclose(with_skip[..., 9:], jnp.concatenate([skip[:, 5], skip[:, 8]], -1) / 20, rtol=1e-6)
  chained = step.temporal_inputs(frames, {'flow': flow}, [(2, 5, 8)], 1)
  np.testing.assert_allclose(chained[..., 9:], 3 * 0.5 / 20, rtol=1e-6)


TINY = step.Options(input_nc=3, ngf=4, n_downsample_G=1, n_blocks=1, ndf=4, n_layers_D=1, num_D=1, no_vgg=True,
                    no_first_img=True)


def test_train_step_updates_only_the_networks_with_a_loss(rng):
  """A clip's first chunk of 2 frames: G and D step; no temporal group yet, so the temporal Ds keep their weights
  and their Adam states, as the reference skips them."""
  models = step.build_models(TINY)
  state = step.create_state(jax.random.PRNGKey(0), models, TINY)
  u = lambda *shape: jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
  batch = {'inputs': u(1, 4, 16, 16, 3), 'frames': u(1, 4, 16, 16, 3), 'flow': u(1, 2, 16, 16, 2),
           'conf': jnp.ones((1, 2, 16, 16, 1))}
  carry = step.initial_carry(batch, TINY, models.generator)
  assert float(jnp.abs(carry['prev'][0]).max()) == 0  # no_first_img: zero previous frames
  new_state, new_carry, terms = run_once(step.make_train_step(models, TINY), state, batch, carry, None, raw_only=True)
  assert int(new_state.step) == 1 and float(terms['loss_D_T0']) == 0 and float(terms['W']) > 0
  changed = lambda a, b: max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                           jax.tree_util.tree_leaves(b)))
  assert changed(new_state.params['G'], state.params['G']) > 0
  assert changed(new_state.params['D'], state.params['D']) > 0
  assert changed(new_state.params['D_T'], state.params['D_T']) == 0
  assert changed(new_state.opt_state['D_T'], state.opt_state['D_T']) == 0
  assert new_carry['history']['fake'].shape[1] == TINY.history and int(new_carry['count']) == 2
  assert new_carry['prev'][0].shape == (1, 2, 16, 16, 3)
  np.testing.assert_array_equal(new_carry['prev'][0][:, -1], new_carry['last'])


def test_options_from_a_config_and_the_vgg_fallback(caplog):
  from configs import vid2vid_pose
  config = vid2vid_pose.get_config()
  options = step.Options.from_config(config)
  assert (options.input_nc, options.num_D, options.no_first_img, options.ngf) == (6, 2, True, 128)
  with caplog.at_level('WARNING'):
    assert losses.vgg_weights_path('') is None
  assert 'no VGG19 weights given' in caplog.text and '--kind=vgg19' in caplog.text
  with pytest.raises(FileNotFoundError, match='is not a converted VGG19'):
    losses.vgg_weights_path('/nonexistent')


def test_benchmark_times_both_frameworks(capsys, monkeypatch):
  from benchmarks import vid2vid_step as benchmark
  monkeypatch.setattr(benchmark, 'COMPILER_OPTIONS', step.FAST_COMPILE)  # a smoke test: compile time dominates
  (row,) = benchmark.main(['--presets', 'tiny', '--steps', '1', '--rounds', '1', '--no_vgg', '--json'])
  assert row['jax_fps'] > 0 and row['torch_fps'] > 0 and row['frames_per_step'] == 3
  assert np.isclose(row['ratio'], row['jax_fps'] / row['torch_fps'])
  assert 0 < row['gflop_per_frame'] < 1 and row['planned_memory_gib'] > 0
  assert '"jax_fps"' in capsys.readouterr().out


@pytest.mark.parametrize('kernel,stride,padding,mode', [(3, 1, 1, 'reflect'), (7, 1, 3, 'reflect'), (3, 2, 1, 'zeros'),
                                                        (4, 2, 2, 'zeros')])
def test_benchmark_plain_convolutions_compute_the_same(rng, kernel, stride, padding, mode):
  """--xla_convs swaps in XLA's own convolutions: the same layers, so the timings compare like with like."""
  from benchmarks import vid2vid_step as benchmark
  from layered_jax.models import layers
  x = jnp.asarray(rng.normal(size=(1, 8, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 5)), jnp.float32)
  np.testing.assert_allclose(benchmark._xla_conv_padded(x, w, padding, stride, mode),
                             layers.conv_padded(x, w, padding, stride, mode), atol=1e-4)
  np.testing.assert_allclose(benchmark._xla_conv_transpose2x(x, w[:3, :3]), layers.conv_transpose2x(x, w[:3, :3]),
                             atol=1e-4)
  with benchmark.xla_convolutions(True):
    assert layers.conv_padded is benchmark._xla_conv_padded
  assert layers.conv_padded is not benchmark._xla_conv_padded
