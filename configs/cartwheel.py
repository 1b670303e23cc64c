"""The reference's "cartwheel" video: a moving camera, background UVs from homographies.txt."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataroot = 'datasets/cartwheel'
  config.use_homographies = True
  return config
