"""Model tests: shapes, crops, bilinear upsampling, FC == conv, init, counts."""

from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import layers
from fcn_jax import models

TINY = dict(width=1 / 32)


def _params(model, seed=0):
  return models.init_params(model, jax.random.key(seed))


@pytest.mark.parametrize('variant', models.VARIANTS)
def test_logits_have_the_input_size_for_odd_sizes(variant):
  model = models.get_model(variant, num_classes=5, **TINY)
  params = jax.eval_shape(lambda: _params(model))
  sizes = [(1, 1), (2, 3), (5, 7), (31, 33), (32, 32), (63, 1), (97, 130),
           (224, 224), (375, 500), (500, 375)]
  for h, w in sizes:
    # eval_shape traces the real model (every crop and pad) without the FLOPs.
    out = jax.eval_shape(
        lambda p, x: model.apply({'params': p}, x),
        params, jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32))
    assert out.shape == (2, h, w, 5), (variant, h, w, out.shape)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize('variant', models.VARIANTS)
def test_forward_runs_on_small_odd_images(variant):
  model = models.get_model(variant, num_classes=3, **TINY)
  params = _params(model)
  # Non-zero score layers so the check is not trivially about zeros.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if 'score' in str(path[0]) else x, params)
  x = jax.random.normal(jax.random.key(1), (1, 13, 21, 3)) * 50
  y = model.apply({'params': params}, x)
  assert y.shape == (1, 13, 21, 3)
  assert np.all(np.isfinite(y)) and np.std(np.asarray(y)) > 0


def test_bilinear_kernel_values_by_hand():
  # factor 2 (size 4): centre 1.5, weights 1 - |x - 1.5| / 2.
  np.testing.assert_allclose(layers.bilinear_kernel_1d(4),
                             [0.25, 0.75, 0.75, 0.25])
  # factor 1 (size 2): centre 0.5, weights 1 - 0.5 / 1.
  np.testing.assert_allclose(layers.bilinear_kernel_1d(2), [0.5, 0.5])
  # Odd size 3: centre 1, factor 2.
  np.testing.assert_allclose(layers.bilinear_kernel_1d(3), [0.5, 1.0, 0.5])
  k = layers.bilinear_kernel(4, 3)
  assert k.shape == (4, 4, 3, 3)
  np.testing.assert_allclose(k[1, 2, 0, 0], 0.75 * 0.75)
  assert k[:, :, 0, 1].sum() == 0 and k[:, :, 2, 1].sum() == 0  # diagonal


def _naive_conv_transpose(x, kernel, stride):
  n, h, w, _ = x.shape
  k = kernel.shape[0]
  out = np.zeros((n, (h - 1) * stride + k, (w - 1) * stride + k,
                  kernel.shape[3]))
  for i in range(h):
    for j in range(w):
      out[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          'nc,abco->nabo', x[:, i, j], kernel)
  return out


@pytest.mark.parametrize('stride,size', [(2, 4), (8, 16), (32, 64), (3, 5),
                                         (2, 3)])
def test_conv_transpose_matches_scatter_definition(stride, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  kernel = rng.normal(size=(size, size, 3, 2)).astype(np.float32)
  got = layers.conv_transpose(jnp.asarray(x), jnp.asarray(kernel), stride)
  np.testing.assert_allclose(got, _naive_conv_transpose(x, kernel, stride),
                             atol=1e-4, rtol=1e-5)
  # The per-channel (frozen bilinear) path equals the full diagonal kernel.
  k2 = rng.normal(size=(size, size)).astype(np.float32)
  diagonal = np.zeros((size, size, 3, 3), np.float32)
  for c in range(3):
    diagonal[:, :, c, c] = k2
  got = layers.conv_transpose(jnp.asarray(x), jnp.asarray(k2[:, :, None, None]),
                              stride, depthwise=True)
  np.testing.assert_allclose(got, _naive_conv_transpose(x, diagonal, stride),
                             atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('factor', [2, 8, 16, 32])
@pytest.mark.parametrize('learnable', [False, True])
def test_bilinear_upsampling_reproduces_a_ramp_in_the_interior(factor,
                                                                learnable):
  # A linear ramp v(i, j) = 3i - 2j + 1 sampled on the coarse grid. Bilinear
  # interpolation is exact on linear functions, so away from the borders
  # (where fewer than 2x2 inputs contribute) output pixel u of the kernel
  # 2s transposed convolution holds v at coarse coordinate (u - (s - 0.5)) / s.
  h, w = 5, 6
  ii, jj = np.mgrid[0:h, 0:w].astype(np.float32)
  x = np.stack([3 * ii - 2 * jj + 1, -ii + jj], -1)[None]
  up = layers.Upsample(2, factor, learnable=learnable)
  variables = up.init(jax.random.key(0), jnp.asarray(x))
  y = np.asarray(up.apply(variables, jnp.asarray(x)))[0]
  assert y.shape == ((h - 1) * factor + 2 * factor,
                     (w - 1) * factor + 2 * factor, 2)
  u = np.arange(factor, h * factor)  # interior rows
  v = np.arange(factor, w * factor)
  ci = (u - (factor - 0.5)) / factor
  cj = (v - (factor - 0.5)) / factor
  expected0 = 3 * ci[:, None] - 2 * cj[None, :] + 1
  expected1 = -ci[:, None] + cj[None, :]
  np.testing.assert_allclose(y[u][:, v, 0], expected0, atol=1e-4)
  np.testing.assert_allclose(y[u][:, v, 1], expected1, atol=1e-4)


def _layer_maps():
  """Affine maps x_in = a * x_out + b of each layer, from the data upward.

  conv (kernel k, pad p, stride 1): receptive-field centre x = u - p + (k-1)/2.
  pool 2x2/2: x = 2u + 1/2.  transposed conv (kernel 2s, stride s): output u
  is centred on input (u - (2s - 1)/2) / s.
  """
  conv = lambda k, p: (Fraction(1), Fraction(k - 1, 2) - p)
  pool = (Fraction(2), Fraction(1, 2))
  up = lambda s: (Fraction(1, s), -Fraction(2 * s - 1, 2 * s))
  trunk = {}
  layers = []
  for block, (num_convs, _) in enumerate(models.VGG16_BLOCKS, start=1):
    for i in range(num_convs):
      layers.append(conv(3, 100 if (block, i) == (1, 0) else 1))
    layers.append(pool)
    trunk[f'pool{block}'] = list(layers)
  trunk['fc7'] = trunk['pool5'] + [conv(7, 0), conv(1, 0)]
  return trunk


def _compose(maps):
  a, b = Fraction(1), Fraction(0)
  for la, lb in maps:  # x = a * (la * u + lb) + b, from the input side.
    a, b = a * la, a * lb + b
  return a, b


def test_crop_offsets_follow_from_the_layer_geometry():
  trunk = _layer_maps()
  pool4 = _compose(trunk['pool4'])
  pool3 = _compose(trunk['pool3'])
  up = lambda s: (Fraction(1, s), -Fraction(2 * s - 1, 2 * s))

  def offset(cropped, reference):
    # Caffe's Crop takes cropped[u + offset] for reference index u; both must
    # be centred on the same input point: a*(u + offset) + b_c = a*u + b_r.
    (a1, b1), (a2, b2) = cropped, reference
    assert a1 == a2
    return (b2 - b1) / a1

  # FCN-32s: score_fr upsampled x32, cropped onto the data (a = 1, b = 0).
  up32 = _compose(trunk['fc7'] + [up(32)])
  assert offset(up32, (1, 0)) == models.FINAL_CROP['fcn32s'] == 19
  # FCN-16s: score_fr x2 onto pool4 scores (offset 5), then x16 onto data.
  up2 = _compose(trunk['fc7'] + [up(2)])
  assert offset(pool4, up2) == models.CROP_POOL4 == 5
  # The fused map lives on upscore2's grid (the pool4 scores were cropped).
  up16 = _compose(trunk['fc7'] + [up(2), up(16)])
  assert offset(up16, (1, 0)) == models.FINAL_CROP['fcn16s'] == 27
  # FCN-8s: fused x2 onto pool3 scores (offset 9), then x8 onto data (31).
  up_pool4 = _compose(trunk['fc7'] + [up(2), up(2)])
  assert offset(pool3, up_pool4) == models.CROP_POOL3 == 9
  up8 = _compose(trunk['fc7'] + [up(2), up(2), up(8)])
  assert offset(up8, (1, 0)) == models.FINAL_CROP['fcn8s'] == 31
  assert models.FINAL_CROP['fcn8s-atonce'] == 31


def test_fc6_fc7_convolutions_equal_the_dense_layers_they_replace():
  """'n x n x K input, N outputs' FC layer == n x n x K x N convolution."""
  width = 1 / 16
  model = models.get_model('fcn32s', num_classes=4, width=width, dropout_rate=0)
  params = _params(model)
  c5 = models.scaled_channels(512, width)
  fc = models.scaled_channels(4096, width)
  # Real dense layers, as in a classifier: flatten pool5 (7, 7, c5) row-major.
  dense6, dense7 = nn.Dense(fc), nn.Dense(fc)
  d6 = dense6.init(jax.random.key(2), jnp.zeros((1, 7 * 7 * c5)))['params']
  d7 = dense7.init(jax.random.key(3), jnp.zeros((1, fc)))['params']
  params = dict(params)
  params['fc6'] = {'kernel': d6['kernel'].reshape(7, 7, c5, fc),
                   'bias': d6['bias']}
  params['fc7'] = {'kernel': d7['kernel'].reshape(1, 1, fc, fc),
                   'bias': d7['bias']}
  # An input whose pool5 is exactly 7x7: (h + 198) -> /2 five times (ceil).
  x = jax.random.normal(jax.random.key(4), (2, 20, 26, 3)) * 60
  _, state = model.apply({'params': params}, x, mutable=['intermediates'])
  feats = jax.tree.map(lambda v: v[0], state['intermediates'],
                       is_leaf=lambda v: isinstance(v, tuple))
  pool5 = feats['pool5']
  assert pool5.shape[1:3] == (7, 7)
  assert feats['fc7_out'].shape[1:3] == (1, 1)
  h6 = jax.nn.relu(dense6.apply({'params': d6}, pool5.reshape(2, -1)))
  h7 = jax.nn.relu(dense7.apply({'params': d7}, h6))
  np.testing.assert_allclose(feats['fc7_out'][:, 0, 0], h7, rtol=1e-4, atol=1e-4)


def test_score_layers_start_at_zero_and_upsampling_is_bilinear():
  model = models.get_model('fcn8s', num_classes=3, learn_upsampling=True, **TINY)
  params = _params(model)
  for name in ('score_fr', 'score_pool4', 'score_pool3'):
    assert not np.any(params[name]['kernel']) and not np.any(params[name]['bias'])
  for name, size in (('upscore2', 4), ('upscore_pool4', 4), ('upscore8', 16)):
    np.testing.assert_array_equal(params[name]['kernel'],
                                  layers.bilinear_kernel(size, 3))
  # Frozen upsampling (the default) has no parameters to train.
  frozen = _params(models.get_model('fcn8s', num_classes=3, **TINY))
  assert not any(name.startswith('upscore') for name in frozen)
  # With zero scores the logits are exactly zero for any input.
  y = model.apply({'params': params}, jnp.ones((1, 9, 9, 3)))
  assert not np.any(y)


def test_full_size_parameter_count_matches_vgg16_arithmetic():
  model = models.get_model('fcn8s')
  shapes = jax.eval_shape(lambda: _params(model))
  total = sum(x.size for x in jax.tree.leaves(shapes))
  vgg_convs = 14_714_688            # VGG16's 13 conv layers (weights + biases)
  fc6 = 7 * 7 * 512 * 4096 + 4096   # 102,764,544
  fc7 = 4096 * 4096 + 4096          # 16,781,312
  scores = (4096 + 512 + 256) * 21 + 3 * 21
  assert total == vgg_convs + fc6 + fc7 + scores == 134_362_751


def test_get_model_rejects_unknown_variants():
  with pytest.raises(ValueError, match='fcn4s'):
    models.get_model('fcn4s')
  with pytest.raises(ValueError, match='num_classes'):
    models.get_model('fcn8s', num_classes=0)


def test_atonce_scales_the_skip_features():
  # With only score_pool3 non-zero, at-once logits are 1e-4 times those of
  # FCN-8s with the same weights (everything after pool3 is linear).
  kw = dict(num_classes=2, width=1 / 32)
  m8, mat = models.get_model('fcn8s', **kw), models.get_model('fcn8s-atonce', **kw)
  params = _params(m8)
  params = dict(params, score_pool3={
      'kernel': jnp.ones_like(params['score_pool3']['kernel']),
      'bias': jnp.zeros_like(params['score_pool3']['bias'])})
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3)) * 50
  y8 = m8.apply({'params': params}, x)
  yat = mat.apply({'params': params}, x)
  assert np.abs(y8).max() > 0
  np.testing.assert_allclose(yat, 1e-4 * y8, rtol=1e-3, atol=1e-9)
