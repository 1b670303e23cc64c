"""vid2vid's networks in Flax (NHWC): the sequential generators, the PatchGAN discriminators and VGG19.

Each network is a list of layers run in order (`Stack`), laid out as the
reference's nn.Sequential containers, so that variable
`params/model_down_seg/13/conv_block/1/kernel` is the reference's state-dict
entry `model_down_seg.13.conv_block.1.weight` (layered_jax.convert relies on
this). Reflection padding occupies its own index, as in the reference, and is
done by the convolution that follows it.

Computation is in `dtype` (float32 or bfloat16) with float32 parameters;
normalisation statistics and the outputs (images, flows, weights) are float32.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from layered_jax.models.layers import BatchNorm, Conv, Dtype, InstanceNorm, at_least_f32, leaky_relu, max_pool2x
from layered_jax.vid2vid.warp import flow_warp

Array = jax.Array

# Layer descriptions: ('reflect', p) pads the next conv's input; ('conv', features, kernel, stride, padding);
# ('up', features): 3x3 transposed conv, exactly 2x; 'norm'; 'res' (a residual block at the current width);
# activations 'relu', 'lrelu', 'tanh', 'sigmoid'; 'maxpool' (2x2).
Layer = Any
_ACTIVATIONS = {
    'relu': nn.relu,
    'lrelu': leaky_relu,
    'tanh': lambda x: jnp.tanh(at_least_f32(x)),  # network outputs are float32
    'sigmoid': lambda x: nn.sigmoid(at_least_f32(x)),
    'maxpool': max_pool2x,
}
FLOW_SCALE = 20.  # the flow head's output times this is the flow in pixels (times 2^s at local scale s)


def init_normal(stddev: float = 0.02, mean: float = 0.):
  """The reference's weights_init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)."""
  return lambda key, shape, dtype=jnp.float32: mean + stddev * jax.random.normal(key, shape, dtype)


class Stack(nn.Module):
  """Layers run in order; each one with variables is named by its index in `layers`.

  `taps`: return the outputs after these indices instead of the last output.
  """
  layers: Tuple[Layer, ...]
  norm: str = 'batch'  # 'batch' (batch statistics, affine) | 'instance' (no affine)
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  taps: Tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: Array):
    reflect = 0
    outputs = []
    for index, layer in enumerate(self.layers):
      name = str(index)
      kind = layer[0] if isinstance(layer, tuple) else layer
      if kind == 'reflect':
        reflect = layer[1]
      elif kind == 'conv':
        _, features, kernel, stride, padding = layer
        if reflect:
          padding = reflect
        x = Conv(features, kernel, stride, padding=padding, padding_mode='reflect' if reflect else 'zeros',
                 kernel_init=init_normal(), dtype=self.dtype, name=name)(x)
        reflect = 0
      elif kind == 'up':
        x = Conv(layer[1], 3, transpose=True, kernel_init=init_normal(), dtype=self.dtype, name=name)(x)
      elif kind == 'norm':
        if self.norm == 'batch':
          x = BatchNorm(self.axis_name, init_normal(mean=1.), name=name)(x)
        elif self.norm == 'instance':
          x = InstanceNorm(name=name)(x)
        else:
          raise ValueError(f"norm {self.norm!r}: use 'batch' or 'instance'")
      elif kind == 'res':
        x = ResnetBlock(self.norm, self.axis_name, self.dtype, name=name)(x)
      else:
        x = _ACTIVATIONS[kind](x)
      if index in self.taps:
        outputs.append(x)
    return outputs if self.taps else x


class ResnetBlock(nn.Module):
  """x + (reflect-pad 1, 3x3 conv, norm, ReLU, reflect-pad 1, 3x3 conv, norm)(x)."""
  norm: str = 'batch'
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    layers = (('reflect', 1), ('conv', c, 3, 1, 0), 'norm', 'relu', ('reflect', 1), ('conv', c, 3, 1, 0), 'norm')
    return x + Stack(layers, self.norm, self.axis_name, self.dtype, name='conv_block')(x)


def _encoder(features: int, n_down: int, n_res: int) -> Tuple[Layer, ...]:
  """C7(features) norm ReLU, then n_down x [3x3 stride-2 conv (2x channels) norm ReLU], then n_res blocks."""
  layers = [('reflect', 3), ('conv', features, 7, 1, 0), 'norm', 'relu']
  for i in range(n_down):
    layers += [('conv', features * 2 ** (i + 1), 3, 2, 1), 'norm', 'relu']
  return tuple(layers) + ('res',) * n_res


def _decoder(features: int, n_up: int, n_res: int = 0) -> Tuple[Layer, ...]:
  """n_res blocks, then n_up x [3x3 transposed conv, exactly 2x (half the channels) norm ReLU]."""
  layers = ['res'] * n_res
  for i in range(n_up):
    layers += [('up', features * 2 ** (n_up - 1 - i)), 'norm', 'relu']
  return tuple(layers)


def _head(features: int, activation: Optional[str]) -> Tuple[Layer, ...]:
  return (('reflect', 3), ('conv', features, 7, 1, 0)) + ((activation,) if activation else ())


class _GeneratorFields(nn.Module):
  """The fields every generator has (pass them by keyword)."""
  output_nc: int = 3
  fg: bool = False  # the foreground branch (street scenes), pasted under fg_mask
  no_flow: bool = False
  norm: str = 'batch'
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  def shared_fields(self) -> Dict[str, Any]:
    return {name: getattr(self, name) for name in ('output_nc', 'fg', 'no_flow', 'norm', 'axis_name', 'dtype')}

  def stack(self, layers: Tuple[Layer, ...], name: str) -> 'Stack':
    return Stack(layers, self.norm, self.axis_name, self.dtype, name=name)


class _Composite(_GeneratorFields):
  """What both generators share: the output heads, the flow warp and the foreground paste."""

  def heads(self, img_feat: Array, flow_feat: Optional[Array], flow_scale: float):
    raw = self.stack(_head(self.output_nc, 'tanh'), 'model_final_img')(img_feat)
    if flow_feat is None:
      return raw, None, None
    flow = at_least_f32(self.stack(_head(2, None), 'model_final_flow')(flow_feat)) * flow_scale
    weight = self.stack(_head(1, 'sigmoid'), 'model_final_w')(flow_feat)
    return raw, flow, weight

  @staticmethod
  def compose(raw: Array, flow: Optional[Array], weight: Optional[Array], prev: Array, use_raw_only: bool,
              fg: Optional[Array], fg_mask: Optional[Array]) -> Tuple[Array, Array]:
    """final = raw * w + warp(latest previous frame, flow) * (1 - w); the foreground pasted into both."""
    if use_raw_only is True or flow is None:
      final = raw
    else:  # use_raw_only may be a traced flag: one program for a clip's first chunk and the later ones
      warped = flow_warp(at_least_f32(prev[..., -raw.shape[-1]:]), flow)
      final = raw * weight + warped * (1 - weight)
      if use_raw_only is not False:
        final = jnp.where(use_raw_only, raw.astype(final.dtype), final)
    if fg is not None:
      if fg_mask is None:
        raise ValueError('a generator with the foreground branch (fg=True) needs fg_mask [B, H, W, 1]')
      final = fg * fg_mask + final * (1 - fg_mask)
      raw = fg * fg_mask + raw * (1 - fg_mask)
    return final, raw


def _outputs(final, raw, flow, weight, img_feat, flow_feat, fg_feat) -> Dict[str, Optional[Array]]:
  return {'final': final, 'raw': raw, 'flow': flow, 'weight': weight,
          'img_feat': img_feat, 'flow_feat': flow_feat, 'fg_feat': fg_feat}


class CompositeGenerator(_Composite):
  """The coarsest (global) generator of one frame: `netG composite` (vid2vid-spec section 2).

  apply(variables, labels [B,H,W,input_nc*tG], prev [B,H,W,3*(tG-1)], fg_mask=None, use_raw_only=False)
  -> {'final', 'raw' [B,H,W,3] in [-1,1]; 'flow' [B,H,W,2] in pixels; 'weight' [B,H,W,1];
      'img_feat', 'flow_feat', 'fg_feat': the features a finer scale adds (None where absent)}.
  labels and prev are stacked oldest first; H and W must be multiples of 2^n_downsample.
  """
  ngf: int = 128
  n_downsample: int = 3
  n_blocks: int = 9

  @nn.compact
  def __call__(self, labels: Array, prev: Array, fg_mask: Optional[Array] = None, use_raw_only: bool = False):
    check_size(labels, 2 ** self.n_downsample)
    stack = self.stack
    n, n_res = self.n_downsample, self.n_blocks - self.n_blocks // 2
    down = stack(_encoder(self.ngf, n, n_res), 'model_down_seg')(labels)
    if prev.shape[-1]:  # n_frames_G = 1 (a single-frame generator): no previous frames
      down = down + stack(_encoder(self.ngf, n, n_res), 'model_down_img')(prev)
    res = ('res',) * (self.n_blocks // 2)
    img_feat = stack(_decoder(self.ngf, n), 'model_up_img')(stack(res, 'model_res_img')(down))
    flow_feat = None
    if not self.no_flow:
      flow_feat = stack(_decoder(self.ngf, n), 'model_up_flow')(stack(res, 'model_res_flow')(down))
    raw, flow, weight = self.heads(img_feat, flow_feat, FLOW_SCALE)
    fg = fg_feat = None
    if self.fg:
      ngf_fg = fg_filters(self.ngf, n)
      fg_feat = stack(_decoder(ngf_fg, n), 'indv_up')(
          stack(('res',) * self.n_blocks, 'indv_res')(stack(_encoder(ngf_fg, n, 0), 'indv_down')(labels)))
      fg = stack(_head(self.output_nc, 'tanh'), 'indv_final')(fg_feat)
    final, raw = self.compose(raw, flow, weight, prev, use_raw_only, fg, fg_mask)
    return _outputs(final, raw, flow, weight, img_feat, flow_feat, fg_feat)


class CompositeLocalGenerator(_Composite):
  """A finer scale s >= 1 (`compositeLocal`): one 2x level whose bottleneck adds the coarser scale's features.

  apply(variables, labels, prev, coarse, fg_mask=None, use_raw_only=False), inputs as
  CompositeGenerator's at this scale's size, `coarse` the coarser scale's output
  dict; returns the same dict. ngf is the global ngf / 2^s; flows are FLOW_SCALE * 2^s
  times the head's output.
  """
  ngf: int = 64
  n_blocks_local: int = 3
  scale: int = 1
  n_downsample: int = 3  # the global generator's: the foreground branch is half as wide when it is > 2

  @nn.compact
  def __call__(self, labels: Array, prev: Array, coarse: Dict[str, Optional[Array]],
               fg_mask: Optional[Array] = None, use_raw_only: bool = False):
    check_size(labels, 2)
    stack = self.stack
    down = stack(_encoder(self.ngf, 1, 0), 'model_down_seg')(labels)
    if prev.shape[-1]:
      down = down + stack(_encoder(self.ngf, 1, 0), 'model_down_img')(prev)
    up = _decoder(self.ngf, 1, self.n_blocks_local)
    img_feat = stack(up, 'model_up_img')(down + coarse['img_feat'].astype(down.dtype))
    flow_feat = None
    if not self.no_flow:
      flow_feat = stack(up, 'model_up_flow')(down + coarse['flow_feat'].astype(down.dtype))
    raw, flow, weight = self.heads(img_feat, flow_feat, FLOW_SCALE * 2 ** self.scale)
    fg = fg_feat = None
    if self.fg:
      ngf_fg = fg_filters(self.ngf, self.n_downsample)
      fg_down = stack(_encoder(ngf_fg, 1, 0), 'indv_down')(labels)
      fg_feat = stack(_decoder(ngf_fg, 1, self.n_blocks_local), 'indv_up')(
          fg_down + coarse['fg_feat'].astype(fg_down.dtype))
      fg = stack(_head(self.output_nc, 'tanh'), 'indv_final')(fg_feat)
    final, raw = self.compose(raw, flow, weight, prev, use_raw_only, fg, fg_mask)
    return _outputs(final, raw, flow, weight, img_feat, flow_feat, fg_feat)


def fg_filters(ngf: int, n_downsample: int) -> int:
  """Width of the foreground branch: ngf / 2 when the generator downsamples more than twice."""
  return ngf // 2 if n_downsample > 2 else ngf


def check_size(x: Array, multiple: int) -> None:
  if x.shape[-3] % multiple or x.shape[-2] % multiple:
    raise ValueError(f'frames of {x.shape[-3]}x{x.shape[-2]} (HxW): both must be multiples of {multiple} '
                     '(2^(n_downsample_G + n_scales_spatial - 1)); resize or crop the video')


class Generator(_GeneratorFields):
  """The coarse-to-fine generator: netG0 (CompositeGenerator) then netG1..netG{S-1} (CompositeLocalGenerator).

  apply(variables, labels, prevs, fg_masks=None, use_raw_only=False): per scale s =
  0 (coarsest, 1/2^(S-1) of the size) .. S-1 (full size), labels[s] [B,Hs,Ws,input_nc*tG],
  prevs[s] [B,Hs,Ws,output_nc*(tG-1)] (that scale's own previous outputs) and fg_masks[s];
  returns each scale's output dict. `pyramid` makes the per-scale inputs.
  """
  input_nc: int = 3  # label channels per frame
  n_frames_G: int = 3  # tG: the labels of tG frames and the tG-1 previous outputs go in
  ngf: int = 128
  n_downsample: int = 3
  n_blocks: int = 9
  n_blocks_local: int = 3
  n_scales: int = 1

  @nn.compact
  def __call__(self, labels: Sequence[Array], prevs: Sequence[Array], fg_masks: Optional[Sequence[Array]] = None,
               use_raw_only: bool = False) -> List[Dict[str, Optional[Array]]]:
    if len(labels) != self.n_scales or len(prevs) != self.n_scales:
      raise ValueError(f'{len(labels)} label and {len(prevs)} previous-frame scales for {self.n_scales} scales')
    t_g = self.n_frames_G
    if labels[0].shape[-1] != self.input_nc * t_g:
      raise ValueError(f'labels have {labels[0].shape[-1]} channels; this generator takes input_nc * n_frames_G = '
                       f'{self.input_nc} * {t_g} (the labels of {t_g} frames stacked, oldest first)')
    if prevs[0].shape[-1] != self.output_nc * (t_g - 1):
      raise ValueError(f'previous frames have {prevs[0].shape[-1]} channels; this generator takes '
                       f'{self.output_nc} * {t_g - 1} (the last {t_g - 1} outputs stacked, oldest first)')
    fg_masks = fg_masks if fg_masks is not None else [None] * self.n_scales
    common = self.shared_fields()
    out = CompositeGenerator(ngf=self.ngf, n_downsample=self.n_downsample, n_blocks=self.n_blocks, name='netG0',
                             **common)(labels[0], prevs[0], fg_masks[0], use_raw_only)
    outputs = [out]
    for s in range(1, self.n_scales):
      out = CompositeLocalGenerator(ngf=self.ngf // 2 ** s, n_blocks_local=self.n_blocks_local, scale=s,
                                    n_downsample=self.n_downsample, name=f'netG{s}', **common)(
                                        labels[s], prevs[s], out, fg_masks[s], use_raw_only)
      outputs.append(out)
    return outputs

  def example_inputs(self, batch: int = 1) -> Tuple[List[Array], List[Array], Optional[List[Array]]]:
    """Zero inputs of the smallest size this generator takes (for init)."""
    sizes = [2 ** (self.n_downsample + s) for s in range(self.n_scales)]
    labels = [jnp.zeros((batch, h, h, self.input_nc * self.n_frames_G)) for h in sizes]
    prevs = [jnp.zeros((batch, h, h, self.output_nc * (self.n_frames_G - 1))) for h in sizes]
    masks = [jnp.zeros((batch, h, h, 1)) for h in sizes] if self.fg else None
    return labels, prevs, masks

  def pyramid(self, x: Array) -> List[Array]:
    """x [..., H, W, C] -> [coarsest, ..., x]: each level the 3x3 stride-2 average of the next."""
    levels = [x]
    for _ in range(self.n_scales - 1):
      levels.insert(0, downsample(levels[0]))
    return levels


def downsample(x: Array) -> Array:
  """3x3 average pooling, stride 2, padding 1, padding not counted (AvgPool2d(3, 2, 1, count_include_pad=False))."""
  lead = x.shape[:-3]
  x = x.reshape((-1,) + x.shape[-3:])
  window, strides, pads = (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, 0., lax.add, window, strides, pads)
  count = lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0., lax.add, window, strides, pads)
  y = total / count
  return y.reshape(lead + y.shape[1:])


def _patch_blocks(ndf: int, n_layers: int) -> List[Tuple[Layer, ...]]:
  """PatchGAN blocks: conv(ndf, s2) LReLU; (n_layers-1) x [conv(2x, s2) norm LReLU]; conv(2x, s1) norm LReLU; conv(1)."""
  blocks = [(('conv', ndf, 4, 2, 2), 'lrelu')]
  nf = ndf
  for n in range(1, n_layers + 1):
    nf = min(nf * 2, 512)
    blocks.append((('conv', nf, 4, 2 if n < n_layers else 1, 2), 'norm', 'lrelu'))
  blocks.append((('conv', 1, 4, 1, 2),))
  return blocks


def _run_blocks(blocks, names, x, norm, axis_name, dtype) -> List[Array]:
  features = []
  for layers, name in zip(blocks, names):
    x = Stack(layers, norm, axis_name, dtype, name=name)(x)
    features.append(at_least_f32(x))
  return features


class _PatchGANFields(nn.Module):
  ndf: int = 64
  n_layers: int = 3
  norm: str = 'batch'
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32


class NLayerDiscriminator(_PatchGANFields):
  """PatchGAN (kernel 4, padding 2): apply(variables, x [B,H,W,C]) -> the n_layers + 2 blocks' outputs, last = scores."""

  @nn.compact
  def __call__(self, x: Array) -> List[Array]:
    blocks = _patch_blocks(self.ndf, self.n_layers)
    names = [f'model{j}' for j in range(len(blocks))]
    return _run_blocks(blocks, names, x.astype(self.dtype), self.norm, self.axis_name, self.dtype)


class MultiscaleDiscriminator(_PatchGANFields):
  """num_D PatchGANs on the input and its 3x3-average-pooled halvings.

  apply(variables, x) -> [features at full size, at 1/2, ...], each the list of a
  PatchGAN's block outputs. The input halved k times goes to a PatchGAN of
  min(64, ndf * 2^k) filters whose variables are `scale{num_D-1-k}_layer{j}`, as the
  reference names them.
  """
  num_D: int = 2

  @nn.compact
  def __call__(self, x: Array) -> List[List[Array]]:
    results = []
    x = x.astype(self.dtype)
    for i in range(self.num_D):
      blocks = _patch_blocks(min(64, self.ndf * 2 ** i), self.n_layers)
      names = [f'scale{self.num_D - 1 - i}_layer{j}' for j in range(len(blocks))]
      results.append(_run_blocks(blocks, names, x, self.norm, self.axis_name, self.dtype))
      if i != self.num_D - 1:
        x = downsample(x)
    return results


# torchvision's vgg19().features up to relu5_1 (index 29): convs 3x3 padding 1, ReLUs, 2x2 max pools.
_VGG_WIDTHS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512,))
VGG_TAPS = (1, 6, 11, 20, 29)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1


def vgg19_layers() -> Tuple[Layer, ...]:
  layers = []
  for i, widths in enumerate(_VGG_WIDTHS):
    if i:
      layers.append('maxpool')
    for width in widths:
      layers += [('conv', width, 3, 1, 1), 'relu']
  return tuple(layers)


class VGG19(nn.Module):
  """torchvision's VGG19 feature stack to relu5_1: apply(variables, x [B,H,W,3]) -> the 5 tapped activations.

  Variables `features/N/kernel` are torchvision's `features.N.weight`.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> List[Array]:
    return Stack(vgg19_layers(), dtype=self.dtype, taps=VGG_TAPS, name='features')(x.astype(self.dtype))
