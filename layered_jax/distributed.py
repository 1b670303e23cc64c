"""JAX's multi-controller runtime: one process per host (or per GPU), all devices in one pmap.

`initialize` is a no-op for a single process. With explicit settings it joins
the given coordinator; on clusters that JAX detects by itself (SLURM, Cloud
TPU pod slices, ...) it initialises automatically. On CPU, collectives across
processes go through gloo.
"""

import os
from typing import Optional

import jax

# Environment variables that mean "this is one of several processes" on clusters JAX can detect.
_CLUSTER_HINTS = (('SLURM_NTASKS', lambda v: int(v) > 1), ('TPU_WORKER_HOSTNAMES', lambda v: ',' in v),
                  ('OMPI_COMM_WORLD_SIZE', lambda v: int(v) > 1))


def _on_detected_cluster() -> bool:
  for name, several in _CLUSTER_HINTS:
    value = os.environ.get(name)
    if value:
      try:
        if several(value):
          return True
      except ValueError:
        continue
  return False


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Joins the multi-process run if there is one; returns whether it did."""
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not _on_detected_cluster():
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # used by CPU devices only
  if explicit:
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError('a multi-process run needs --coordinator_address, --num_processes and --process_id '
                       '(or none of them on a cluster JAX detects: SLURM, Cloud TPU)')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  return True


def is_primary() -> bool:
  """Process 0 writes metrics, exports and builds shared data."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches this point (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
