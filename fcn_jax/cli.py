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
import os
import sys
import time
from typing import Callable, Optional, Sequence, Type

from absl import app
from absl import flags

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
    path_flags: Sequence[str] = (),
) -> Callable[[Sequence[str]], Optional[int]]:
  """Wraps `main(argv)` so that user errors end in one line and status 1.

  Args:
    main: the command's main function, as given to `absl.app.run`.
    user_errors: exception classes besides `UserError` that this command's
      library raises for user mistakes (e.g. `ValueError` from a parser whose
      messages name the file).
    path_flags: names of absl flags holding paths: `~` and `$VARS` in their
      values are expanded before `main` runs.

  Returns:
    A function with the same signature, for `absl.app.run`.
  """
  caught = (errors.UserError,) + tuple(user_errors)

  @functools.wraps(main)
  def wrapped(argv):
    try:
      _expand_path_flags(path_flags)
      return main(argv)
    except caught as e:
      report_error(e)
      sys.exit(EXIT_USER_ERROR)

  return wrapped


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag value reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    report_error(e)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[Sequence[str]], Optional[int]],
        user_errors: tuple[Type[BaseException], ...] = (),
        flags_parser: Optional[Callable[[list[str]], object]] = None,
        path_flags: Sequence[str] = ()) -> None:
  """`absl.app.run(main)` with one-line user errors (see the module doc)
  and `~` / `$VARS` expanded in the `path_flags`."""
  app.run(catch_user_errors(main, user_errors, path_flags),
          flags_parser=flags_parser or parse_flags)


# Config keys holding paths (besides keys ending in _dir, _path or _file).
PATH_CONFIG_KEYS = ('init_from',)


def expand_path(path: str) -> str:
  """`~` and `$VARS` expanded (shells leave `--flag=~/x` as it is)."""
  return os.path.expandvars(os.path.expanduser(path)) if path else path


def is_path_key(key: str) -> bool:
  """Whether the (dotted) config key names a file or folder."""
  name = key.rsplit('.', 1)[-1]
  return name in PATH_CONFIG_KEYS or name.endswith(('_dir', '_path', '_file'))


def expand_config_paths(config):
  """A copy of `config` (ConfigDict or dict) with path values expanded."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) \
      else dict(config)
  expanded = _expand_values(values)
  if isinstance(config, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(expanded)
  return expanded


def _expand_values(values: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out[key] = _expand_values(value, f'{prefix}{key}.')
    elif isinstance(value, str) and is_path_key(prefix + key):
      out[key] = expand_path(value)
    else:
      out[key] = value
  return out


def _expand_path_flags(names: Sequence[str]) -> None:
  flag_values = flags.FLAGS
  for name in names:
    if name in flag_values and isinstance(flag_values[name].value, str):
      flag_values[name].value = expand_path(flag_values[name].value)


def show_progress(done: int, total: int, start: float, unit: str = 'images',
                  stream=None, every_percent: int = 10) -> None:
  """A progress line with the count, rate and ETA, on stderr.

  On a terminal the line is redrawn in place; in a log file or a pipe a
  plain line is printed every `every_percent` percent (and at the end), so
  logs stay readable.
  """
  stream = stream or sys.stderr
  elapsed = time.time() - start
  rate = done / elapsed if elapsed > 0 else 0.0
  eta = (total - done) / rate if rate > 0 else float('nan')
  eta_text = (f'{int(eta) // 60}m{int(eta) % 60:02d}s' if eta == eta else '?')
  width = 30
  filled = int(width * done / max(total, 1))
  text = (f'[{"#" * filled}{"." * (width - filled)}] {done}/{total} {unit}, '
          f'{rate:.1f} {unit}/s, ETA {eta_text}')
  if _is_terminal(stream):
    stream.write(f'\r{text}  ' + ('\n' if done >= total else ''))
  elif done >= total or (done * 100 // every_percent // max(total, 1) >
                         (done - 1) * 100 // every_percent // max(total, 1)):
    stream.write(text + '\n')
  stream.flush()


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False
