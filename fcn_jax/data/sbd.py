"""SBD (Hariharan et al., ICCV 2011) training set with seg11valid evaluation.

The FCN paper trains on SBD's train split (8498 images) and evaluates on
`seg11valid`: the 736 images of PASCAL VOC2011 segmentation val that are not
in SBD train (shipped here as package data, fcn_jax/data/splits/).

SBD unpacks (benchmark.tgz) to::

  benchmark_RELEASE/dataset/img/<id>.jpg
  benchmark_RELEASE/dataset/cls/<id>.mat    GTcls.Segmentation: class indices
  benchmark_RELEASE/dataset/{train,val}.txt
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np

from fcn_jax.data import decode
from fcn_jax.data import mat5
from fcn_jax.data import voc

SPLITS_PACKAGE = 'fcn_jax.data.splits'


def packaged_split(name: str) -> list[str]:
  """Image ids of a split list shipped with fcn_jax (e.g. 'seg11valid')."""
  resource = importlib.resources.files(SPLITS_PACKAGE) / f'{name}.txt'
  if not resource.is_file():
    raise decode.DataError(f'No packaged split list {name!r} in '
                           f'{SPLITS_PACKAGE}.')
  return [line.strip() for line in resource.read_text().splitlines()
          if line.strip()]


def read_sbd_label(path: str) -> np.ndarray:
  """The class-index map of an SBD cls/<id>.mat file, as (H, W) uint8."""
  if not os.path.isfile(path):
    raise decode.DataError(f'{path}: file not found.')
  try:
    with open(path, 'rb') as f:
      label = mat5.read_struct_field(f.read(), 'GTcls', 'Segmentation')
  except mat5.MissingFieldError:
    raise decode.DataError(
        f'{path}: no GTcls.Segmentation in the .mat file (is this an SBD '
        'cls/ file?).') from None
  except mat5.MatError as e:
    raise decode.DataError(f'{path}: unreadable .mat file ({e}).') from None
  if label.ndim != 2 or label.size == 0:
    raise decode.DataError(f'{path}: GTcls.Segmentation has shape '
                           f'{label.shape}; expected a 2-D label map.')
  if label.min() < 0 or label.max() > 255:
    raise decode.DataError(f'{path}: label values {label.min()}..{label.max()} '
                           'do not fit 0..255.')
  return label.astype(np.uint8)


class SBDSource(voc.VOCLayoutSource):
  """Random-access examples of an SBD split (img/*.jpg + cls/*.mat)."""

  def __init__(self, root: str, split: str = 'train', num_classes: int = 21,
               skip_bad: bool = False):
    if not os.path.isdir(root):
      raise decode.DataError(f'{root}: SBD dataset folder not found.')
    ids = decode.read_split(os.path.join(root, split + '.txt'))
    super().__init__(root, split, num_classes, ids=ids, skip_bad=skip_bad,
                     image_dir='img', label_dir='cls')

  def label_path(self, image_id: str) -> str:
    return os.path.join(self.root, 'cls', image_id + '.mat')

  def read_label(self, path: str) -> np.ndarray:
    return read_sbd_label(path)


def find_sbd_root(data_dir: str) -> str:
  """benchmark_RELEASE/dataset under `data_dir` (or data_dir itself)."""
  candidates = [os.path.join(data_dir or '', 'benchmark_RELEASE', 'dataset'),
                os.path.join(data_dir or '', 'dataset'), data_dir]
  return voc.find_dataset_root(data_dir, candidates, 'cls', 'SBD')


def sbd_datasets(data_dir: str, skip_bad: bool = False):
  """(SBD train, VOC2011 seg11valid) sources: the paper's PASCAL setup.

  `data_dir` holds both unpacked archives: benchmark_RELEASE/ (SBD) and
  VOCdevkit/VOC2011/ (VOC2012 is used when VOC2011 is absent; any seg11valid
  image missing from it is reported by name).
  """
  train = SBDSource(find_sbd_root(data_dir), 'train', len(voc.VOC_CLASS_NAMES),
                    skip_bad)
  val = voc.VOCLayoutSource(voc.find_voc_root(data_dir, ('2011', '2012')),
                            'seg11valid', len(voc.VOC_CLASS_NAMES),
                            ids=packaged_split('seg11valid'), skip_bad=skip_bad)
  return train, val
