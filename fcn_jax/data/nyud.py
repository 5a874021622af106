"""NYUDv2 (Silberman et al., ECCV 2012) in the 40-class task of Gupta et al.

The layout of the FCN authors' nyud.tar.gz (the reference nyud_layers.py)::

  <root>/{train,val,test,trainval}.txt     image ids (shipped if absent)
  <root>/data/images/img_<id>.png          RGB
  <root>/data/depth/img_<id>.png           depth (16-bit), used as log depth
  <root>/data/hha/img_<id>.png             HHA (Gupta et al., ECCV 2014)
  <root>/segmentation/img_<id>.mat         'segmentation': 0 void, 1..40

The reference trains on trainval (795 images) and scores on test (654).
Examples are preprocessed here, exactly as the reference layer does, into
one float32 network input whose channels are the modalities of
`config.nyud_input` in order:

  color       BGR - mean_bgr                       (3 channels)
  hha         HHA - mean_hha                       (3)
  color-d     BGR - mean_bgr, log(depth) - mean    (4, the reference Concat)
  color-hha   BGR - mean_bgr, HHA - mean_hha       (6, split into two streams)
"""

from __future__ import annotations

import os

import numpy as np

from fcn_jax.data import decode
from fcn_jax.data import file_source
from fcn_jax.data import lists
from fcn_jax.data import voc

INPUTS = ('color', 'hha', 'color-d', 'color-hha')
NUM_CLASSES = 40
# The reference layer's means (BGR; HHA in file channel order; log depth).
MEAN_BGR = (116.190, 97.203, 92.318)
MEAN_HHA = (132.431, 94.076, 118.477)
MEAN_LOG_DEPTH = 7.844
# Modalities each input mode reads besides the label.
MODALITIES = {'color': ('color',), 'hha': ('hha',),
              'color-d': ('color', 'depth'), 'color-hha': ('color', 'hha')}
INPUT_CHANNELS = {'color': 3, 'hha': 3, 'color-d': 4, 'color-hha': 6}


def class_names() -> tuple[str, ...]:
  """The 40 class names in output order (the reference's classes.txt)."""
  names = lists.read_lines('nyud_classes.txt')[:NUM_CLASSES]
  return tuple(names)


def packaged_splits() -> dict[str, list[str]]:
  splits = {s: lists.read_lines(f'nyud_{s}.txt')
            for s in ('train', 'val', 'test')}
  splits['trainval'] = splits['train'] + splits['val']
  return splits


def check_input(mode: str) -> None:
  if mode not in INPUTS:
    raise decode.DataError(f'config.nyud_input={mode!r}: expected one of '
                           f'{INPUTS}.')


def read_depth(path: str) -> np.ndarray:
  """A depth PNG (16- or 8-bit, one channel) as (H, W) float32, all > 0."""
  with decode._open_image(path) as image:  # pylint: disable=protected-access
    if image.mode not in ('I;16', 'I;16B', 'I;16L', 'I', 'L', 'F'):
      raise decode.DataError(f'{path}: depth PNG has mode {image.mode!r}; '
                             'expected one channel (16-bit or 8-bit).')
    depth = np.asarray(image).astype(np.float32)
  if depth.size and depth.min() <= 0:
    raise decode.DataError(f'{path}: depth has values <= 0 (min '
                           f'{depth.min():g}); log depth needs them > 0 '
                           '(use the filled depth of nyud.tar.gz).')
  return depth


def preprocess_inputs(mode: str, color: np.ndarray | None = None,
                      hha: np.ndarray | None = None,
                      depth: np.ndarray | None = None) -> np.ndarray:
  """The reference preprocessing of `mode`: one (H, W, C) float32 input.

  Args:
    mode: one of INPUTS.
    color: (H, W, 3) uint8 RGB.
    hha: (H, W, 3) uint8 HHA, channels in file order.
    depth: (H, W) raw depth (> 0).
  """
  parts = []
  for modality in MODALITIES[mode]:
    if modality == 'color':
      parts.append(color[..., ::-1].astype(np.float32)
                   - np.asarray(MEAN_BGR, np.float32))
    elif modality == 'hha':
      parts.append(hha.astype(np.float32) - np.asarray(MEAN_HHA, np.float32))
    else:
      parts.append(np.log(depth.astype(np.float32))[..., None]
                   - np.float32(MEAN_LOG_DEPTH))
  return np.concatenate(parts, axis=-1)


def read_label(path: str) -> np.ndarray:
  """segmentation/img_<id>.mat -> classes 0..39, void 255 (uint8)."""
  raw = decode.mat_label_map(path, 'segmentation', 0, NUM_CLASSES)
  return file_source.shift_void(raw)


class NYUDSource(file_source.FileSetSource):
  """Examples {'image': (H, W, C) float32 preprocessed input, 'label':
  (H, W) uint8, 'id'}."""

  def __init__(self, root: str, split: str, mode: str = 'color',
               skip_bad: bool = False):
    check_input(mode)
    self.mode = mode
    ids = file_source.split_ids(root, split, packaged_splits())
    super().__init__(root, split, ids, skip_bad)

  def paths(self, image_id: str) -> dict[str, str]:
    data = os.path.join(self.root, 'data')
    folders = {'color': 'images', 'hha': 'hha', 'depth': 'depth'}
    paths = {m: os.path.join(data, folders[m], f'img_{image_id}.png')
             for m in MODALITIES[self.mode]}
    paths['label'] = os.path.join(self.root, 'segmentation',
                                  f'img_{image_id}.mat')
    return paths

  def load(self, paths: dict[str, str]) -> dict:
    arrays = {}
    for modality in MODALITIES[self.mode]:
      path = paths[modality]
      arrays[modality] = (read_depth(path) if modality == 'depth'
                          else decode.read_image(path))
    label = read_label(paths['label'])
    first = MODALITIES[self.mode][0]
    for modality, array in arrays.items():
      if modality != first:
        file_source.check_same_size(arrays[first], paths[first], array,
                                    paths[modality], modality)
    file_source.check_same_size(arrays[first], paths[first], label,
                                paths['label'], 'label')
    return {'image': preprocess_inputs(self.mode, **arrays), 'label': label}

  def placeholder(self) -> dict:
    return {'image': np.zeros((32, 32, INPUT_CHANNELS[self.mode]), np.float32),
            'label': np.full((32, 32), decode.IGNORE_LABEL, np.uint8)}


def nyud_datasets(data_dir: str, mode: str, train_split: str = '',
                  val_split: str = '', skip_bad: bool = False):
  """(train, val) sources: trainval / test unless splits are named."""
  root = find_nyud_root(data_dir)
  return (NYUDSource(root, train_split or 'trainval', mode, skip_bad),
          NYUDSource(root, val_split or 'test', mode, skip_bad))


def find_nyud_root(data_dir: str) -> str:
  """data_dir itself or its nyud/ folder (what nyud.tar.gz unpacks to)."""
  candidates = [os.path.join(data_dir or '', 'nyud'), data_dir]
  return voc.find_dataset_root(data_dir, candidates, 'segmentation', 'NYUDv2')
