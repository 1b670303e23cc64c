"""Pose -> body at 256 high (the reference's scripts/pose/train_256p.sh): DensePose + OpenPose inputs, 6 channels."""

from configs import vid2vid_default


def get_config():
  config = vid2vid_default.get_config()
  config.input_nc = 6  # DensePose IUV (3) then the skeleton render (3), both in [-1, 1]
  config.num_D = 2
  config.no_first_img = True
  config.batch_size = 8
  config.max_frames_per_gpu = 3
  config.n_frames_total = 12
  config.max_t_step = 4
  config.loadSize = 384
  config.fineSize = 256
  config.center_crop = True  # the reference keeps the central half of landscape frames
  config.niter = 5
  config.niter_decay = 5
  return config
