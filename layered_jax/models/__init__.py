"""Flax modules of layered_jax (NHWC)."""

from layered_jax.models.kp2uv import Kp2UV, iuv_image
from layered_jax.models.renderer import LayeredNeuralRenderer

__all__ = ['Kp2UV', 'LayeredNeuralRenderer', 'iuv_image']
