"""Run at interpreter start (this folder is on PYTHONPATH): what the original code needs from newer libraries.

NumPy dropped the `np.int` alias the original's augmentation uses; headless OpenCV
raises in `destroyAllWindows`, which test.py calls after writing each video.
"""
import cv2
import numpy as np

np.int = int


def _no_windows():
  pass


cv2.destroyAllWindows = _no_windows
