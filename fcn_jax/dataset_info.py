"""`<workdir>/dataset_info.json`: what a trained model's outputs mean.

Training writes the dataset's number of classes, class names, ignore label
and palette next to config.json, so that evaluate, predict, export and
`inference.load` name the classes without the training data (and without
rebuilding the dataset, which checks every file).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from fcn_jax import errors
from fcn_jax import workdir as workdir_lib
from fcn_jax.metrics import IGNORE_INDEX



class DatasetInfoError(ValueError, errors.UserError):
  """dataset_info.json is unreadable or inconsistent."""


def save(workdir: str, name: str, class_names, palette) -> str:
  """Writes `<workdir>/dataset_info.json` atomically; returns its path."""
  class_names = [str(n) for n in class_names]
  palette = np.asarray(palette, np.uint8)[:len(class_names)]
  record = {'dataset': name, 'num_classes': len(class_names),
            'class_names': class_names, 'ignore_label': IGNORE_INDEX,
            'palette': palette.tolist()}
  path = os.path.join(workdir, workdir_lib.DATASET_INFO_FILE)
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
  path = os.path.join(workdir, workdir_lib.DATASET_INFO_FILE)
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


def dataset_meta(config: ml_collections.ConfigDict, num_classes: int,
                 workdir: str | None = None
                 ) -> tuple[tuple[str, ...], np.ndarray]:
  """Class names and palette for `config.dataset`.

  Reads `<workdir>/dataset_info.json` (written by training) when there is
  one; else the dataset's meta data when the dataset is available here;
  otherwise (e.g. converted weights on a machine without the training data)
  VOC's names for 21 classes and numbered names else, with the VOC colour map.
  """
  # pylint: disable=g-import-not-at-top
  from fcn_jax import input_pipeline
  from fcn_jax import tasks
  from fcn_jax.data import voc
  # pylint: enable=g-import-not-at-top
  info = load(workdir) if workdir else None
  if info is not None and info['num_classes'] == num_classes:
    return info['class_names'], info['palette']
  try:
    _, _, info = input_pipeline.create_datasets(config)
    if info.num_classes == num_classes:
      return tuple(info.class_names), np.asarray(info.palette, np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    logging.info('Dataset %r not available for class names (%s).',
                 config.dataset, _first_line(e))
  names = tuple(f'class_{i}' for i in range(num_classes))
  shipped = tasks.shipped_class_names(config.dataset)
  if num_classes == len(voc.VOC_CLASS_NAMES):
    names = voc.VOC_CLASS_NAMES
  elif shipped is not None and len(shipped) == num_classes:
    names = shipped
  return names, _voc_palette(num_classes)


def _first_line(e: Any) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__
