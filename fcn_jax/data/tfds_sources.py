"""'tfds:<name>' datasets read through TFDS data sources, without TensorFlow.

TFDS data sources give random access to datasets prepared in the array_record
format (``python -m fcn_jax.data.prepare`` or ``tfds build
--file_format=array_record``) and decode images with PIL, so TensorFlow is
never imported. Label maps are translated to class indices per dataset
(`TfdsSpec`); unknown datasets are read as-is from 'image' and
'segmentation_mask' features with config.num_classes classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fcn_jax.data import decode
from fcn_jax.data import voc

PREFIX = 'tfds:'


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How to read a TFDS segmentation dataset.

  Attributes:
    class_names: class names in index order; None = 'class_<i>' for
      config.num_classes classes.
    label_map: raw mask value -> class index (255 = ignore); None = identity.
      Values not in the map are an error.
    train_split: default training split.
    val_split: default evaluation split.
    image_key: feature holding the RGB image.
    label_key: feature holding the (H, W) or (H, W, 1) label map.
  """
  class_names: tuple[str, ...] | None = None
  label_map: dict[int, int] | None = None
  train_split: str = 'train'
  val_split: str = 'validation'
  image_key: str = 'image'
  label_key: str = 'segmentation_mask'


SPECS = {
    # Trimaps: 1 = pet, 2 = background, 3 = border ("not classified"), which
    # is ignored as VOC ignores its object borders. No validation split.
    'oxford_iiit_pet': TfdsSpec(class_names=('background', 'pet'),
                                label_map={1: 1, 2: 0, 3: 255},
                                val_split='test'),
    # The builders of fcn_jax.data.tfds_builders.
    'voc_segmentation': TfdsSpec(class_names=voc.VOC_CLASS_NAMES,
                                 val_split='val'),
    'sbd_segmentation': TfdsSpec(class_names=voc.VOC_CLASS_NAMES,
                                 val_split='val'),
}


def base_name(name: str) -> str:
  """'voc_segmentation/2011:1.0.0' -> 'voc_segmentation'."""
  return name.split('/')[0].split(':')[0]


def spec_for(name: str) -> TfdsSpec:
  return SPECS.get(base_name(name), TfdsSpec())


def _label_lut(label_map: dict[int, int] | None) -> np.ndarray | None:
  if label_map is None:
    return None
  lut = np.full(256, -1, np.int16)
  for raw, cls in label_map.items():
    lut[raw] = cls
  return lut


class TfdsSource:
  """Random-access examples of one split of a prepared TFDS dataset.

  The underlying data source is opened lazily in each process (it holds open
  files), so the object pickles into grain worker processes.
  """

  def __init__(self, name: str, split: str, data_dir: str, num_classes: int,
               spec: TfdsSpec | None = None, skip_bad: bool = False):
    self.name = name
    self.split = split
    self.data_dir = data_dir or None
    self.num_classes = num_classes
    self.spec = spec or spec_for(name)
    self.skip_bad = skip_bad
    self.skipped = decode.SkipCounter()
    self._lut = _label_lut(self.spec.label_map)
    self._source = None
    self._len = len(self._data())
    if not self._len:
      raise decode.DataError(f'{PREFIX}{name}: split {split!r} is empty.')

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_source'] = None
    return state

  def _data(self):
    if self._source is None:
      self._source = open_data_source(self.name, self.split, self.data_dir)
    return self._source

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    where = f'{PREFIX}{self.name} split {self.split!r} example {index}'
    try:
      example = self._data()[index]
      image, label = self._arrays(example, where)
      decode.check_example(image, label, self.num_classes, where, where)
    except decode.DataError as e:
      if not self.skip_bad:
        raise
      self.skipped.skip(e)
      return decode.placeholder_example(index)
    return {'image': image, 'label': label, 'id': np.int32(index)}

  def _arrays(self, example: dict, where: str):
    for key in (self.spec.image_key, self.spec.label_key):
      if key not in example:
        raise decode.DataError(
            f'{where}: no feature {key!r} (features: {sorted(example)}).')
    image = np.asarray(example[self.spec.image_key])
    if image.ndim == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise decode.DataError(f'{where}: image has shape {image.shape} and '
                             f'dtype {image.dtype}; expected (H, W, 3) uint8.')
    label = np.asarray(example[self.spec.label_key])
    if label.ndim == 3 and label.shape[-1] == 1:
      label = label[..., 0]
    if label.ndim != 2:
      raise decode.DataError(f'{where}: label map has shape {label.shape}; '
                             'expected (H, W) or (H, W, 1).')
    if label.min() < 0 or label.max() > 255:
      raise decode.DataError(f'{where}: label values {label.min()}.. '
                             f'{label.max()} do not fit 0..255.')
    label = label.astype(np.uint8)
    if self._lut is not None:
      mapped = self._lut[label]
      if (mapped < 0).any():
        raise decode.DataError(
            f'{where}: label values {np.unique(label[mapped < 0]).tolist()} '
            f'are not in the label map of {base_name(self.name)!r}.')
      label = mapped.astype(np.uint8)
    return image, label


def open_data_source(name: str, split: str, data_dir: str | None):
  """tfds data source of a prepared array_record dataset; never downloads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from fcn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top,unused-import
  prepare = (f'python -m fcn_jax.data.prepare --name={name}'
             + (f' --data_dir={data_dir}' if data_dir else ''))
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise decode.DataError(f'{PREFIX}{name}: no such TFDS dataset (nor a '
                           f'prepared copy under {data_dir}).') from None
  if not builder.is_prepared():
    raise decode.DataError(f'{PREFIX}{name}: not prepared under '
                           f'{builder.data_dir}; run: {prepare}')
  if split not in builder.info.splits:
    raise decode.DataError(f'{PREFIX}{name}: no split {split!r}; it has '
                           f'{sorted(builder.info.splits)}.')
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError:
    raise decode.DataError(
        f'{PREFIX}{name}: prepared under {builder.data_dir} in a format '
        f'without random access; prepare it again as array_record: {prepare}'
    ) from None


def tfds_datasets(name: str, data_dir: str, num_classes: int,
                  train_split: str = '', val_split: str = '',
                  val_name: str = '', skip_bad: bool = False):
  """(train, val, class_names) for a 'tfds:<name>' config."""
  spec = spec_for(name)
  class_names = spec.class_names
  if class_names is None:
    if num_classes <= 0:
      raise decode.DataError(
          f'config.dataset={PREFIX}{name}: unknown label set; give '
          'config.num_classes (labels are read as class indices, 255 = '
          'ignore).')
    class_names = tuple(f'class_{i}' for i in range(num_classes))
  val_name = val_name or name
  train = TfdsSource(name, train_split or spec.train_split, data_dir,
                     len(class_names), spec, skip_bad)
  val = TfdsSource(val_name, val_split or spec_for(val_name).val_split,
                   data_dir, len(class_names), spec_for(val_name), skip_bad)
  return train, val, class_names
