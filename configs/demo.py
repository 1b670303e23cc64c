"""The embedded demo: a synthetic video of two walkers with shadows, trained and exported on a CPU.

  python -m layered_jax.main --config=configs/demo.py --workdir=work/demo

Generates the video (data_prep.synthetic) into work/demo_video if missing
(config.synthetic; the console says so), builds its dataset, trains a smaller
network (nf=16) at 64x128 for about five minutes on 2 CPU cores, exports the
layers to WORKDIR/export and scores them against the generator's ground truth
(only synthetic videos have one; a real video is not scored). The schedule is
the reference's, compressed to the demo's 300 epochs (the reference trains for
2000). To use it as a template for a real video, delete the config.synthetic
lines: a config for a real video must stop on a wrong dataroot, not generate.

Two choices make that budget enough for the shadows to move into their
person's layer: a plain background, which the small network learns early, so
that the moving shadows are what remains to explain; and a trimap band as wide
as the shadows reach (the reference's 20 px at 448 wide leaves these 14-px
shadows mostly outside the band, where the mask loss holds the person's alpha
at 0 until it rolls off).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataroot = 'work/demo_video'
  config.synthetic.people = 2
  config.synthetic.frames = 24
  config.synthetic.size = (128, 64)
  config.synthetic.seed = 0
  config.synthetic.plain_background = True

  config.num_filters = 16
  config.n_epochs = 300
  config.batch_size = 4
  config.lr = 2e-3
  config.mask_loss_rolloff_epoch = 40  # mask loss off from epoch 80
  config.alpha_l1_rolloff_epoch = 60
  config.jitter_epochs = 60
  config.trimap_width = 24  # an ignored band of 12 px around each person: where the shadows fall
  config.do_upsampling = False

  config.log_every_steps = 60
  config.report_every_secs = 30.
  config.image_every_epochs = 100
  config.checkpoint_every_epochs = 100
  return config
