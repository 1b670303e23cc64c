"""Building blocks shared by the renderer and kp2uv (NHWC throughout).

Convolutions are shaped for XLA:CPU, whose own gradients of transposed and
stride-1 convolutions are 10-100x slower than PyTorch's (spec section 6), and
whose convolutions are far faster when they pad the input themselves:

* transposed convolutions are one stride-1 convolution whose output channels
  hold the four sub-pixel phases, followed by depth-to-space (exact);
* stride-1 convolutions (`conv_same_s1`) get a custom weight gradient on CPU:
  one matrix product per kernel tap, or a single product against the patches
  of the output gradient when it has few channels;
* strided convolutions use XLA's native op and gradients, which are fine.
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


Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def _conv(x: Array, w: Array, padding: Padding, dilation: int = 1, stride: int = 1) -> Array:
  return lax.conv_general_dilated(
      x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=_DIMENSIONS,
      preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)


def _matmul(a: Array, b: Array) -> Array:
  return jnp.dot(a, b, preferred_element_type=jnp.promote_types(a.dtype, jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_s1_cpu(x: Array, w: Array, padding: Padding, dilation: int) -> Array:
  return _conv(x, w, padding, dilation)


def _conv_s1_cpu_fwd(x, w, padding, dilation):
  return _conv(x, w, padding, dilation), (x, w)


def _weight_gradient(xp: Array, dy: Array, kh: int, kw: int, dilation: int = 1, stride: int = 1) -> Array:
  """dL/dw [kh,kw,I,O] of y[q] = sum_ij xp[stride * q + dilation * (i, j)] @ w[i, j], as matrix products.

  XLA's own weight-gradient convolutions run at a few GFLOP/s or less on CPU in some
  layouts (in vid2vid's training step at 256x192 a stride-2 3x3 one took 22 s for
  1.8 GFLOP); these products do not depend on the layout XLA picks.
  """
  n, oh, ow, features = dy.shape
  offsets = [(i * dilation, j * dilation) for i in range(kh) for j in range(kw)]
  if features <= 16 and stride == 1:
    # dw[i,j] = sum_q xp[q]^T dy[q - offset_ij]: one product against the thin patches of dy.
    hp, wp = xp.shape[1:3]
    shifted = [jnp.pad(dy, ((0, 0), (a, hp - oh - a), (b, wp - ow - b), (0, 0))) for a, b in offsets]
    dw = _matmul(xp.reshape(-1, xp.shape[-1]).T, jnp.concatenate(shifted, -1).reshape(-1, kh * kw * features))
    return dw.reshape(-1, kh, kw, features).transpose(1, 2, 0, 3)
  # dw[i,j] = (input window at offset ij)^T @ dy, one product per tap.
  dy_rows = dy.reshape(-1, features)
  channels = xp.shape[-1]
  windows = [lax.slice(xp, (0, a, b, 0), (n, a + stride * (oh - 1) + 1, b + stride * (ow - 1) + 1, channels),
                       (1, stride, stride, 1)) for a, b in offsets]
  return jnp.stack([_matmul(x.reshape(-1, channels).T, dy_rows) for x in windows]).reshape(kh, kw, channels, features)


def _conv_s1_cpu_bwd(padding, dilation, residuals, dy):
  x, w = residuals
  kh, kw, _, _ = w.shape
  span = ((kh - 1) * dilation, (kw - 1) * dilation)
  # Input gradient: correlation of dy with the flipped, transposed kernel.
  dx_padding = tuple((s - lo, s - hi) for s, (lo, hi) in zip(span, padding))
  dx = _conv(dy, jnp.flip(w, (0, 1)).swapaxes(2, 3), dx_padding, dilation)
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  return dx, _weight_gradient(xp, dy, kh, kw, dilation).astype(w.dtype)


_conv_s1_cpu.defvjp(_conv_s1_cpu_fwd, _conv_s1_cpu_bwd)


def conv_same_s1(x: Array, w: Array, padding: Padding, dilation: int = 1) -> Array:
  """Stride-1 convolution with explicit padding, x [N,H,W,I], w [kh,kw,I,O]."""
  if jax.default_backend() == 'cpu':
    return _conv_s1_cpu(x, w, padding, dilation)
  return _conv(x, w, padding, dilation)


# Exact 2x transposed convolutions with padding 1 (PyTorch ConvTranspose2d(k, stride=2, padding=1,
# output_padding=4-k): k=4, the renderer's, and k=3, vid2vid's). Per axis, output 2m + a (phase a) reads a
# two-input window starting at input m + start[a], with these kernel taps (-1: none). k=4: even outputs
# read (m-1, m) with taps (3, 1), odd ones (m, m+1) with (2, 0); k=3: even (m) with tap 1, odd (m, m+1) with (2, 0).
_PHASES = {4: ((-1, 0), ((3, 1), (2, 0))), 3: ((0, 0), ((1, -1), (2, 0)))}


def _phase_conv_transpose(x: Array, w: Array) -> Array:
  """Exact 2x transposed conv with padding 1, w [k,k,I,O] as PyTorch stores it (no flip), k 3 or 4.

  Written as one 2x2 stride-1 convolution whose 4*O output channels are the four
  sub-pixel phases, then interleaved (depth-to-space).
  """
  n, h, wd, _ = x.shape
  k, o = w.shape[0], w.shape[3]
  start, taps = _PHASES[k]
  taps = np.array(taps)
  zero_tap = jnp.zeros_like(w[:1])
  w_ext = jnp.concatenate([w, zero_tap], 0)  # index -1: a tap that reads nothing
  w_ext = jnp.concatenate([w_ext, jnp.zeros_like(w_ext[:, :1])], 1)
  phase_w = w_ext[taps[:, :, None, None], taps[None, None, :, :]]  # [a, ty, b, tx, I, O]
  phase_w = phase_w.transpose(1, 3, 4, 0, 2, 5).reshape(2, 2, w.shape[2], 4 * o)
  # Output j of the 2x2 convolution reads inputs (j - lo, j - lo + 1); phase a at m uses j = m + start[a] + lo.
  lo, hi = -min(start), 1 + max(start)
  y = conv_same_s1(x, phase_w, ((lo, hi), (lo, hi)))
  y = y.reshape(n, h + hi + lo - 1, wd + hi + lo - 1, 2, 2, o)
  offsets = [s + lo for s in start]
  rows = [jnp.stack([y[:, offsets[a]:offsets[a] + h, offsets[b]:offsets[b] + wd, a, b] for b in range(2)], axis=3)
          for a in range(2)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * wd, o)


def _strided_conv(x: Array, w: Array) -> Array:
  """k=3 or 4, stride-2 convolution with padding (1, 1): the adjoint of the transposed conv above."""
  return _conv(x, w, ((1, 1), (1, 1)), 1, 2)


def _with_adjoint_input_gradient(forward: Callable, adjoint: Callable,
                                 weight_gradient: Optional[Callable] = None) -> Callable:
  """forward(x, w) whose input gradient is adjoint(dy, w with in/out swapped).

  The two 2x resamplings are adjoint: each one's input gradient is the other's
  (fast) forward pass. The weight gradient is weight_gradient(x, dy, w), or
  forward's own VJP without one.
  """

  @jax.custom_vjp
  def resample(x, w):
    return forward(x, w)

  def backward(residuals, dy):
    x, w = residuals
    if weight_gradient is not None:
      dw = weight_gradient(x, dy, w)
    else:
      _, pullback = jax.vjp(lambda w: forward(x, w), w)
      dw = pullback(dy)[0]
    return adjoint(dy, w.swapaxes(2, 3)), dw

  resample.defvjp(lambda x, w: (forward(x, w), (x, w)), backward)
  return resample


def _strided_conv_weight_gradient(x: Array, dy: Array, w: Array) -> Array:
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return _weight_gradient(xp, dy, w.shape[0], w.shape[1], stride=2).astype(w.dtype)


_conv_transpose_cpu = _with_adjoint_input_gradient(_phase_conv_transpose, _strided_conv)
_strided_conv_cpu = _with_adjoint_input_gradient(_strided_conv, _phase_conv_transpose, _strided_conv_weight_gradient)


def conv_transpose2x(x: Array, w: Array) -> Array:
  """Exact 2x transposed conv with padding 1 (PyTorch ConvTranspose2d(k, 2, 1, output_padding=4-k)).

  w [k,k,I,O] with k 4 (the renderer's, cropped by one pixel per side) or 3 (vid2vid's), not flipped.
  """
  if jax.default_backend() == 'cpu':
    return _conv_transpose_cpu(x, w)
  return _phase_conv_transpose(x, w)


def conv_stride2(x: Array, w: Array) -> Array:
  """k=3 or 4, stride-2 convolution with zero padding 1 per side (PyTorch Conv2d(k, 2, padding=1))."""
  if jax.default_backend() == 'cpu' and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
    return _strided_conv_cpu(x, w)  # its adjoint is the 2x transposed conv only on even sizes
  return _strided_conv(x, w)


def conv_reflect_s1(x: Array, w: Array) -> Array:
  """Stride-1 k x k convolution (k odd) over the input reflection-padded by k // 2 (ReflectionPad2d + Conv2d).

  On CPU the convolution also pads one zero row and column before, whose outputs are
  dropped: XLA:CPU runs convolutions that pad nothing up to 8x slower here (7x7, 18
  input channels, 96x128: 25 ms against 4.7 ms). Narrow 7x7 ones (32 channels or fewer
  in and out, e.g. ngf 16) keep XLA's own gradients, 3-15x faster there than
  conv_same_s1's products; wider ones take conv_same_s1's, as XLA's weight gradient
  ran at under 1 GFLOP/s in the training step at ngf 128 (12 s for 7x7x18x128 at 256x192).
  """
  p = w.shape[0] // 2
  x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
  if jax.default_backend() != 'cpu':
    return _conv(x, w, ((0, 0), (0, 0)))
  padded = _conv if w.shape[0] >= 7 and max(w.shape[2:]) <= 32 else conv_same_s1
  return padded(x, w, ((1, 0), (1, 0)))[:, 1:, 1:]


def conv_padded(x: Array, w: Array, padding: int, stride: int = 1, padding_mode: str = 'zeros') -> Array:
  """PyTorch Conv2d(k, stride, padding) with padding_mode 'zeros' or 'reflect' (ReflectionPad2d(k // 2) first)."""
  k = w.shape[0]
  if padding_mode == 'reflect':
    if stride != 1 or 2 * padding + 1 != k:
      raise ValueError(f'reflection padding is implemented for stride 1 and padding k // 2, not k={k} '
                       f'stride={stride} padding={padding}')
    return conv_reflect_s1(x, w)
  pads = ((padding, padding), (padding, padding))
  if stride == 1:
    return conv_same_s1(x, w, pads)
  if stride == 2 and padding == 1 and k in (3, 4):
    return conv_stride2(x, w)
  return _conv(x, w, pads, 1, stride)


def conv2d(x: Array, w: Array, stride: int = 1, dilation: int = 1) -> Array:
  """Convolution with the reference's "same" padding (floor before, ceil after)."""
  k = w.shape[0]
  padding = (same_padding(k, stride, dilation, x.shape[1]), same_padding(k, stride, dilation, x.shape[2]))
  if stride == 1:
    return conv_same_s1(x, w, padding, dilation)
  if k == 4 and stride == 2 and padding == ((1, 1), (1, 1)):
    return conv_stride2(x, w)
  return _conv(x, w, padding, dilation, stride)


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


def max_pool2x(x: Array) -> Array:
  """2x2 max pooling with stride 2 over [N, H, W, C] (PyTorch MaxPool2d(2), odd edges dropped).

  Two pairwise maxima instead of reduce_window: XLA:CPU's gradient of reduce_window
  (select-and-scatter) took 4x as long as this one. At an exact tie the gradient
  is split between the tied inputs, where PyTorch gives it to the first; after a
  ReLU the ties are zeros whose gradient the ReLU stops either way.
  """
  _, h, w, _ = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  x = jnp.maximum(x[:, 0::2], x[:, 1::2])
  return jnp.maximum(x[:, :, 0::2], x[:, :, 1::2])


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
  """Convolution over inputs [..., H, W, C].

  padding None: the renderer's "same" padding (floor before, ceil after); an int p:
  PyTorch's Conv2d(padding=p), zeros or, with padding_mode 'reflect', ReflectionPad2d(p)
  first. kernel_init None: PyTorch's default init (so is the bias's, always).
  """
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  transpose: bool = False  # exact 2x transposed conv with padding 1 (kernel 3 or 4)
  padding: Optional[int] = None
  padding_mode: str = 'zeros'
  kernel_init: Optional[Callable] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, in_features = self.kernel_size, x.shape[-1]
    # PyTorch takes fan_in from weight dim 1: in-channels for conv, out-channels for convT.
    fan_in = (self.features if self.transpose else in_features) * k * k
    kernel = self.param('kernel', self.kernel_init or _torch_uniform(fan_in), (k, k, in_features, self.features))
    bias = self.param('bias', _torch_uniform(fan_in), (self.features,))
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:]).astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if self.transpose:
      y = conv_transpose2x(x, kernel)
    elif self.padding is None:
      y = conv2d(x, kernel, self.stride, self.dilation)
    else:
      y = conv_padded(x, kernel, self.padding, self.stride, self.padding_mode)
    y = y + bias.astype(self.dtype)
    return y.reshape(lead + y.shape[-3:])


def instance_norm(x: Array) -> Array:
  """Per-sample, per-channel normalisation over H, W (no affine), x [..., H, W, C]."""
  x_full = at_least_f32(x)
  mean = x_full.mean(axis=(-3, -2), keepdims=True)
  var = jnp.square(x_full - mean).mean(axis=(-3, -2), keepdims=True)
  return ((x_full - mean) * lax.rsqrt(var + BN_EPS)).astype(x.dtype)


def batch_moments(x: Array, axes: Tuple[int, ...], axis_name: Optional[str] = None) -> Tuple[Array, Array]:
  """Mean and biased variance of x over `axes` (and over all devices of `axis_name` under pmap), in float32.

  Two passes (the variance from the deviations, as PyTorch computes it): E[x^2] - E[x]^2
  loses the variance to cancellation when the mean is large against it.
  """
  x_full = at_least_f32(x)
  mean = x_full.mean(axis=axes, keepdims=True)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  var = jnp.square(x_full - mean).mean(axis=axes)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  return jnp.squeeze(mean, axes), var


def _normalize(x: Array, mean: Array, var: Array, scale: Array, bias: Array) -> Array:
  return ((at_least_f32(x) - mean) * lax.rsqrt(var + BN_EPS) * scale + bias).astype(x.dtype)


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
    if use_batch_stats:
      mean, var = batch_moments(x, (0, 2, 3), self.axis_name)  # [L, C]
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
    return _normalize(x, mean, var, scale, bias)


class BatchNorm(nn.Module):
  """BatchNorm over inputs [N, H, W, C] that always normalises with the current batch's statistics.

  vid2vid's reference never switches its networks to eval mode, so its outputs never
  depend on running averages, in training or at test time; this keeps none.
  `axis_name` makes the statistics span all devices under pmap.
  """
  axis_name: Optional[str] = None
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    scale = self.param('scale', self.scale_init, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    mean, var = batch_moments(x, tuple(range(x.ndim - 1)), self.axis_name)
    return _normalize(x, mean, var, scale, bias)


class InstanceNorm(nn.Module):
  """instance_norm as a module (no variables), so a network's norm layers can be listed by type."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return instance_norm(x)


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


def transmittance_from_above(alpha: Array) -> Array:
  """For alphas [B, L, ...] in [0, 1] (back to front): the product of (1 - a_j) over the layers j above each."""
  above = jnp.cumprod(jnp.flip(1 - alpha, axis=1), axis=1)
  return jnp.flip(jnp.concatenate([jnp.ones_like(above[:, :1]), above[:, :-1]], axis=1), axis=1)


def composite(layers: Array) -> Array:
  """Back-to-front "over" compositing of [B, L, H, W, 4] RGBA layers in [-1, 1].

  comp = rgba_0; comp = rgba_i * a_i + comp * (1 - a_i), a_i = alpha_i * 0.5 + 0.5,
  written in closed form: layer i is weighted by a_i times the transmittance
  of every layer above it.
  """
  alpha = layers[:, 1:, ..., 3:4] * 0.5 + 0.5
  alpha = jnp.concatenate([jnp.ones_like(layers[:, :1, ..., 3:4]), alpha], axis=1)
  return jnp.sum(layers * alpha * transmittance_from_above(alpha), axis=1)


def stack_channels(parts: Sequence[Array]) -> Array:
  """Concatenate along channels in a common dtype (current features first, then the skip)."""
  dtype = jnp.result_type(*parts)
  return jnp.concatenate([p.astype(dtype) for p in parts], axis=-1)
