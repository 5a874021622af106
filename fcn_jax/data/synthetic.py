"""A procedural segmentation dataset that needs no files and no download.

Every image is drawn from its own seeded random generator, so sample `i` of a
split is the same on every machine and can be read in any order. The scenes
are filled shapes (rectangles, disks, triangles) of several colours and
textures on a textured background, plus the structures a stride-32 predictor
cannot resolve: thin lines, thin rings and small dots. That makes the skip
architectures' advantage (FCN-8s over FCN-32s) visible, as on PASCAL.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLASS_NAMES = ('background', 'rectangle', 'disk', 'triangle', 'ring', 'line',
               'dot')

# Base RGB colour of each object class, well apart in hue; every object
# jitters its colour and may carry a stripe texture, so the network must learn
# colour ranges and shapes, and the background is dimmer and less saturated.
_CLASS_COLORS = {
    1: (225, 55, 55),
    2: (55, 205, 55),
    3: (70, 90, 240),
    4: (235, 210, 50),
    5: (240, 240, 240),
    6: (215, 70, 215),
}

_SPLIT_IDS = {'train': 0, 'val': 1}


@dataclasses.dataclass(frozen=True)
class SyntheticShapes:
  """Random-access source of (RGB uint8 image, int32 label) examples.

  Attributes:
    split: 'train' or 'val' (disjoint random streams).
    size: number of examples in the split.
    image_size: side of the square images.
    seed: dataset seed (the same seed gives the same images everywhere).
  """
  split: str = 'train'
  size: int = 2000
  image_size: int = 64
  seed: int = 0

  def __post_init__(self):
    if self.split not in _SPLIT_IDS:
      raise ValueError(f'Unknown synthetic split {self.split!r}; '
                       f'expected one of {tuple(_SPLIT_IDS)}.')
    if self.image_size < 8:
      raise ValueError(f'image_size must be at least 8, got {self.image_size}.')

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.size:
      raise IndexError(f'index {index} out of range for {self.size} examples')
    rng = np.random.default_rng((self.seed, _SPLIT_IDS[self.split], index))
    image, label = render_scene(rng, self.image_size)
    return {'image': image, 'label': label, 'id': np.int32(index)}


def render_scene(rng: np.random.Generator, size: int):
  """Draws one scene; returns (H, W, 3) uint8 RGB and (H, W) int32 labels."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  image = _background(rng, size, yy, xx)
  label = np.zeros((size, size), np.int32)
  num_objects = rng.integers(2, 6)
  for _ in range(num_objects):
    cls = int(rng.integers(1, len(CLASS_NAMES)))
    mask = _SHAPES[cls](rng, size, yy, xx)
    color = np.array(_CLASS_COLORS[cls], np.float32) + rng.normal(0, 12, 3)
    texture = _texture(rng, yy, xx)
    image[mask] = color * texture[mask][:, None]
    label[mask] = cls
  image += rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8), label


def _background(rng, size, yy, xx):
  """A smooth, dim colour gradient with a faint stripe texture."""
  corners = rng.uniform(25, 110, (2, 2, 3))
  ty, tx = (yy / size)[..., None], (xx / size)[..., None]
  image = ((1 - ty) * ((1 - tx) * corners[0, 0] + tx * corners[0, 1])
           + ty * ((1 - tx) * corners[1, 0] + tx * corners[1, 1]))
  return image * _texture(rng, yy, xx)[..., None]


def _texture(rng, yy, xx):
  """Multiplicative texture: flat, or stripes at a random angle and period."""
  if rng.random() < 0.5:
    return np.ones_like(yy)
  angle = rng.uniform(0, np.pi)
  period = rng.uniform(3, 9)
  phase = np.cos(angle) * xx + np.sin(angle) * yy
  return 0.8 + 0.2 * np.sign(np.sin(2 * np.pi * phase / period))


def _rectangle(rng, size, yy, xx):
  cy, cx = rng.uniform(0, size, 2)
  hh, hw = rng.uniform(0.1, 0.28, 2) * size
  angle = rng.uniform(0, np.pi)
  u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
  v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
  return (np.abs(u) <= hw) & (np.abs(v) <= hh)


def _disk(rng, size, yy, xx):
  cy, cx = rng.uniform(0, size, 2)
  radius = rng.uniform(0.1, 0.25) * size
  return (yy - cy)**2 + (xx - cx)**2 <= radius**2


def _triangle(rng, size, yy, xx):
  center = rng.uniform(0.1, 0.9, 2) * size
  radius = rng.uniform(0.15, 0.35) * size
  angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
  angles += rng.uniform(-0.3, 0.3, 3)
  py = center[0] + radius * np.sin(angles)
  px = center[1] + radius * np.cos(angles)
  inside = np.ones_like(yy, bool)
  orientation = np.sign((px[1] - px[0]) * (py[2] - py[0])
                        - (py[1] - py[0]) * (px[2] - px[0]))
  for i in range(3):
    j = (i + 1) % 3
    cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
    inside &= orientation * cross >= 0
  return inside


def _ring(rng, size, yy, xx):
  cy, cx = rng.uniform(0.15, 0.85, 2) * size
  radius = rng.uniform(0.15, 0.32) * size
  thickness = rng.uniform(3.5, 6.0)
  dist = np.sqrt((yy - cy)**2 + (xx - cx)**2)
  return np.abs(dist - radius) <= thickness / 2


def _line(rng, size, yy, xx):
  p0, p1 = rng.uniform(0, size, (2, 2))
  thickness = rng.uniform(3.5, 6.0)
  d = p1 - p0
  t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / (d @ d + 1e-6), 0, 1)
  dist = np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))
  return dist <= thickness / 2


def _dot(rng, size, yy, xx):
  cy, cx = rng.uniform(0, size, 2)
  radius = rng.uniform(3.0, 5.0)
  return (yy - cy)**2 + (xx - cx)**2 <= radius**2


_SHAPES = {1: _rectangle, 2: _disk, 3: _triangle, 4: _ring, 5: _line, 6: _dot}
