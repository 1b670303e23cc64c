"""Errors the user must act on, and how commands report them: one `error:` line on stderr, exit status 2.

Raise a `UserError` subclass for anything the user has to change; its message names the config field, file,
frame or workdir and says what to do. Commands run their work inside `reported()`, which prints such an error,
and any OSError (a full disk, a read-only folder, a missing file) or library error that carries one, as one line
and exits with status 2; with `show_traceback` (main's --traceback) the traceback comes first. Other
exceptions are bugs and keep their traceback.

  ConfigError    a config field or command-line value that cannot work
  DataError      an input file (video folder, dataset, checkpoint to convert) that cannot be used
  WorkdirError   a workdir holding another video's data or checkpoints, or none that can be read
  DivergedError  training produced a non-finite loss, gradient or state
  OutputError    a file or folder that cannot be written
"""

import contextlib
import errno
import os
import re
import sys
import traceback
from typing import Iterator, Optional

EXIT_STATUS = 2


class UserError(Exception):
  """Something the user must change; the message says what and how, in one line."""


class ConfigError(UserError, ValueError):
  pass


class DataError(UserError, ValueError):
  pass


class WorkdirError(UserError):
  pass


class DivergedError(UserError, FloatingPointError):
  pass


class OutputError(UserError, OSError):
  pass


_OS_HINTS = {errno.ENOSPC: 'free some space or write elsewhere', errno.EDQUOT: 'free some space or write elsewhere',
             errno.EFBIG: 'a file-size limit (ulimit -f) or the file system refuses a file this large',
             errno.EACCES: 'write to a folder you may write to', errno.EPERM: 'write to a folder you may write to',
             errno.EROFS: 'the file system is read-only; write elsewhere',
             errno.ENOTDIR: 'a part of the path is a file, not a folder',
             errno.EEXIST: 'something is in the way: a file where a folder is needed, or an earlier output'}


def one_line(error: BaseException) -> str:
  """The error's message on one line; an OSError gets a hint for the usual causes of a failed write."""
  text = ' '.join(str(error).split())
  if isinstance(error, OSError) and not isinstance(error, UserError) and error.errno in _OS_HINTS:
    text = f'{text} ({_OS_HINTS[error.errno]})'
  return text


def os_reason(error: BaseException) -> Optional[str]:
  """The OS's reason (with a hint) when an exception reports a failed write or read, else None.

  Covers OSError and the errors of libraries that carry the OS's code or message in theirs (TensorStore, TFDS).
  """
  number = error.errno if isinstance(error, OSError) else None
  if number is None:
    code = re.search(r"os_error_code='?(\d+)", str(error))
    number = int(code.group(1)) if code else None
  if number is None:  # a library that only quotes the OS's message (TFDS's array_record writer)
    number = next((n for n in _OS_HINTS if os.strerror(n) in str(error)), None)
  if number is None:
    return None
  reason = os.strerror(number)
  return f'{reason} ({_OS_HINTS[number]})' if number in _OS_HINTS else reason


def warn(message: str) -> None:
  """A warning the user should read, on one line of stderr (library warnings go through logging)."""
  print(f'warning: {" ".join(message.split())}', file=sys.stderr, flush=True)


@contextlib.contextmanager
def reported(show_traceback: bool = False, last_words: bool = False) -> Iterator[None]:
  """Turns a UserError or OSError (or a library error carrying an OS error) raised inside into one `error:` line
  on stderr and exit status 2.

  last_words: the process is about to end, so nothing printed after that line (library threads and coroutines
  abandoned by the failure report again while the interpreter shuts down) reaches the console.
  """
  try:
    yield
  except Exception as error:
    # A library's own error for a failed write (TensorBoard's writer, TensorStore) counts as an OSError.
    reason = None if isinstance(error, (UserError, OSError)) else os_reason(error)
    if reason is None and not isinstance(error, (UserError, OSError)):
      raise  # a bug: its traceback stays
    if show_traceback:
      traceback.print_exc()
    text = one_line(error)
    if reason:
      cause, _, hint = reason.partition(' (')
      if cause not in text:
        text += f' ({reason})'
      elif hint:
        text += f' ({hint}'  # hint keeps its closing parenthesis
    print(f'error: {text}', file=sys.stderr, flush=True)
    if last_words and not show_traceback:
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    raise SystemExit(EXIT_STATUS) from None
