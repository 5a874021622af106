"""A random-access source whose examples are several files per image id.

NYUDv2 (colour, depth, HHA, label), SIFT Flow (image, semantic and
geometric labels) and PASCAL-Context (image, label) store one file per
modality. `FileSetSource` checks up front that every file of a split exists,
decodes on access, and turns a bad file into one `DataError` naming it, or,
with `skip_bad`, into a counted all-ignore placeholder, as the VOC loaders do.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging

from fcn_jax.data import decode


class FileSetSource:
  """Examples of one split; subclasses define `paths` and `load`.

  Attributes:
    root: the dataset folder.
    split: the split's name (for messages).
    ids: image ids of the split, in list order.
    skip_bad: replace an example with a bad file by an all-ignore placeholder
      (with a warning) instead of raising.
    skipped: counts the placeholders handed out.
  """

  def __init__(self, root: str, split: str, ids: Sequence[str],
               skip_bad: bool = False):
    if not os.path.isdir(root):
      raise decode.DataError(f'{root}: dataset folder not found.')
    self.root = root
    self.split = split
    self.skip_bad = skip_bad
    self.ids = self._existing(list(ids))
    if not self.ids:
      raise decode.DataError(f'{root}: split {split!r} has no usable images.')
    self.skipped = decode.SkipCounter()

  def paths(self, image_id: str) -> dict[str, str]:
    """The files of one example, by role ('image', 'label', ...)."""
    raise NotImplementedError

  def load(self, paths: dict[str, str]) -> dict:
    """Decodes one example's files; raises DataError naming a bad file."""
    raise NotImplementedError

  def placeholder(self) -> dict:
    """What a skipped example is replaced by (every label pixel ignored)."""
    return decode.placeholder_example(0)

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, index: int) -> dict:
    try:
      example = self.load(self.paths(self.ids[index]))
    except decode.DataError as e:
      if not self.skip_bad:
        raise
      self.skipped.skip(e)
      example = self.placeholder()
    example['id'] = np.int32(index)
    return example

  def _existing(self, ids: list[str]) -> list[str]:
    """Checks up front (cheap stats) that every file of every example exists."""
    kept, missing = [], []
    for image_id in ids:
      gone = decode.missing_files(list(self.paths(image_id).values()))
      if gone:
        missing.append(gone[0])
      else:
        kept.append(image_id)
    if missing and not self.skip_bad:
      raise decode.DataError(
          f'{missing[0]}: file not found ({len(missing)} of {len(ids)} '
          f'examples of split {self.split!r} have missing files; set '
          'config.skip_bad_examples=True to skip them).')
    if missing:
      logging.warning('Split %r: skipped %d of %d examples with missing files '
                      '(first: %s).', self.split, len(missing), len(ids),
                      missing[0])
    return kept


def check_same_size(reference: np.ndarray, reference_path: str,
                    array: np.ndarray, path: str, what: str) -> None:
  """DataError unless `array` has the height and width of `reference`."""
  if array.shape[:2] != reference.shape[:2]:
    raise decode.DataError(
        f'{path}: {what} is {array.shape[1]}x{array.shape[0]} (WxH) but its '
        f'image {reference_path} is {reference.shape[1]}x'
        f'{reference.shape[0]}.')


def shift_void(raw: np.ndarray) -> np.ndarray:
  """Labels 1..K -> classes 0..K-1 and 0 -> 255 (void), as uint8.

  The reference layers do this with a uint8 wrap-around (label -= 1).
  """
  return np.where(raw == 0, decode.IGNORE_LABEL, raw - 1).astype(np.uint8)


def split_ids(root: str, split: str, packaged: dict[str, list[str]]
              ) -> list[str]:
  """Ids of `split`: <root>/<split>.txt if present, else the shipped list."""
  path = os.path.join(root, split + '.txt')
  if os.path.isfile(path):
    return decode.read_split(path)
  if split in packaged:
    return packaged[split]
  raise decode.DataError(f'{path}: split list not found (and {split!r} is '
                         f'not one of the shipped splits {sorted(packaged)}).')
