"""The embedded demo: a synthetic video of two walkers with shadows, trained and exported on a CPU.

  python -m layered_jax.main --config=configs/demo.py --workdir=work/demo

Generates the video (data_prep.synthetic) into work/demo_video if missing,
builds its dataset, trains a smaller network at 64x128 for a few minutes on
2 CPU cores, and exports the layers to WORKDIR/export. The schedule is the
reference's, compressed to the demo's epoch count.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataroot = 'work/demo_video'
  config.synthetic.people = 2
  config.synthetic.frames = 24
  config.synthetic.size = (128, 64)
  config.synthetic.seed = 0

  config.num_filters = 16
  config.n_epochs = 160
  config.batch_size = 8
  config.lr = 2e-3
  config.alpha_l1_rolloff_epoch = 60
  config.jitter_epochs = 80
  config.trimap_width = 6
  config.do_upsampling = False

  config.log_every_steps = 30
  config.report_every_secs = 20.
  config.image_every_epochs = 40
  config.checkpoint_every_epochs = 40
  return config
