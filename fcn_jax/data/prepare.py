r"""Prepares a TFDS dataset as array_record data, readable without TensorFlow.

    python -m fcn_jax.data.prepare --name=voc_segmentation/2012 \
        --manual_dir=~/downloads --data_dir=~/tensorflow_datasets
    python -m fcn_jax.data.prepare --name=oxford_iiit_pet

Any TFDS dataset name works (TFDS downloads what it can; VOC and SBD come
from the archives in --manual_dir). Train with
--config.dataset=tfds:<name> --config.data_dir=<data_dir>.
"""

from __future__ import annotations

import os

from absl import flags
from absl import logging

from fcn_jax import cli
from fcn_jax import errors

flags.DEFINE_string('name', None, 'TFDS dataset name, e.g. '
                    'voc_segmentation/2012, sbd_segmentation, oxford_iiit_pet.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write to (default: '
                    'TFDS default, ~/tensorflow_datasets).')
flags.DEFINE_string('manual_dir', None, 'Folder holding manually downloaded '
                    'archives (VOC, SBD).')
flags.mark_flag_as_required('name')
FLAGS = flags.FLAGS


def prepare(name: str, data_dir: str | None = None,
            manual_dir: str | None = None):
  """Builds `name` as array_record under `data_dir`; returns the builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from fcn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top,unused-import
  if manual_dir is not None:
    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir):
      raise errors.MissingFileError(f'--manual_dir={manual_dir}: folder not '
                                    'found.')
  if data_dir is not None:
    data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv):
  del argv
  builder = prepare(FLAGS.name, FLAGS.data_dir, FLAGS.manual_dir)
  logging.info('Prepared %s in %s: %s', FLAGS.name, builder.data_dir,
               {k: v.num_examples for k, v in builder.info.splits.items()})


if __name__ == '__main__':
  cli.run(main, path_flags=('data_dir', 'manual_dir'))
