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


def segmentation_scores(hist) -> dict:
  """The paper's four scores (and per-class IU) from a confusion matrix.

  Returns a dict with 'overall_acc', 'mean_acc', 'mean_iu', 'fwavacc' (floats)
  and 'per_class_iu' (list of C floats, NaN for classes absent from both
  labels and predictions).
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
  return {
      'overall_acc': float(overall_acc),
      'mean_acc': _nanmean(per_class_acc),
      'mean_iu': _nanmean(per_class_iu),
      'fwavacc': float((freq[present] * per_class_iu[present]).sum()),
      'per_class_iu': [float(x) for x in per_class_iu],
  }


def _nanmean(values: np.ndarray) -> float:
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else float('nan')
