"""transforms.ToTensor as torchvision defines it: HWC uint8 PIL image -> CHW float tensor in [0, 1]."""
import numpy as np
import torch


class ToTensor:

  def __call__(self, picture):
    array = np.array(picture, copy=True)
    if array.ndim == 2:
      array = array[:, :, None]
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()
