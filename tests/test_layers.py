"""Building blocks against PyTorch: padding, convolutions, sampler, upsampling, BatchNorm, compositing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax import lax

from layered_jax.models import layers
from tests.conftest import nhwc
from tests.torch_reference import Block


@pytest.mark.parametrize('kernel,stride,dilation,expected', [
    (4, 2, 1, (1, 1)),  # encoder downsampling
    (4, 1, 2, (3, 3)),  # dilated bottleneck
    (4, 1, 1, (1, 2)),  # final rgba conv: asymmetric, floor before, ceil after
    (3, 1, 1, (1, 1)),
])
def test_same_padding_matches_reference_rule(kernel, stride, dilation, expected):
  assert layers.same_padding(kernel, stride, dilation, 64) == expected


def _torch_grads(block, x):
  x = x.clone().requires_grad_(True)
  y = block(x)
  (y * torch.cos(y)).sum().backward()  # a non-trivial upstream gradient
  return y, x.grad, block.conv.weight.grad, block.conv.bias.grad


@pytest.mark.parametrize('kernel,stride,dilation,transpose', [
    (4, 2, 1, False), (4, 1, 2, False), (4, 1, 1, False), (3, 1, 1, False), (4, 2, 1, True)])
def test_conv_block_matches_torch_forward_and_gradients(rng, kernel, stride, dilation, transpose):
  block = Block(6, 5, kernel, stride, dilation, transpose=transpose, act=None)
  x = torch.randn(2, 6, 16, 24)
  y_t, dx_t, dw_t, db_t = _torch_grads(block, x)
  w = block.conv.weight.detach().numpy()
  kernel_hwio = w.transpose((2, 3, 0, 1) if transpose else (2, 3, 1, 0))
  variables = {'params': {'conv': {'kernel': kernel_hwio, 'bias': block.conv.bias.detach().numpy()}}}
  jblock = layers.ConvBlock(5, kernel, stride, dilation, transpose, activation=None)

  def loss(variables, x):
    y = jblock.apply(variables, x)
    return jnp.sum(y * jnp.cos(y)), y

  (_, y), (dvars, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables, nhwc(x))
  np.testing.assert_allclose(y, nhwc(y_t), atol=1e-5)
  np.testing.assert_allclose(dx, nhwc(dx_t), atol=1e-4)
  dw = dvars['params']['conv']['kernel']
  np.testing.assert_allclose(dw, dw_t.numpy().transpose((2, 3, 0, 1) if transpose else (2, 3, 1, 0)),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dvars['params']['conv']['bias'], db_t.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('features', [5, 40])  # thin outputs use the patches-of-dy product
def test_cpu_conv_gradient_equals_xla_autodiff(rng, features):
  x = jnp.asarray(rng.normal(size=(2, 11, 13, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 4, 3, features)), jnp.float32)
  padding = ((3, 2), (1, 4))
  native = lambda x, w: jnp.sum(jnp.sin(lax.conv_general_dilated(
      x, w, (1, 1), padding, rhs_dilation=(2, 2), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
  custom = lambda x, w: jnp.sum(jnp.sin(layers._conv_s1_cpu(x, w, padding, 2)))
  for got, want in zip(jax.grad(custom, (0, 1))(x, w), jax.grad(native, (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _grid_sample_torch(texture_hwc, uv):
  tex = torch.from_numpy(np.ascontiguousarray(texture_hwc.transpose(2, 0, 1)))[None]
  grid = torch.from_numpy(uv)[None]
  return nhwc(F.grid_sample(tex, grid, mode='bilinear', padding_mode='zeros', align_corners=False))[0]


def test_grid_sample_matches_torch_inside_on_and_beyond_the_border(rng):
  texture = rng.normal(size=(16, 48, 4)).astype(np.float32)
  uv = rng.uniform(-1.3, 1.3, size=(9, 17, 2)).astype(np.float32)
  edges = np.array([-1., 1., -1. + 1e-7, 1. - 1e-7, -1.0625, 1.0625, 0.], np.float32)
  uv[0, :7, 0], uv[1, :7, 1] = edges, edges  # exactly +-1, just inside, half a texel out
  uv[2, :7] = np.stack([edges, edges[::-1]], -1)
  np.testing.assert_allclose(layers.grid_sample(jnp.asarray(texture), jnp.asarray(uv)),
                             _grid_sample_torch(texture, uv), atol=1e-5)


def test_grid_sample_beyond_half_texel_is_zero_and_at_border_half_weight():
  texture = jnp.ones((4, 8, 1))
  uv = jnp.array([[[1.3, 0.], [-1.3, 0.], [1., 0.], [1., 1.]]])
  out = layers.grid_sample(texture, uv)[0, :, 0]
  np.testing.assert_allclose(out, [0., 0., 0.5, 0.25])


def test_grid_sample_texture_gradient_matches_torch(rng):
  texture = rng.normal(size=(8, 24, 3)).astype(np.float32)
  uv = rng.uniform(-1.1, 1.1, size=(6, 10, 2)).astype(np.float32)
  weights = rng.normal(size=(6, 10, 3)).astype(np.float32)
  g = jax.grad(lambda t: jnp.sum(layers.grid_sample(t, jnp.asarray(uv)) * weights))(jnp.asarray(texture))
  tex = torch.from_numpy(texture.transpose(2, 0, 1).copy())[None].requires_grad_(True)
  out = F.grid_sample(tex, torch.from_numpy(uv)[None], align_corners=False)
  (out * torch.from_numpy(weights.transpose(2, 0, 1).copy())[None]).sum().backward()
  np.testing.assert_allclose(g, nhwc(tex.grad)[0], atol=1e-5)


def test_upsample2x_matches_torch_bilinear(rng):
  x = torch.randn(2, 3, 5, 7)
  want = nhwc(F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False))
  np.testing.assert_allclose(layers.upsample2x_bilinear(jnp.asarray(nhwc(x))), want, atol=1e-6)


def test_composite_equals_sequential_over(rng):
  rgba = jnp.asarray(rng.uniform(-1, 1, size=(2, 4, 3, 5, 4)), jnp.float32)
  comp = rgba[:, 0]
  for i in range(1, 4):
    a = rgba[:, i, ..., 3:4] * 0.5 + 0.5
    comp = rgba[:, i] * a + comp * (1 - a)
  np.testing.assert_allclose(layers.composite(rgba), comp, atol=1e-6)


def test_layerwise_batchnorm_matches_torch_per_layer(rng):
  """Each layer normalised over its own frames; running stats as after L sequential updates."""
  b, num_layers, c = 3, 4, 5
  x = rng.normal(size=(b, num_layers, 6, 7, c)).astype(np.float32) * 3 + 1
  bn = torch.nn.BatchNorm2d(c)
  with torch.no_grad():
    bn.weight.copy_(torch.linspace(0.5, 2, c))
    bn.bias.copy_(torch.linspace(-1, 1, c))
  want = np.stack([nhwc(bn(torch.from_numpy(x[:, l].transpose(0, 3, 1, 2).copy())))
                   for l in range(num_layers)], 1)
  module = layers.LayerwiseBatchNorm()
  variables = {'params': {'scale': bn.weight.detach().numpy(), 'bias': bn.bias.detach().numpy()},
               'batch_stats': {'mean': np.zeros(c, np.float32), 'var': np.ones(c, np.float32)}}
  got, updates = module.apply(variables, x, True, True, mutable=['batch_stats'])
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], bn.running_mean.numpy(), atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], bn.running_var.numpy(), rtol=1e-5)
  bn.eval()
  running = module.apply({**variables, **updates}, x, False, False)
  np.testing.assert_allclose(running[:, 1], nhwc(bn(torch.from_numpy(x[:, 1].transpose(0, 3, 1, 2).copy()))),
                             atol=1e-5)


def test_instance_norm_matches_torch(rng):
  x = torch.randn(2, 3, 6, 9) * 2 + 1
  np.testing.assert_allclose(layers.instance_norm(jnp.asarray(nhwc(x))),
                             nhwc(torch.nn.InstanceNorm2d(3)(x)), atol=1e-5)


def test_conv_init_follows_torch_bounds():
  variables = layers.Conv(8, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 16)))
  bound = 1 / np.sqrt(16 * 16)
  kernel = variables['params']['kernel']
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  transposed = layers.Conv(8, 4, transpose=True).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 16)))
  assert np.abs(transposed['params']['kernel']).max() <= 1 / np.sqrt(8 * 16)


@pytest.mark.parametrize('kernel,stride,padding,mode,transpose,size,channels', [
    (3, 1, 1, 'reflect', False, (8, 6), (6, 5)),  # vid2vid's residual blocks
    (7, 1, 3, 'reflect', False, (12, 10), (6, 5)),  # its C7 layers, narrow: XLA's own gradients
    (7, 1, 3, 'reflect', False, (12, 10), (33, 5)),  # wide: conv_same_s1's weight gradient products
    (3, 2, 1, 'zeros', False, (8, 6), (6, 5)),  # its downsampling (adjoint input gradient, per-tap weight gradient)
    (3, 2, 1, 'zeros', False, (9, 7), (6, 5)),  # odd sizes: XLA's own
    (4, 2, 1, 'zeros', False, (8, 6), (6, 5)),  # the renderer's downsampling
    (4, 2, 2, 'zeros', False, (9, 7), (6, 5)),  # PatchGAN
    (4, 1, 2, 'zeros', False, (5, 4), (6, 5)),
    (3, 2, 1, 'zeros', True, (4, 3), (6, 5)),  # its upsampling: ConvTranspose2d(3, 2, 1, output_padding=1)
])
def test_padded_convs_match_torch_forward_and_gradients(rng, kernel, stride, padding, mode, transpose, size, channels):
  if transpose:
    conv = torch.nn.ConvTranspose2d(*channels, kernel, stride, padding, output_padding=1)
  else:
    conv = torch.nn.Conv2d(*channels, kernel, stride, padding, padding_mode=mode)
  x = torch.randn(2, channels[0], *size, requires_grad=True)
  y_t = conv(x)
  (y_t * torch.cos(y_t)).sum().backward()
  axes = (2, 3, 0, 1) if transpose else (2, 3, 1, 0)
  params = {'kernel': conv.weight.detach().numpy().transpose(axes), 'bias': conv.bias.detach().numpy()}
  module = layers.Conv(channels[1], kernel, stride, transpose=transpose, padding=None if transpose else padding,
                       padding_mode=mode)

  def loss(params, x):
    y = module.apply({'params': params}, x)
    return jnp.sum(y * jnp.cos(y)), y

  (_, y), (dparams, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, nhwc(x))
  np.testing.assert_allclose(y, nhwc(y_t), atol=1e-5)
  np.testing.assert_allclose(dx, nhwc(x.grad), atol=1e-4)
  np.testing.assert_allclose(dparams['kernel'], conv.weight.grad.numpy().transpose(axes), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dparams['bias'], conv.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_max_pool2x_matches_torch_forward_and_gradient_on_odd_sizes(rng):
  x = torch.randn(2, 3, 9, 7, requires_grad=True)
  y_t = F.max_pool2d(x, 2)
  (y_t * torch.cos(y_t)).sum().backward()
  y, pullback = jax.vjp(layers.max_pool2x, nhwc(x))
  np.testing.assert_array_equal(y, nhwc(y_t))
  np.testing.assert_allclose(pullback(jnp.asarray(nhwc(torch.cos(y_t) - y_t * torch.sin(y_t))))[0], nhwc(x.grad),
                             rtol=1e-6, atol=1e-6)


def test_batchnorm_uses_batch_statistics_as_torch_train_mode_even_far_from_zero(rng):
  """Two-pass variance: with a mean 1000x the spread, E[x^2] - E[x]^2 in float32 would lose it entirely."""
  x = torch.randn(3, 4, 5, 6, dtype=torch.float64) + 1000.
  bn = torch.nn.BatchNorm2d(4).double()
  with torch.no_grad():
    bn.weight.copy_(torch.linspace(0.5, 2, 4))
    bn.bias.copy_(torch.linspace(-1, 1, 4))
  x.requires_grad_(True)
  y_t = bn(x)
  (y_t * torch.sin(y_t)).sum().backward()
  params = {'scale': bn.weight.detach().numpy().astype(np.float32), 'bias': bn.bias.detach().numpy().astype(np.float32)}
  module = layers.BatchNorm()
  loss = lambda x: (lambda y: jnp.sum(y * jnp.sin(y)))(module.apply({'params': params}, x))
  x32 = nhwc(x).astype(np.float32)
  np.testing.assert_allclose(module.apply({'params': params}, x32), nhwc(y_t), atol=2e-3)
  np.testing.assert_allclose(jax.grad(loss)(x32), nhwc(x.grad), atol=2e-2)
