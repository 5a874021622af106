"""PASCAL VOC segmentation and any folder in VOC layout ('voc', 'voc_dir').

Layout (what the VOCdevkit archives unpack to, and what users give their own
data)::

  <root>/JPEGImages/<id>.jpg
  <root>/SegmentationClass/<id>.png         palette or grayscale class indices
  <root>/ImageSets/Segmentation/<split>.txt one id per line
  <root>/class_names.txt                    optional: one class name per line
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging

from fcn_jax.data import decode

VOC_CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
    'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
    'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')

CLASS_NAMES_FILE = 'class_names.txt'


class VOCLayoutSource:
  """Random-access examples of one split of a VOC-layout folder.

  Attributes:
    root: the folder holding JPEGImages/ and SegmentationClass/.
    ids: image ids of the split, in list order.
    num_classes: label values must be in [0, num_classes) or 255.
    skip_bad: replace an example whose files are missing or bad by an
      all-ignore placeholder (with a warning) instead of raising.
  """

  def __init__(self, root: str, split: str, num_classes: int,
               ids: Sequence[str] | None = None, skip_bad: bool = False,
               image_dir: str = 'JPEGImages',
               label_dir: str = 'SegmentationClass'):
    if not os.path.isdir(root):
      raise decode.DataError(f'{root}: dataset folder not found.')
    self.root = root
    self.split = split
    self.num_classes = num_classes
    self.skip_bad = skip_bad
    self._image_dir = image_dir
    self._label_dir = label_dir
    if ids is None:
      ids = decode.read_split(split_path(root, split))
    self.ids = _check_files_exist(self, list(ids), skip_bad)
    if not self.ids:
      raise decode.DataError(f'{root}: split {split!r} has no usable images.')
    self.skipped = decode.SkipCounter()

  def image_path(self, image_id: str) -> str:
    return os.path.join(self.root, self._image_dir, image_id + '.jpg')

  def label_path(self, image_id: str) -> str:
    return os.path.join(self.root, self._label_dir, image_id + '.png')

  def read_label(self, path: str) -> np.ndarray:
    """Class-index label map of one file (palette or grayscale PNG)."""
    return decode.read_label_png(path)

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index: int) -> dict:
    image_id = self.ids[index]
    image_path, label_path = self.image_path(image_id), self.label_path(image_id)
    try:
      image = decode.read_image(image_path)
      label = self.read_label(label_path)
      decode.check_example(image, label, self.num_classes, image_path,
                           label_path)
    except decode.DataError as e:
      if not self.skip_bad:
        raise
      self.skipped.skip(e)
      return decode.placeholder_example(index)
    return {'image': image, 'label': label, 'id': np.int32(index)}


def split_path(root: str, split: str) -> str:
  return os.path.join(root, 'ImageSets', 'Segmentation', split + '.txt')


def _check_files_exist(source: VOCLayoutSource, ids: list[str],
                       skip_bad: bool) -> list[str]:
  """Checks up front (cheap stats) that every image and label file exists."""
  kept = []
  missing = []
  for image_id in ids:
    gone = decode.missing_files([source.image_path(image_id),
                                 source.label_path(image_id)])
    if gone:
      missing.append(gone[0])
    else:
      kept.append(image_id)
  if missing and not skip_bad:
    raise decode.DataError(
        f'{missing[0]}: file not found ({len(missing)} of {len(ids)} examples '
        f'of split {source.split!r} have missing files; set '
        'config.skip_bad_examples=True to skip them).')
  if missing:
    logging.warning('Split %r: skipped %d of %d examples with missing files '
                    '(first: %s).', source.split, len(missing), len(ids),
                    missing[0])
  return kept


def read_class_names(root: str) -> tuple[str, ...] | None:
  """Class names from <root>/class_names.txt, or None if there is none."""
  path = os.path.join(root, CLASS_NAMES_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    names = tuple(line.strip() for line in f if line.strip())
  if not names:
    raise decode.DataError(f'{path}: no class names in the file.')
  return names


def find_dataset_root(data_dir: str, candidates: Sequence[str], marker: str,
                      what: str) -> str:
  """The first of `candidates` holding a `marker` folder, else a DataError."""
  if not data_dir or not os.path.isdir(data_dir):
    raise decode.DataError(f'config.data_dir={data_dir!r}: folder not found.')
  for candidate in candidates:
    if os.path.isdir(os.path.join(candidate, marker)):
      return candidate
  raise decode.DataError(
      f'config.data_dir={data_dir!r}: no {what} folder found (looked for '
      f'{", ".join(candidates)} with a {marker}/ folder inside).')


def find_voc_root(data_dir: str, years: Sequence[str]) -> str:
  """The VOC<year> folder under `data_dir` (first year found wins).

  Accepts data_dir = the folder the archive was unpacked in (holding
  VOCdevkit/), VOCdevkit/ itself, or VOC<year>/ itself.
  """
  candidates = []
  for year in years:
    candidates += [os.path.join(data_dir or '', 'VOCdevkit', f'VOC{year}'),
                   os.path.join(data_dir or '', f'VOC{year}')]
  candidates.append(data_dir)
  return find_dataset_root(data_dir, candidates, 'JPEGImages', 'VOC')
