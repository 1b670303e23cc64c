"""An independent PyTorch definition of vid2vid's networks, losses and chunk step, written from vid2vid-spec.md.

NCHW, frame by frame, as the spec describes, so that the Flax version can be
checked against it. The containers are laid out so that the state dicts have
the key names of the reference's released checkpoints (latest_net_G0.pth ...,
`model_down_seg.1.weight`, ...) and of torchvision's vgg19 (`features.N.weight`):
the converter is tested on checkpoints saved from here. Used by the vid2vid
parity and converter tests and by benchmarks/vid2vid_step.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(net):
  """Conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0; conv biases keep PyTorch's init."""
  for m in net.modules():
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
      nn.init.normal_(m.weight, 0., 0.02)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1., 0.02)
      nn.init.zeros_(m.bias)
  return net


def norm_layer(norm, channels):
  if norm == 'batch':
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
  return nn.InstanceNorm2d(channels, affine=False, track_running_stats=True)


class ResnetBlock(nn.Module):
  def __init__(self, channels, norm):
    super().__init__()
    half = lambda: [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels)]
    self.conv_block = nn.Sequential(*half(), nn.ReLU(), *half())

  def forward(self, x):
    return x + self.conv_block(x)


def c7(cin, cout):
  return [nn.ReflectionPad2d(3), nn.Conv2d(cin, cout, 7)]


def encoder(cin, ngf, n_down, n_res, norm):
  layers = c7(cin, ngf) + [norm_layer(norm, ngf), nn.ReLU()]
  for i in range(n_down):
    c = ngf * 2 ** i
    layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm_layer(norm, 2 * c), nn.ReLU()]
  return layers + [ResnetBlock(ngf * 2 ** n_down, norm) for _ in range(n_res)]


def decoder(ngf, n_up, n_res, norm):
  layers = [ResnetBlock(ngf * 2 ** n_up, norm) for _ in range(n_res)]
  for i in range(n_up, 0, -1):
    c = ngf * 2 ** i
    layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), norm_layer(norm, c // 2),
               nn.ReLU()]
  return layers


def head(cin, cout, act):
  return nn.Sequential(*c7(cin, cout), *([act] if act is not None else []))


def warp(image, flow):
  """image[y + dy, x + dx], bilinear, border: grid_sample(align_corners=True) on a linspace grid + flow."""
  b, _, h, w = image.shape
  xs = torch.linspace(-1, 1, w, dtype=flow.dtype).view(1, 1, w).expand(b, h, w)
  ys = torch.linspace(-1, 1, h, dtype=flow.dtype).view(1, h, 1).expand(b, h, w)
  grid = torch.stack([xs + flow[:, 0] / ((w - 1) / 2), ys + flow[:, 1] / ((h - 1) / 2)], dim=-1)
  return F.grid_sample(image, grid, mode='bilinear', padding_mode='border', align_corners=True)


class _Composite(nn.Module):
  def _heads(self, ngf, no_flow, fg, ngf_fg):
    self.model_final_img = head(ngf, 3, nn.Tanh())
    if not no_flow:
      self.model_final_flow = head(ngf, 2, None)
      self.model_final_w = head(ngf, 1, nn.Sigmoid())
    if fg:
      self.indv_final = head(ngf_fg, 3, nn.Tanh())

  def _compose(self, img_feat, flow_feat, fg_feat, prev, mask, use_raw_only, flow_scale):
    raw = self.model_final_img(img_feat)
    flow = weight = None
    final = raw
    if flow_feat is not None:
      flow = self.model_final_flow(flow_feat) * flow_scale
      weight = self.model_final_w(flow_feat)
      if not use_raw_only:
        final = raw * weight + warp(prev[:, -3:], flow) * (1 - weight)
    if fg_feat is not None:
      fg = self.indv_final(fg_feat)
      final = fg * mask + final * (1 - mask)
      raw = fg * mask + raw * (1 - mask)
    return {'final': final, 'raw': raw, 'flow': flow, 'weight': weight,
            'img_feat': img_feat, 'flow_feat': flow_feat, 'fg_feat': fg_feat}


class CompositeGenerator(_Composite):
  """Spec section 2, one scale: label and image encoders summed, image and flow branches, optional foreground."""

  def __init__(self, input_nc, prev_nc, ngf=128, n_down=3, n_blocks=9, fg=False, no_flow=False, norm='batch'):
    super().__init__()
    n_res = n_blocks - n_blocks // 2
    self.model_down_seg = nn.Sequential(*encoder(input_nc, ngf, n_down, n_res, norm))
    self.model_down_img = nn.Sequential(*encoder(prev_nc, ngf, n_down, n_res, norm))
    branches = ['img'] + ([] if no_flow else ['flow'])
    for name in branches:
      setattr(self, f'model_res_{name}', nn.Sequential(*[ResnetBlock(ngf * 2 ** n_down, norm)
                                                        for _ in range(n_blocks // 2)]))
      setattr(self, f'model_up_{name}', nn.Sequential(*decoder(ngf, n_down, 0, norm)))
    ngf_fg = ngf // 2 if n_down > 2 else ngf
    if fg:
      self.indv_down = nn.Sequential(*encoder(input_nc, ngf_fg, n_down, 0, norm))
      self.indv_res = nn.Sequential(*[ResnetBlock(ngf_fg * 2 ** n_down, norm) for _ in range(n_blocks)])
      self.indv_up = nn.Sequential(*decoder(ngf_fg, n_down, 0, norm))
    self.no_flow, self.fg = no_flow, fg
    self._heads(ngf, no_flow, fg, ngf_fg)
    init_weights(self)

  def forward(self, labels, prev, mask=None, coarse=None, use_raw_only=False):
    down = self.model_down_seg(labels) + self.model_down_img(prev)
    img_feat = self.model_up_img(self.model_res_img(down))
    flow_feat = None if self.no_flow else self.model_up_flow(self.model_res_flow(down))
    fg_feat = self.indv_up(self.indv_res(self.indv_down(labels))) if self.fg else None
    return self._compose(img_feat, flow_feat, fg_feat, prev, mask, use_raw_only, 20.)


class CompositeLocalGenerator(_Composite):
  """Spec section 2, a finer scale s: one 2x level; the coarser scale's features join before the up path."""

  def __init__(self, input_nc, prev_nc, ngf, n_blocks_local=3, scale=1, n_down=3, fg=False, no_flow=False,
               norm='batch'):
    super().__init__()
    self.model_down_seg = nn.Sequential(*encoder(input_nc, ngf, 1, 0, norm))
    self.model_down_img = nn.Sequential(*encoder(prev_nc, ngf, 1, 0, norm))
    self.model_up_img = nn.Sequential(*decoder(ngf, 1, n_blocks_local, norm))
    if not no_flow:
      self.model_up_flow = nn.Sequential(*decoder(ngf, 1, n_blocks_local, norm))
    ngf_fg = ngf // 2 if n_down > 2 else ngf
    if fg:
      self.indv_down = nn.Sequential(*encoder(input_nc, ngf_fg, 1, 0, norm))
      self.indv_up = nn.Sequential(*decoder(ngf_fg, 1, n_blocks_local, norm))
    self.no_flow, self.fg, self.scale = no_flow, fg, scale
    self._heads(ngf, no_flow, fg, ngf_fg)
    init_weights(self)

  def forward(self, labels, prev, mask=None, coarse=None, use_raw_only=False):
    down = self.model_down_seg(labels) + self.model_down_img(prev)
    img_feat = self.model_up_img(down + coarse['img_feat'])
    flow_feat = None if self.no_flow else self.model_up_flow(down + coarse['flow_feat'])
    fg_feat = self.indv_up(self.indv_down(labels) + coarse['fg_feat']) if self.fg else None
    return self._compose(img_feat, flow_feat, fg_feat, prev, mask, use_raw_only, 20. * 2 ** self.scale)


def downsample(x):
  return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


class MultiscaleDiscriminator(nn.Module):
  """Spec section 3: num_D PatchGANs (kernel 4, padding 2), every block's output returned."""

  def __init__(self, input_nc, ndf=64, n_layers=3, num_D=2, norm='batch'):
    super().__init__()
    self.num_D, self.n_blocks = num_D, n_layers + 2
    for i in range(num_D):
      width = min(64, ndf * 2 ** (num_D - 1 - i))
      blocks = [[nn.Conv2d(input_nc, width, 4, 2, 2), nn.LeakyReLU(0.2)]]
      c = width
      for n in range(1, n_layers + 1):
        c_next = min(2 * c, 512)
        blocks.append([nn.Conv2d(c, c_next, 4, 2 if n < n_layers else 1, 2), norm_layer(norm, c_next),
                       nn.LeakyReLU(0.2)])
        c = c_next
      blocks.append([nn.Conv2d(c, 1, 4, 1, 2)])
      for j, block in enumerate(blocks):
        setattr(self, f'scale{i}_layer{j}', nn.Sequential(*block))
    init_weights(self)

  def forward(self, x):
    results = []
    for i in range(self.num_D):
      features = []
      h = x
      for j in range(self.n_blocks):
        h = getattr(self, f'scale{self.num_D - 1 - i}_layer{j}')(h)
        features.append(h)
      results.append(features)
      x = downsample(x)
    return results


VGG_CONVS = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')


class VGG19(nn.Module):
  """torchvision's vgg19().features (same indices, so the same state-dict keys); forward taps relu1_1..relu5_1."""

  def __init__(self):
    super().__init__()
    layers, c = [], 3
    for v in VGG_CONVS:
      if v == 'M':
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
        c = v
    self.features = nn.Sequential(*layers)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0., math.sqrt(2. / (m.in_channels * 9)))
        nn.init.normal_(m.bias, 0., 0.1)
    self.requires_grad_(False)  # a fixed feature extractor: gradients flow to its input only

  def forward(self, x):
    taps = []
    for i, layer in enumerate(self.features[:30]):
      x = layer(x)
      if i in (1, 6, 11, 20, 29):
        taps.append(x)
    return taps


# Losses (spec section 4).

def lsgan(predictions, real):
  return sum(F.mse_loss(p[-1], torch.full_like(p[-1], 1. if real else 0.)) for p in predictions)


def feature_matching(fake, real, n_layers_D, num_D, lambda_feat):
  total = 0.
  for i in range(min(len(fake), num_D)):
    for j in range(len(fake[i]) - 1):
      total = total + (1. / num_D) * (4. / (n_layers_D + 1)) * F.l1_loss(fake[i][j], real[i][j].detach()) * lambda_feat
  return total


def masked_l1(a, b, mask):
  mask = mask.expand_as(a)
  return F.l1_loss(a * mask, b * mask)


def vgg_loss(vgg, fake, real):
  weights = (1. / 32, 1. / 16, 1. / 8, 1. / 4, 1.)
  return sum(w * F.l1_loss(f, r.detach()) for w, f, r in zip(weights, vgg(fake), vgg(real)))


def multiscale_l1(a, b, mask=None):
  total = 0.
  for i, w in enumerate((1., 0.5, 0.25, 0.125, 0.125)):
    if i:
      a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
      mask = None if mask is None else F.avg_pool2d(mask, 2)
    total = total + w * (F.l1_loss(a, b) if mask is None else masked_l1(a, b, mask))
  return total


# One chunk (spec sections 4 and 5), frames in time order; tensors [B, T, C, H, W].

def _fold(x):
  return x.reshape((-1,) + tuple(x.shape[2:]))


def _gan(disc, real_in, fake_in, opts):
  pred_real = disc(real_in)
  d_real = lsgan(pred_real, True)
  d_fake = lsgan(disc(fake_in.detach()), False)
  pred_fake = disc(fake_in)
  g_feat = feature_matching(pred_fake, pred_real, opts['n_layers_D'], opts['num_D'], opts['lambda_feat'])
  return d_real, d_fake, lsgan(pred_fake, True), g_feat


def chain_flows(flows, a, b):
  """The flow from frame a to frame b from consecutive backward flows flows[:, j] (j-1 -> j)."""
  total = flows[:, b]
  for j in range(b - 1, a, -1):
    total = total + warp(flows[:, j], total)
  return total


def chunk_losses(nets, batch, prev, last, history, opts, use_raw_only=False):
  """The loss terms of one chunk for a single-scale generator, as the reference computes them."""
  generator, disc, temporal, vgg = nets
  t_g, t_d = opts['n_frames_G'], opts['n_frames_D']
  labels, real_all = batch['inputs'], batch['frames']
  n_frames = labels.shape[1] - (t_g - 1)
  b, _, _, h, w = labels.shape
  outputs = {k: [] for k in ('final', 'raw', 'flow', 'weight')}
  for t in range(n_frames):
    out = generator(labels[:, t:t + t_g].reshape(b, -1, h, w), prev.detach().reshape(b, -1, h, w),
                    use_raw_only=use_raw_only)
    for k in outputs:
      outputs[k].append(out[k])
    prev = torch.cat([prev[:, 1:], out['final'].detach()[:, None]], dim=1)
  final, raw, flow, weight = (torch.stack(outputs[k], 1) for k in ('final', 'raw', 'flow', 'weight'))
  real, real_prev = real_all[:, t_g - 1:], real_all[:, t_g - 2:-1]
  cur_labels = labels[:, t_g - 1:]
  flow_ref, conf = _fold(batch['flow']), _fold(batch['conf'])
  terms = {}
  terms['F_Flow'] = masked_l1(_fold(flow), flow_ref, conf) * opts['lambda_F']
  terms['F_Warp'] = masked_l1(warp(_fold(real_prev), _fold(flow)), _fold(real), conf) * opts['lambda_T']
  terms['W'] = masked_l1(_fold(weight), torch.zeros_like(_fold(weight)), conf) if opts['no_first_img'] else 0.
  terms['G_VGG'] = 0. if vgg is None else \
      (vgg_loss(vgg, _fold(final), _fold(real)) + vgg_loss(vgg, _fold(raw), _fold(real))) * opts['lambda_feat']
  real_ab = torch.cat([_fold(cur_labels), _fold(real)], 1)
  d_real = d_fake = g_gan = g_feat = 0.
  for fake in (final, raw):
    terms_i = _gan(disc, real_ab, torch.cat([_fold(cur_labels), _fold(fake)], 1), opts)
    d_real, d_fake, g_gan, g_feat = (x + y for x, y in zip((d_real, d_fake, g_gan, g_feat), terms_i))
  terms.update(D_real=d_real, D_fake=d_fake, G_GAN=g_gan, G_GAN_Feat=g_feat)
  fake_prev = torch.cat([last[:, None], final[:, :-1].detach()], 1)
  terms['G_Warp'] = masked_l1(_fold(final), warp(_fold(fake_prev), flow_ref).detach(), conf) * opts['lambda_T']
  # Temporal discriminators: groups of tD frames tD^s apart, ending at the newest frame, every tD frames.
  seq_real = torch.cat([history['real'], real], 1)
  seq_fake = torch.cat([history['fake'].detach(), final], 1)
  seq_flow = torch.cat([history['flow'], batch['flow']], 1)
  length = seq_real.shape[1]
  loss_d_t = []
  for s, disc_t in enumerate(temporal):
    step = t_d ** s
    span = step * (t_d - 1)
    n = min(length - span, n_frames)
    if n <= 0:
      break
    ins = {'real': [], 'fake': []}
    for t in range(0, n, t_d):
      idx = list(range(length - 1 - t - span, length - t, step))
      flows = torch.cat([chain_flows(seq_flow, a, c) for a, c in zip(idx[:-1], idx[1:])], 1) / 20.
      for key, seq in (('real', seq_real), ('fake', seq_fake)):
        ins[key].append(torch.cat([seq[:, idx].reshape(b, -1, h, w), flows], 1))
    d_real, d_fake, g_gan, g_feat = _gan(disc_t, torch.cat(ins['real']), torch.cat(ins['fake']), opts)
    terms.update({f'D_T_real{s}': d_real, f'D_T_fake{s}': d_fake, f'G_T_GAN{s}': g_gan, f'G_T_GAN_Feat{s}': g_feat})
    loss_d_t.append(0.5 * (d_real + d_fake))
  generator_terms = ['G_GAN', 'G_GAN_Feat', 'G_VGG', 'G_Warp', 'F_Flow', 'F_Warp', 'W']
  generator_terms += [f'{name}{s}' for s in range(len(loss_d_t)) for name in ('G_T_GAN', 'G_T_GAN_Feat')]
  terms['loss_G'] = sum(terms[name] for name in generator_terms)
  terms['loss_D'] = (terms['D_fake'] + terms['D_real']) * 0.5
  terms.update({f'loss_D_T{s}': loss for s, loss in enumerate(loss_d_t)})
  return terms
