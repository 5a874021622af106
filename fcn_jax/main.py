"""Trains and evaluates an FCN.

    python -m fcn_jax.main --workdir=runs/fcn8s [--config=fcn_jax/configs/default.py]
        [--config.KEY=VALUE ...]

Running it again on the same workdir resumes from the latest checkpoint.
Exit status: 0 finished, 1 error (bad flag or config value, missing or bad
data, workdir in use, non-finite loss, checkpoints unreadable or disk
full; one line `error: ...` on stderr), 143 stopped by SIGTERM and 130 by SIGINT
after writing a checkpoint (run the same command again to resume).
"""

import os
import re
import shlex
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import distributed
from fcn_jax import fault_tolerance
from fcn_jax import train
from fcn_jax import writers

FLAGS = flags.FLAGS

# Found inside the package, so that the command works from any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              'configs', 'default.py')

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and '
                    'the resolved config.')
# Multi-host runs (see fcn_jax/distributed.py); a single process needs none.
flags.DEFINE_string('coordinator_address', None, "Process 0's 'host:port' "
                    '(or $JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run '
                     '(or $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 '
                     '(or $JAX_PROCESS_ID).')
flags.DEFINE_bool('distributed', False, 'Join a multi-host run, detecting '
                  'the settings from the cluster (TPU pod, SLURM, Open MPI).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_library_logs()
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, auto_detect=FLAGS.distributed)
  except ValueError as e:
    raise errors.FlagError(str(e)) from None
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(cli.expand_config_paths(FLAGS.config),
                             FLAGS.workdir)
  except fault_tolerance.Interrupted as e:
    command = ' '.join(['python -m fcn_jax.main'] +
                       [shlex.quote(a) for a in sys.argv[1:]])
    logging.warning('%s: %s', e, command)
    sys.exit(e.exit_code)


def _unknown_config_key(error: Exception, argv) -> None:
  """One-line error for --config.NO_SUCH_KEY=... (ml_collections raises
  AttributeError, KeyError or TypeError with a traceback), exit status 1."""
  text = str(error).replace('\\', '')
  if isinstance(error, TypeError):  # --config.a.b where config.a is no dict.
    flag = next((a for a in argv[1:] if a.startswith('--config.') and
                 a.count('.') > 1), '--config')
    cli.report_error(f'{flag.split("=")[0]}: no such config key.')
    sys.exit(cli.EXIT_USER_ERROR)
  key = re.search(r'[A-Za-z_][\w]*', text).group(0)
  flag = next((a for a in argv[1:] if a.startswith('--config.') and
               a.split('=')[0].endswith('.' + key)), f'--config.{key}')
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  hint = (f'did you mean {suggestion.group(1)!r}?' if suggestion else
          'see the config file for the keys')
  cli.report_error(f'{flag.split("=")[0]}: no such config key {key!r} '
                   f'({hint}).')
  sys.exit(cli.EXIT_USER_ERROR)


def parse_flags(argv):
  """absl's flag parsing, plus a one-line error for an unknown config key."""
  try:
    return cli.parse_flags(argv)
  except (AttributeError, KeyError, TypeError) as e:
    _unknown_config_key(e, argv)


def define_config_flag():
  """--config (a config file) and its --config.KEY=VALUE overrides.

  ml_collections reads the overrides of the default file from sys.argv when
  the flag is defined, so an unknown key already fails here; it also loads
  the file then, so `~` and `$VARS` in `--config=PATH` are expanded first.
  """
  sys.argv[1:] = [
      '--config=' + cli.expand_path(a.split('=', 1)[1])
      if a.startswith('--config=') else a for a in sys.argv[1:]]
  try:
    config_flags.DEFINE_config_file(
        'config', DEFAULT_CONFIG, 'Training configuration file.',
        lock_config=True)
  except (AttributeError, KeyError, TypeError) as e:
    _unknown_config_key(e, sys.argv)
  flags.mark_flags_as_required(['workdir'])


if __name__ == '__main__':
  define_config_flag()
  cli.run(main, flags_parser=parse_flags, path_flags=('workdir',))
