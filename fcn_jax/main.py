"""Trains and evaluates an FCN.

    python -m fcn_jax.main --workdir=runs/fcn8s [--config=fcn_jax/configs/default.py]
        [--config.KEY=VALUE ...]

Running it again on the same workdir resumes from the latest checkpoint.
Exit status: 0 finished, 1 error (bad flag or config value, workdir in use,
non-finite loss, checkpoints unreadable or disk full; one line on stderr), 143 stopped by SIGTERM and 130 by SIGINT
after writing a checkpoint (run the same command again to resume).
"""

import shlex
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fcn_jax import checkpointing
from fcn_jax import distributed
from fcn_jax import fault_tolerance
from fcn_jax import train
from fcn_jax import writers

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and '
                    'the resolved config.')
config_flags.DEFINE_config_file(
    'config', 'fcn_jax/configs/default.py', 'Training configuration file.',
    lock_config=True)
flags.mark_flags_as_required(['workdir'])
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
    raise app.UsageError(str(e)) from None
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except fault_tolerance.Interrupted as e:
    command = ' '.join(['python -m fcn_jax.main'] +
                       [shlex.quote(a) for a in sys.argv[1:]])
    logging.warning('%s: %s', e, command)
    sys.exit(e.exit_code)
  except (fault_tolerance.ConfigError, fault_tolerance.WorkdirLockedError,
          fault_tolerance.NonFiniteError,
          checkpointing.CheckpointUnavailableError) as e:
    # Expected failures: one line saying what is wrong, no traceback.
    logging.error('%s', e)
    sys.exit(1)


def parse_flags(argv):
  """absl's flag parsing, plus a one-line error for an unknown config key.

  ml_collections raises AttributeError (with a traceback) for
  --config.NO_SUCH_KEY=...; report it like any other flag error.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    key = str(e).strip('"\'')
    flag = next((a for a in argv[1:] if a.startswith('--config.') and
                 a.split('=')[0].endswith('.' + key)), f'--config.{key}')
    sys.stderr.write(f'FATAL Flags parsing error: {flag.split("=")[0]}: no '
                     f'such config key {key!r} (see the config file for the '
                     'keys).\n')
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
