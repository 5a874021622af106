"""`<workdir>/dataset_info.json`: what a trained model's outputs mean.

Training writes the dataset's number of classes, class names, ignore label
and palette next to config.json, so that evaluate, predict, export and
`inference.load` name the classes without the training data (and without
rebuilding the dataset, which checks every file).
"""

from __future__ import annotations

import json
import os

import numpy as np

from fcn_jax import errors
from fcn_jax.metrics import IGNORE_INDEX

FILE = 'dataset_info.json'


class DatasetInfoError(ValueError, errors.UserError):
  """dataset_info.json is unreadable or inconsistent."""


def save(workdir: str, name: str, class_names, palette) -> str:
  """Writes `<workdir>/dataset_info.json` atomically; returns its path."""
  class_names = [str(n) for n in class_names]
  palette = np.asarray(palette, np.uint8)[:len(class_names)]
  record = {'dataset': name, 'num_classes': len(class_names),
            'class_names': class_names, 'ignore_label': IGNORE_INDEX,
            'palette': palette.tolist()}
  path = os.path.join(workdir, FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)
  return path


def load(workdir: str) -> dict | None:
  """The record of `<workdir>/dataset_info.json`, or None if there is none.

  Returns:
    A dict with 'num_classes', 'class_names' (tuple), 'ignore_label' and
    'palette' ((num_classes, 3) uint8).

  Raises:
    DatasetInfoError: the file exists but is not a valid record.
  """
  path = os.path.join(workdir, FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    names = tuple(str(n) for n in record['class_names'])
    num_classes = int(record['num_classes'])
    palette = np.asarray(record.get('palette') or _voc_palette(num_classes),
                         np.uint8)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DatasetInfoError(f'{path}: unreadable ({e}).') from None
  if len(names) != num_classes or palette.shape != (num_classes, 3):
    raise DatasetInfoError(
        f'{path}: num_classes={num_classes} but {len(names)} class names and '
        f'{len(palette)} palette colours.')
  return {'dataset': record.get('dataset', ''), 'num_classes': num_classes,
          'class_names': names,
          'ignore_label': int(record.get('ignore_label', IGNORE_INDEX)),
          'palette': palette}


def _voc_palette(num_classes: int) -> np.ndarray:
  from fcn_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.voc_palette(num_classes)
