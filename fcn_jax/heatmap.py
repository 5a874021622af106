"""Class-score heatmap of the convolutionalized VGG16 classifier.

    python -m fcn_jax.heatmap --weights=vgg16_from_caffe.pth \\
        --image=tests/data/demo-photos/tabby_cat.png --class=281 \\
        --output=heatmap.png

The figure the FCN paper starts from (Fig. 2): an ImageNet classifier whose
fully connected layers are read as convolutions (fc6 = 7x7, fc7 and fc8 =
1x1) runs on an image of any size and returns a coarse map of class scores,
one per 224x224 window with stride 32, instead of a single vector.

The classifier keeps VGG16's own conv1_1 padding of 1 (not the FCN's 100), so
a 224x224 input gives a 1x1 map equal to the classifier's 1000 logits, and map
cell (i, j) is centred on input pixel (32 i + 112, 32 j + 112). Max pooling
rounds up as in Caffe, so sizes that are not multiples of 32 can get one more
cell than torchvision's floor-mode pooling would give.

`--weights` is a VGG16 .pth (vgg16_from_caffe.pth or torchvision's
vgg16-397923af.pth, converted on the fly) or a directory written by
``python -m fcn_jax.convert`` from one. ImageNet class 281 is 'tabby cat'.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from fcn_jax import convert
from fcn_jax import errors
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import pth
from fcn_jax import surgery
from fcn_jax import workdir as workdir_lib
from fcn_jax.data import decode

IMAGENET_CLASSES = 1000
# Geometry of a map cell: window size and stride in input pixels.
WINDOW = 224
STRIDE = 32


class VGG16Classifier(models.FCN):
  """VGG16 with fc6/fc7/fc8 as convolutions: (N, H, W, 3) -> (N, h, w, 1000).

  Same trunk and parameter names as the FCNs (conv1_1 ... fc7) plus 'fc8'.
  """
  num_classes: int = IMAGENET_CLASSES
  input_padding: int = 1
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    feats = self.backbone(images.astype(self.dtype), train)
    fc8 = nn.Conv(self.num_classes, (1, 1), kernel_init=self.conv_init,
                  dtype=self.dtype, name='fc8')
    return fc8(feats['fc7']).astype(jnp.float32)


def heatmap_size(height: int, width: int) -> tuple[int, int]:
  """Map size for an input: five ceil-mode halvings, then the 7x7 fc6."""
  def side(n):
    for _ in range(5):
      n = -(-n // 2)
    return n - 6
  return side(height), side(width)


def load_classifier_params(weights: str, fmt: str = 'auto') -> dict:
  """VGG16 classifier params (with fc8) from a .pth file or a converted dir."""
  if os.path.isdir(weights):
    params, _ = workdir_lib.load_params(weights)
  else:
    if fmt == 'auto':
      known = surgery.verify_checksum(weights)
      if known is None or not known['format'].startswith('vgg16'):
        raise errors.BadFileError(
            f'{weights}: unknown VGG16 file; pass --format=vgg16-caffe or '
            '--format=vgg16-torchvision.')
      fmt = known['format']
    state = pth.state_dict_from(pth.load_pth(weights), weights)
    params = surgery.from_vgg16(state, fmt.split('-')[1], include_fc8=True)
  if 'fc8' not in params:
    raise errors.BadFileError(f'{weights}: no fc8 classifier layer; convert '
                              'the ImageNet VGG16 itself, not an FCN.')
  return params


def class_scores(params, images: jax.Array) -> jax.Array:
  """Softmax class probabilities per map cell, (N, h, w, 1000)."""
  model = VGG16Classifier(width=surgery.infer_width(params),
                          num_classes=params['fc8']['kernel'].shape[-1])
  logits = model.apply({'params': params}, images)
  return jax.nn.softmax(logits, axis=-1)


def load_image(path: str, scale: float = 1.0) -> np.ndarray:
  """RGB uint8 (H, W, 3), optionally resized by `scale`."""
  if not os.path.isfile(path):
    raise errors.MissingFileError(f'{path}: no such image.')
  image = Image.fromarray(decode.read_image(path))
  if scale != 1.0:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.BILINEAR)
  return np.asarray(image)


def colormap(values: np.ndarray) -> np.ndarray:
  """[0, 1] -> RGB uint8 on a black-red-yellow-white ramp."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  rgb = np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], -1), 0, 1)
  return (rgb * 255).round().astype(np.uint8)


def render(image: np.ndarray, probs: np.ndarray) -> Image.Image:
  """The image beside its heatmap overlay.

  Cell (i, j) is drawn as the STRIDE x STRIDE square around the centre of its
  224x224 window, (32 i + 112, 32 j + 112): the coarse map as the network
  computes it, not smoothed. Pixels outside all squares are only dimmed.
  """
  height, width = image.shape[:2]
  offset = WINDOW // 2 - STRIDE // 2
  blocks = np.repeat(np.repeat(probs, STRIDE, axis=0), STRIDE, axis=1)
  box_h = max(0, min(blocks.shape[0], height - offset))
  box_w = max(0, min(blocks.shape[1], width - offset))
  canvas = np.zeros((height, width), np.float32)
  covered = np.zeros((height, width), bool)
  canvas[offset:offset + box_h, offset:offset + box_w] = blocks[:box_h, :box_w]
  covered[offset:offset + box_h, offset:offset + box_w] = True
  overlay = np.where(covered[..., None],
                     0.4 * image + 0.6 * colormap(canvas),
                     0.3 * image).round().astype(np.uint8)
  return Image.fromarray(np.concatenate([image, overlay], axis=1))


def make_heatmap(params, image: np.ndarray, class_index: int = -1):
  """Runs the convolutionalized classifier on an RGB uint8 image.

  Args:
    params: VGG16Classifier params (conv1_1 ... fc8).
    image: (H, W, 3) RGB uint8, at least 193x193 (fc6 needs a 7x7 pool5
      map; 224x224 is the classifier's own input size).
    class_index: ImageNet class to map; -1 = the class with the highest mean
      probability over the map.

  Returns:
    (probability map of the class (h, w), class index, full probabilities
    (h, w, 1000)).
  """
  if min(heatmap_size(*image.shape[:2])) < 1:
    raise decode.ImageError(f'A {image.shape[0]}x{image.shape[1]} image is '
                            'too small for the classifier: it needs at least '
                            '193x193 pixels.')
  x = jnp.asarray(input_pipeline.preprocess(image))[None]
  probs = np.asarray(class_scores(params, x))[0]
  num_classes = probs.shape[-1]
  if class_index < 0:
    class_index = int(np.argmax(probs.mean(axis=(0, 1))))
  if class_index >= num_classes:
    raise errors.FlagError(f'--class={class_index}: the classifier has '
                           f'{num_classes} classes.')
  return probs[..., class_index], class_index, probs


def run(weights: str, image_path: str, output: str, class_index: int = -1,
        fmt: str = 'auto', scale: float = 1.0) -> dict:
  """The command line's work; returns a summary (map, class, top-5)."""
  with errors.user_file(weights):  # The .pth / checkpoint readers' errors.
    params = load_classifier_params(weights, fmt)
  image = load_image(image_path, scale)
  prob_map, class_index, probs = make_heatmap(params, image, class_index)
  render(image, prob_map).save(output)
  mean_probs = probs.mean(axis=(0, 1))
  top5 = [int(c) for c in np.argsort(-mean_probs)[:5]]
  logging.info('%s: %dx%d image -> %dx%d score map; class %d, probability '
               'max %.3g, mean %.3g; top-5 classes by mean probability %s. '
               'Wrote %s.', image_path, image.shape[0], image.shape[1],
               *prob_map.shape, class_index, prob_map.max(), prob_map.mean(),
               top5, output)
  return {'map': prob_map, 'class': class_index, 'top5': top5}


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  run(f.weights, f.image, f.output, f['class'].value, f.format, f.scale)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('weights', None, 'VGG16 .pth file, or a directory from '
                      'python -m fcn_jax.convert.')
  flags.DEFINE_string('image', None, 'Image to classify densely.')
  flags.DEFINE_integer('class', -1, 'ImageNet class index to map (281 = tabby '
                       'cat); -1 = the most probable class.')
  flags.DEFINE_string('output', 'heatmap.png', 'Picture to write.')
  flags.DEFINE_enum('format', 'auto',
                    ('auto', 'vgg16-caffe', 'vgg16-torchvision'),
                    'Input convention of a .pth file (auto = known file).')
  flags.DEFINE_float('scale', 1.0, 'Resize the image by this factor first '
                     '(larger = finer map, slower).')
  flags.mark_flags_as_required(['weights', 'image'])


if __name__ == '__main__':
  from fcn_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main, path_flags=('weights', 'image', 'output'))
