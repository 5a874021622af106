"""SIFT Flow (Liu et al., 2011; the labels of Tighe and Lazebnik, ECCV 2010).

2,688 outdoor scenes of 256x256, each with two labelings: 33 semantic classes
and 3 geometric ones. The layout of SiftFlowDataset.zip (the reference
siftflow_layers.py)::

  <root>/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
  <root>/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
  <root>/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
  <root>/{trainval,test}.txt         image ids (shipped if absent)

Both .mat files hold 'S'. Semantic: 0 void, 1..33 classes. Geometric: -1 (and
0) void, 1..3 classes (the reference first sets -1 to 0). Both are shifted by
-1 so that void is 255. The image is preprocessed here with the reference's
mean into the float32 network input.
"""

from __future__ import annotations

import os

import numpy as np

from fcn_jax.data import decode
from fcn_jax.data import file_source
from fcn_jax.data import lists
from fcn_jax.data import voc

SUBDIR = 'spatial_envelope_256x256_static_8outdoorcategories'
NUM_CLASSES = 33
NUM_GEO_CLASSES = 3
MEAN_BGR = (114.578, 115.294, 108.353)


def _names(section: str, count: int) -> tuple[str, ...]:
  """Class names of one section of the reference's classes.txt."""
  lines = lists.read_lines('siftflow_classes.txt')
  start = next(i for i, line in enumerate(lines)
               if line.startswith(section)) + 1
  names = [line.split(maxsplit=1)[1] for line in lines[start:start + count]]
  return tuple(names)


def class_names() -> tuple[str, ...]:
  """The 33 semantic classes in output order."""
  return _names('Semantic:', NUM_CLASSES)


def geo_class_names() -> tuple[str, ...]:
  """The 3 geometric classes in output order (sky, horizontal, vertical)."""
  return _names('Geometric:', NUM_GEO_CLASSES)


def packaged_splits() -> dict[str, list[str]]:
  return {s: lists.read_lines(f'siftflow_{s}.txt') for s in ('trainval', 'test')}


def preprocess_image(rgb: np.ndarray) -> np.ndarray:
  """RGB uint8 -> BGR float32 minus the SIFT Flow mean (the reference)."""
  return rgb[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR, np.float32)


def read_semantic(path: str) -> np.ndarray:
  return file_source.shift_void(decode.mat_label_map(path, 'S', 0,
                                                     NUM_CLASSES))


def read_geometric(path: str) -> np.ndarray:
  raw = decode.mat_label_map(path, 'S', -1, NUM_GEO_CLASSES)
  return file_source.shift_void(np.maximum(raw, 0))


class SIFTFlowSource(file_source.FileSetSource):
  """Examples {'image': (256, 256, 3) float32 preprocessed, 'label':
  semantic classes, 'geo_label': geometric classes (uint8, 255 void), 'id'}."""

  def __init__(self, root: str, split: str, skip_bad: bool = False):
    ids = file_source.split_ids(root, split, packaged_splits())
    super().__init__(root, split, ids, skip_bad)

  def paths(self, image_id: str) -> dict[str, str]:
    def path(folder, ext):
      return os.path.join(self.root, folder, SUBDIR, image_id + ext)
    return {'image': path('Images', '.jpg'),
            'label': path('SemanticLabels', '.mat'),
            'geo_label': path('GeoLabels', '.mat')}

  def load(self, paths: dict[str, str]) -> dict:
    image = decode.read_image(paths['image'])
    example = {'image': preprocess_image(image),
               'label': read_semantic(paths['label']),
               'geo_label': read_geometric(paths['geo_label'])}
    for key in ('label', 'geo_label'):
      file_source.check_same_size(image, paths['image'], example[key],
                                  paths[key], key.replace('_', ' '))
    return example

  def placeholder(self) -> dict:
    ignored = np.full((32, 32), decode.IGNORE_LABEL, np.uint8)
    return {'image': np.zeros((32, 32, 3), np.float32), 'label': ignored,
            'geo_label': ignored.copy()}


def siftflow_datasets(data_dir: str, train_split: str = '',
                      val_split: str = '', skip_bad: bool = False):
  """(trainval, test) sources, as the reference trains and scores."""
  root = find_siftflow_root(data_dir)
  return (SIFTFlowSource(root, train_split or 'trainval', skip_bad),
          SIFTFlowSource(root, val_split or 'test', skip_bad))


def find_siftflow_root(data_dir: str) -> str:
  """data_dir or its SiftFlowDataset/ or sift-flow/ folder."""
  candidates = [os.path.join(data_dir or '', name)
                for name in ('SiftFlowDataset', 'sift-flow')] + [data_dir]
  return voc.find_dataset_root(data_dir, candidates, 'SemanticLabels',
                               'SIFT Flow')
