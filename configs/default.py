"""Every hyperparameter of the reference (spec section 4), named as its command-line options.

Video configs start from this one: `config = default.get_config()` then override.
Any field can be set on the command line: --config.lr=5e-4.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = 'train_and_export'  # 'train' | 'export' | 'train_and_export'
  config.dataroot = ''  # the video folder (spec section 1 layout)
  config.data_dir = ''  # where its TFDS dataset is built; default WORKDIR/data
  config.synthetic = ml_collections.ConfigDict()  # configs/demo.py only: generate dataroot if it is missing
  config.seed = 0

  # Model.
  config.num_filters = 64
  config.texture_res = 16
  config.texture_channels = 16
  config.dtype = 'float32'  # compute dtype; 'bfloat16' on GPU/TPU (parameters stay float32)
  config.init_checkpoint = ''  # a converted reference checkpoint (layered_jax.convert --kind=lnr) to start from

  # Low-resolution stage.
  config.n_epochs = 2000
  config.batch_size = 32  # global, split over all devices
  config.lr = 1e-3  # Adam, betas (0.9, 0.999), constant
  config.lambda_alpha_l1 = 0.01
  config.lambda_alpha_l0 = 0.005
  config.alpha_l1_rolloff_epoch = 200  # lambda_alpha_l1 -> 0 from this epoch
  config.lambda_mask = 50.
  config.mask_thresh = 0.02  # roll the mask loss off once it is below mask_thresh * lambda_mask
  config.mask_loss_rolloff_epoch = -1  # < 0: decided by mask_thresh
  config.jitter_rgb = 0.2
  config.jitter_epochs = 400
  config.trimap_width = 20

  # Upsampling stage.
  config.do_upsampling = True
  config.n_epochs_upsample = 500
  config.batch_size_upsample = 16
  config.crop_size = 256  # high-resolution training window

  # Data.
  config.use_homographies = False
  config.use_mask_images = False

  # Bookkeeping.
  config.log_every_steps = 50
  config.report_every_secs = 60.
  config.image_every_epochs = 50
  config.checkpoint_every_epochs = 50
  config.keep_checkpoints = 3
  config.profile = False  # a few profiled steps in the workdir, viewable in TensorBoard

  # Export.
  config.export_dir = ''  # default WORKDIR/export
  config.export_high_res = True  # use the upsampler when it was trained
  config.fps = 24.
  return config
