"""One-line user errors (fcn_jax.cli, fcn_jax.errors)."""

import subprocess
import sys

import pytest

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import fault_tolerance
from fcn_jax import inference
from fcn_jax.data import decode


@pytest.mark.parametrize('cls, old_base', [
    (decode.DataError, ValueError),
    (fault_tolerance.ConfigError, ValueError),
    (fault_tolerance.WorkdirLockedError, RuntimeError),
    (fault_tolerance.NonFiniteError, FloatingPointError),
    (inference.CheckpointError, ValueError),
    (inference.ImageError, ValueError),
])
def test_error_classes_are_user_errors_and_keep_their_bases(cls, old_base):
  error = cls('x')
  assert isinstance(error, errors.UserError)
  assert isinstance(error, old_base)  # `except ValueError` still catches it.


def _main_raising(error):
  def main(argv):
    del argv
    print('some output first')
    raise error
  return main


def test_user_error_is_one_last_line_and_status_1(capsys):
  main = cli.catch_user_errors(_main_raising(decode.DataError(
      "config.data_dir='/x': folder\n  not found.")))
  with pytest.raises(SystemExit) as exit_info:
    main(['prog'])
  assert exit_info.value.code == 1
  captured = capsys.readouterr()
  assert captured.out == 'some output first\n'
  # Whitespace (a newline in the message) is folded: exactly one line.
  assert captured.err == "error: config.data_dir='/x': folder not found.\n"


def test_listed_library_errors_count_as_user_errors(capsys):
  main = cli.catch_user_errors(_main_raising(FileNotFoundError('a.pth: no '
                                                               'such file.')),
                               user_errors=(OSError,))
  with pytest.raises(SystemExit) as exit_info:
    main(['prog'])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == 'error: a.pth: no such file.\n'


def test_other_exceptions_are_not_disguised():
  # A bug (here a KeyError, or a ValueError the command did not list) must
  # propagate with its traceback, not become a one-line error.
  with pytest.raises(KeyError):
    cli.catch_user_errors(_main_raising(KeyError('bug')))(['prog'])
  with pytest.raises(ValueError):
    cli.catch_user_errors(_main_raising(ValueError('bug')),
                          user_errors=(OSError,))(['prog'])


def test_main_reports_unknown_config_keys_in_one_line(tmp_path):
  # Both misspellings fail while the flags are defined (before any JAX work).
  for flag, expected in [
      ('--config.nonexistent=3',
       "error: --config.nonexistent: no such config key 'nonexistent' "),
      ('--config.eval_every=5',
       "error: --config.eval_every: no such config key 'eval_every' (did you "
       "mean 'eval_every_steps'?)."),
  ]:
    proc = subprocess.run(
        [sys.executable, '-m', 'fcn_jax.main', f'--workdir={tmp_path}', flag],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
