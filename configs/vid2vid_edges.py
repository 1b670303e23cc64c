"""Edge maps -> faces at 512 (the reference's scripts/face/train_512.sh): Canny edges, one input channel."""

from configs import vid2vid_default


def get_config():
  config = vid2vid_default.get_config()
  config.input_nc = 1
  config.fineSize = 512
  config.loadSize = 512
  config.n_scales_spatial = 2
  config.num_D = 3
  config.ngf = 64
  config.max_frames_per_gpu = 6
  config.n_frames_total = 12
  config.niter = 20
  config.niter_decay = 20
  return config
