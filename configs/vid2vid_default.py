"""vid2vid's hyperparameters (vid2vid-spec sections 2-5), named as the reference's command-line options.

vid2vid configs start from this one: `config = vid2vid_default.get_config()` then override.
The networks and losses read their fields through layered_jax.vid2vid.step.Options.from_config.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.system = 'vid2vid'
  config.mode = 'train_and_generate'  # 'train' | 'generate' | 'train_and_generate'
  config.seed = 0

  # Data (section 1): a dataset built by data_prep.vid2vid_build (or vid2vid_synthetic), its DIR/NAME/1.0.0.
  config.dataroot = ''
  config.synthetic = ml_collections.ConfigDict()  # demo only: a synthetic clip set built in WORKDIR/data first
  config.label_nc = 0  # labels: classes (0: the dataset's); checked against the dataset
  config.fineSize = 0  # output height (0: the stored height); width follows the frames' aspect
  config.loadSize = 0  # largest random height before the crop (0: fineSize, no random scale)
  config.center_crop = False
  config.flip = False  # labels and edges; never pose
  config.random_drop_prob = 0.05  # pose: drop each DensePose part and skeleton limb with this probability
  config.use_instance = False  # labels: instance-edge channel

  # Generator (section 2).
  config.input_nc = 0  # input channels per frame (0: from the dataset: pose 6, labels label_nc (+1 instance), edges 1)
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

  # Loop, outputs.
  config.keep_checkpoints = 3
  config.checkpoint_every_epochs = 1
  config.log_every_steps = 50
  config.report_every_secs = 60.
  config.image_every_epochs = 1
  config.generate_dir = ''  # default WORKDIR/generate
  config.generate_clips = -1  # held-out clips to render (-1: all)
  config.fps = 10.
  config.compare_baseline = False  # also train and score the single-frame baseline (vid2vid.run)
  config.score_from_frame = 0  # first frame scored (at least the first generated one)
  return config
