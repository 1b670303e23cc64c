"""The machinery of a training loop, shared by every trainer: config checks, console, devices, checkpoints.

- Before any compute: `check_fields` refuses zero, negative or NaN config values, naming every such field.
- Console: `quiet_logging` keeps library chatter (Orbax, TFDS, TF, JAX) at WARNING; `Reporter` prints
  "compiling..." before the first step, then the position, speed, ETA and losses; `DivergenceWatch` warns when a
  loss explodes without becoming NaN; `metric_writer` writes TensorBoard metrics (process 0; CLU).
- Devices: `replicate` and `first_replica`, in pmap's layout along AXIS.
- `Checkpoints`: Orbax checkpoints, each holding a train state (any pytree), a progress record (a JSON-able dict or
  dataclass) and the identity of what it was trained on (a JSON-able dict: data, model sizes). Only finite states
  are written. Restoring refuses another identity (`check_identity`) and falls back past checkpoints that cannot
  be read or hold non-finite values, with a warning that names them.
- The NaN stop: `stop_if_not_finite` on logged scalars (losses, gradient norm), `Checkpoints.save` on the state.

A trainer uses them in this order (layered_jax.train does):

  loop.check_fields(config, RULES)                        # ConfigError before anything is built or compiled
  checkpoints = loop.Checkpoints(workdir, config.keep_checkpoints, identity)
  restored = checkpoints.restore(lambda progress: abstract_state(progress))   # None, or (state, progress dict)
  reporter, watch = loop.Reporter('stage', total_steps, config.report_every_secs), loop.DivergenceWatch()
  reporter.compiling(); ...compile and run the first step...
  after each step: if reporter.due(step): scalars = {...}; loop.stop_if_not_finite(scalars, where, checkpoints);
                   watch(scalars, where); reporter.report(step, scalars, where)
  checkpoints.save(epoch, loop.first_replica(state), progress)   # DivergedError if the state is not finite

Imports without TensorFlow, TFDS, CLU or ml_collections (CLU and Orbax are imported when used).
"""

import atexit
import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import shutil
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from layered_jax import errors

AXIS = 'batch'
POSITIVE_INT = 'a positive integer'
NON_NEGATIVE_INT = 'an integer >= 0'
POSITIVE = 'a positive finite number'
NON_NEGATIVE = 'a finite number >= 0'
DIVERGED_FIX = 'lower --config.lr (or check the data) and run the same command again: it resumes from there'
_TMP_MARK = '.orbax-checkpoint-tmp'


# --- Config checks. ---

def _obeys(value: Any, rule: str) -> bool:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return False
  if rule in (POSITIVE_INT, NON_NEGATIVE_INT):
    if not isinstance(value, numbers.Integral):
      return False
  elif not math.isfinite(value):
    return False
  return value > 0 if rule in (POSITIVE_INT, POSITIVE) else value >= 0


def check_fields(config: Any, rules: Mapping[str, str]) -> None:
  """Raises ConfigError naming every field whose value breaks its rule (POSITIVE_INT, ..., NON_NEGATIVE)."""
  problems = [f'config.{name}={config[name]!r} must be {rule}' for name, rule in rules.items()
              if not _obeys(config[name], rule)]
  if problems:
    raise errors.ConfigError('; '.join(problems) + ' (set it with --config.FIELD=VALUE)')


def check_choices(config: Any, choices: Mapping[str, Sequence[str]]) -> None:
  """Raises ConfigError for the first field whose value is not one of its choices."""
  for name, allowed in choices.items():
    if config[name] not in allowed:
      raise errors.ConfigError(f'config.{name}={config[name]!r}: use one of {", ".join(map(repr, allowed))}')


def check_batch_split(config: Any, names: Sequence[str]) -> None:
  """Raises ConfigError when a global batch size field does not split over all devices."""
  devices = jax.device_count()
  for name in names:
    if config[name] % devices:
      raise errors.ConfigError(f'config.{name}={config[name]} does not split over {devices} devices; '
                               f'use a multiple of {devices}')


# --- Console. ---

def quiet_logging(verbose: bool = False) -> None:
  """Library chatter (Orbax, TFDS, TensorFlow, JAX) at WARNING unless verbose; progress lines are printed."""
  from absl import logging as absl_logging
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '2')  # read when TensorFlow loads
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
  logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s' if seconds >= 60 else f'{seconds}s'


class Reporter:
  """Console lines for a run of steps up to `total` (a resumed run starts past 0), printed by process 0.

  `compiling()` announces the first step's compilation; `due(step)` after each step says whether a line is due
  (every `every_secs`, and at the last step); `report` prints the position, steps/s, ETA and the losses.
  """

  def __init__(self, label: str, total: int, every_secs: float = 60.):
    self.label, self.total, self.every_secs = label, total, every_secs
    self._first: Optional[Tuple[float, int]] = None  # (time, step) after the first, compiled, step
    self._last = self._compile_start = time.monotonic()
    self._print = print if jax.process_index() == 0 else (lambda *a, **k: None)

  def compiling(self) -> None:
    self._compile_start = time.monotonic()
    self._print(f'{self.label}: compiling the train step (a minute or more; cached for later runs)...',
                flush=True)

  def due(self, step: int) -> bool:
    now = time.monotonic()
    if self._first is None:
      self._first = (now, step)
      self._last = now
      self._print(f'{self.label}: compiled, first step done in {_duration(now - self._compile_start)}; '
                  f'{self.total - step} steps to go', flush=True)
      return step == self.total
    return step == self.total or now - self._last >= self.every_secs

  def report(self, step: int, scalars: Mapping[str, float], where: str = '') -> None:
    now = time.monotonic()
    self._last = now
    start_time, start_step = self._first or (now, step)
    rate = (step - start_step) / max(now - start_time, 1e-9)
    eta = f'ETA {_duration((self.total - step) / rate)}' if rate > 0 and step < self.total else 'done'
    losses = ', '.join(f'{k.split("/", 1)[-1]} {v:.4g}' for k, v in scalars.items() if k.startswith('loss/'))
    self._print(f'{self.label} {where}step {step}/{self.total} ({100 * step / self.total:.0f}%), '
                f'{rate:.2f} steps/s, {eta}; {losses}', flush=True)


class DivergenceWatch:
  """Warns once when `key` rises `factor` times above its lowest value so far: a blow-up that is not NaN yet."""

  def __init__(self, key: str = 'loss/total', factor: float = 100.):
    self.key, self.factor = key, factor
    self.lowest: Optional[float] = None
    self.warned = False

  def __call__(self, scalars: Mapping[str, float], where: str) -> None:
    value = scalars.get(self.key)
    if value is None or not math.isfinite(value):
      return
    if self.lowest is not None and value > self.factor * max(self.lowest, 1e-12) and not self.warned:
      self.warned = True
      if jax.process_index() == 0:
        errors.warn(f'{self.key} rose from {self.lowest:.4g} to {value:.4g} by {where}: training is diverging; '
                    'lower --config.lr (training goes on)')
    self.lowest = value if self.lowest is None else min(self.lowest, value)


class StepLog:
  """What both trainers do after a step. On a logged step (every log_every_steps) the scalars go to the metric
  writer with the steps/s and frames/s since the last write; when the reporter is due, a console line; either
  time, the NaN stop and the divergence watch. The terms leave the devices only then, so steps stay asynchronous.
  """

  def __init__(self, reporter: Reporter, watch: DivergenceWatch, writer: Any, checkpoints: 'Checkpoints',
               to_scalars: Callable[[Any], Dict[str, float]], frames_per_step: int, first_write_step: int):
    self.reporter, self.watch, self.writer, self.checkpoints = reporter, watch, writer, checkpoints
    self.to_scalars, self.frames_per_step = to_scalars, frames_per_step
    self._last = (time.time(), first_write_step)  # (time, write step) of the last write; the first includes compiling

  def __call__(self, step: int, logged: bool, terms: Any, where: str, extra: Mapping[str, float],
               write_step: Callable[[], int]) -> None:
    """After step `step` of the reporter's run, at `where` (e.g. 'epoch 3/10'); `extra` scalars join a logged
    write at `write_step()`."""
    due = self.reporter.due(step)
    if not (logged or due):
      return
    scalars = self.to_scalars(terms)
    stop_if_not_finite(scalars, where, self.checkpoints)
    self.watch(scalars, where)
    if due:
      self.reporter.report(step, scalars, f'{where}, ')
    if logged:
      now, at = time.time(), write_step()
      rate = (at - self._last[1]) / max(now - self._last[0], 1e-9)
      self._last = (now, at)
      scalars.update({'steps_per_sec': rate, 'frames_per_sec': rate * self.frames_per_step, **extra})
      self.writer.write_scalars(at, scalars)


def metric_writer(workdir: str):
  """CLU's writer: TensorBoard summaries in workdir from process 0; the others only log (at INFO)."""
  from clu import metric_writers
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


# --- Devices. ---

def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """One copy per local device (or per given device), laid out for pmap, broadcast on the host.

  The layout is the one pmap gives the outputs of a step with axis name AXIS, so
  feeding a step its own output does not compile it a second time.
  """
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding), tree)


def first_replica(tree: Any) -> Any:
  """Replica 0 of a pmapped tree, as NumPy on the host (no per-leaf device op)."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], tree)


# --- Finiteness, identity, checkpoints. ---

def _key_name(key: Any) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def nonfinite_leaves(tree: Any) -> List[str]:
  """Paths ('params/unet/...') of the floating-point leaves that hold a NaN or an infinity."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.asarray(leaf)
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
      bad.append('/'.join(_key_name(k) for k in path))
  return bad


def stop_if_not_finite(scalars: Mapping[str, float], where: str, checkpoints: 'Checkpoints') -> None:
  """The NaN stop: DivergedError naming the non-finite scalars and the last (finite) checkpoint kept."""
  bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
  if bad:
    raise errors.DivergedError(f'{", ".join(bad)} became {scalars[bad[0]]} in {where}; training stopped and '
                               f'{checkpoints.kept()}; {DIVERGED_FIX}')


def _as_json(record: Any) -> Any:
  """A dict or dataclass as JSON gives it back (tuples become lists), for saving and comparing."""
  if dataclasses.is_dataclass(record):
    record = dataclasses.asdict(record)
  return json.loads(json.dumps(record))


def check_identity(recorded: Optional[Mapping], current: Mapping, subject: str, fix: str) -> None:
  """WorkdirError when what `subject` was made from (`recorded`) is not `current`, naming each field that differs."""
  if recorded is None:
    raise errors.WorkdirError(f'{subject} carries no record of its inputs (an older version wrote it); {fix}')
  current = _as_json(current)
  differences = [f'{key} {recorded.get(key)!r} there, {current.get(key)!r} now'
                 for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]
  if differences:
    raise errors.WorkdirError(f'{subject} came from other inputs than this run ({"; ".join(differences)}); {fix}')


def _from_orbax(tb) -> bool:
  return any(f'{os.sep}{package}{os.sep}' in frame.filename
             for frame in traceback.extract_tb(tb) for package in ('orbax', 'asyncio'))


def _quiet_excepthook(kind, value, tb, default=sys.excepthook):
  if not (kind is RuntimeError and str(value) == 'Event loop is closed' and _from_orbax(tb)):
    default(kind, value, tb)


def _quiet_unraisablehook(unraisable, default=sys.unraisablehook):
  if not _from_orbax(unraisable.exc_traceback):
    default(unraisable)


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
  """Orbax reports a failed read or write several times before raising in the caller, who reports it in one line:
  its worker threads log tracebacks, and its abandoned coroutines and TensorStore callbacks print more (some at
  exit, when they find their event loop closed). Those are dropped during the call, and for good after a failure.

  Kept when logging is verbose (absl at INFO).
  """
  absl_logger = logging.getLogger('absl')
  if absl_logger.isEnabledFor(logging.INFO):
    yield
    return

  def keep(record: logging.LogRecord) -> bool:
    return f'{os.sep}orbax{os.sep}' not in record.pathname

  hooks = sys.excepthook, sys.unraisablehook
  absl_logger.addFilter(keep)
  sys.excepthook, sys.unraisablehook = _quiet_excepthook, _quiet_unraisablehook
  try:
    yield
  except BaseException:
    hooks = None
    raise
  finally:
    absl_logger.removeFilter(keep)
    if hooks:
      sys.excepthook, sys.unraisablehook = hooks


def _short(error: BaseException, limit: int = 240) -> str:
  text = errors.one_line(error) or type(error).__name__
  return text if len(text) <= limit else text[:limit] + '...'


class Checkpoints:
  """A workdir's checkpoints (WORKDIR/checkpoints/STEP): state, progress record and identity, finite only.

  `identity` is what this run trains on (data and model sizes as a JSON-able dict); restoring a checkpoint made
  from anything else stops with a WorkdirError. `label` names a step in messages ('epoch').
  """

  def __init__(self, workdir: str, keep: int, identity: Mapping[str, Any], label: str = 'epoch'):
    import orbax.checkpoint as ocp
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.identity = _as_json(identity)
    self.label = label
    if jax.process_index() == 0:
      self._remove_partial()  # left by a kill or a failed write
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _remove_partial(self) -> bool:
    """Removes unfinished checkpoint folders; True if there were any."""
    found = False
    if os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if _TMP_MARK in name:
          found = True
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    return found

  def _remove_failed_write(self, settle: float = 1., limit: float = 15.) -> None:
    """Removes a failed save's folder for good: Orbax's abandoned writers may recreate it after it is removed,
    so it is removed until it has stayed away for `settle` seconds, and once more at exit."""
    deadline, quiet_since = time.monotonic() + limit, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < settle:
      if self._remove_partial():
        quiet_since = time.monotonic()
      time.sleep(0.05)
    atexit.register(self._remove_partial)

  def steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def latest(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def kept(self) -> str:
    """Which checkpoint a rerun resumes from, for messages."""
    latest = self.latest()
    if latest is None:
      return 'no checkpoint had been written yet'
    return f'the last checkpoint ({self.label} {latest}, finite) is kept in {self.directory}'

  def save(self, step: int, state: Any, progress: Any) -> None:
    """Writes a host state (e.g. first_replica of a pmapped one) if it is finite, else stops training."""
    import orbax.checkpoint as ocp
    bad = nonfinite_leaves(state)
    if bad:
      more = f' and {len(bad) - 1} more' if len(bad) > 1 else ''
      raise errors.DivergedError(
          f'the train state holds non-finite values at the end of {self.label} {step} ({bad[0]}{more}) although the '
          f'losses logged were finite; it was not saved, training stopped and {self.kept()}; {DIVERGED_FIX}')
    try:
      with _orbax_quiet():
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         progress=ocp.args.JsonSave(_as_json(progress)),
                                                         identity=ocp.args.JsonSave(self.identity)))
        self._manager.wait_until_finished()
    except Exception as error:
      reason = errors.os_reason(error)
      if reason is None:
        raise
      if jax.process_index() == 0:
        self._remove_failed_write()
      self._manager.reload()
      raise errors.OutputError(f'could not write checkpoint {self.label} {step} in {self.directory}: {reason}; '
                               f'{self.kept()}; run the same command again to resume from it') from error
    if jax.process_index() == 0:
      print(f'checkpoint: {self.label} {step} saved in {self.directory}', flush=True)

  def check(self, recorded: Mapping) -> None:
    check_identity(recorded, self.identity, f'the checkpoints in {self.directory}',
                   'resume with the video and config they were trained with, or use a new --workdir')

  def restore(self, target: Callable[[Dict], Any]) -> Optional[Tuple[Any, Dict]]:
    """(state, progress record) of the newest checkpoint that reads back whole and finite; None if there is none.

    target(progress) gives the restore target for a checkpoint's progress record (the state's structure,
    shapes and dtypes, e.g. from jax.eval_shape). Skipped checkpoints are named in a warning.
    """
    import orbax.checkpoint as ocp
    skipped = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      name = f'{self.label} {step}'
      if not os.path.isdir(os.path.join(self.directory, str(step), 'identity')):
        raise errors.WorkdirError(f'{name} in {self.directory} has no record of what it was trained on (an older '
                                  'version wrote it); use a new --workdir')
      try:
        with _orbax_quiet():
          meta = self._manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore(),
                                                                     identity=ocp.args.JsonRestore()))
      except Exception as error:
        skipped.append(f'{name} ({_short(error)})')
        continue
      self.check(meta['identity'])
      try:
        with _orbax_quiet():
          state = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target(meta['progress']))))['state']
      except Exception as error:
        skipped.append(f'{name} ({_short(error)})')
        continue
      bad = nonfinite_leaves(state)
      if bad:
        skipped.append(f'{name} (non-finite values in {bad[0]})')
        continue
      if skipped and jax.process_index() == 0:
        errors.warn(f'checkpoint {"; ".join(skipped)} in {self.directory} cannot be used; resuming from {name}')
      return state, meta['progress']
    if skipped:
      raise errors.WorkdirError(f'no checkpoint in {self.directory} can be used: {"; ".join(skipped)}; delete '
                                f'{self.directory} to start over, or use a new --workdir')
    return None

