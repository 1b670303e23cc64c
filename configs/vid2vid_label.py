"""Label maps -> street scenes at 512x1024 (the reference's scripts/street/train_512.sh): Cityscapes' 35
classes with instance edges, the foreground branch on its object classes, 2 spatial scales after a global one
is trained at 256 (--config.init_checkpoint)."""

from configs import vid2vid_default


def get_config():
  config = vid2vid_default.get_config()
  config.label_nc = 35
  config.use_instance = True
  config.fg = True
  config.fg_labels = (26,)  # Cityscapes' car; the dataset's fg_labels are used when it records them
  config.flip = True
  config.loadSize = 512
  config.fineSize = 512
  config.n_scales_spatial = 2
  config.n_downsample_G = 3
  config.num_D = 3
  config.max_frames_per_gpu = 2
  config.n_frames_total = 30
  config.niter = 10
  config.niter_decay = 10
  config.niter_fix_global = 10
  config.lr = 1e-4
  return config
