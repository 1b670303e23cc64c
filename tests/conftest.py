"""Shared helpers: seeded inputs and NCHW (PyTorch) <-> NHWC (Flax) layout changes."""

import os
import sys
import tempfile

import jax
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
jax.config.update('jax_default_matmul_precision', 'highest')
# Training tests build the same programs many times (and in subprocesses): compile each once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='layered_jax_test_cache-'))
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
torch.set_num_threads(os.cpu_count() or 1)


def nhwc(t: torch.Tensor) -> np.ndarray:
  """[..., C, H, W] torch tensor -> [..., H, W, C] numpy array."""
  return np.moveaxis(t.detach().numpy(), -3, -1)


def layered_uv(uv: torch.Tensor) -> np.ndarray:
  """Reference UV input [B, 2L, H, W] -> [B, L, H, W, 2]."""
  b, c, h, w = uv.shape
  return uv.detach().numpy().reshape(b, c // 2, 2, h, w).transpose(0, 1, 3, 4, 2)


@pytest.fixture
def rng():
  torch.manual_seed(0)
  return np.random.default_rng(0)


@pytest.fixture(scope='session')
def browser():
  """Headless Chromium (tests/browser.py); skips without one, or fails where LAYERED_JAX_REQUIRE_BROWSER=1 (CI)."""
  from tests import browser as browser_lib
  with browser_lib.start() as session:
    yield session


def run_once(fn, *args, static_argnums=(), **static_kwargs):
  """fn(*args, **static_kwargs) jitted and compiled without XLA's backend optimisations: for programs a test runs
  once (their compile takes half the time or less; the results are the same)."""
  from layered_jax.vid2vid.step import FAST_COMPILE
  dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
  jitted = jax.jit(fn, static_argnums=static_argnums, static_argnames=tuple(static_kwargs))
  return jitted.lower(*args, **static_kwargs).compile(compiler_options=FAST_COMPILE)(*dynamic)
