"""Segmentation metrics from one global confusion matrix.

The paper reports four numbers, all computed from a single (C, C) histogram
summed over the whole split (never an average of per-image or per-batch
scores). With n_ij the number of pixels of class i predicted as class j and
t_i = sum_j n_ij:

  pixel accuracy      sum_i n_ii / sum_i t_i
  mean accuracy       (1/C) sum_i n_ii / t_i
  mean IU             (1/C) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
  frequency-weighted  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Classes whose ratio is 0/0 (absent from both labels and predictions) are NaN
and left out of the means, as numpy's nanmean does in the reference score.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """(C, C) int32 pixel counts, rows = ground truth, columns = prediction.

  Pixels labelled `ignore_index`, or with a label or prediction outside
  [0, C), are not counted. Runs under jit (fixed-size bincount), so the
  histogram can be accumulated on device during evaluation.
  """
  labels = labels.reshape(-1).astype(jnp.int32)
  preds = preds.reshape(-1).astype(jnp.int32)
  valid = ((labels != ignore_index) & (labels >= 0) & (labels < num_classes)
           & (preds >= 0) & (preds < num_classes))
  # Invalid pixels go to an overflow bin that is dropped afterwards.
  index = jnp.where(valid, labels * num_classes + preds, num_classes**2)
  counts = jnp.bincount(index, length=num_classes**2 + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def segmentation_scores(hist, present_only: bool = False) -> dict:
  """The paper's four scores (and per-class IU) from a confusion matrix.

  Args:
    hist: (C, C) confusion matrix, rows = ground truth.
    present_only: average mean accuracy and mean IU only over the classes
      present in the ground truth (rows with pixels), as the paper scores
      SIFT Flow, whose test set lacks three classes; the others are NaN in
      'per_class_iu' and their count is 'num_classes_scored'.

  Returns a dict with 'overall_acc', 'mean_acc', 'mean_iu', 'fwavacc' (floats)
  and 'per_class_iu' (list of C floats, NaN for classes absent from both
  labels and predictions), and with present_only 'num_classes_scored'.
  """
  hist = np.asarray(jax.device_get(hist), np.float64)
  diag = np.diag(hist)
  gt_total = hist.sum(axis=1)
  pred_total = hist.sum(axis=0)
  with np.errstate(divide='ignore', invalid='ignore'):
    overall_acc = diag.sum() / hist.sum()
    per_class_acc = diag / gt_total
    per_class_iu = diag / (gt_total + pred_total - diag)
  freq = gt_total / hist.sum() if hist.sum() else gt_total
  present = freq > 0
  if present_only:
    per_class_acc = np.where(present, per_class_acc, np.nan)
    per_class_iu = np.where(present, per_class_iu, np.nan)
  scores = {
      'overall_acc': float(overall_acc),
      'mean_acc': _nanmean(per_class_acc),
      'mean_iu': _nanmean(per_class_iu),
      'fwavacc': float((freq[present] * per_class_iu[present]).sum()),
      'per_class_iu': [float(x) for x in per_class_iu],
  }
  if present_only:
    scores['num_classes_scored'] = int(present.sum())
  return scores


def _nanmean(values: np.ndarray) -> float:
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else float('nan')


def boundary_mask(labels: jax.Array, radius: int,
                  ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """True at labelled pixels within `radius` pixels of a label boundary.

  A pixel is a boundary pixel when some pixel in the (2r+1) x (2r+1) square
  around it (Chebyshev distance <= r, inside the image) carries a different
  label; an `ignore_index` neighbour counts as different (on VOC the void band
  outlines the objects). Pixels labelled `ignore_index` are never boundary
  pixels. Runs under jit.

  Args:
    labels: (..., H, W) integer label maps.
    radius: half-width of the band, in pixels (>= 1).
    ignore_index: the label of unlabelled pixels.

  Returns:
    A boolean array shaped like `labels`.
  """
  if radius < 1:
    raise ValueError(f'boundary radius must be >= 1, got {radius}.')
  labels = jnp.asarray(labels).astype(jnp.int32)
  window = (1,) * (labels.ndim - 2) + (2 * radius + 1,) * 2
  # Max and min over the window; the image border contributes nothing (the
  # init values are the identities of max and min).
  reduce = functools.partial(jax.lax.reduce_window, window_dimensions=window,
                             window_strides=(1,) * labels.ndim,
                             padding='SAME')
  local_max = reduce(labels, -2**31, jax.lax.max)
  local_min = reduce(labels, 2**31 - 1, jax.lax.min)
  return (local_max != local_min) & (labels != ignore_index)


def boundary_confusion_matrix(labels: jax.Array, preds: jax.Array,
                              num_classes: int, radius: int,
                              ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """`confusion_matrix` restricted to `boundary_mask(labels, radius)` pixels.

  The scores of this matrix (e.g. its mean IU) measure how well a model
  resolves object boundaries and thin structures, which is what the finer
  skips of FCN-16s/8s are for. `labels` and `preds` are (..., H, W).
  """
  labels = jnp.asarray(labels).astype(jnp.int32)
  near_boundary = boundary_mask(labels, radius, ignore_index)
  labels = jnp.where(near_boundary, labels, ignore_index)
  return confusion_matrix(labels, preds, num_classes, ignore_index)
