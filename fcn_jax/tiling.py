"""Inference at any image size: bucket shapes, sliding-window tiles, resizing.

Host-side numpy/PIL helpers of `inference.Segmenter` (and evaluate): a jitted
version of any of them would compile once per image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of an (h, w, 3) uint8 image to (height, width)."""
  return np.asarray(Image.fromarray(image).resize((width, height),
                                                  Image.BILINEAR))


def resize_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of (h, w, C) float32 maps, channel by channel on the host
  (a jitted resize would compile once per image size)."""
  return np.stack([
      np.asarray(Image.fromarray(maps[..., c]).resize((width, height),
                                                      Image.BILINEAR))
      for c in range(maps.shape[-1])], axis=-1)


def bucket_size(n: int) -> int:
  """The padded size of a side of `n` pixels.

  Multiples of 32 up to 256, of 64 up to 512, of 128 up to 1024, of 256
  beyond: at most ~25% extra pixels per side (less for typical sizes), and a
  handful of shapes for a folder of photos (VOC: 384 or 512 per side).
  """
  if n < 1:
    raise ValueError(f'Image side must be positive, got {n}.')
  for limit, step in ((256, 32), (512, 64), (1024, 128)):
    if n <= limit:
      return -(-n // step) * step
  return -(-n // 256) * 256


def softmax(logits: np.ndarray) -> np.ndarray:
  """Softmax over the last axis, on the host."""
  shifted = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=-1, keepdims=True)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Start offsets of tiles of `tile` covering [0, length), evenly spread,
  each pair of neighbours overlapping by at least `overlap`."""
  if length <= tile:
    return [0]
  stride = max(1, tile - overlap)
  count = -(-(length - tile) // stride) + 1
  return [round(i * (length - tile) / (count - 1)) for i in range(count)]
