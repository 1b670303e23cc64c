"""An independent implementation of spec section 2 (IUV PNGs -> network inputs), for parity tests.

Reads with PIL, computes with PyTorch and SciPy in NCHW as the spec words it;
returns NHWC-ordered arrays to compare with data_prep.
"""

import json
import os

import numpy as np
import torch
from PIL import Image
from scipy import ndimage


def _background_uv(w, h, homography=None, size=None, bounds=None):
  u = torch.linspace(0, 1, w).repeat(h, 1)
  v = torch.linspace(0, 1, h)[:, None].repeat(1, w)
  if homography is None:
    return torch.stack([u, v])
  pts = torch.stack([u.reshape(-1) * size[0], v.reshape(-1) * size[1], torch.ones(h * w)]).double()
  world = torch.linalg.inv(torch.from_numpy(homography)) @ pts
  x = (world[0] / world[2] - bounds[0]) / (bounds[1] - bounds[0])
  y = (world[1] / world[2] - bounds[2]) / (bounds[3] - bounds[2])
  return torch.stack([x.reshape(h, w), y.reshape(h, w)]).float()


def reference_frame(video_dir, index, band=20, homographies=None):
  meta = json.load(open(os.path.join(video_dir, 'metadata.json')))
  n_tex = meta['n_textures']
  w, h = meta['size_LR']
  name = sorted(os.listdir(os.path.join(video_dir, 'rgb_256')))[index]
  order = meta.get('composite_order', [sorted(int(d) for d in os.listdir(os.path.join(video_dir, 'iuv')))] * 10**6)
  bg = _background_uv(w, h, *((homographies[0][index], homographies[1], homographies[2]) if homographies else ()))
  uvs, masks, pids = [], [], []
  bg_atlas = bg.clone()
  bg_atlas[0] /= n_tex
  uvs.append(torch.clamp(bg_atlas * 2 - 1, -1, 1))
  masks.append(-torch.ones(h, w))
  pids.append(torch.zeros(h, w))
  for layer in order[index]:
    iuv = torch.from_numpy(np.array(Image.open(os.path.join(video_dir, 'iuv', f'{layer:02d}', name)).convert('RGBA')))
    iuv = iuv.permute(2, 0, 1).float() / 255
    part = torch.clamp((iuv[0] * 255 / 10).round(), max=24)
    fg = (part > 0).float()
    pid = torch.clamp((255 - 255 * iuv[3]).round() * fg, max=n_tex // 24)
    tex = part + fg * 24 * (pid - 1)
    uv = iuv[1:3].clone()
    uv[0] += tex
    is_bg = (tex == 0).float()
    uv = is_bg * bg + (1 - is_bg) * uv
    uv[0] /= n_tex
    uvs.append(torch.clamp(uv * 2 - 1, -1, 1))
    eroded = ndimage.minimum_filter(is_bg.numpy(), size=band, mode='constant', cval=1.)
    masks.append(fg - torch.from_numpy(eroded))
    pids.append(pid)
  uv = torch.stack(uvs).permute(0, 2, 3, 1).numpy()
  return uv, torch.stack(masks).numpy(), torch.stack(pids).numpy()
