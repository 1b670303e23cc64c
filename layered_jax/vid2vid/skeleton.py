"""OpenPose BODY_25 skeletons drawn as vid2vid's pose input, in JAX.

Drawing at training time (rather than storing rendered skeletons) lets each step
drop limbs at random, as the reference does, and draw after the scale-and-crop,
so the lines keep their width. The drawing follows the reference's: each limb a
stroke of half-width `half_width` with discs of radius 2 * half_width at both
ends, in a fixed order and colour; where a stroke covers a pixel already drawn
the two colours are averaged (uint8, truncated). Differences: strokes are
round-capped capsules rather than a square brush stepped along the line, and the
averaging is per pixel (the reference averages a whole stroke once any pixel
under it is drawn). Keypoints with a score of 0.01 or less are missing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

MIN_SCORE = 0.01
# (keypoint a, keypoint b, RGB): head, torso, right arm, left arm, right leg and foot, left leg and foot.
LIMBS = (
    (17, 15, (153, 0, 153)), (15, 0, (153, 0, 102)), (0, 16, (102, 0, 153)), (16, 18, (51, 0, 153)),
    (0, 1, (153, 0, 51)), (1, 8, (153, 0, 0)),
    (1, 2, (153, 51, 0)), (2, 3, (153, 102, 0)), (3, 4, (153, 153, 0)),
    (1, 5, (102, 153, 0)), (5, 6, (51, 153, 0)), (6, 7, (0, 153, 0)),
    (8, 9, (0, 153, 51)), (9, 10, (0, 153, 102)), (10, 11, (0, 153, 153)), (11, 24, (0, 153, 153)),
    (11, 22, (0, 153, 153)), (22, 23, (0, 153, 153)),
    (8, 12, (0, 102, 153)), (12, 13, (0, 51, 153)), (13, 14, (0, 0, 153)), (14, 21, (0, 0, 153)),
    (14, 19, (0, 0, 153)), (19, 20, (0, 0, 153)),
)
NUM_LIMBS = len(LIMBS)
_ENDS = np.array([(a, b) for a, b, _ in LIMBS])
_COLORS = np.array([c for _, _, c in LIMBS], np.float32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def render(keypoints: jax.Array, height: int, width: int, half_width: jax.Array, keep: jax.Array = None
           ) -> jax.Array:
  """Skeleton image [height, width, 3] with values 0..255 (float32).

  keypoints: [P, 25, 3] (x, y in output pixels, pixel i at coordinate i; score);
  keep: optional [P, NUM_LIMBS] booleans, False drops that person's limb.
  """
  keypoints = jnp.asarray(keypoints, jnp.float32)
  a, b = keypoints[:, _ENDS[:, 0]], keypoints[:, _ENDS[:, 1]]  # [P, L, 3]
  drawn = (a[..., 2] > MIN_SCORE) & (b[..., 2] > MIN_SCORE)
  if keep is not None:
    drawn &= keep
  colors = jnp.broadcast_to(_COLORS, a.shape[:2] + (3,))
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing='ij')
  line_sq, end_sq = half_width ** 2, (2 * half_width) ** 2

  def stroke(image, limb):
    start, end, color, on = limb
    d = end - start
    t = jnp.clip(((xs - start[0]) * d[0] + (ys - start[1]) * d[1]) / jnp.maximum(d @ d, 1e-12), 0, 1)
    to_line = (xs - start[0] - t * d[0]) ** 2 + (ys - start[1] - t * d[1]) ** 2
    to_start = (xs - start[0]) ** 2 + (ys - start[1]) ** 2
    to_end = (xs - end[0]) ** 2 + (ys - end[1]) ** 2
    covered = on & ((to_line < line_sq) | (to_start < end_sq) | (to_end < end_sq))
    mixed = jnp.where(jnp.any(image > 0, -1, keepdims=True), jnp.floor((image + color) / 2), color)
    return jnp.where(covered[..., None], mixed, image), None

  limbs = (a[..., :2].reshape(-1, 2), b[..., :2].reshape(-1, 2), colors.reshape(-1, 3), drawn.reshape(-1))
  image, _ = jax.lax.scan(stroke, jnp.zeros((height, width, 3), jnp.float32), limbs)
  return image
