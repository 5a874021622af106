"""What every fcn_jax command shares: user errors as one line, common flags.

    if __name__ == '__main__':
      cli.define_checkpoint_flags()
      cli.run(main)

A `fcn_jax.errors.UserError` ends the program with `error: <message>` on
stderr, the last line printed, and exit status 1. Every other exception
propagates with its full traceback: a bug must not look like a user mistake.
A command therefore raises (or, where it opens a file the user named,
re-raises with `errors.user_file`) its users' mistakes as `UserError`s.

The commands that load a trained model define the same flags through
`define_checkpoint_flags` (--workdir, --checkpoint, --dtype, --seed),
`define_model_flag` (--model) and `define_config_flag` (--config.KEY=VALUE
overrides, read back with `config_overrides`).
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
    user_errors: for programs outside fcn_jax only: exception classes of a
      foreign library to treat like `UserError` (fcn_jax's commands pass
      none: they raise `UserError`s).
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
        flags_parser: Optional[Callable[[list[str]], object]] = None,
        path_flags: Sequence[str] = ()) -> None:
  """`absl.app.run(main)` with exactly `UserError`s as one line (see the
  module doc) and `~` / `$VARS` expanded in the `path_flags`."""
  app.run(catch_user_errors(main, path_flags=path_flags),
          flags_parser=flags_parser or parse_flags)


# Flags shared by the commands that load a trained model.
_DTYPES = ('', 'float32', 'bfloat16')
_SEED_HELP = ('For a run of several seeds (config.seeds): the seed to use; '
              '-1 = the best by validation mean IU.')


def define_checkpoint_flags(checkpoint_alone: bool = True) -> None:
  """Defines --workdir, --checkpoint, --dtype and --seed: the model to load.

  Args:
    checkpoint_alone: whether --checkpoint=PATH may name a checkpoint
      directory without --workdir (predict, export); False makes --workdir
      required (evaluate).
  """
  if checkpoint_alone:
    flags.DEFINE_string('workdir', None, 'Training workdir (config.json + '
                        'checkpoints/). Either this or --checkpoint.')
    flags.DEFINE_string('checkpoint', 'best', "With --workdir: 'best', "
                        "'latest', a step or a path; alone: a checkpoint "
                        'directory.')
  else:
    flags.DEFINE_string('workdir', None, 'Training workdir (config.json + '
                        'checkpoints/).')
    flags.DEFINE_string('checkpoint', 'best', "'best' (highest validation "
                        "mean IU), 'latest', a step number, or a checkpoint "
                        'path.')
    flags.mark_flags_as_required(['workdir'])
  flags.DEFINE_enum('dtype', '', list(_DTYPES), "Computation dtype ('' = the "
                    "training config's); bfloat16 is for accelerators.")
  flags.DEFINE_integer('seed', -1, _SEED_HELP)
  _list_in_command_help('workdir', 'checkpoint', 'dtype', 'seed')


def define_model_flag() -> None:
  """Defines --model, a model variant over the checkpoint's config."""
  flags.DEFINE_string('model', '', 'Override the model variant (e.g. '
                      'fcn8s-atonce for converted weights without '
                      'config.json).')
  _list_in_command_help('model')


def define_config_flag(help_text: str) -> None:
  """Defines --config.KEY=VALUE over `configs/default.py`'s keys."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from fcn_jax.configs import default  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_dict('config', default.get_config(), help_text,
                                  lock_config=False)
  _list_in_command_help('config')


def _list_in_command_help(*names: str) -> None:
  # Flags defined here count as the running command's own, so that its
  # --help (absl lists the main module's key flags) shows them.
  for name in names:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def config_overrides() -> dict:
  """The --config.KEY=VALUE flags given, as {'dotted.key': value}, with
  `~` and `$VARS` expanded in path values."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  values = config_flags.get_override_values(flags.FLAGS['config'])
  return expand_config_paths(_flatten(values))


def _flatten(values: dict, prefix: str = '') -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  flat = {}
  for key, value in values.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update(_flatten(dict(value), f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


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
