"""fast_ops: same values and gradients as the plain XLA ops and jax.grad."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fcn_jax import fast_ops
from fcn_jax import losses
from fcn_jax import models

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _plain_conv(x, kernel, padding):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=NHWC)


def _random(shape, seed, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale,
                     jnp.float32)


def _assert_close(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = np.max(np.abs(expected))
  assert scale > 0  # A zero reference would make the comparison vacuous.
  np.testing.assert_allclose(actual, expected, atol=rtol * scale, rtol=rtol)


def _grads(loss, *args):
  return jax.grad(loss, argnums=tuple(range(len(args))))(*args)


# A nonlinear readout makes the output cotangent non-uniform.
def _readout(y):
  return jnp.sum(jnp.sin(y) * (1 + jnp.arange(y.shape[-1], dtype=y.dtype)))


@pytest.mark.parametrize('shape,features,padding,chunk_pixels', [
    ((1, 9, 7, 3), 4, ((1, 1), (1, 1)), 16),      # Several chunks, ragged end.
    ((2, 6, 5, 4), 3, ((1, 1), (1, 1)), 1000),    # One chunk, batch 2.
    ((1, 4, 5, 3), 2, ((6, 6), (6, 6)), 20),      # conv1_1's large padding.
    ((2, 5, 6, 2), 3, ((0, 0), (0, 0)), 7),       # VALID.
])
def test_conv_chunked_weight_grad_matches_plain(shape, features, padding,
                                                chunk_pixels):
  x = _random(shape, 0)
  kernel = _random((3, 3, shape[-1], features), 1, 0.3)
  fast = lambda x, k: fast_ops.conv_chunked_weight_grad(
      x, k, (1, 1), padding, dimension_numbers=NHWC, chunk_pixels=chunk_pixels)
  plain = lambda x, k: _plain_conv(x, k, padding)
  _assert_close(fast(x, kernel), plain(x, kernel))
  for got, want in zip(_grads(lambda *a: _readout(fast(*a)), x, kernel),
                       _grads(lambda *a: _readout(plain(*a)), x, kernel)):
    _assert_close(got, want)


def test_chunked_weight_grad_against_numpy_sum():
  # dW[a, b, c, o] = sum_{n,i,j} xpad[n, i+a, j+b, c] * g[n, i, j, o].
  x = np.random.default_rng(0).standard_normal((2, 5, 4, 3))
  g = np.random.default_rng(1).standard_normal((2, 5, 4, 2))
  xpad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((3, 3, 3, 2))
  for a in range(3):
    for b in range(3):
      want[a, b] = np.einsum('nijc,nijo->co', xpad[:, a:a + 5, b:b + 4], g)
  got = fast_ops.chunked_weight_grad(
      jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32), (3, 3, 3, 2),
      ((1, 1), (1, 1)), chunk_pixels=8)
  _assert_close(got, want)


@pytest.mark.parametrize('padding', [((0, 0), (0, 0)), ((1, 2), (0, 1))])
def test_conv_im2col_matches_plain(padding):
  x = _random((2, 8, 9, 4), 2)
  kernel = _random((7, 7, 4, 5), 3, 0.2)
  fast = lambda x, k: fast_ops.conv_im2col(x, k, (1, 1), padding,
                                           dimension_numbers=NHWC)
  plain = lambda x, k: _plain_conv(x, k, padding)
  _assert_close(fast(x, kernel), plain(x, kernel))
  for got, want in zip(_grads(lambda *a: _readout(fast(*a)), x, kernel),
                       _grads(lambda *a: _readout(plain(*a)), x, kernel)):
    _assert_close(got, want)


def test_fast_convs_reject_what_they_do_not_implement():
  x, kernel = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(NotImplementedError, match='stride 1'):
    fast_ops.conv_chunked_weight_grad(x, kernel, (2, 2), 'VALID')
  with pytest.raises(NotImplementedError, match='NHWC'):
    fast_ops.conv_im2col(x, kernel, (1, 1), 'VALID',
                         dimension_numbers=('NCHW', 'OIHW', 'NCHW'))


def _plain_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2),
                     padding=((0, x.shape[1] % 2), (0, x.shape[2] % 2)))


@pytest.mark.parametrize('shape', [(1, 6, 8, 3), (2, 7, 5, 2), (1, 1, 1, 1)])
def test_max_pool_matches_plain_values_and_grad(shape):
  x = _random(shape, 4)
  _assert_close(fast_ops.max_pool_2x2_ceil(x), _plain_pool(x))
  got = jax.grad(lambda x: _readout(fast_ops.max_pool_2x2_ceil(x)))(x)
  want = jax.grad(lambda x: _readout(_plain_pool(x)))(x)
  _assert_close(got, want)


def test_max_pool_ties_go_to_first_in_window():
  # Post-ReLU windows are often all zero: the whole gradient of a window goes
  # to its first (row-major) maximum, as in XLA's select-and-scatter and torch.
  x = jnp.asarray([[0., 0., 2., 1.],
                   [0., 0., 2., 2.],
                   [3., 1., 5., 5.]])[None, :, :, None]
  g = jnp.asarray([[1., 2.], [3., 4.]])[None, :, :, None]
  _, vjp = jax.vjp(fast_ops.max_pool_2x2_ceil, x)
  want = np.array([[1., 0., 2., 0.],
                   [0., 0., 0., 0.],
                   [3., 0., 4., 0.]])
  np.testing.assert_array_equal(np.asarray(vjp(g)[0])[0, :, :, 0], want)
  _, vjp_plain = jax.vjp(_plain_pool, x)
  np.testing.assert_array_equal(np.asarray(vjp_plain(g)[0])[0, :, :, 0], want)


def test_default_model_uses_fast_ops_on_cpu_and_off_is_plain():
  assert jax.default_backend() == 'cpu'
  assert models.use_fast_ops(models.get_model('fcn8s').fast_ops)
  assert not models.use_fast_ops('off')
  with pytest.raises(ValueError, match='fast_ops'):
    models.get_model('fcn8s', fast_ops='fastest')


def test_whole_model_gradient_matches_plain_path():
  # FCN-8s covers every layer type (skips, crops, upsampling) of the others.
  variant = 'fcn8s'
  kwargs = dict(width=1 / 32, dropout_rate=0.0)
  fast = models.get_model(variant, num_classes=3, fast_ops='on', **kwargs)
  plain = models.get_model(variant, num_classes=3, fast_ops='off', **kwargs)
  shapes = lambda model: jax.eval_shape(functools.partial(
      models.init_params, model, image_size=16), jax.random.key(0))
  # Same parameter tree (names and shapes) on both paths.
  assert shapes(fast) == shapes(plain)
  # Random values (instead of the slow-to-compile initializers) also give
  # the zero-initialized score layers a gradient.
  noise = np.random.default_rng(7)
  params = jax.tree.map(
      lambda p: jnp.asarray(0.1 * noise.standard_normal(p.shape), p.dtype),
      shapes(plain))
  images = _random((2, 13, 18, 3), 5, 20.0)
  labels = jnp.asarray(np.random.default_rng(6).integers(0, 3, (2, 13, 18)))

  def loss(model, params):
    logits = model.apply({'params': params}, images, train=True)
    return losses.pixel_cross_entropy(logits, labels, 'sum'), logits

  @jax.jit
  def both(params):
    return [jax.value_and_grad(lambda p: loss(m, p), has_aux=True)(params)
            for m in (fast, plain)]

  ((loss_fast, logits_fast), g_fast), ((loss_plain, logits_plain),
                                       g_plain) = both(params)
  _assert_close(logits_fast, logits_plain)
  np.testing.assert_allclose(loss_fast, loss_plain, rtol=1e-5)
  for path, got in jax.tree_util.tree_leaves_with_path(g_fast):
    want = g_plain
    for key in path:
      want = want[key.key]
    _assert_close(got, want, rtol=2e-4)


def _custom_vjp_calls(jaxpr) -> int:
  """custom_vjp ops in a jaxpr (its printed form includes nested jaxprs)."""
  return str(jaxpr).count('custom_vjp_call[')


def test_per_layer_choice_follows_the_batch_size_table():
  assert fast_ops.cpu_fast_layer('fc6', 1) == ('fc6' in fast_ops.CPU_FAST_LAYERS[1])
  # Batch sizes between the measured ones take the nearest (log scale).
  for batch, nearest in ((2, 1), (3, 8), (16, 8)):
    for name in ('conv1_2', 'conv4_2', 'conv5_3', 'pool3', 'fc6'):
      assert fast_ops.cpu_fast_layer(name, batch) == (
          name in fast_ops.CPU_FAST_LAYERS[nearest])
  model = models.get_model('fcn8s', num_classes=3, width=1 / 32)
  params = jax.eval_shape(functools.partial(models.init_params, model,
                                            image_size=16), jax.random.key(0))
  for batch in (1, 8):
    jaxpr = jax.make_jaxpr(lambda p, x: model.apply({'params': p}, x))(
        params, jnp.zeros((batch, 16, 16, 3)))
    # One custom-VJP op per listed layer, nothing else.
    assert _custom_vjp_calls(jaxpr) == len(
        fast_ops.CPU_FAST_LAYERS[batch])


def test_auto_path_gradient_matches_plain_at_batch_1_and_8():
  kwargs = dict(num_classes=3, width=1 / 32, dropout_rate=0.0)
  auto = models.get_model('fcn8s', fast_ops='auto', **kwargs)
  plain = models.get_model('fcn8s', fast_ops='off', **kwargs)
  noise = np.random.default_rng(3)
  params = jax.tree.map(
      lambda p: jnp.asarray(0.1 * noise.standard_normal(p.shape), p.dtype),
      jax.eval_shape(functools.partial(models.init_params, plain,
                                       image_size=16), jax.random.key(0)))
  images = _random((8, 11, 14, 3), 8, 20.0)
  labels = jnp.asarray(np.random.default_rng(9).integers(0, 3, (8, 11, 14)))

  def grad(model, batch):
    def loss(p):
      logits = model.apply({'params': p}, images[:batch], train=True)
      return losses.pixel_cross_entropy(logits, labels[:batch], 'sum')
    return jax.grad(loss)(params)

  got = jax.jit(lambda: [grad(auto, 1), grad(auto, 8)])()
  want = jax.jit(lambda: [grad(plain, 1), grad(plain, 8)])()
  for g_auto, g_plain in zip(got, want):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_auto),
                            jax.tree.leaves(g_plain)):
      _assert_close(a, b, rtol=2e-4)
