"""Tiny NYUDv2, SIFT Flow and PASCAL-Context folders in their real formats.

PNG / JPEG images and .mat label files (scipy.io.savemat) with the key names
and value conventions of the original releases, as the reference data layers
read them.
"""

import numpy as np
import scipy.io
from PIL import Image

SIFTFLOW_SUBDIR = 'spatial_envelope_256x256_static_8outdoorcategories'


def write_nyud(root, ids_by_split, size=(36, 40), seed=0):
  """nyud.tar.gz layout under root/nyud; returns {id: raw arrays}."""
  rng = np.random.default_rng(seed)
  base = root / 'nyud'
  for sub in ('data/images', 'data/depth', 'data/hha', 'segmentation'):
    (base / sub).mkdir(parents=True, exist_ok=True)
  raw = {}
  height, width = size
  for split, ids in ids_by_split.items():
    (base / f'{split}.txt').write_text('\n'.join(ids) + '\n')
    for image_id in ids:
      color = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
      hha = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
      depth = rng.integers(500, 10000, (height, width)).astype(np.uint16)
      label = rng.integers(0, 41, (height, width)).astype(np.uint16)
      Image.fromarray(color).save(base / 'data/images' / f'img_{image_id}.png')
      Image.fromarray(hha).save(base / 'data/hha' / f'img_{image_id}.png')
      Image.fromarray(depth).save(base / 'data/depth' / f'img_{image_id}.png')
      scipy.io.savemat(base / 'segmentation' / f'img_{image_id}.mat',
                       {'segmentation': label})
      raw[image_id] = dict(color=color, hha=hha, depth=depth, label=label)
  return base, raw


def write_siftflow(root, ids_by_split, size=32, seed=0):
  """SiftFlowDataset layout under root/SiftFlowDataset; {id: raw labels}."""
  rng = np.random.default_rng(seed)
  base = root / 'SiftFlowDataset'
  for folder in ('Images', 'SemanticLabels', 'GeoLabels'):
    (base / folder / SIFTFLOW_SUBDIR).mkdir(parents=True, exist_ok=True)
  raw = {}
  for split, ids in ids_by_split.items():
    (base / f'{split}.txt').write_text('\n'.join(ids))
    for image_id in ids:
      image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
      semantic = rng.integers(0, 34, (size, size)).astype(np.float64)
      geometric = rng.integers(-1, 4, (size, size)).astype(np.float64)
      Image.fromarray(image).save(base / 'Images' / SIFTFLOW_SUBDIR /
                                  f'{image_id}.jpg', quality=95)
      # The release stores both as double matrices named S.
      scipy.io.savemat(base / 'SemanticLabels' / SIFTFLOW_SUBDIR /
                       f'{image_id}.mat', {'S': semantic, 'names': 'x'})
      scipy.io.savemat(base / 'GeoLabels' / SIFTFLOW_SUBDIR /
                       f'{image_id}.mat', {'S': geometric})
      raw[image_id] = dict(semantic=semantic, geometric=geometric)
  return base, raw


def write_pascal_context(root, ids_by_split, size=(34, 38), seed=0,
                         values=None):
  """VOCdevkit/VOC2010 + pascal-context/trainval/<id>.mat; {id: LabelMap}."""
  rng = np.random.default_rng(seed)
  voc = root / 'VOCdevkit' / 'VOC2010'
  (voc / 'JPEGImages').mkdir(parents=True, exist_ok=True)
  (voc / 'ImageSets' / 'Main').mkdir(parents=True, exist_ok=True)
  context = root / 'pascal-context' / 'trainval'
  context.mkdir(parents=True, exist_ok=True)
  raw = {}
  for split, ids in ids_by_split.items():
    (voc / 'ImageSets' / 'Main' / f'{split}.txt').write_text(
        '\n'.join(ids) + '\n')
    for image_id in ids:
      image = rng.integers(0, 256, size + (3,)).astype(np.uint8)
      Image.fromarray(image).save(voc / 'JPEGImages' / f'{image_id}.jpg')
      choices = np.arange(0, 460) if values is None else np.asarray(values)
      label_map = rng.choice(choices, size).astype(np.uint16)
      scipy.io.savemat(context / f'{image_id}.mat', {'LabelMap': label_map})
      raw[image_id] = label_map
  return root, raw
