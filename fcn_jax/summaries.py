"""TensorBoard pictures written at every evaluation during training.

A few validation images as input | ground truth | prediction strips in the
VOC palette, and the confusion-matrix picture of the whole split. Scalars
(scores, per-class IU with class names, learning rate) go through
`writers.MetricWriter.write`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import input_pipeline
from fcn_jax import visualize

# Colours for every label value, 255 (ignore) included: VOC's 256-entry map,
# whose entry 255 is the cream of VOC's object borders.
_PALETTE_256 = input_pipeline.voc_palette(256)
_SEPARATOR = 4  # Pixels of white between the three panels.


def make_predict_fn(apply_fn) -> Callable:
  """jit-compiled (params, (1, H, W, 3) preprocessed image) -> (H, W) labels."""
  @jax.jit
  def predict(params, image):
    logits = apply_fn({'params': params}, image, train=False)
    if isinstance(logits, dict):  # Several heads (SIFT Flow): the main one.
      logits = logits['label']
    return jnp.argmax(logits[0], axis=-1)
  return predict


def prediction_strip(image: np.ndarray, label: np.ndarray, pred: np.ndarray,
                     palette: np.ndarray) -> np.ndarray:
  """(H, 3W + 2 separators, 3) uint8: the RGB input, the ground truth and the
  prediction, colour-coded with `palette` (ignored pixels in VOC's cream)."""
  colours = _PALETTE_256.copy()
  palette = np.asarray(palette, np.uint8)
  colours[:len(palette)] = palette
  gap = np.full((image.shape[0], _SEPARATOR, 3), 255, np.uint8)
  return np.concatenate([
      displayable(image), gap,
      visualize.colorize(np.asarray(label, np.int64), colours), gap,
      visualize.colorize(np.asarray(pred, np.int64), colours)], axis=1)


def displayable(image: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 RGB of an example's image. Preprocessed float inputs
  (NYUDv2, SIFT Flow: BGR first, minus a mean) show their first three
  channels as RGB, stretched to 0-255."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  rgb = image[..., :3][..., ::-1].astype(np.float32)
  low, high = float(rgb.min()), float(rgb.max())
  return np.uint8(np.round(255 * (rgb - low) / max(high - low, 1e-6)))


def write_eval_images(writer, step: int, predict_fn: Callable, params,
                      examples: Sequence[dict], hist: np.ndarray,
                      class_names: Sequence[str], palette: np.ndarray) -> None:
  """Writes `val/predictions/<i>` strips and `val/confusion_matrix`.

  Args:
    writer: a `writers.MetricWriter`.
    step: the training step.
    predict_fn: from `make_predict_fn`.
    params: the model parameters.
    examples: raw validation examples ({'image': RGB uint8, 'label'}).
    hist: the (C, C) confusion matrix of the evaluation.
    class_names: C names, for the confusion-matrix axes.
    palette: (C, 3) uint8 colours.
  """
  for i, example in enumerate(examples):
    image = input_pipeline.preprocess(example['image'])[None]
    pred = np.asarray(jax.device_get(predict_fn(params, image)))
    writer.write_image(step, f'val/predictions/{i}', prediction_strip(
        example['image'], example['label'], pred, palette))
  picture = visualize.confusion_matrix_image(np.asarray(hist), class_names)
  writer.write_image(step, 'val/confusion_matrix',
                     np.asarray(picture.convert('RGB')))
