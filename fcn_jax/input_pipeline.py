"""Datasets -> preprocessed, batched numpy arrays (with grain).

A dataset is a random-access *source* (``len`` and ``__getitem__`` returning
{'image': (H, W, 3) uint8 RGB, 'label': (H, W) int, 'id': int}) plus its
`DatasetInfo`. Training batches come from a grain MapDataset that is shuffled
and repeated with a fixed seed, so the batch of step `s` is a pure function of
(seed, s). Training reads it through a grain iterator (`train_iterator`) that
decodes ahead in threads or in worker processes (config.data_workers); its
state is saved in every checkpoint next to the train state, so a resumed run
continues with exactly the batches an uninterrupted run would have read.

Real datasets (fcn_jax.data: 'voc', 'sbd', 'voc_dir', 'tfds:<name>') have
images of different sizes. Training with config.image_size > 0 takes random
square crops (padding smaller images); with image_size = 0 it uses whole
images, as the paper did. Any batch of mixed sizes (training with
image_size = 0, and evaluation) is padded to its largest image rounded up to
a multiple of config.pad_multiple (or to the fixed square config.pad_size):
padded pixels are the mean colour (0 after mean subtraction) with label 255,
so they add nothing to the loss or the confusion matrix, and jit compiles one
program per bucket shape instead of one per image size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
from typing import Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from fcn_jax import fault_tolerance
from fcn_jax.data import decode
from fcn_jax.data import nyud
from fcn_jax.data import pascal_context
from fcn_jax.data import sbd
from fcn_jax.data import siftflow
from fcn_jax.data import synthetic
from fcn_jax.data import tfds_sources
from fcn_jax.data import transforms
from fcn_jax.data import voc
from fcn_jax.metrics import IGNORE_INDEX
from fcn_jax.models import MEAN_BGR

# 'tfds:<name>' stands for any TFDS dataset name after the prefix.
DATASETS = ('synthetic', 'voc', 'sbd', 'voc_dir', 'nyud', 'siftflow',
            'pascal_context', 'tfds:<name>')


def is_known_dataset(name: str) -> bool:
  """Whether config.dataset=`name` names a dataset create_datasets reads."""
  if name.startswith(tfds_sources.PREFIX):
    return len(name) > len(tfds_sources.PREFIX)
  return name in DATASETS and name != 'tfds:<name>'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the code needs to know about a dataset."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  palette: np.ndarray  # (num_classes, 3) uint8 RGB colours for visualization.
  train_size: int
  val_size: int
  # Whether image sizes vary (real photos), so batches need shape buckets.
  variable_size: bool = False
  # Further label maps of a multi-head task and their class names, e.g.
  # (('geo_label', ('sky', 'horizontal', 'vertical')),) for SIFT Flow.
  extra_heads: tuple[tuple[str, tuple[str, ...]], ...] = ()
  # Mean IU / accuracy over the classes present in the split's ground truth
  # only (SIFT Flow: three classes never occur in its test set).
  present_classes_only: bool = False


def voc_palette(num_classes: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map (bit-interleaved class index), (N, 3) uint8."""
  palette = np.zeros((num_classes, 3), np.uint8)
  for index in range(num_classes):
    c, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (c & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    palette[index] = (r, g, b)
  return palette


def preprocess(image: np.ndarray) -> np.ndarray:
  """RGB uint8 -> the reference convention: BGR float32, 0-255, minus mean.

  A float32 image is taken as preprocessed already: sources of datasets with
  their own means or several modalities (NYUDv2, SIFT Flow) do it themselves.
  """
  if image.dtype == np.float32:
    return image
  return image[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR, np.float32)


def label_keys(example: dict) -> list[str]:
  """'label' and any further label maps ('geo_label') of an example."""
  return ['label'] + sorted(k for k in example
                            if k.endswith('_label') and k != 'label')


def _stack_labels(example: dict) -> np.ndarray:
  """(H, W) label, or (H, W, K) for K label maps, so crops cut them alike."""
  keys = label_keys(example)
  if len(keys) == 1:
    return np.asarray(example['label'], np.int32)
  return np.stack([np.asarray(example[k], np.int32) for k in keys], axis=-1)


def _unstack_labels(labels: np.ndarray, keys: list[str]) -> dict:
  """Inverse of `_stack_labels` (also for a batch of them)."""
  if len(keys) == 1:
    return {'label': labels}
  return {k: labels[..., i] for i, k in enumerate(keys)}


def _preprocess_example(example: dict) -> dict:
  labels = {k: example[k].astype(np.int32) for k in label_keys(example)}
  return dict({'image': preprocess(example['image']),
               'id': np.int32(example['id'])}, **labels)


def create_datasets(config: ml_collections.ConfigDict):
  """Returns (train_source, val_source, DatasetInfo) for `config.dataset`.

  Raises:
    fault_tolerance.ConfigError (a ValueError): for an unknown dataset name.
    fcn_jax.data.decode.DataError (a ValueError): for missing or bad files,
      naming the file.
  """
  decode.set_max_image_pixels(config.max_image_pixels)
  name = config.dataset
  if not is_known_dataset(name):
    raise fault_tolerance.ConfigError(f'config.dataset={name!r}: unknown '
                                      f'dataset; expected one of {DATASETS}.')
  if name == 'synthetic':
    return _synthetic_datasets(config)
  skip_bad = bool(config.skip_bad_examples)
  train_split = config.train_split
  val_split = config.val_split
  if name == 'voc':
    root = voc.find_voc_root(config.data_dir, (config.voc_year,))
    class_names = voc.VOC_CLASS_NAMES
    train = voc.VOCLayoutSource(root, train_split or 'train', len(class_names),
                                skip_bad=skip_bad)
    val = voc.VOCLayoutSource(root, val_split or 'val', len(class_names),
                              skip_bad=skip_bad)
  elif name == 'sbd':
    class_names = voc.VOC_CLASS_NAMES
    train, val = sbd.sbd_datasets(config.data_dir, skip_bad)
  elif name == 'voc_dir':
    train, val, class_names = _voc_dir_datasets(config, train_split or 'train',
                                                val_split or 'val', skip_bad)
  elif name in BEYOND_VOC:
    return _beyond_voc_datasets(config, skip_bad)
  else:
    train, val, class_names = tfds_sources.tfds_datasets(
        name[len(tfds_sources.PREFIX):], config.data_dir, config.num_classes,
        train_split, val_split, config.val_dataset, skip_bad)
  info = DatasetInfo(
      name=name, num_classes=len(class_names), class_names=tuple(class_names),
      palette=voc_palette(len(class_names)), train_size=len(train),
      val_size=len(val), variable_size=True)
  return train, val, info


BEYOND_VOC = ('nyud', 'siftflow', 'pascal_context')


def _beyond_voc_datasets(config, skip_bad):
  """NYUDv2, SIFT Flow or PASCAL-Context (fcn_jax/data/<name>.py)."""
  name, data_dir = config.dataset, config.data_dir
  splits = (config.train_split, config.val_split)
  extra = {}
  if name == 'nyud':
    train, val = nyud.nyud_datasets(data_dir, config.nyud_input,
                                    *splits, skip_bad)
    class_names = nyud.class_names()
  elif name == 'siftflow':
    train, val = siftflow.siftflow_datasets(data_dir, *splits, skip_bad)
    class_names = siftflow.class_names()
    extra = dict(extra_heads=(('geo_label', siftflow.geo_class_names()),),
                 present_classes_only=True)
  else:
    train, val = pascal_context.pascal_context_datasets(data_dir, *splits,
                                                        skip_bad)
    class_names = pascal_context.class_names()
  info = DatasetInfo(
      name=name, num_classes=len(class_names), class_names=class_names,
      palette=voc_palette(len(class_names)), train_size=len(train),
      val_size=len(val), variable_size=True, **extra)
  return train, val, info


def _synthetic_datasets(config):
  train = synthetic.SyntheticShapes('train', config.synthetic.train_size,
                                    config.image_size, config.synthetic.seed)
  val = synthetic.SyntheticShapes('val', config.synthetic.val_size,
                                  config.image_size, config.synthetic.seed)
  info = DatasetInfo(
      name='synthetic', num_classes=len(synthetic.CLASS_NAMES),
      class_names=synthetic.CLASS_NAMES,
      palette=voc_palette(len(synthetic.CLASS_NAMES)),
      train_size=len(train), val_size=len(val))
  return train, val, info


def _voc_dir_datasets(config, train_split, val_split, skip_bad):
  """Any VOC-layout folder; class_names.txt (if any) sets the classes."""
  root = config.data_dir
  if not root or not os.path.isdir(root):
    raise decode.DataError(f'config.data_dir={root!r}: folder not found.')
  class_names = voc.read_class_names(root)
  if class_names is None:
    if config.num_classes <= 0:
      raise decode.DataError(
          f'config.data_dir={root!r}: no {voc.CLASS_NAMES_FILE}; add one '
          '(one class name per line) or set config.num_classes.')
    class_names = tuple(f'class_{i}' for i in range(config.num_classes))
  train = voc.VOCLayoutSource(root, train_split, len(class_names),
                              skip_bad=skip_bad)
  val = voc.VOCLayoutSource(root, val_split, len(class_names),
                            skip_bad=skip_bad)
  return train, val, class_names


def batching_options(config: ml_collections.ConfigDict,
                     info: DatasetInfo) -> dict:
  """Padding options of train_dataset/eval_batches for `config`."""
  return {'pad_multiple': (config.pad_multiple
                           if info.variable_size else 1),
          'pad_size': config.pad_size}


def train_dataset_from_config(source, config: ml_collections.ConfigDict,
                              info: DatasetInfo) -> grain.MapDataset:
  """`train_dataset` with the crop, padding and augmentation of `config`."""
  scale = (config.random_scale_min, config.random_scale_max)
  crop = config.image_size if info.variable_size else 0
  return train_dataset(source, config.batch_size, config.seed,
                       augment=config.random_flip,
                       crop_size=crop, scale_range=scale,
                       **batching_options(config, info))


def train_dataset(source, global_batch_size: int, seed: int,
                  augment: bool = True, crop_size: int = 0,
                  scale_range: Sequence[float] = (1.0, 1.0),
                  pad_multiple: int = 1, pad_size: int = 0) -> grain.MapDataset:
  """Infinite, shuffled training batches as a random-access MapDataset.

  ``ds[step]`` is this process's share of the global batch of `step`: each
  process (host) reads and decodes only its contiguous slice of every global
  batch, so hosts read disjoint images and together form exactly the
  single-host batch.

  Args:
    source: random-access examples (see the module docstring).
    global_batch_size: examples per step over all processes.
    seed: shuffling and augmentation seed; ds[step] depends only on
      (seed, step).
    augment: random horizontal flips.
    crop_size: > 0: random crop_size x crop_size crops, smaller images padded
      (bottom/right) first; 0: whole images.
    scale_range: (min, max) random rescaling factor (1, 1 = off).
    pad_multiple: whole-image batches are padded to their largest image
      rounded up to this multiple (see `pad_and_stack`).
    pad_size: > 0: pad every whole-image batch to this square instead; needed
      with several processes, whose slices must have the same shape.
  """
  num_hosts = jax.process_count()
  if global_batch_size % num_hosts:
    raise ValueError(f'batch_size {global_batch_size} is not divisible by the '
                     f'number of processes ({num_hosts}).')
  if num_hosts > 1 and crop_size == 0 and pad_size == 0 and pad_multiple != 1:
    raise ValueError('Whole-image training on several processes needs '
                     'config.pad_size > 0 (a common batch shape for all).')
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  ds = ds.random_map(functools.partial(
      _augment_and_preprocess, flip=augment, crop_size=crop_size,
      scale_range=tuple(scale_range)))
  per_host = global_batch_size // num_hosts
  # Batch k of `ds` holds global positions [k*per_host, (k+1)*per_host); this
  # host's slice of global batch s is batch s*num_hosts + process_index.
  ds = ds.batch(per_host, drop_remainder=True, batch_fn=functools.partial(
      pad_and_stack, pad_multiple=pad_multiple, pad_size=pad_size))
  return ds[jax.process_index()::num_hosts]


def num_data_workers(config: ml_collections.ConfigDict,
                     info: DatasetInfo) -> int:
  """config.data_workers, or with -1 (auto) a choice for the dataset.

  Auto: none for the synthetic scenes (drawing a batch costs less than sending
  it between processes), else half the CPU cores, at most 8, leaving the rest
  to the training step.
  """
  workers = config.data_workers
  if workers >= 0:
    return workers
  if not info.variable_size:
    return 0
  return max(1, min(8, (os.cpu_count() or 2) // 2))


def train_iterator(train_ds: grain.MapDataset, num_workers: int = 0,
                   prefetch: int = 2) -> grain.DatasetIterator:
  """An iterator over `train_ds` (batch 0, 1, ...) that decodes ahead.

  With `num_workers` > 0, worker processes each produce every
  num_workers-th batch and the iterator interleaves them back in order, so
  the batches are the same for any number of workers. Otherwise `prefetch`
  threads of this process read ahead. Either way `get_state()` describes the
  batches handed out so far (not those read ahead), which is what a
  checkpoint must store.
  """
  ds = train_ds.to_iter_dataset(grain.ReadOptions(
      num_threads=prefetch, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags when it starts workers; outside an absl
      # program (notebooks, tests) let them take their defaults.
      flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch)
    ds = ds.mp_prefetch(options, worker_init_fn=_ignore_ctrl_c)
  return iter(ds)


def _ignore_ctrl_c(worker_index: int, num_workers: int) -> None:
  # Ctrl-C reaches the whole process group. Workers keep serving batches so
  # that the training process can finish its step and save a checkpoint
  # (fault_tolerance.StopSignals); they exit with it.
  del worker_index, num_workers
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _augment_and_preprocess(example: dict, rng: np.random.Generator, *,
                            flip: bool, crop_size: int,
                            scale_range: tuple[float, float]) -> dict:
  """Flip, rescale, preprocess, then crop/pad (so padding is the mean)."""
  keys = label_keys(example)
  image, label = example['image'], _stack_labels(example)
  # Each augmentation draws from the generator only when it is on, so turning
  # one on leaves the draws of the others unchanged.
  if flip and rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  if scale_range != (1.0, 1.0):
    image, label = transforms.rescale(image, label,
                                      rng.uniform(*scale_range))
  image = preprocess(image)
  label = np.asarray(label, np.int32)
  if crop_size > 0:
    image, label = transforms.random_crop_or_pad(image, label, crop_size,
                                                 rng)
  return dict({'image': image, 'id': np.int32(example['id'])},
              **_unstack_labels(label, keys))


def pad_and_stack(examples: Sequence[dict], pad_multiple: int = 1,
                  pad_size: int = 0) -> dict:
  """Stacks preprocessed examples, padding each to the batch's bucket shape."""
  height, width = transforms.bucket_shape(
      [e['label'].shape for e in examples], pad_multiple, pad_size)
  keys = label_keys(examples[0])
  images, labels = [], []
  for example in examples:
    image, label = transforms.pad_to(example['image'], _stack_labels(example),
                                     height, width)
    images.append(image)
    labels.append(label)
  return dict({'image': np.stack(images),
               'id': np.asarray([e['id'] for e in examples], np.int32)},
              **_unstack_labels(np.stack(labels), keys))


def eval_dataset(source, global_batch_size: int, pad_multiple: int = 1,
                 pad_size: int = 0) -> grain.MapDataset:
  """The evaluation batches of `source` as a random-access dataset.

  Element i is this process's slice of global batch i: the examples in
  order, images of mixed sizes padded to their batch's bucket shape
  (`transforms.bucket_shape`) with ignore labels; the last batch is filled up with
  all-ignore examples, so batch sizes stay fixed. Padded pixels count nowhere
  in the confusion matrix.
  """
  num_hosts = jax.process_count()
  if num_hosts > 1 and pad_size == 0 and pad_multiple != 1:
    raise ValueError('Evaluating mixed image sizes on several processes '
                     'needs config.pad_size > 0 (a common batch shape).')
  examples = grain.MapDataset.source(source).map(_preprocess_example)
  num_batches = math.ceil(len(examples) / global_batch_size)
  return grain.MapDataset.range(num_batches).map(functools.partial(
      _eval_batch, examples=examples, global_batch_size=global_batch_size,
      per_host=global_batch_size // num_hosts,
      start=jax.process_index() * (global_batch_size // num_hosts),
      pad_multiple=pad_multiple, pad_size=pad_size))


def _eval_batch(index: int, *, examples, global_batch_size: int,
                per_host: int, start: int, pad_multiple: int,
                pad_size: int) -> dict:
  first = index * global_batch_size
  batch = [examples[i] for i in range(first + start,
                                      min(first + start + per_host,
                                          len(examples)))]
  if len(batch) < per_host:
    # Fillers are the mean colour, all ignored: after padding they are the
    # same on every host, whichever host's slice they fall in.
    template = (batch or [examples[first]])[0]
    batch += [_ignored_example(template)] * (per_host - len(batch))
  return pad_and_stack(batch, pad_multiple, pad_size)


def eval_batches(source, global_batch_size: int, pad_multiple: int = 1,
                 pad_size: int = 0) -> Iterator[dict]:
  """All examples of `source` in order, in padded batches (`eval_dataset`).

  Each process reads and yields only its slice of every global batch.
  """
  ds = eval_dataset(source, global_batch_size, pad_multiple, pad_size)
  for index in range(len(ds)):
    yield ds[index]


class EvalReader:
  """Evaluation passes over a split, decoded by grain worker processes.

  With `num_workers` > 0 the workers are started at the first pass and stay
  up for the next ones (they read the split repeatedly, in order), so an
  evaluation every few thousand steps does not pay their start-up again.
  With 0, each pass reads in this process, like `eval_batches`.
  """

  def __init__(self, source, global_batch_size: int, num_workers: int = 0,
               prefetch: int = 2, pad_multiple: int = 1, pad_size: int = 0):
    self._ds = eval_dataset(source, global_batch_size, pad_multiple, pad_size)
    self._num_workers = num_workers
    self._prefetch = prefetch
    self._iterator = None
    self._read = 0  # Batches taken from the repeating iterator.

  def __len__(self) -> int:
    return len(self._ds)

  def __iter__(self) -> Iterator[dict]:
    """One pass: every batch of the split, in order."""
    if self._num_workers <= 0 or not len(self._ds):
      for index in range(len(self._ds)):
        yield self._ds[index]
      return
    if self._iterator is None:
      self._iterator = train_iterator(self._ds.repeat(), self._num_workers,
                                      self._prefetch)
    # A pass abandoned half-way leaves the iterator mid-split: skip ahead.
    for _ in range(-self._read % len(self._ds)):
      next(self._iterator)
      self._read += 1
    for _ in range(len(self._ds)):
      batch = next(self._iterator)
      self._read += 1
      yield batch

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None


def _ignored_example(template: dict) -> dict:
  """A filler example shaped like `template`: mean input, all ignored."""
  shape = template['label'].shape
  filler = {k: np.full(shape, IGNORE_INDEX, np.int32)
            for k in label_keys(template)}
  return dict(filler, image=np.zeros_like(template['image']),
              id=np.int32(-1))


def model_arrays(batch: dict) -> dict:
  """The arrays of a batch that go to the device: input and label maps."""
  return {k: batch[k] for k in ['image'] + label_keys(batch)}
