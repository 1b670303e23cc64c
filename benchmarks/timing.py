"""Timing shared by the benchmarks: JAX and PyTorch steps in alternating rounds, and the device's peak FLOP/s."""

import json
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


def speed_fields(frames: int, seconds: Sequence[float], flops: float,
                 peaks: Optional[Tuple[float, float]]) -> Dict[str, Optional[float]]:
  """Frames/s of JAX (seconds[0]) and PyTorch (seconds[1], if timed), their ratio, FLOPs per frame, TFLOP/s and,
  on a known GPU, the fractions of its bf16 and fp32 peaks."""
  jax_seconds = seconds[0]
  torch_seconds = seconds[1] if len(seconds) > 1 else None
  row = {'jax_fps': frames / jax_seconds, 'torch_fps': None if torch_seconds is None else frames / torch_seconds,
         'ratio': None if torch_seconds is None else torch_seconds / jax_seconds,
         'gflop_per_frame': flops / frames / 1e9, 'tflops': flops / jax_seconds / 1e12}
  if peaks:
    row['fraction_of_bf16_peak'] = row['tflops'] / peaks[0]
    row['fraction_of_fp32_peak'] = row['tflops'] / peaks[1]
  return row


def speed_header(peaks: Optional[Tuple[float, float]]) -> str:
  return (f'{"jax fps":>9} {"torch fps":>9} {"ratio":>6} {"GFLOP/frame":>11} {"TFLOP/s":>8}'
          + (f' {"%bf16":>6} {"%fp32":>6}' if peaks else ''))


def speed_columns(row: Dict[str, Optional[float]]) -> str:
  """The speed_fields of a row under speed_header ('-' for PyTorch when it was not timed)."""
  torch_fps = '-' if row['torch_fps'] is None else f'{row["torch_fps"]:.3f}'
  ratio = '-' if row['ratio'] is None else f'{row["ratio"]:.2f}'
  text = f'{row["jax_fps"]:>9.3f} {torch_fps:>9} {ratio:>6} {row["gflop_per_frame"]:>11.1f} {row["tflops"]:>8.3f}'
  if 'fraction_of_bf16_peak' in row:
    text += f' {100 * row["fraction_of_bf16_peak"]:>5.1f}% {100 * row["fraction_of_fp32_peak"]:>5.1f}%'
  return text


def print_row(row: Dict, label: str, as_json: bool) -> None:
  """One result: a JSON object, or the label and the speed columns."""
  print(json.dumps(row) if as_json else f'{label} {speed_columns(row)}', flush=True)
