"""An independent PyTorch definition of the reference networks, written from lnr-spec.md.

NCHW, one layer at a time and compositing in a loop, exactly as the spec
describes, so the Flax port can be checked against it. Module names give the
same state-dict keys as the reference's checkpoints (latest_net_LNR.pth,
kp2uv.pth), which lets the converter be tested on checkpoints saved from here.
Used by the parity tests and by benchmarks/train_step.py.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _pad_same(x, kernel, stride, dilation):
  """Reference "same" padding: output = input // stride, floor before, ceil after."""
  pads = []
  for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
    out = size // stride
    total = stride * (out - 1) + (kernel - 1) * (dilation - 1) + kernel - size
    pads += [math.floor(total / 2), math.ceil(total / 2)]
  return F.pad(x, pads)


class Block(nn.Module):
  """conv (or k4 s2 transposed conv cropped to 2x) + optional norm + activation."""

  def __init__(self, cin, cout, k, stride=1, dilation=1, transpose=False, norm=None, act='relu'):
    super().__init__()
    self.k, self.stride, self.dilation, self.transpose = k, stride, dilation, transpose
    if transpose:
      self.conv = nn.ConvTranspose2d(cin, cout, k, stride)
    else:
      self.conv = nn.Conv2d(cin, cout, k, stride, dilation=dilation)
    if norm == 'bn':
      self.norm = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    elif norm == 'in':
      self.norm = nn.InstanceNorm2d(cout, eps=1e-5)
    else:
      self.norm = None
    self.act = {'relu': nn.ReLU(), 'leaky': nn.LeakyReLU(0.2), 'tanh': nn.Tanh(), None: nn.Identity()}[act]

  def forward(self, x):
    if self.transpose:
      h, w = x.shape[-2:]
      y = self.conv(x)
      dh, dw = y.shape[-2] - 2 * h, y.shape[-1] - 2 * w
      y = y[:, :, dh // 2:dh // 2 + 2 * h, dw // 2:dw // 2 + 2 * w]
    else:
      y = self.conv(_pad_same(x, self.k, self.stride, self.dilation))
    if self.norm is not None:
      y = self.norm(y)
    return self.act(y)


def _encoder(cin, nf, norm, k_bottleneck, d_bottleneck):
  return nn.ModuleList([
      Block(cin, nf, 4, 2),
      Block(nf, 2 * nf, 4, 2, norm=norm, act='leaky'),
      Block(2 * nf, 4 * nf, 4, 2, norm=norm, act='leaky'),
      Block(4 * nf, 4 * nf, 4, 2, norm=norm, act='leaky'),
      Block(4 * nf, 4 * nf, 4, 2, norm=norm, act='leaky'),
      Block(4 * nf, 4 * nf, k_bottleneck, 1, d_bottleneck, norm=norm, act='leaky'),
      Block(4 * nf, 4 * nf, k_bottleneck, 1, d_bottleneck, norm=norm, act='leaky'),
  ])


def _decoder(nf, norm):
  sizes = [(8 * nf, 4 * nf), (8 * nf, 4 * nf), (8 * nf, 2 * nf), (4 * nf, nf), (2 * nf, nf)]
  return nn.ModuleList([Block(i, o, 4, 2, transpose=True, norm=norm) for i, o in sizes])


def _run_unet(encoder, decoder, x):
  feats = []
  for block in encoder:
    x = block(x)
    feats.append(x)
  x = feats[6]
  for j, block in enumerate(decoder):
    x = block(torch.cat([x, feats[4 - j]], 1))
  return x


class ResidualBlock(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.convblock1 = Block(c, c, 3, norm='in')
    self.convblock2 = Block(c, c, 3, norm='in', act=None)

  def forward(self, x):
    return x + self.convblock2(self.convblock1(x))


class TorchLNR(nn.Module):
  """Layered neural renderer. forward(uv [B,2L,H,W], pids [B,L,H,W], uv_hr=None, crop=None)."""

  def __init__(self, nf=64, texture_channels=16, texture_res=16, n_textures=25):
    super().__init__()
    self.texture = nn.Parameter(torch.randn(1, texture_channels, texture_res, texture_res * n_textures))
    self.encoder = _encoder(texture_channels + 1, nf, 'bn', 4, 2)
    self.decoder = _decoder(nf, 'bn')
    self.final_rgba = Block(nf, 4, 4, act='tanh')
    self.upsample_block = nn.Sequential(
        Block(texture_channels + 5 + nf, nf, 3, norm='in'),
        ResidualBlock(nf), ResidualBlock(nf), ResidualBlock(nf),
        Block(nf, 4, 3, act=None))

  def forward(self, uv, pids, uv_hr=None, crop=None):
    texture = self.texture.expand(uv.shape[0], -1, -1, -1)
    layers = []
    for i in range(pids.shape[1]):
      grid = uv[:, 2 * i:2 * i + 2].permute(0, 2, 3, 1)
      sampled = F.grid_sample(texture, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
      last = _run_unet(self.encoder, self.decoder, torch.cat([sampled, pids[:, i:i + 1]], 1))
      rgba = self.final_rgba(last)
      if uv_hr is not None:
        grid_hr = uv_hr[:, 2 * i:2 * i + 2].permute(0, 2, 3, 1)
        sampled_hr = F.grid_sample(texture, grid_hr, mode='bilinear', padding_mode='zeros', align_corners=False)
        size = sampled_hr.shape[-2:]
        up = lambda t: F.interpolate(t, size=size, mode='bilinear', align_corners=False)
        rgba, last, pid_hr = up(rgba), up(last), up(pids[:, i:i + 1])
        inputs = torch.cat([rgba, sampled_hr, pid_hr, last], 1)
        if crop is not None:
          y, x, s = crop
          inputs = inputs[:, :, y:y + s, x:x + s]
          rgba = rgba[:, :, y:y + s, x:x + s]
        rgba = torch.clamp(rgba + 0.01 * self.upsample_block(inputs), -1, 1)
      layers.append(rgba)
    comp = layers[0]
    for rgba in layers[1:]:
      a = rgba[:, 3:4] * 0.5 + 0.5
      comp = rgba * a + comp * (1 - a)
    return {'reconstruction': comp, 'layers': torch.stack(layers, 1)}


class TorchKp2UV(nn.Module):
  """forward(image [B,3,256,256]) -> (part logits [B,25,H,W], uv [B,48,H,W])."""

  def __init__(self, nf=64):
    super().__init__()
    self.encoder = _encoder(3, nf, 'in', 3, 1)
    self.decoder = _decoder(nf, 'in')
    self.id_pred = Block(nf + 3, 25, 3, act=None)
    self.uv_pred = Block(nf + 3, 48, 3, act='tanh')

  def forward(self, image):
    x = torch.cat([_run_unet(self.encoder, self.decoder, image), image], 1)
    return self.id_pred(x), self.uv_pred(x)


def reconstruction_losses(out, target, trimap, lambda_alpha_l1=0.01, lambda_alpha_l0=0.005, lambda_mask=50.):
  """Spec section 4, low-res stage: (total, recon, alpha_reg, mask). trimap [B,L,H,W]."""
  recon = (out['reconstruction'][:, :3] - target).abs().mean()
  a = out['reconstruction'][:, 3] * 0.5 + 0.5
  alpha_reg = lambda_alpha_l1 * a.mean() + lambda_alpha_l0 * ((torch.sigmoid(5 * a) - 0.5) * 2).mean()
  err = (out['layers'][:, :, 3] - trimap).abs()
  pos, neg = F.relu(trimap), F.relu(-trimap)
  mask = lambda_mask * 0.5 * ((pos * err).sum() / (1 + pos.sum()) + (neg * err).sum() / (1 + neg.sum()))
  return recon + alpha_reg + mask, recon, alpha_reg, mask
