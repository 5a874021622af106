"""The common base of the errors a user can fix (reported as one line).

Every command runs its main through `fcn_jax.cli.run`, which prints a
`UserError` as one line `error: <message>` on stderr and exits with status 1;
any other exception is a bug and keeps its full traceback. The message names
the flag, file or value and says what is wrong with it.

The specific error classes keep their historical bases too (`DataError` is
still a `ValueError`, ...), so code that catches those keeps working.
"""

import contextlib
import pickle
from typing import Iterator


class UserError(Exception):
  """A mistake the user can fix: a bad flag, config value, file or input."""


class FlagError(ValueError, UserError):
  """A command-line flag has a value the command cannot use."""


class BadFileError(ValueError, UserError):
  """A file or folder the user named is unreadable or unwritable, or holds
  something the command cannot use."""


class MissingFileError(FileNotFoundError, UserError):
  """A file or folder the user named does not exist."""


# What reading or writing a file raises when the file (not the code) is bad.
_READ_ERRORS = (OSError, ValueError, pickle.UnpicklingError)


@contextlib.contextmanager
def user_file(path: str) -> Iterator[None]:
  """Reports a bad file or folder the user named, used inside the block, as
  a `UserError`.

  For the boundary where a command opens what a flag names: the readers' and
  writers' own `OSError` / `ValueError` / `pickle.UnpicklingError` (missing,
  unreadable, unwritable, truncated, malformed) become `MissingFileError` or
  `BadFileError`, whose message names `path`. Other exceptions (bugs) pass
  unchanged.

  Args:
    path: the file or folder as the user named it.
  """
  try:
    yield
  except UserError:
    raise
  except _READ_ERRORS as e:
    message = str(e) if path in str(e) else f'{path}: {e}'
    if isinstance(e, FileNotFoundError):
      raise MissingFileError(message) from e
    raise BadFileError(message) from e
