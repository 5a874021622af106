"""Tests of the convolutionalized-classifier heatmap demo (fcn_jax.heatmap).

Random VGG16 weights at 1/16 width on the repository's demo photo; the
comparison with torch's dense classifier lives in test_convert.py.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fcn_jax import convert
from fcn_jax import heatmap
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import surgery
from fcn_jax import workdir as workdir_lib

CAT = os.path.join(os.path.dirname(__file__), 'data', 'demo-photos',
                   'tabby_cat.png')
WIDTH = 1 / 16


def random_classifier_params(seed=0):
  """Torch-layout random VGG16 weights, convolutionalized by from_vgg16."""
  rng = np.random.default_rng(seed)
  channels = [models.scaled_channels(c, WIDTH) for _, c in models.VGG16_BLOCKS]
  fc = models.scaled_channels(models.FC_CHANNELS, WIDTH)
  state, in_ch, convs = {}, 3, iter(surgery.VGG16_FEATURE_INDICES)
  for (num_convs, _), ch in zip(models.VGG16_BLOCKS, channels):
    for _ in range(num_convs):
      i = next(convs)
      state[f'features.{i}.weight'] = rng.normal(
          0, np.sqrt(2 / (9 * in_ch)), (ch, in_ch, 3, 3))
      state[f'features.{i}.bias'] = rng.normal(0, 0.1, ch)
      in_ch = ch
  for index, (fan_in, out) in zip((0, 3, 6), ((in_ch * 49, fc), (fc, fc),
                                               (fc, 1000))):
    state[f'classifier.{index}.weight'] = rng.normal(
        0, np.sqrt(2 / fan_in), (out, fan_in))
    state[f'classifier.{index}.bias'] = rng.normal(0, 0.1, out)
  return state, surgery.from_vgg16(state, 'caffe')


def test_heatmap_size_by_hand():
  # 368 -> 184, 92, 46, 23, 12 (ceil) -> 12 - 6 = 6 rows;
  # 489 -> 245, 123, 62, 31, 16 -> 10 columns; 224 -> 7 -> 1.
  assert heatmap.heatmap_size(368, 489) == (6, 10)
  assert heatmap.heatmap_size(224, 224) == (1, 1)
  assert heatmap.heatmap_size(193, 256) == (1, 2)


def _max_pool_ceil(x):
  h, w = x.shape[1:3]
  x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)),
             constant_values=-np.inf)
  return x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2,
                   x.shape[3]).max(axis=(2, 4))


def test_cat_heatmap_cells_are_the_dense_classifier_on_windows():
  state, params = random_classifier_params()
  image = heatmap.load_image(CAT)
  assert image.shape == (368, 489, 3)
  prob_map, cls, probs = heatmap.make_heatmap(params, image)
  assert prob_map.shape == (6, 10) and probs.shape == (6, 10, 1000)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
  assert cls == int(np.argmax(probs.mean(axis=(0, 1))))
  np.testing.assert_array_equal(prob_map, probs[..., cls])

  # Independent path: conv5_3's output -> ReLU -> pool (numpy), then each
  # cell's 7x7x512 window flattened torch-style (C, H, W) through the
  # original dense fc6/fc7/fc8 matrices.
  x = jnp.asarray(input_pipeline.preprocess(image))[None]
  model = heatmap.VGG16Classifier(width=WIDTH)
  _, inter = model.apply({'params': params}, x, capture_intermediates=True,
                         mutable=['intermediates'])
  conv5_3 = np.asarray(inter['intermediates']['conv5_3']['__call__'][0])
  pool5 = _max_pool_ceil(np.maximum(conv5_3, 0))
  assert pool5.shape[1:3] == (12, 16)
  relu = lambda v: np.maximum(v, 0)  # pylint: disable=unnecessary-lambda-assignment
  for i, j in [(0, 0), (5, 9), (2, 7)]:
    window = pool5[0, i:i + 7, j:j + 7].transpose(2, 0, 1).reshape(-1)
    h = relu(state['classifier.0.weight'] @ window + state['classifier.0.bias'])
    h = relu(state['classifier.3.weight'] @ h + state['classifier.3.bias'])
    logits = state['classifier.6.weight'] @ h + state['classifier.6.bias']
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    np.testing.assert_allclose(probs[i, j], expected, rtol=2e-4, atol=1e-7)


def test_render_places_cells_on_their_windows():
  image = np.full((300, 280, 3), 100, np.uint8)
  probs = np.array([[0.0, 1.0], [0.5, 0.25], [1.0, 0.0]], np.float32)
  picture = np.asarray(heatmap.render(image, probs))
  assert picture.shape == (300, 560, 3)
  np.testing.assert_array_equal(picture[:, :280], image)
  overlay = picture[:, 280:].astype(int)
  # Cell (i, j) covers the 32x32 square centred on its window's centre
  # (32 i + 112, 32 j + 112): rows/cols 96 + 32 i ... 127 + 32 i.
  for i in range(3):
    for j in range(2):
      color = heatmap.colormap(np.array(probs[i, j]))
      expected = np.round(0.4 * 100 + 0.6 * color)
      block = overlay[96 + 32 * i:128 + 32 * i, 96 + 32 * j:128 + 32 * j]
      np.testing.assert_allclose(block, np.broadcast_to(expected, block.shape),
                                 atol=1)
  # Outside the covered region the photo is only dimmed.
  np.testing.assert_array_equal(overlay[:96], 30)
  np.testing.assert_array_equal(overlay[:, 96 + 64:], 30)


def test_colormap_ramp():
  np.testing.assert_array_equal(heatmap.colormap(np.array([0.0, 1 / 3, 1.0])),
                                [[0, 0, 0], [255, 0, 0], [255, 255, 255]])


def test_run_on_converted_checkpoint(tmp_path):
  _, params = random_classifier_params(1)
  weights = str(tmp_path / 'vgg16')
  workdir_lib.save_params(weights, params, {'format': 'vgg16-caffe'})
  output = str(tmp_path / 'cat.png')
  result = heatmap.run(weights, CAT, output, class_index=281, scale=0.7)
  # 0.7 x (368, 489) = (258, 342) -> 9, 11 after pooling -> 3 x 5 map.
  assert result['map'].shape == (3, 5) and result['class'] == 281
  picture = Image.open(output)
  assert picture.size == (2 * 342, 258)
  assert len(result['top5']) == 5


def test_errors(tmp_path):
  _, params = random_classifier_params()
  with pytest.raises(ValueError, match='at least 193x193'):
    heatmap.make_heatmap(params, np.zeros((150, 400, 3), np.uint8))
  with pytest.raises(ValueError, match='--class=1000'):
    heatmap.make_heatmap(params, np.zeros((224, 224, 3), np.uint8), 1000)
  with pytest.raises(FileNotFoundError, match='nope.png'):
    heatmap.load_image(str(tmp_path / 'nope.png'))
  no_fc8 = {k: v for k, v in params.items() if k != 'fc8'}
  workdir_lib.save_params(str(tmp_path / 'fcn'), no_fc8, {})
  with pytest.raises(ValueError, match='no fc8'):
    heatmap.load_classifier_params(str(tmp_path / 'fcn'))
