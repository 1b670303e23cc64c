"""Entry points restart themselves with malloc on huge pages, unless the user set GLIBC_TUNABLES."""

import os
import subprocess
import sys

import pytest

from layered_jax import hugepages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Restarts, then reports the tunable it runs under and the page faults of filling 512 MB from malloc.
SCRIPT = """
import ctypes, os, resource, sys
sys.path.insert(0, {repo!r})
from layered_jax import hugepages
hugepages.restart_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(2 ** 29), 1, 2 ** 29)
print(repr(os.environ.get('GLIBC_TUNABLES')), sys.argv[1:], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(tmp_path, env):
  script = tmp_path / 'entry.py'
  script.write_text(SCRIPT.format(repo=REPO))
  out = subprocess.run([sys.executable, str(script), '--flag', 'x y'], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0], ' '.join(out[1:-1]), int(out[-1])


@pytest.mark.skipif(not hugepages.available(), reason='needs glibc >= 2.35 and transparent huge pages')
def test_restart_sets_the_tunable_keeps_the_arguments_and_avoids_page_faults(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  tunables, args, faults = _run(tmp_path, env)
  assert tunables == repr(hugepages.TUNABLE)
  assert args == "['--flag', 'x y']"
  assert faults < 2 ** 29 // 4096 // 8  # 2 MiB pages: far fewer than one fault per 4 KiB page


def test_a_tunable_set_by_the_user_is_kept(tmp_path):
  tunables, args, faults = _run(tmp_path, dict(os.environ, GLIBC_TUNABLES=''))
  assert tunables == "''"
  assert args == "['--flag', 'x y']"
  if hugepages.available():
    assert faults >= 2 ** 29 // 4096 // 2  # 4 KiB pages: about one fault per page
