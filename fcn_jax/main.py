"""Trains and evaluates an FCN.

    python -m fcn_jax.main --workdir=runs/fcn8s [--config=fcn_jax/configs/default.py]
        [--config.KEY=VALUE ...]

Running it again on the same workdir resumes from the latest checkpoint.
"""

import logging as std_logging

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fcn_jax import train

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and '
                    'the resolved config.')
config_flags.DEFINE_config_file(
    'config', 'fcn_jax/configs/default.py', 'Training configuration file.',
    lock_config=True)
flags.mark_flags_as_required(['workdir'])


class _QuietLibraries:
  """Hides INFO chatter of Orbax and JAX internals; warnings still show."""

  def filter(self, record) -> bool:
    noisy = ('/orbax/', '/jax/_src/')
    return record.levelno > std_logging.INFO or not any(
        part in record.pathname for part in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
