"""The reference's "trampoline" video: several people on a trampoline, its deformation (datasets/trampoline)."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataroot = 'datasets/trampoline'
  config.batch_size = 16  # as the reference's run script: many layers
  config.batch_size_upsample = 6
  return config
