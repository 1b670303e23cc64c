"""The reference's "splash" video: people jumping into a pool, splashes (datasets/splash)."""

from configs import default


def get_config():
  config = default.get_config()
  config.dataroot = 'datasets/splash'
  config.batch_size = 24  # as the reference's run script
  config.batch_size_upsample = 12
  config.use_mask_images = True  # custom masks for the splashing people
  return config
