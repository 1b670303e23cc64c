"""vid2vid's Flax networks and flow warp against the independent PyTorch definition (tests/vid2vid_torch_reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layered_jax import convert
from layered_jax.vid2vid import models
from layered_jax.vid2vid.warp import flow_warp
from tests import vid2vid_torch_reference as ref
from tests.conftest import nhwc, run_once

T_G, INPUT_NC = 3, 2


def _generators(fg, n_down, norm, no_flow):
  kwargs = dict(fg=fg, no_flow=no_flow, norm=norm)
  coarse = ref.CompositeGenerator(INPUT_NC * T_G, 3 * (T_G - 1), ngf=8, n_down=n_down, n_blocks=3, **kwargs)
  fine = ref.CompositeLocalGenerator(INPUT_NC * T_G, 3 * (T_G - 1), ngf=4, n_blocks_local=3, scale=1, n_down=n_down,
                                     **kwargs)
  return coarse, fine


@pytest.mark.parametrize('fg,n_down,norm,no_flow', [
    (False, 3, 'batch', False),
    (True, 3, 'instance', False),  # the foreground branch half as wide (n_downsample_G > 2)
    (False, 2, 'batch', True),
])
def test_generator_global_and_local_scale_match_torch(rng, fg, n_down, norm, no_flow):
  """3 blocks: the global generator's split (2 in the encoders, 1 per branch) is checked with an odd count."""
  coarse, fine = _generators(fg, n_down, norm, no_flow)
  module, variables = convert.generator_from_state_dicts([coarse.state_dict(), fine.state_dict()], ['G0', 'G1'])
  assert (module.ngf, module.n_blocks, module.n_downsample, module.fg, module.no_flow, module.norm) == (
      8, 3, n_down, fg, no_flow, norm)
  sizes = [(32, 24), (64, 48)]
  labels = [torch.randn(2, INPUT_NC * T_G, h, w) for h, w in sizes]
  prevs = [torch.rand(2, 3 * (T_G - 1), h, w) * 2 - 1 for h, w in sizes]
  masks = [(torch.rand(2, 1, h, w) > 0.5).float() for h, w in sizes] if fg else [None, None]
  with torch.no_grad():
    want_coarse = coarse(labels[0], prevs[0], masks[0])
    want_fine = fine(labels[1], prevs[1], masks[1], coarse=want_coarse)
  inputs = (variables, [nhwc(x) for x in labels], [nhwc(x) for x in prevs], [nhwc(m) for m in masks] if fg else None)
  got = run_once(module.apply, *inputs)
  for want, out in ((want_coarse, got[0]), (want_fine, got[1])):
    assert set(k for k, v in want.items() if v is not None) == set(k for k, v in out.items() if v is not None)
    for key, value in want.items():
      if value is not None:
        scale = max(1., float(value.abs().max()))  # flows reach tens of pixels
        np.testing.assert_allclose(out[key], nhwc(value), atol=1e-4 * scale, err_msg=key)
  raw_only = run_once(module.apply, *inputs, use_raw_only=True)
  np.testing.assert_array_equal(raw_only[1]['final'], raw_only[1]['raw'])


def test_generator_errors_name_the_expected_sizes():
  module = models.Generator(input_nc=6, n_frames_G=3, ngf=8, n_downsample=2)
  labels, prevs, _ = module.example_inputs()
  with pytest.raises(ValueError, match=r'labels have 12 channels; .* 6 \* 3'):
    module.init(jax.random.PRNGKey(0), [labels[0][..., :12]], prevs)
  with pytest.raises(ValueError, match='6x4 .*multiples of 4'):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), [jnp.zeros((1, 6, 4, 18))], [jnp.zeros((1, 6, 4, 6))])


def test_multiscale_discriminator_matches_torch_on_odd_sizes(rng):
  disc = ref.MultiscaleDiscriminator(9, ndf=8, n_layers=3, num_D=3)
  flax_disc = models.MultiscaleDiscriminator(ndf=8, n_layers=3, num_D=3)
  x = torch.randn(2, 9, 27, 21)
  variables = convert.flax_from_torch_state(flax_disc, disc.state_dict(), args=(nhwc(x),))
  with torch.no_grad():
    want = disc(x)
  got = run_once(flax_disc.apply, variables, nhwc(x))
  assert [len(scale) for scale in got] == [5, 5, 5]
  for want_scale, got_scale in zip(want, got):
    for w, g in zip(want_scale, got_scale):
      assert g.shape == nhwc(w).shape
      np.testing.assert_allclose(g, nhwc(w), atol=1e-4)
  assert convert.torch_state_from_flax(flax_disc, variables, (nhwc(x),)).keys() == disc.state_dict().keys()


def test_downsample_is_count_exclusive_average_pooling(rng):
  x = torch.randn(2, 3, 11, 8)
  np.testing.assert_allclose(models.downsample(jnp.asarray(nhwc(x))), nhwc(ref.downsample(x)), atol=1e-6)


def test_vgg19_taps_match_torch(rng):
  vgg = ref.VGG19()
  module = models.VGG19()
  variables = convert.flax_from_torch_state(module, vgg.state_dict(), ignored=convert._VGG19_UNUSED)
  x = torch.rand(1, 3, 32, 48) * 2 - 1
  with torch.no_grad():
    want = vgg(x)
  for w, g in zip(want, run_once(module.apply, variables, nhwc(x))):
    np.testing.assert_allclose(g, nhwc(w), rtol=1e-4, atol=1e-4 * float(w.abs().max()))


def _torch_warp(image, flow):
  return nhwc(ref.warp(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()),
                       torch.from_numpy(flow.transpose(0, 3, 1, 2).copy())))


def test_warp_matches_grid_sample_align_corners_border_with_out_of_range_flows(rng):
  image = rng.normal(size=(2, 9, 13, 3)).astype(np.float32)
  flow = rng.uniform(-6, 6, size=(2, 9, 13, 2)).astype(np.float32)  # many samples beyond the border
  flow[0, 0, :4] = [[-20, 0], [0, -20], [30, 30], [-0.5, 12]]
  np.testing.assert_allclose(flow_warp(jnp.asarray(image), jnp.asarray(flow)), _torch_warp(image, flow), atol=1e-5)
  shift = np.zeros_like(flow)
  shift[..., 0] = 1.  # out[y, x] = image[y, x + 1]; the last column repeats the border
  shifted = np.asarray(flow_warp(jnp.asarray(image), jnp.asarray(shift)))
  np.testing.assert_array_equal(shifted[:, :, :-1], image[:, :, 1:])
  np.testing.assert_array_equal(shifted[:, :, -1], image[:, :, -1])


def test_zero_flow_is_exact_identity_where_the_reference_call_is_not(rng):
  image = rng.normal(size=(1, 8, 10, 3)).astype(np.float32)
  zero = np.zeros((1, 8, 10, 2), np.float32)
  np.testing.assert_array_equal(flow_warp(jnp.asarray(image), jnp.asarray(zero)), image)
  # The reference's call: the same grid, grid_sample without align_corners (False since PyTorch 1.3, said here).
  b, h, w = 1, 8, 10
  grid = torch.stack([torch.linspace(-1, 1, w).view(1, 1, w).expand(b, h, w),
                      torch.linspace(-1, 1, h).view(1, h, 1).expand(b, h, w)], -1)
  theirs = nhwc(F.grid_sample(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()), grid, mode='bilinear',
                              padding_mode='border', align_corners=False))
  assert np.abs(theirs - image).max() > 0.1  # shifted and blurred by a fraction of a pixel


def test_warp_gradients_for_image_and_flow_match_torch_in_float64(rng):
  image = rng.normal(size=(2, 7, 9, 3))
  flow = rng.uniform(-4, 4, size=(2, 7, 9, 2))  # some samples clamped to the border (gradient 0 there)
  upstream = rng.normal(size=(2, 7, 9, 3))
  with jax.enable_x64(True):
    loss = lambda im, fl: jnp.sum(flow_warp(im, fl) * upstream)
    d_image, d_flow = jax.grad(loss, (0, 1))(jnp.asarray(image), jnp.asarray(flow))
  t_image = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  t_flow = torch.from_numpy(flow.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  (ref.warp(t_image, t_flow) * torch.from_numpy(upstream.transpose(0, 3, 1, 2).copy())).sum().backward()
  assert d_image.dtype == jnp.float64
  np.testing.assert_allclose(d_image, nhwc(t_image.grad), atol=1e-12)
  np.testing.assert_allclose(d_flow, nhwc(t_flow.grad), atol=1e-10)
