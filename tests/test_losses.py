"""Loss tests: hand-computed values, ignore label, normalization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import losses


def _numpy_cross_entropy(logits, labels):
  logits = logits - logits.max(-1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def test_two_class_pixel_by_hand():
  # logits (0, log 3): p(class 1) = 3/4, so the loss of label 1 is log(4/3).
  logits = jnp.array([[[[0.0, np.log(3.0)]]]])
  loss = losses.pixel_cross_entropy(logits, jnp.array([[[1]]]), 'sum')
  assert float(loss) == pytest.approx(np.log(4 / 3), rel=1e-6)


def test_sum_and_mean_normalization_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, (2, 5, 6))
  labels[0, :2] = 255
  valid = labels != 255
  per_pixel = _numpy_cross_entropy(logits, np.where(valid, labels, 0))
  total = per_pixel[valid].sum()
  got_sum = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  got_mean = losses.pixel_cross_entropy(jnp.asarray(logits),
                                        jnp.asarray(labels), 'mean')
  # 'sum' = Caffe's normalize: false, i.e. summed over pixels, per image.
  assert float(got_sum) == pytest.approx(total / 2, rel=1e-5)
  assert float(got_mean) == pytest.approx(total / valid.sum(), rel=1e-5)


def test_ignored_pixels_have_zero_loss_and_zero_gradient():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(1, 4, 4, 3)).astype(np.float32))
  labels = np.full((1, 4, 4), 255)
  labels[0, 1, 2] = 2
  grad = jax.grad(losses.pixel_cross_entropy)(logits, jnp.asarray(labels))
  mask = np.zeros((1, 4, 4), bool)
  mask[0, 1, 2] = True
  assert np.all(np.asarray(grad)[~mask] == 0)
  # Labelled pixel: gradient softmax - onehot.
  p = jax.nn.softmax(logits[0, 1, 2])
  np.testing.assert_allclose(grad[0, 1, 2], p - jnp.eye(3)[2], atol=1e-6)
  # Changing ignored logits changes nothing.
  other = logits.at[0, 0].set(100.0)
  assert float(losses.pixel_cross_entropy(other, jnp.asarray(labels))) == \
      pytest.approx(float(losses.pixel_cross_entropy(logits, jnp.asarray(labels))))


def test_all_ignored_batch_gives_zero_loss():
  logits = jnp.ones((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), 255)
  assert float(losses.pixel_cross_entropy(logits, labels, 'mean')) == 0.0
  assert float(losses.pixel_cross_entropy(logits, labels, 'sum')) == 0.0


def test_unknown_normalization_is_rejected():
  with pytest.raises(ValueError, match='normalization'):
    losses.pixel_cross_entropy(jnp.ones((1, 1, 1, 2)), jnp.zeros((1, 1, 1), int),
                               'median')
