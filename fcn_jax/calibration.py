"""Calibration of the pixel softmax: expected calibration error (ECE) and a
reliability diagram.

Every labelled pixel falls into one of `num_bins` equal-width bins of its
confidence, the largest softmax probability, bin b holding confidences in
(b / num_bins, (b + 1) / num_bins] (the first bin also holds 0). Per bin we
sum: the pixel count n_b, the confidences s_b and the correct predictions
(argmax = label) k_b. Over the whole split, with N = sum_b n_b,

  ECE = sum_b (n_b / N) |k_b / n_b - s_b / n_b| = (1 / N) sum_b |k_b - s_b|

(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, with its
15 bins). The sums are accumulated over the split and divided once at the
end, like the confusion matrix; never an average of per-image ECEs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw

from fcn_jax import metrics as metrics_lib

NUM_BINS = 15


def calibration_sums(probs: jax.Array, labels: jax.Array,
                     num_bins: int = NUM_BINS,
                     ignore_index: int = metrics_lib.IGNORE_INDEX
                     ) -> dict[str, jax.Array]:
  """Per-bin sums of labelled pixels; runs under jit.

  Args:
    probs: (..., C) class probabilities.
    labels: (...) integer labels; values outside [0, C) (e.g. `ignore_index`)
      are not counted.
    num_bins: equal-width confidence bins over [0, 1].
    ignore_index: the label of unlabelled pixels.

  Returns:
    {'count': (num_bins,) int32 pixels, 'correct': (num_bins,) int32 pixels
    whose argmax is the label, 'confidence': (num_bins,) float32 sums of the
    max probability}.
  """
  num_classes = probs.shape[-1]
  probs = probs.reshape(-1, num_classes).astype(jnp.float32)
  labels = labels.reshape(-1).astype(jnp.int32)
  valid = ((labels != ignore_index) & (labels >= 0) & (labels < num_classes))
  confidence = probs.max(axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels) & valid
  # Bin b = (b / B, (b + 1) / B]; a confidence of exactly 0 goes to bin 0.
  bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0,
                  num_bins - 1)
  # Unlabelled pixels go to an overflow bin that is dropped.
  bins = jnp.where(valid, bins, num_bins)

  def per_bin(weights):
    return jnp.bincount(bins, weights, length=num_bins + 1)[:num_bins]
  return {'count': per_bin(valid.astype(jnp.int32)).astype(jnp.int32),
          'correct': per_bin(correct.astype(jnp.int32)).astype(jnp.int32),
          'confidence': per_bin(jnp.where(valid, confidence, 0.0))}


def zero_sums(num_bins: int = NUM_BINS) -> dict[str, jax.Array]:
  """The accumulator that `calibration_sums` results are added to."""
  return {'count': jnp.zeros(num_bins, jnp.int32),
          'correct': jnp.zeros(num_bins, jnp.int32),
          'confidence': jnp.zeros(num_bins, jnp.float32)}


def calibration_scores(sums: dict) -> dict:
  """ECE and the per-bin accuracy / mean confidence from summed bins.

  Returns:
    {'ece': float (NaN without labelled pixels), 'bin_count': [int],
    'bin_accuracy': [float], 'bin_confidence': [float]} (NaN for empty bins).
  """
  count = np.asarray(jax.device_get(sums['count']), np.float64)
  correct = np.asarray(jax.device_get(sums['correct']), np.float64)
  confidence = np.asarray(jax.device_get(sums['confidence']), np.float64)
  total = count.sum()
  ece = np.abs(correct - confidence).sum() / total if total else float('nan')
  with np.errstate(divide='ignore', invalid='ignore'):
    accuracy = correct / count
    mean_confidence = confidence / count
  return {'ece': float(ece), 'bin_count': [int(n) for n in count],
          'bin_accuracy': [float(a) for a in accuracy],
          'bin_confidence': [float(c) for c in mean_confidence]}


def reliability_diagram_image(scores: dict, size: int = 360) -> Image.Image:
  """Bars of accuracy per confidence bin against the diagonal (PIL only).

  Blue bars: the accuracy of each non-empty bin; red outlines: the bin's mean
  confidence (a bar below its outline = over-confident); grey strip below the
  axis: the share of pixels in each bin; the title gives the ECE.
  """
  accuracy = np.asarray(scores['bin_accuracy'], np.float64)
  confidence = np.asarray(scores['bin_confidence'], np.float64)
  count = np.asarray(scores['bin_count'], np.float64)
  num_bins = len(count)
  left, top, strip = 44, 40, 40
  image = Image.new('RGB', (left + size + 12, top + size + strip + 34),
                    'white')
  draw = ImageDraw.Draw(image)
  ece = scores['ece']
  draw.text((left, 6), f'reliability, {num_bins} bins, ECE '
            f'{100 * ece:.2f}%' if np.isfinite(ece) else 'no labelled pixels',
            fill='black')
  bottom = top + size

  def y(value):
    return bottom - value * size

  width = size / num_bins
  for b in range(num_bins):
    if count[b] == 0:
      continue
    x0, x1 = left + b * width + 1, left + (b + 1) * width - 1
    draw.rectangle([x0, y(accuracy[b]), x1, bottom], fill=(66, 110, 180))
    draw.rectangle([x0, y(confidence[b]), x1, bottom], outline=(200, 40, 40))
    share = count[b] / count.sum()
    draw.rectangle([x0, bottom + strip - share * (strip - 4), x1,
                    bottom + strip], fill=(150, 150, 150))
  draw.line([left, bottom, left + size, top], fill=(120, 120, 120))
  draw.rectangle([left, top, left + size, bottom], outline='black')
  for tick in (0.0, 0.5, 1.0):
    draw.text((left - 26, y(tick) - 5), f'{tick:.1f}', fill='black')
    draw.text((left + tick * size - 8, bottom + strip + 4), f'{tick:.1f}',
              fill='black')
  draw.text((left + size / 2 - 60, bottom + strip + 18),
            'confidence (max softmax)', fill='black')
  draw.text((4, top - 14), 'accuracy', fill='black')
  return image


def _add_sums(sums, probs, labels):
  return jax.tree.map(jnp.add, sums, calibration_sums(probs, labels,
                                                      sums['count'].shape[0]))


class Accumulator:
  """Sums `calibration_sums` of image after image on the device.

  Images of any size are padded (with unlabelled pixels) to `bucket` shapes,
  so one program is compiled per bucket shape, not per image size.
  """

  def __init__(self, num_bins: int = NUM_BINS, bucket=None):
    self.sums = zero_sums(num_bins)
    self._bucket = bucket or (lambda n: n)
    self._add = jax.jit(_add_sums, donate_argnums=0)

  def add(self, probs: np.ndarray, labels: np.ndarray) -> None:
    """Adds one (H, W, C) probability map and its (H, W) labels."""
    height, width = labels.shape
    padded_h, padded_w = self._bucket(height), self._bucket(width)
    if (padded_h, padded_w) != (height, width):
      probs = np.pad(probs, ((0, padded_h - height), (0, padded_w - width),
                             (0, 0)))
      labels = np.pad(labels, ((0, padded_h - height), (0, padded_w - width)),
                      constant_values=metrics_lib.IGNORE_INDEX)
    self.sums = self._add(self.sums, probs, labels)

  def scores(self) -> dict:
    return calibration_scores(self.sums)
