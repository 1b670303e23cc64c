"""The embedded demo: a synthetic video of two walkers with shadows, trained and exported on a CPU.

  python -m layered_jax.main --config=configs/demo.py --workdir=work/demo

Generates the video (data_prep.synthetic) into work/demo_video if missing
(config.synthetic; the console says so), builds its dataset, trains a smaller
network (nf=16) at 64x128 for about six minutes on 2 CPU cores, exports the
layers to WORKDIR/export and scores them against the generator's ground truth
(only synthetic videos have one; a real video is not scored). The schedule is
the reference's, compressed to the demo's 450 epochs (the reference trains for
2000). To use it as a template for a real video, delete the config.synthetic
lines: a config for a real video must stop on a wrong dataroot, not generate.

Three choices make that budget enough for the shadows to move into their
person's layer: a plain background, which the small network learns early, so
that the moving shadows are what remains to explain; a trimap band wider than
the shadows reach (the reference's 20 px at 448 wide leaves these 14-px shadows
mostly outside the band, where the mask loss holds the person's alpha at 0 until
it rolls off); and a learning rate of 4e-3 with the mask loss off from epoch 60.
Shadows enter a layer slowly once the mask loss is off (the layer's colour there
and its alpha grow together from near zero); with lr 2e-3, 300 epochs and a 12-px
band, shadow recall ranged from 0.03 to 0.82 over machines and seeds.
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
  config.n_epochs = 450
  config.batch_size = 4
  config.lr = 4e-3
  config.mask_loss_rolloff_epoch = 30  # mask loss off from epoch 60
  config.alpha_l1_rolloff_epoch = 45
  config.jitter_epochs = 45
  config.trimap_width = 36  # an ignored band of 18 px around each person: beyond the shadows' reach
  config.do_upsampling = False

  config.log_every_steps = 60
  config.report_every_secs = 30.
  config.image_every_epochs = 150
  config.checkpoint_every_epochs = 150
  return config
