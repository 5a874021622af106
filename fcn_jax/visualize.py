"""Pictures of predictions: palette PNGs, overlays, heatmaps, confusion plots.

Drawn with PIL only (no matplotlib), so prediction and evaluation need no
plotting library.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont


def save_label_png(path: str, labels: np.ndarray, palette: np.ndarray) -> None:
  """Writes a (H, W) class-index map as a palette ('P') PNG.

  Pixel value = class index (what evaluation tools read back); the colours
  live only in the palette, as in VOC's SegmentationClass files.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f'{path}: labels must be (H, W), got {labels.shape}.')
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError(f'{path}: class indices {labels.min()}..{labels.max()} '
                     'do not fit an 8-bit palette PNG.')
  image = Image.fromarray(labels.astype(np.uint8), mode='P')
  full = np.zeros((256, 3), np.uint8)
  palette = np.asarray(palette, np.uint8)[:256]
  full[:len(palette)] = palette
  image.putpalette(full.reshape(-1).tolist())
  image.save(path, format='PNG')


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """(H, W) class indices -> (H, W, 3) uint8 RGB through `palette`."""
  return np.asarray(palette, np.uint8)[np.asarray(labels)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
  """Blends the colour-coded labels over an RGB photo; background (0) shows
  the photo unchanged so objects stand out."""
  image = np.asarray(image, np.float32)
  colors = colorize(labels, palette).astype(np.float32)
  mixed = (1 - alpha) * image + alpha * colors
  mixed = np.where((np.asarray(labels) == 0)[..., None], image, mixed)
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def heatmap(probabilities: np.ndarray) -> np.ndarray:
  """(H, W) probabilities in [0, 1] -> (H, W) uint8 grey levels (255 = 1)."""
  return np.clip(np.round(np.asarray(probabilities) * 255), 0, 255).astype(
      np.uint8)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font.
    return ImageFont.load_default()


def confusion_matrix_image(hist: np.ndarray, class_names: Sequence[str],
                           cell: int = 36) -> Image.Image:
  """A confusion-matrix plot: rows = ground truth, columns = prediction.

  Cells are shaded by the row-normalized fraction (recall of the true class)
  and print it in percent, so rare classes are as readable as common ones.
  """
  hist = np.asarray(hist, np.float64)
  num = hist.shape[0]
  totals = hist.sum(axis=1, keepdims=True)
  with np.errstate(divide='ignore', invalid='ignore'):
    frac = np.where(totals > 0, hist / np.maximum(totals, 1), 0.0)
  font = _font(max(9, cell // 3))
  label_width = 8 + max(int(font.getlength(n)) for n in class_names)
  margin_top = label_width + 24
  margin_left = label_width + 24
  width = margin_left + num * cell + 10
  height = margin_top + num * cell + 10
  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((4, 4), 'rows: ground truth, columns: prediction (% of row)',
            fill='black', font=font)
  for i in range(num):
    for j in range(num):
      x0 = margin_left + j * cell
      y0 = margin_top + i * cell
      # White -> dark blue with the fraction.
      shade = frac[i, j]
      color = tuple(int(round(255 - shade * (255 - c))) for c in (8, 48, 107))
      draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color,
                     outline=(200, 200, 200))
      if totals[i, 0] > 0:
        text = f'{100 * shade:.0f}'
        ink = 'white' if shade > 0.5 else 'black'
        tw = font.getlength(text)
        draw.text((x0 + (cell - tw) / 2, y0 + cell / 3), text, fill=ink,
                  font=font)
  for k, name in enumerate(class_names):
    draw.text((4, margin_top + k * cell + cell / 3), name, fill='black',
              font=font)
    # Column names, written horizontally then rotated into place.
    tw = int(font.getlength(name)) + 2
    label = Image.new('RGB', (tw, cell), 'white')
    ImageDraw.Draw(label).text((0, cell / 3), name, fill='black', font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (margin_left + k * cell, margin_top - 6 - tw))
  return image
