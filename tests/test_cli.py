"""One-line user errors (fcn_jax.cli, fcn_jax.errors)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import fault_tolerance
from fcn_jax import workdir as workdir_lib
from fcn_jax.data import decode


@pytest.mark.parametrize('cls, old_base', [
    (decode.DataError, ValueError),
    (fault_tolerance.ConfigError, ValueError),
    (fault_tolerance.WorkdirLockedError, RuntimeError),
    (fault_tolerance.NonFiniteError, FloatingPointError),
    (workdir_lib.CheckpointError, ValueError),
    (decode.ImageError, ValueError),
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


def test_main_reports_bad_config_keys_and_values_in_one_line(tmp_path):
  # All fail while the flags are defined (before any JAX work).
  for flag, expected in [
      ('--config.nonexistent=3',
       "error: --config.nonexistent: no such config key 'nonexistent' "),
      ('--config.eval_every=5',
       "error: --config.eval_every: no such config key 'eval_every' (did you "
       "mean 'eval_every_steps'?)."),
      ('--config.batch_size=abc',
       "error: flag --config.batch_size=abc: invalid literal for int()"),
  ]:
    proc = subprocess.run(
        [sys.executable, '-m', 'fcn_jax.main', f'--workdir={tmp_path}', flag],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


def test_missing_data_dir_is_one_line_naming_the_expanded_path(tmp_path):
  env = dict(os.environ, HOME=str(tmp_path))
  shutil.copy(os.path.join(os.path.dirname(cli.__file__), 'configs',
                           'tiny.py'), tmp_path / 'my_config.py')
  proc = subprocess.run(
      [sys.executable, '-m', 'fcn_jax.main', '--workdir=~/runs/x',
       '--config=~/my_config.py', '--config.dataset=voc_dir',
       '--config.data_dir=~/missing'],
      capture_output=True, text=True, timeout=120, check=False, env=env)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: config.data_dir='{tmp_path}/missing': folder not found.")
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(os.path.join('~', 'runs'))  # No literal '~' dir.


_WORKER_SCRIPT = '''
import sys
from fcn_jax import cli, input_pipeline
from fcn_jax.configs import default

def main(argv):
  config = default.get_tiny_config()
  config.dataset, config.data_dir = 'voc_dir', argv[1]
  config.image_size, config.batch_size = 32, 3
  train_source, _, info = input_pipeline.create_datasets(config)
  ds = input_pipeline.train_dataset_from_config(train_source, config, info)
  iterator = input_pipeline.train_iterator(ds, num_workers=1, prefetch=2)
  try:
    for _ in range(4):
      next(iterator)
  finally:
    iterator.close()

cli.run(main)
'''


def test_error_in_a_data_worker_process_is_one_line(tmp_path):
  # A bad label read by a grain worker process reaches the user as the same
  # one line as without workers: no traceback through grain, no leaked
  # shared memory reported at exit.
  root = tmp_path / 'voc'
  shutil.copytree(os.path.join(os.path.dirname(__file__), 'data',
                               'voc-real-mini'), root)
  label_path = root / 'SegmentationClass' / '2011_000003.png'
  with Image.open(label_path) as image:
    label, palette = np.array(image), image.getpalette()
  label[:5, :5] = 77
  bad = Image.fromarray(label, 'P')
  bad.putpalette(palette)
  bad.save(label_path)
  proc = subprocess.run([sys.executable, '-c', _WORKER_SCRIPT, str(root)],
                        capture_output=True, text=True, timeout=300,
                        check=False, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1] == (
      f'error: {label_path}: label values [77] are outside [0, 21) and not '
      'the ignore label 255.')
  for noise in ('Traceback', 'leaked', 'resource_tracker', 'Grain'):
    assert noise not in proc.stderr, proc.stderr[-3000:]


def test_commands_turn_exactly_user_errors_into_one_line(capsys):
  # What cli.run wraps every command's main in, with no list of classes: a
  # UserError subclass is one line, a plain ValueError (a bug) propagates.
  for error in (errors.FlagError('--shapes=0x1: sides must be positive.'),
                errors.BadFileError('x.pth: truncated.')):
    with pytest.raises(SystemExit, match='^1$'):
      cli.catch_user_errors(_main_raising(error))(['prog'])
    assert capsys.readouterr().err == f'error: {error}\n'
  with pytest.raises(ValueError, match='bug'):
    cli.catch_user_errors(_main_raising(ValueError('bug')))(['prog'])


def test_a_bug_in_a_command_keeps_its_traceback(tmp_path, monkeypatch):
  # experiments.report once caught every ValueError as an 'Error:' line; a
  # bug in its summary code must now surface as the exception itself.
  from experiments import report  # pylint: disable=g-import-not-at-top
  (tmp_path / 'metrics.jsonl').write_text(
      '{"step": 1, "split": "val", "mean_iu": 0.5}\n')
  def buggy_summary(runs):
    raise ValueError(f'bug while summarizing {len(runs)} run(s)')
  monkeypatch.setattr(report, 'summarize', buggy_summary)
  with pytest.raises(ValueError, match='bug while summarizing 1 run'):
    cli.catch_user_errors(report.main)(['report', str(tmp_path)])


def test_user_file_names_the_file_and_passes_bugs(tmp_path):
  missing = str(tmp_path / 'gone.pth')
  with pytest.raises(errors.MissingFileError) as info:
    with errors.user_file(missing):
      open(missing, 'rb')
  assert isinstance(info.value, (FileNotFoundError, errors.UserError))
  assert str(info.value).count(missing) == 1  # Named once, not repeated.
  with pytest.raises(errors.BadFileError, match=r'^x\.pth: truncated\.$'):
    with errors.user_file('x.pth'):
      raise ValueError('truncated.')
  with pytest.raises(KeyError):  # Not a file problem: unchanged.
    with errors.user_file('x.pth'):
      raise KeyError('bug')
