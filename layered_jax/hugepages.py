"""Restart the current command with glibc's malloc on transparent huge pages (Linux).

XLA:CPU takes each step's scratch memory (about 1 GB for a 256x448 frame with
two layers) from malloc, which maps it afresh every step; PyTorch's large
tensors go the same way. With 4 KiB pages the kernel then faults in and zeroes
some 220,000 pages per step: a fifth of a train step on a 2-core machine.
glibc >= 2.35 backs such allocations with 2 MiB pages when GLIBC_TUNABLES holds
glibc.malloc.hugetlb=1, but reads that only when a process starts, hence the
restart. A GLIBC_TUNABLES already in the environment is left as it is, so
setting it (even to an empty string) opts out.
"""

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple:
  try:
    name = os.confstr('CS_GNU_LIBC_VERSION') or ''
  except (AttributeError, ValueError, OSError):
    return ()
  parts = name.split()
  if len(parts) != 2 or parts[0] != 'glibc':
    return ()
  return tuple(int(p) for p in parts[1].split('.')[:2] if p.isdigit())


def available() -> bool:
  """glibc can use huge pages for malloc here: glibc >= 2.35 and the kernel's THP not 'never'."""
  try:
    with open(_THP_SETTING) as f:
      thp_on = '[never]' not in f.read()
  except OSError:
    return False
  return thp_on and _glibc_version() >= (2, 35)


def restart_with_huge_pages() -> None:
  """Re-run this command (same interpreter and arguments) with the huge-page tunable set.

  Call it first thing under `if __name__ == '__main__':`; it returns at once
  when GLIBC_TUNABLES is already set or huge pages are not available.
  """
  if 'GLIBC_TUNABLES' in os.environ or not available():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], dict(os.environ, GLIBC_TUNABLES=TUNABLE))
