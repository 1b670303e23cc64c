"""vid2vid (Wang et al. 2018) in JAX/Flax: video-to-video synthesis from pose, label or edge maps."""
