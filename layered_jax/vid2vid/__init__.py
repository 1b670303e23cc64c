"""vid2vid (video-to-video synthesis): generators, discriminators, losses and the chunk train step (NHWC)."""
