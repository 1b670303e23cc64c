"""Timing shared by the benchmarks: JAX and PyTorch steps in alternating rounds, and the device's peak FLOP/s."""

import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

# Dense spec-sheet peaks in TFLOP/s (bf16 tensor core, fp32 non-tensor) for reporting utilisation.
PEAK_TFLOPS = {'H200': (989., 67.), 'H100': (989., 67.), 'A100': (312., 19.5)}


def peak_tflops(device_kind: str) -> Optional[Tuple[float, float]]:
  """(bf16, fp32) peak TFLOP/s of a known GPU, else None."""
  return next((p for name, p in PEAK_TFLOPS.items() if name in device_kind), None)


def median_step_seconds(steppers: Sequence[Callable[[], None]], steps: int, rounds: int) -> List[float]:
  """Median seconds per step of each stepper, timed in alternating rounds of `steps` steps.

  Alternating keeps slow drifts of a shared machine's speed out of the ratio. Each
  round starts with an untimed step: the first step after the other framework's
  ran up to 40% slower here.
  """
  times = [[] for _ in steppers]
  for _ in range(rounds):
    for run, seconds in zip(steppers, times):
      run()  # untimed: absorbs first-call setup, lets the other framework's threads and memory settle
      start = time.perf_counter()
      for _ in range(steps):
        run()
      seconds.append((time.perf_counter() - start) / steps)
  return [float(np.median(seconds)) for seconds in times]


def xla_flops(compiled) -> float:
  """FLOPs of a compiled JAX program by XLA's cost analysis (0 when the backend gives none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.)) if cost else 0.
