"""The output-stride ceiling of mean IU (the paper's Appendix A).

    python -m fcn_jax.ceiling --config.dataset=synthetic \
        --strides=128,64,32,16,8,4 [--split=val] [--downsample=mode]

How well could a net score if it predicted the ground truth perfectly, but
only at one label per `factor` x `factor` block of pixels (the resolution of
a stride-`factor` score map)? The paper answers it by downsampling the ground
truth by the factor and upsampling it back, then scoring the result against
the original labels. It does not say which resampling; here:

  downsampling  the image is cut into factor x factor blocks aligned to its
                top-left corner (blocks at the right and bottom edges are
                smaller when the size is not a multiple). A block's label is
                --downsample=mode: the most frequent class among its labelled
                pixels (ties go to the lower class index), or
                --downsample=centre: the label of its centre pixel (offset
                floor(n / 2) along a side of n pixels), or the block's mode
                when that pixel is unlabelled.
                A block without labelled pixels gets the ignore label.
  upsampling    nearest neighbour: each block's label is painted over the
                whole block, so the map has the image's size again.
  scoring       one confusion matrix over the split, the paper's four scores
                (fcn_jax/metrics.py); ignore-labelled pixels do not count.

On PASCAL VOC 2011 val the paper reports mean IU 50.9 / 73.3 / 86.1 / 92.8 /
96.4 / 98.5 for factors 128 / 64 / 32 / 16 / 8 / 4. The dataset is chosen
with the training config's keys (--config.dataset, --config.data_dir, ...).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from absl import app
from absl import flags

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import evaluate
from fcn_jax import input_pipeline
from fcn_jax import metrics as metrics_lib
from fcn_jax.data import decode

DOWNSAMPLING = ('mode', 'centre')
# The paper's Appendix A table (PASCAL VOC 2011 val), mean IU in percent.
PAPER_VOC2011_MEAN_IU = {128: 50.9, 64: 73.3, 32: 86.1, 16: 92.8, 8: 96.4,
                         4: 98.5}

FLAGS = flags.FLAGS


def _blocks(labels: np.ndarray, factor: int, fill: int) -> np.ndarray:
  """(H, W) -> (ceil(H/f), ceil(W/f), f*f) blocks, edges padded with `fill`."""
  height, width = labels.shape
  rows, cols = -(-height // factor), -(-width // factor)
  padded = np.full((rows * factor, cols * factor), fill, labels.dtype)
  padded[:height, :width] = labels
  blocks = padded.reshape(rows, factor, cols, factor).swapaxes(1, 2)
  return blocks.reshape(rows, cols, factor * factor)


def block_modes(labels: np.ndarray, factor: int, num_classes: int,
                ignore_index: int = metrics_lib.IGNORE_INDEX) -> np.ndarray:
  """Most frequent labelled class of each factor x factor block.

  Args:
    labels: (H, W) integer label map; values outside [0, num_classes) are
      unlabelled.
    factor: the block side in pixels.
    num_classes: number of classes.
    ignore_index: the label given to blocks without labelled pixels.

  Returns:
    (ceil(H / factor), ceil(W / factor)) int32 labels.
  """
  labels = np.asarray(labels, np.int64)
  unlabelled = num_classes  # One extra bin, left out of the vote.
  labels = np.where((labels >= 0) & (labels < num_classes), labels, unlabelled)
  blocks = _blocks(labels, factor, unlabelled)
  rows, cols, size = blocks.shape
  block_index = np.arange(rows * cols).repeat(size)
  counts = np.bincount(block_index * (num_classes + 1) + blocks.reshape(-1),
                       minlength=rows * cols * (num_classes + 1))
  counts = counts.reshape(rows, cols, num_classes + 1)[..., :num_classes]
  modes = counts.argmax(axis=-1).astype(np.int32)
  return np.where(counts.sum(axis=-1) > 0, modes, ignore_index).astype(np.int32)


def block_centres(labels: np.ndarray, factor: int, num_classes: int,
                  ignore_index: int = metrics_lib.IGNORE_INDEX) -> np.ndarray:
  """Label of each block's centre pixel (its mode where that is unlabelled).

  The centre of a block side of n pixels (n < factor at the right and bottom
  edges) is at offset floor(n / 2).
  """
  labels = np.asarray(labels)
  height, width = labels.shape

  def centres(size):
    starts = np.arange(0, size, factor)
    return starts + np.minimum(factor, size - starts) // 2

  centre = labels[np.ix_(centres(height), centres(width))].astype(np.int32)
  labelled = (centre >= 0) & (centre < num_classes)
  return np.where(labelled, centre,
                  block_modes(labels, factor, num_classes, ignore_index))


def upsample_nearest(coarse: np.ndarray, factor: int,
                     shape: tuple[int, int]) -> np.ndarray:
  """Each coarse label painted over its factor x factor block, cropped to
  `shape`."""
  fine = np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)
  return fine[:shape[0], :shape[1]]


def ceiling_labels(labels: np.ndarray, factor: int, num_classes: int,
                   downsample: str = 'mode') -> np.ndarray:
  """The best label map a stride-`factor` prediction can give: `labels`
  downsampled by `factor` (see the module docstring) and upsampled back."""
  if downsample not in DOWNSAMPLING:
    raise ValueError(f'downsample={downsample!r}: expected one of '
                     f'{DOWNSAMPLING}.')
  pick = block_modes if downsample == 'mode' else block_centres
  labels = np.asarray(labels)
  return upsample_nearest(pick(labels, factor, num_classes), factor,
                          labels.shape)


def stride_ceiling(label_maps: Iterable[np.ndarray], factors: Sequence[int],
                   num_classes: int, downsample: str = 'mode') -> dict:
  """Scores of the ceiling label maps, one global histogram per factor.

  Args:
    label_maps: (H, W) ground-truth label maps (any sizes).
    factors: output strides to score.
    num_classes: number of classes.
    downsample: 'mode' or 'centre' (see the module docstring).

  Returns:
    {factor: metrics.segmentation_scores(...) plus 'confusion_matrix'} and
    'num_images'. Where a label is set, the ceiling map holds a class, so
    every labelled pixel is counted.
  """
  hists = {f: np.zeros((num_classes, num_classes), np.int64) for f in factors}
  num_images = 0
  for labels in label_maps:
    labels = np.asarray(labels)
    for factor in factors:
      preds = ceiling_labels(labels, factor, num_classes, downsample)
      hists[factor] += evaluate.confusion(labels, preds, num_classes)
    num_images += 1
  results = {}
  for factor, hist in hists.items():
    results[factor] = dict(metrics_lib.segmentation_scores(hist),
                           confusion_matrix=hist.tolist())
  results['num_images'] = num_images
  return results


def parse_strides(text: str) -> list[int]:
  """'128,64,32' -> [128, 64, 32]; a FlagError naming the flag otherwise."""
  try:
    strides = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    strides = []
  if not strides or any(s < 1 for s in strides):
    raise errors.FlagError(f'--strides={text!r}: expected a comma-separated list of '
                     'positive integers, e.g. 128,64,32,16,8,4.')
  return strides


def format_table(results: dict, factors: Sequence[int],
                 paper: dict | None = None) -> str:
  """A Markdown table: factor, the four scores (percent), paper's mean IU."""
  header = '| factor | pixel acc. | mean acc. | mean IU | f.w. IU |'
  rule = '|---|---|---|---|---|'
  if paper is not None:
    header += ' paper VOC2011 val mean IU |'
    rule += '---|'
  lines = [header, rule]
  for factor in factors:
    s = results[factor]
    row = (f'| {factor} | {100 * s["overall_acc"]:.1f} | '
           f'{100 * s["mean_acc"]:.1f} | {100 * s["mean_iu"]:.1f} | '
           f'{100 * s["fwavacc"]:.1f} |')
    if paper is not None:
      value = paper.get(factor)
      row += f' {value if value is not None else "-"} |'
    lines.append(row)
  return '\n'.join(lines)


def run(config, strides: Sequence[int], split: str = 'val',
        downsample: str = 'mode', max_images: int = 0) -> dict:
  """Computes, prints and returns the ceiling for `config`'s dataset."""
  train_source, val_source, info = input_pipeline.create_datasets(config)
  source = val_source if split == 'val' else train_source
  total = len(source) if not max_images else min(max_images, len(source))
  if total == 0:
    raise decode.DataError(f'{info.name}/{split}: the split holds no images.')
  label_maps = (source[i]['label'] for i in range(total))
  results = stride_ceiling(label_maps, strides, info.num_classes, downsample)
  split_name = config[f'{split}_split'] or split
  print(f'Output-stride ceiling on {info.name}/{split_name} ({total} images, '
        f'{info.num_classes} classes, downsampling: block {downsample}, '
        'upsampling: nearest), percent:')
  print(format_table(results, strides, PAPER_VOC2011_MEAN_IU))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run(FLAGS.config, parse_strides(FLAGS.strides), FLAGS.split,
      FLAGS.downsample, FLAGS.max_images)


def _define_flags():
  flags.DEFINE_string('strides', '128,64,32,16,8,4',
                      'Comma-separated output strides (downsampling factors).')
  flags.DEFINE_enum('split', 'val', ['val', 'train'], 'Split to score.')
  flags.DEFINE_enum('downsample', 'mode', list(DOWNSAMPLING),
                    "A block's label: its most frequent class ('mode') or "
                    "its centre pixel's ('centre').")
  flags.DEFINE_integer('max_images', 0, 'Only the first N images (0 = all).')
  cli.define_config_flag(
      'The dataset keys of the training config, e.g. --config.dataset=voc '
      '--config.data_dir=...')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
