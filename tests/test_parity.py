"""Whole networks against the independent PyTorch definition (tests/torch_reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layered_jax import convert, losses
from layered_jax.models import iuv_image
from tests.conftest import layered_uv, nhwc
from tests.torch_reference import TorchKp2UV, TorchLNR, reconstruction_losses

B, L, H, W, NF = 2, 3, 64, 128, 8


@pytest.fixture
def lnr_inputs(rng):
  uv = torch.rand(B, 2 * L, H, W) * 2.2 - 1.1  # includes samples outside the texture
  pids = torch.randint(0, 3, (B, L, H, W)).float()
  uv_hr = F.interpolate(uv, scale_factor=2, mode='bilinear', align_corners=False)
  return uv, pids, uv_hr


@pytest.fixture
def lnr_pair():
  net = TorchLNR(nf=NF, n_textures=49)
  module, variables = convert.variables_from_state_dict(net.state_dict(), 'lnr')
  return net, module, variables


def _close(got, want, atol=1e-4):
  np.testing.assert_allclose(np.asarray(got), want, atol=atol, rtol=0)


@pytest.mark.parametrize('upsample', [False, True])
def test_renderer_forward_matches_torch(lnr_pair, lnr_inputs, upsample):
  net, module, variables = lnr_pair
  uv, pids, uv_hr = lnr_inputs
  want = net(uv, pids, uv_hr if upsample else None)
  got = module.apply(variables, layered_uv(uv), pids.numpy(), layered_uv(uv_hr) if upsample else None)
  size = (2 * H, 2 * W) if upsample else (H, W)
  assert got['reconstruction'].shape == (B,) + size + (4,)
  assert got['layers'].shape == (B, L) + size + (4,)
  _close(got['reconstruction'], nhwc(want['reconstruction']))
  _close(got['layers'], nhwc(want['layers']))


def test_renderer_upsampler_crop_matches_torch(lnr_pair, lnr_inputs):
  net, module, variables = lnr_pair
  uv, pids, uv_hr = lnr_inputs
  want = net(uv, pids, uv_hr, crop=(6, 37, 64))
  got = module.clone(crop_size=64).apply(variables, layered_uv(uv), pids.numpy(), layered_uv(uv_hr),
                                         crop=(jnp.int32(6), jnp.int32(37)))
  assert got['layers'].shape == (B, L, 64, 64, 4)
  _close(got['layers'], nhwc(want['layers']))


def test_renderer_loss_gradients_and_batch_stats_match_torch(lnr_inputs):
  """In float64 on both sides: float32 rounding is amplified by BatchNorm's backward at the
  2x4 bottleneck (PyTorch's own float32 gradients differ from its float64 ones by up to 1e-2),
  so float64 is what isolates the port's arithmetic from that noise."""
  uv, pids, _ = [t.double() for t in lnr_inputs]
  net = TorchLNR(nf=NF, n_textures=49).double()
  target = torch.rand(B, 3, H, W, dtype=torch.float64) * 2 - 1
  trimap = torch.randint(-1, 2, (B, L, H, W)).double()
  weights = {'lambda_alpha_l1': 0.01, 'lambda_alpha_l0': 0.005, 'lambda_mask': 50.}
  with jax.enable_x64(True):
    module, variables = convert.variables_from_state_dict(net.state_dict(), 'lnr')
    module = module.clone(dtype=jnp.float64)
    variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), variables)

    def loss_fn(params):
      out, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                  layered_uv(uv), pids.numpy(), train=True, mutable=['batch_stats'])
      return losses.layered_losses(out, nhwc(target), trimap.numpy(), weights)['total'], updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    flat_grads = convert.state_dict_from_variables({'params': grads})
    stats = convert.state_dict_from_variables(updates)
  total, *_ = reconstruction_losses(net(uv, pids), target, trimap)
  total.backward()
  np.testing.assert_allclose(loss, total.item(), rtol=1e-9)
  for key, param in net.named_parameters():
    if param.grad is None:  # the upsampler does not take part in the low-resolution stage
      assert key.startswith('upsample_block') and not np.any(flat_grads[key]), key
    else:  # conv biases followed by BatchNorm have a true gradient of 0: hence the floor
      error = np.linalg.norm(flat_grads[key] - param.grad.numpy())
      assert error <= 1e-3 * np.linalg.norm(param.grad.numpy()) + 1e-9, key
  # Running statistics: as after PyTorch's L sequential per-layer updates.
  for key, value in net.state_dict().items():
    if 'running' in key:
      np.testing.assert_allclose(stats[key], value.numpy(), rtol=1e-6, err_msg=key)


def test_running_average_mode_matches_torch_eval(lnr_pair, lnr_inputs):
  net, module, variables = lnr_pair
  uv, pids, _ = lnr_inputs
  net(uv, pids)  # one training-mode pass updates the running statistics
  _, updates = module.apply(variables, layered_uv(uv), pids.numpy(), train=True, mutable=['batch_stats'])
  net.eval()
  want = net(uv[:1], pids[:1])
  got = module.apply({**variables, **updates}, layered_uv(uv[:1]), pids[:1].numpy(), use_running_average=True)
  _close(got['reconstruction'], nhwc(want['reconstruction']))
  # The reference's test mode (batch statistics of the current frame) differs from it.
  test_mode = module.apply({**variables, **updates}, layered_uv(uv[:1]), pids[:1].numpy())
  assert np.abs(np.asarray(test_mode['reconstruction']) - nhwc(want['reconstruction'])).max() > 1e-3


def test_kp2uv_matches_torch_and_decodes_to_reference_iuv():
  net = TorchKp2UV(nf=NF)
  image = torch.rand(2, 3, 256, 256) * 2 - 1
  want_logits, want_uv = net(image)
  module, variables = convert.variables_from_state_dict(net.state_dict(), 'kp2uv')
  logits, uv = module.apply(variables, nhwc(image))
  assert logits.shape == (2, 256, 256, 25) and uv.shape == (2, 256, 256, 48)
  _close(logits, nhwc(want_logits))
  _close(uv, nhwc(want_uv))
  # IUV image as the reference decodes it: part argmax, that part's (u, v), background uv = -1.
  part = want_logits.argmax(1)
  pairs = want_uv.reshape(2, 24, 2, 256, 256)
  index = (part - 1).clamp(min=0)[:, None, None].expand(-1, 1, 2, -1, -1)
  selected = torch.gather(pairs, 1, index)[:, 0]
  selected = torch.where(part[:, None] > 0, selected, -torch.ones_like(selected))
  gb = ((selected + 1) / 2 * 255).detach().numpy().astype(np.uint8)
  iuv = np.asarray(iuv_image(logits, uv))
  np.testing.assert_array_equal(iuv[..., 0], part.numpy() * 10)
  assert np.abs(iuv[..., 1:].astype(int) - nhwc(torch.from_numpy(gb)).astype(int)).max() <= 1


def test_bfloat16_compute_stays_close_with_float32_params(lnr_pair, lnr_inputs):
  _, module, variables = lnr_pair
  uv, pids, _ = lnr_inputs
  full = module.apply(variables, layered_uv(uv), pids.numpy())
  half = module.clone(dtype=jnp.bfloat16).apply(variables, layered_uv(uv), pids.numpy())
  assert half['reconstruction'].dtype == jnp.float32
  assert np.abs(np.asarray(half['reconstruction']) - np.asarray(full['reconstruction'])).mean() < 0.02
  init = module.clone(dtype=jnp.bfloat16).init(jax.random.PRNGKey(0), layered_uv(uv), pids.numpy())
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(init['params']))
