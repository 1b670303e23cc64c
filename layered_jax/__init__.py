"""layered_jax: Layered Neural Rendering for retiming people in video, in JAX/Flax."""
