"""Building blocks shared by the renderer and kp2uv (NHWC throughout).

Every convolution here is reduced to one primitive, a stride-1 "valid"
convolution on a pre-padded input (`conv_valid`):

* strided convolutions become stride-1 convolutions on a space-to-depth view,
* transposed convolutions become one stride-1 convolution whose output
  channels hold the four sub-pixel phases, followed by depth-to-space.

Both rewrites are exact. They exist because XLA:CPU's own gradients of
strided and transposed convolutions are 10-30x slower than PyTorch (spec
section 6); on CPU `conv_valid` also computes its weight gradient as one
matrix product per kernel tap instead of XLA's slow filter-gradient path.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch.


def at_least_f32(x: Array) -> Array:
  """Upcast bfloat16/float16 to float32 (float64 stays): statistics and outputs are never low precision."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def same_padding(kernel: int, stride: int, dilation: int, size: int) -> Tuple[int, int]:
  """Padding (before, after) that gives `size // stride` outputs, floor before and ceil after."""
  out = size // stride
  total = stride * (out - 1) + (kernel - 1) * (dilation - 1) + kernel - size
  return total // 2, total - total // 2


def _conv(x: Array, w: Array, dilation: int) -> Array:
  return lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', rhs_dilation=(dilation, dilation),
      dimension_numbers=_DIMENSIONS,
      preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_tapwise_grad(x: Array, w: Array, dilation: int) -> Array:
  return _conv(x, w, dilation)


def _conv_tapwise_fwd(x, w, dilation):
  return _conv(x, w, dilation), (x, w)


def _conv_tapwise_bwd(dilation, residuals, dy):
  x, w = residuals
  kh, kw = w.shape[:2]
  _, oh, ow, _ = dy.shape
  # Input gradient: a full correlation of dy with the flipped, transposed kernel.
  pad = ((0, 0), ((kh - 1) * dilation,) * 2, ((kw - 1) * dilation,) * 2, (0, 0))
  dx = _conv(jnp.pad(dy, pad), jnp.flip(w, (0, 1)).swapaxes(2, 3), dilation)
  # Weight gradient: for each tap, (shifted input)^T @ dy over all positions.
  dy_rows = dy.reshape(-1, dy.shape[-1])
  taps = [[jnp.dot(
      x[:, i * dilation:i * dilation + oh, j * dilation:j * dilation + ow, :]
      .reshape(-1, x.shape[-1]).T, dy_rows, preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
           for j in range(kw)] for i in range(kh)]
  return dx, jnp.asarray(taps).astype(w.dtype)


_conv_tapwise_grad.defvjp(_conv_tapwise_fwd, _conv_tapwise_bwd)


def conv_valid(x: Array, w: Array, dilation: int = 1) -> Array:
  """Stride-1 valid convolution, x [N,H,W,I], w [kh,kw,I,O]."""
  if jax.default_backend() == 'cpu':
    return _conv_tapwise_grad(x, w, dilation)
  return _conv(x, w, dilation)


def space_to_depth(x: Array) -> Array:
  """[N, 2H, 2W, C] -> [N, H, W, 4C], channel order (row phase, column phase, C)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def conv2d(x: Array, w: Array, stride: int = 1, dilation: int = 1) -> Array:
  """Convolution with the reference's "same" padding (floor before, ceil after)."""
  k = w.shape[0]
  pad_h = same_padding(k, stride, dilation, x.shape[1])
  pad_w = same_padding(k, stride, dilation, x.shape[2])
  x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  if stride == 1:
    return conv_valid(x, w, dilation)
  if stride != 2 or k % 2 or dilation != 1 or x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f'unsupported strided conv: k={k} s={stride} d={dilation} input {x.shape}')
  # A k x k stride-2 conv is a (k/2) x (k/2) stride-1 conv on the space-to-depth view.
  i, o = w.shape[2:]
  w = w.reshape(k // 2, 2, k // 2, 2, i, o).transpose(0, 2, 1, 3, 4, 5).reshape(k // 2, k // 2, 4 * i, o)
  return conv_valid(space_to_depth(x), w)


# Kernel tap used by each output phase of a k=4, s=2 transposed conv cropped to 2x:
# even outputs 2m read inputs (m-1, m) with taps (3, 1); odd outputs 2m+1 read (m, m+1) with (2, 0).
_PHASE_TAPS = np.array([[3, 1], [2, 0]])


def conv_transpose2x(x: Array, w: Array) -> Array:
  """PyTorch ConvTranspose2d(k=4, s=2) cropped by one pixel per side, w [4,4,I,O] (no flip).

  Written as one 2x2 stride-1 convolution whose 4*O output channels are the four
  sub-pixel phases, then interleaved (depth-to-space).
  """
  n, h, wd, _ = x.shape
  o = w.shape[3]
  phase_w = w[_PHASE_TAPS[:, :, None, None], _PHASE_TAPS[None, None, :, :]]  # [a, ty, b, tx, I, O]
  phase_w = phase_w.transpose(1, 3, 4, 0, 2, 5).reshape(2, 2, w.shape[2], 4 * o)
  y = conv_valid(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), phase_w)
  y = y.reshape(n, h + 1, wd + 1, 2, 2, o)
  rows = [jnp.stack([y[:, a:a + h, b:b + wd, a, b] for b in range(2)], axis=3) for a in range(2)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * wd, o)


def upsample2x_bilinear(x: Array, axes: Tuple[int, int] = (-3, -2)) -> Array:
  """Exact 2x bilinear upsampling with align_corners=False (PyTorch F.interpolate)."""
  for axis in axes:
    n = x.shape[axis]
    prev = jnp.take(x, jnp.clip(jnp.arange(n) - 1, 0, n - 1), axis=axis)
    nxt = jnp.take(x, jnp.clip(jnp.arange(n) + 1, 0, n - 1), axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    axis = axis % x.ndim
    x = jnp.stack([even, odd], axis=axis + 1)
    x = x.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 2:])
  return x


def grid_sample(texture: Array, uv: Array) -> Array:
  """Bilinear sampling with zero padding and align_corners=False (PyTorch grid_sample).

  texture [Ht, Wt, C]; uv [..., 2] with u along the width and v along the height,
  in [-1, 1] for the texture's outer pixel edges. Returns [..., C].
  """
  height, width, channels = texture.shape
  uv = at_least_f32(uv)
  x = ((uv[..., 0] + 1) * width - 1) / 2
  y = ((uv[..., 1] + 1) * height - 1) / 2
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  flat = texture.reshape(height * width, channels)
  out = 0.
  for dy in (0, 1):
    for dx in (0, 1):
      xi = x0 + dx
      yi = y0 + dy
      weight = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
      inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
      index = jnp.where(inside, yi * width + xi, 0).astype(jnp.int32)
      out = out + jnp.take(flat, index, axis=0) * jnp.where(inside, weight, 0.)[..., None]
  return out


def _torch_uniform(bound_fan_in: int) -> Callable:
  """PyTorch's default conv init (kaiming-uniform a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1. / np.sqrt(bound_fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv(nn.Module):
  """Convolution ("same" padding as the reference) over inputs [..., H, W, C]."""
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  transpose: bool = False  # k=4, s=2 transposed conv, output exactly 2x the input.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, in_features = self.kernel_size, x.shape[-1]
    # PyTorch takes fan_in from weight dim 1: in-channels for conv, out-channels for convT.
    fan_in = (self.features if self.transpose else in_features) * k * k
    kernel = self.param('kernel', _torch_uniform(fan_in), (k, k, in_features, self.features))
    bias = self.param('bias', _torch_uniform(fan_in), (self.features,))
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:]).astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if self.transpose:
      y = conv_transpose2x(x, kernel)
    else:
      y = conv2d(x, kernel, self.stride, self.dilation)
    y = y + bias.astype(self.dtype)
    return y.reshape(lead + y.shape[-3:])


def instance_norm(x: Array) -> Array:
  """Per-sample, per-channel normalisation over H, W (no affine), x [..., H, W, C]."""
  x_full = at_least_f32(x)
  mean = x_full.mean(axis=(-3, -2), keepdims=True)
  var = jnp.square(x_full - mean).mean(axis=(-3, -2), keepdims=True)
  return ((x_full - mean) * lax.rsqrt(var + BN_EPS)).astype(x.dtype)


class LayerwiseBatchNorm(nn.Module):
  """BatchNorm over inputs [B, L, H, W, C] with statistics per layer L.

  The reference runs each layer through the UNet separately, so each layer is
  normalised over its own B frames. Running statistics are updated as PyTorch
  does when it sees the L layers one after another (momentum 0.1, unbiased
  variance). `axis_name` makes the statistics span all devices under pmap.
  """
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, use_batch_stats: bool, update_stats: bool) -> Array:
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,))
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,))
    x_full = at_least_f32(x)
    if use_batch_stats:
      axes = (0, 2, 3)
      mean = x_full.mean(axis=axes)
      mean_sq = jnp.square(x_full).mean(axis=axes)
      if self.axis_name is not None:
        mean, mean_sq = lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.)  # [L, C]
      if update_stats and not self.is_initializing():
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if self.axis_name is not None:
          count = count * lax.psum(1, self.axis_name)
        unbiased = var * count / max(count - 1, 1)
        num_layers = x.shape[1]
        keep = 1. - BN_MOMENTUM
        # Layer l's statistics are decayed by the (L - 1 - l) layers seen after it.
        decay = BN_MOMENTUM * keep ** jnp.arange(num_layers - 1, -1, -1, dtype=var.dtype)
        running_mean.value = keep ** num_layers * running_mean.value + decay @ mean
        running_var.value = keep ** num_layers * running_var.value + decay @ unbiased
      mean, var = mean[None, :, None, None], var[None, :, None, None]
    else:
      mean, var = running_mean.value, running_var.value
    y = (x_full - mean) * lax.rsqrt(var + BN_EPS) * scale + bias
    return y.astype(x.dtype)


def leaky_relu(x: Array) -> Array:
  return nn.leaky_relu(x, 0.2)


ACTIVATIONS = {'relu': nn.relu, 'leaky': leaky_relu, 'tanh': jnp.tanh, None: lambda x: x}


class ConvBlock(nn.Module):
  """Conv, optional norm ('batch' | 'instance' | None), activation (a key of ACTIVATIONS)."""
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  transpose: bool = False
  norm: Optional[str] = None
  activation: Optional[str] = 'relu'
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, use_batch_stats: bool = True, update_stats: bool = False) -> Array:
    x = Conv(self.features, self.kernel_size, self.stride, self.dilation, self.transpose,
             dtype=self.dtype, name='conv')(x)
    if self.norm == 'batch':
      x = LayerwiseBatchNorm(self.axis_name, name='norm')(x, use_batch_stats, update_stats)
    elif self.norm == 'instance':
      x = instance_norm(x)
    return ACTIVATIONS[self.activation](x)


class ResBlock(nn.Module):
  """conv3x3 + InstanceNorm + relu, conv3x3 + InstanceNorm, plus the input."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    y = ConvBlock(features, 3, norm='instance', dtype=self.dtype, name='convblock1')(x)
    y = ConvBlock(features, 3, norm='instance', activation=None, dtype=self.dtype, name='convblock2')(y)
    return x + y


def composite(layers: Array) -> Array:
  """Back-to-front "over" compositing of [B, L, H, W, 4] RGBA layers in [-1, 1].

  comp = rgba_0; comp = rgba_i * a_i + comp * (1 - a_i), a_i = alpha_i * 0.5 + 0.5,
  written in closed form: layer i is weighted by a_i times the transmittance
  of every layer above it.
  """
  alpha = layers[:, 1:, ..., 3:4] * 0.5 + 0.5
  alpha = jnp.concatenate([jnp.ones_like(layers[:, :1, ..., 3:4]), alpha], axis=1)
  above = jnp.cumprod(jnp.flip(1 - alpha, axis=1), axis=1)
  transmittance = jnp.flip(jnp.concatenate([jnp.ones_like(above[:, :1]), above[:, :-1]], axis=1), axis=1)
  return jnp.sum(layers * alpha * transmittance, axis=1)


def stack_channels(parts: Sequence[Array]) -> Array:
  """Concatenate along channels in a common dtype (current features first, then the skip)."""
  dtype = jnp.result_type(*parts)
  return jnp.concatenate([p.astype(dtype) for p in parts], axis=-1)
