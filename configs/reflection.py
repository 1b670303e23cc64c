"""The reference's "reflection" video: 2 people, reflections in the floor (datasets/reflection)."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataroot = 'datasets/reflection'
  return config
