"""PASCAL-Context (Mottaghi et al., CVPR 2014): the 59-class task.

Full-scene labels of the PASCAL VOC2010 images. The raw annotation of an
image, trainval/<id>.mat (key 'LabelMap'), holds indices into the 459 raw
labels (classes-400.txt); the 59 most frequent classes (classes-59.txt, in
output order after background) are kept and everything else, unlabelled
pixels included, is class 0 = background, as in the reference
pascalcontext_layers.py. Layout under data_dir::

  VOCdevkit/VOC2010/JPEGImages/<id>.jpg            (or VOC2010/ directly)
  VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt the reference's splits
  trainval/<id>.mat                                (PASCAL-Context; also
                                                    found in pascal-context/)
"""

from __future__ import annotations

import os

import numpy as np

from fcn_jax.data import decode
from fcn_jax.data import file_source
from fcn_jax.data import lists
from fcn_jax.data import voc

# classes-59.txt names three classes differently from classes-400.txt; the
# reference renames them before matching (pascalcontext_layers.py).
RENAMED_IN_400 = {'diningtable': 'table', 'bedcloth': 'bedclothes',
                  'clothes': 'cloth'}


def _numbered(name: str) -> list[tuple[int, str]]:
  """'<n>: <name>' lines -> (n, name without spaces)."""
  rows = []
  for line in lists.read_lines(name):
    number, label = line.split(':', 1)
    rows.append((int(number), label.strip().replace(' ', '')))
  return rows


def class_names() -> tuple[str, ...]:
  """background + the 59 classes, in output order (60 outputs)."""
  return tuple(label for _, label in _numbered(
      'pascal_context_classes-59.txt'))


def raw_to_task_table() -> np.ndarray:
  """(460,) uint8 table: raw LabelMap value -> 59-class task label (0 else)."""
  raw = {label: number for number, label in _numbered(
      'pascal_context_classes-400.txt')}
  table = np.zeros(max(raw.values()) + 1, np.uint8)
  for index, name in enumerate(class_names()[1:], start=1):
    table[raw[RENAMED_IN_400.get(name, name)]] = index
  return table


def read_label(path: str, table: np.ndarray) -> np.ndarray:
  """trainval/<id>.mat -> (H, W) uint8 labels of the 59-class task."""
  raw = decode.mat_label_map(path, 'LabelMap', 0, len(table) - 1)
  return table[raw]


class PASCALContextSource(file_source.FileSetSource):
  """Examples {'image': (H, W, 3) uint8 RGB, 'label': (H, W) uint8, 'id'}."""

  def __init__(self, voc_root: str, context_root: str, split: str,
               skip_bad: bool = False):
    self.voc_root = voc_root
    self.context_root = context_root
    self.table = raw_to_task_table()
    ids = decode.read_split(os.path.join(voc_root, 'ImageSets', 'Main',
                                         split + '.txt'))
    super().__init__(voc_root, split, ids, skip_bad)

  def paths(self, image_id: str) -> dict[str, str]:
    return {'image': os.path.join(self.voc_root, 'JPEGImages',
                                  image_id + '.jpg'),
            'label': os.path.join(self.context_root, 'trainval',
                                  image_id + '.mat')}

  def load(self, paths: dict[str, str]) -> dict:
    image = decode.read_image(paths['image'])
    label = read_label(paths['label'], self.table)
    file_source.check_same_size(image, paths['image'], label, paths['label'],
                                'label')
    return {'image': image, 'label': label}


def find_context_root(data_dir: str) -> str:
  """The folder holding PASCAL-Context's trainval/ .mat files."""
  candidates = [os.path.join(data_dir or '', name)
                for name in ('pascal-context', 'PASCAL-Context',
                             'trainval_merged')] + [data_dir]
  for candidate in candidates:
    if os.path.isdir(os.path.join(candidate, 'trainval')):
      return candidate
  raise decode.DataError(
      f'config.data_dir={data_dir!r}: no PASCAL-Context annotations found '
      f'(looked for a trainval/ folder of .mat files in '
      f'{", ".join(candidates)}).')


def pascal_context_datasets(data_dir: str, train_split: str = '',
                            val_split: str = '', skip_bad: bool = False):
  """(train, val) sources of VOC2010 with PASCAL-Context labels."""
  voc_root = voc.find_voc_root(data_dir, ('2010',))
  context_root = find_context_root(data_dir)
  return (PASCALContextSource(voc_root, context_root, train_split or 'train',
                              skip_bad),
          PASCALContextSource(voc_root, context_root, val_split or 'val',
                              skip_bad))
