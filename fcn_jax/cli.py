"""How every fcn_jax command reports user errors: one line, exit status 1.

    if __name__ == '__main__':
      cli.run(main)

A `fcn_jax.errors.UserError` (and any of the `user_errors` classes a command
treats as the user's) ends the program with `error: <message>` on stderr, the
last line printed, and exit status 1. Every other exception propagates with
its full traceback: a bug must not look like a user mistake.
"""

from __future__ import annotations

import functools
import logging as std_logging
import sys
from typing import Callable, Optional, Sequence, Type

from absl import app

from fcn_jax import errors

EXIT_USER_ERROR = 1


def report_error(message: object) -> None:
  """Prints `error: <message>` as one line on stderr, after pending output."""
  sys.stdout.flush()
  for handler in std_logging.getLogger().handlers:
    handler.flush()
  text = ' '.join(str(message).split()) or 'unknown error'
  sys.stderr.write(f'error: {text}\n')
  sys.stderr.flush()


def catch_user_errors(
    main: Callable[[Sequence[str]], Optional[int]],
    user_errors: tuple[Type[BaseException], ...] = (),
) -> Callable[[Sequence[str]], Optional[int]]:
  """Wraps `main(argv)` so that user errors end in one line and status 1.

  Args:
    main: the command's main function, as given to `absl.app.run`.
    user_errors: exception classes besides `UserError` that this command's
      library raises for user mistakes (e.g. `ValueError` from a parser whose
      messages name the file).

  Returns:
    A function with the same signature, for `absl.app.run`.
  """
  caught = (errors.UserError,) + tuple(user_errors)

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except caught as e:
      report_error(e)
      sys.exit(EXIT_USER_ERROR)

  return wrapped


def run(main: Callable[[Sequence[str]], Optional[int]],
        user_errors: tuple[Type[BaseException], ...] = (),
        flags_parser: Optional[Callable[[list[str]], object]] = None) -> None:
  """`absl.app.run(main)` with one-line user errors (see the module doc)."""
  kwargs = {'flags_parser': flags_parser} if flags_parser else {}
  app.run(catch_user_errors(main, user_errors), **kwargs)
