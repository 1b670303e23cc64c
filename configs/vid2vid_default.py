"""vid2vid's hyperparameters (vid2vid-spec sections 2-5), named as the reference's command-line options.

vid2vid configs start from this one: `config = vid2vid_default.get_config()` then override.
The networks and losses read their fields through layered_jax.vid2vid.step.Options.from_config.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.system = 'vid2vid'
  config.seed = 0

  # Generator (section 2).
  config.input_nc = 3  # input channels per frame: pose 6, labels label_nc (+1 with instance edges), edges ...
  config.output_nc = 3
  config.ngf = 128
  config.n_downsample_G = 3
  config.n_blocks = 9
  config.n_blocks_local = 3
  config.n_scales_spatial = 1
  config.n_frames_G = 3
  config.fg = False
  config.fg_labels = (26,)
  config.no_flow = False
  config.norm = 'batch'  # 'batch' (batch statistics, train and test) | 'instance'
  config.sync_batch_norm = False  # statistics over all devices (the reference's are per GPU)
  config.dtype = 'float32'  # compute dtype; 'bfloat16' on GPU/TPU (parameters stay float32)
  config.init_checkpoint = ''  # a converted generator (layered_jax.convert --kind=vid2vid_g) to start from

  # Discriminators (section 3).
  config.ndf = 64
  config.n_layers_D = 3
  config.num_D = 2
  config.n_frames_D = 3
  config.n_scales_temporal = 2

  # Losses (section 4).
  config.lambda_feat = 10.
  config.lambda_F = 10.
  config.lambda_T = 10.
  config.no_ganFeat = False
  config.no_vgg = False
  config.vgg19 = ''  # converted torchvision vgg19 (layered_jax.convert --kind=vgg19); empty: no_vgg, with a log line
  config.vgg_normalize = False  # the reference feeds [-1, 1] images to VGG19 without ImageNet normalisation
  config.lambda_multiscale_l1 = 0.  # not in the reference: an image L1 term for runs without VGG19
  config.no_first_img = False

  # Training (section 5).
  config.lr = 2e-4
  config.beta1 = 0.5
  config.TTUR = False
  config.niter = 10  # epochs at lr
  config.niter_decay = 10  # epochs of linear decay to 0
  config.niter_fix_global = 0  # epochs training only the finest scale
  config.batch_size = 1  # clips per step, global, split over all devices
  config.max_frames_per_gpu = 1  # frames generated per chunk (one optimizer step per chunk)
  config.n_frames_total = 30  # frames per clip, doubled every niter_step epochs
  config.niter_step = 5
  config.max_t_step = 1  # clip frames are 1..max_t_step source frames apart
  return config
