"""Geometric transforms of an (image, label) pair, as numpy arrays.

The label is an (H, W) map or (H, W, K) stacked maps (several label maps cut
alike). Rescaling is bilinear for the image and nearest for the labels;
padding is at the bottom/right, with 0 for a preprocessed (mean-subtracted)
image, i.e. the mean colour, and the ignore label for the labels;
`bucket_shape` is the common padded shape of a batch of images.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fcn_jax.metrics import IGNORE_INDEX


def rescale(image: np.ndarray, label: np.ndarray, factor: float):
  """Resizes by `factor`: bilinear for the image, nearest for the labels."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width = label.shape[:2]
  size = (max(1, round(width * factor)), max(1, round(height * factor)))
  if image.dtype == np.uint8:
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
        size, Image.BILINEAR))
  else:  # Preprocessed float channels: each resized on its own.
    image = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(
        image[..., c], np.float32)).resize(size, Image.BILINEAR))
                      for c in range(image.shape[-1])], axis=-1)
  def nearest(plane):
    return np.asarray(Image.fromarray(np.ascontiguousarray(
        plane, dtype=np.uint8)).resize(size, Image.NEAREST))
  if label.ndim == 2:
    return image, nearest(label)
  return image, np.stack([nearest(label[..., k])
                          for k in range(label.shape[-1])], axis=-1)


def random_crop_or_pad(image: np.ndarray, label: np.ndarray, size: int,
                       rng: np.random.Generator):
  """A random size x size window; sides shorter than `size` are padded.

  `image` is preprocessed (mean subtracted), so its padding is 0 = the mean
  colour; label padding is the ignore label.
  """
  image, label = pad_to(image, label, max(size, label.shape[0]),
                        max(size, label.shape[1]))
  top = int(rng.integers(0, label.shape[0] - size + 1))
  left = int(rng.integers(0, label.shape[1] - size + 1))
  return (image[top:top + size, left:left + size],
          label[top:top + size, left:left + size])


def pad_to(image: np.ndarray, label: np.ndarray, height: int, width: int):
  """Pads at the bottom/right: image with 0 (the mean), labels with 255."""
  pad_h, pad_w = height - label.shape[0], width - label.shape[1]
  extra_axes = ((0, 0),) * (label.ndim - 2)  # stacked label maps
  if pad_h < 0 or pad_w < 0:
    raise ValueError(f'Image of {label.shape[0]}x{label.shape[1]} (HxW) does '
                     f'not fit the padded shape {height}x{width}; raise '
                     'config.pad_size.')
  if pad_h == 0 and pad_w == 0:
    return image, label
  image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
  label = np.pad(label, ((0, pad_h), (0, pad_w)) + extra_axes,
                 constant_values=IGNORE_INDEX)
  return image, label


def bucket_shape(shapes: Sequence[tuple[int, int]], pad_multiple: int = 1,
                 pad_size: int = 0) -> tuple[int, int]:
  """The padded (H, W) of a batch of images with (H, W) `shapes`."""
  if pad_size > 0:
    return pad_size, pad_size
  height = max(h for h, _ in shapes)
  width = max(w for _, w in shapes)
  multiple = max(1, pad_multiple)
  return (math.ceil(height / multiple) * multiple,
          math.ceil(width / multiple) * multiple)
