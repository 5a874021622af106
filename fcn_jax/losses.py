"""Per-pixel softmax cross-entropy with an ignore label."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fcn_jax.metrics import IGNORE_INDEX

NORMALIZATIONS = ('sum', 'mean')


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        normalization: str = 'sum',
                        ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Softmax cross-entropy over all labelled pixels of a batch.

  Args:
    logits: (N, H, W, C) float scores.
    labels: (N, H, W) int class indices; `ignore_index` marks unlabelled
      pixels, which contribute nothing to the loss nor to its gradient.
    normalization: 'sum' is the paper's loss: summed over pixels and divided
      by the number of images (Caffe's SoftmaxWithLoss with normalize: false).
      'mean' divides by the number of labelled pixels instead.
    ignore_index: label value of unlabelled pixels.

  Returns:
    Scalar float32 loss.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'Unknown loss normalization {normalization!r}; '
                     f'expected one of {NORMALIZATIONS}.')
  logits = logits.astype(jnp.float32)
  valid = labels != ignore_index
  # Any in-range class keeps the gather well defined; the mask removes it.
  safe_labels = jnp.where(valid, labels, 0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
  total = jnp.sum(jnp.where(valid, losses, 0.0))
  if normalization == 'sum':
    return total / logits.shape[0]
  return total / jnp.maximum(jnp.sum(valid), 1)
