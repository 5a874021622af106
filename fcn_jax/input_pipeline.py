"""Datasets -> preprocessed, batched numpy arrays (with grain).

A dataset is a random-access *source* (``len`` and ``__getitem__`` returning
{'image': (H, W, 3) uint8 RGB, 'label': (H, W) int, 'id': int}) plus its
`DatasetInfo`. Training batches come from a grain MapDataset that is shuffled
and repeated with a fixed seed, so the batch of step `s` is a pure function of
(seed, s): resuming at step s reads exactly the batches an uninterrupted run
would have read, with no iterator state to save.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np

from fcn_jax import synthetic
from fcn_jax.metrics import IGNORE_INDEX
from fcn_jax.models import MEAN_BGR

DATASETS = ('synthetic',)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the code needs to know about a dataset."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  palette: np.ndarray  # (num_classes, 3) uint8 RGB colours for visualization.
  train_size: int
  val_size: int


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
  """RGB uint8 -> the reference convention: BGR float32, 0-255, minus mean."""
  return image[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR, np.float32)


def _preprocess_example(example: dict) -> dict:
  return {'image': preprocess(example['image']),
          'label': example['label'].astype(np.int32),
          'id': np.int32(example['id'])}


def create_datasets(config: ml_collections.ConfigDict):
  """Returns (train_source, val_source, DatasetInfo) for `config.dataset`."""
  if config.dataset != 'synthetic':
    raise ValueError(f'Unknown dataset {config.dataset!r}; expected one of '
                     f'{DATASETS}.')
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


def train_dataset(source, global_batch_size: int, seed: int,
                  augment: bool = True) -> grain.MapDataset:
  """Infinite, shuffled training batches as a random-access MapDataset.

  ``ds[step]`` is this process's share of the global batch of `step`: each
  process (host) takes a contiguous slice of every global batch, so hosts read
  disjoint images and together form exactly the single-host batch.
  """
  num_hosts = jax.process_count()
  if global_batch_size % num_hosts:
    raise ValueError(f'batch_size {global_batch_size} is not divisible by the '
                     f'number of processes ({num_hosts}).')
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  if augment:
    ds = ds.random_map(_random_flip)
  ds = ds.map(_preprocess_example).batch(global_batch_size, drop_remainder=True)
  per_host = global_batch_size // num_hosts
  start = jax.process_index() * per_host
  return ds.map(lambda batch: jax.tree.map(lambda x: x[start:start + per_host],
                                           batch))


def _random_flip(example: dict, rng: np.random.Generator) -> dict:
  """Horizontal flip with probability 1/2 (the only augmentation of the paper)."""
  if rng.random() < 0.5:
    example = dict(example, image=example['image'][:, ::-1],
                   label=example['label'][:, ::-1])
  return example


def eval_batches(source, global_batch_size: int) -> Iterator[dict]:
  """All examples of `source` in order, in batches of fixed shape.

  The last batch is padded with ignore-labelled copies so shapes stay static
  (one compilation) and padded pixels count nowhere in the confusion matrix.
  Each process yields its slice of every global batch.
  """
  num_hosts = jax.process_count()
  per_host = global_batch_size // num_hosts
  start = jax.process_index() * per_host
  ds = grain.MapDataset.source(source).map(_preprocess_example)
  for first in range(0, len(ds), global_batch_size):
    examples = [ds[i] for i in range(first, min(first + global_batch_size, len(ds)))]
    while len(examples) < global_batch_size:
      pad = dict(examples[0])
      pad['label'] = np.full_like(pad['label'], IGNORE_INDEX)
      examples.append(pad)
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    yield jax.tree.map(lambda x: x[start:start + per_host], batch)
