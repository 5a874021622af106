"""Gradient accumulation: k micro-batches give the update of one k-times batch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import config_checks
from fcn_jax import grad_accum
from fcn_jax import losses
from fcn_jax import sharding
from fcn_jax import train
from fcn_jax.configs import default
from fcn_jax.metrics import IGNORE_INDEX

BATCH, SIZE, CLASSES = 8, 24, 7


def _config(**overrides):
  config = default.get_tiny_config()
  config.model = 'fcn32s'  # The cheapest variant to compile; same step code.
  config.batch_size = BATCH
  config.image_size = SIZE
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.learning_rate = 0.05
  config.loss_normalization = 'mean'
  config.update(overrides)
  return config


def _batches(num, seed=0):
  """Random images; even-indexed examples are half unlabelled, so the
  micro-batches (examples i::k) hold different numbers of labelled pixels."""
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num):
    image = rng.normal(0, 60, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    label = rng.integers(0, CLASSES, (BATCH, SIZE, SIZE)).astype(np.int32)
    label[0::2, :, :SIZE // 2] = IGNORE_INDEX
    label[0, :SIZE // 3] = IGNORE_INDEX
    batches.append({'image': image, 'label': label})
  return batches


def _max_relative_diffs(a, b):
  return jax.tree.map(
      lambda x, y: float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30)),
      jax.device_get(a), jax.device_get(b))


class _TinyNet(nn.Module):
  """Two convolutions with the FCN interface: quick to compile, and the step
  code does not depend on the model (FCN-32s accumulating on 8 devices is
  compared with one device in test_sharding.py)."""

  @nn.compact
  def __call__(self, images, train=False):
    x = nn.relu(nn.Conv(8, (3, 3))(images / 60.0))
    return nn.Conv(CLASSES, (3, 3))(x)


def _train(config, state, batches, mesh):
  """A few steps through the real compile_steps; returns (params, losses)."""
  state = jax.tree.map(jnp.copy, state)  # The step donates its input state.
  p_train_step, _ = train.compile_steps(config, mesh)
  rng = jax.random.key(1)
  step_losses = []
  for batch in batches:
    state, metrics = p_train_step(state, sharding.shard_batch(batch, mesh), rng)
    step_losses.append(float(metrics['loss']))
  return jax.device_get(state.params), step_losses


@pytest.mark.parametrize('normalization,num_micro,learning_rate',
                         [('sum', 2, 1e-4), ('mean', 4, 0.05)])
def test_accumulated_steps_equal_whole_batch_steps(normalization, num_micro,
                                                   learning_rate):
  mesh = sharding.create_mesh(jax.devices()[:1])
  config = _config(loss_normalization=normalization,
                   learning_rate=learning_rate)
  state = train.create_train_state(config, _TinyNet(), jax.random.key(0), mesh)
  batches = _batches(2)
  whole, whole_losses = _train(config, state, batches, mesh)
  accum_config = _config(loss_normalization=normalization,
                         learning_rate=learning_rate,
                         grad_accum_steps=num_micro)
  accum, accum_losses = _train(accum_config, state, batches, mesh)
  # Every parameter array moved, so the comparison covers all of them.
  moved = _max_relative_diffs(jax.device_get(state.params), whole)
  assert min(jax.tree.leaves(moved)) > 1e-4, moved
  diffs = _max_relative_diffs(whole, accum)
  assert max(jax.tree.leaves(diffs)) <= 1e-5, diffs
  np.testing.assert_allclose(accum_losses, whole_losses, rtol=1e-5)


def test_accumulated_gradient_is_whole_batch_gradient():
  """The gradient itself, for the loss the paper uses ('sum')."""
  config = _config(loss_normalization='sum')
  mesh = sharding.create_mesh(jax.devices()[:1])
  state = train.create_train_state(config, _TinyNet(), jax.random.key(0), mesh)
  batch = jax.tree.map(jnp.asarray, _batches(1)[0])

  def whole_loss(params):
    logits = state.apply_fn({'params': params}, batch['image'])
    return losses.pixel_cross_entropy(logits, batch['label'], 'sum')

  loss, grads = jax.jit(jax.value_and_grad(whole_loss))(state.params)
  accum_loss, accum_grads = jax.jit(
      grad_accum.accumulated_loss_and_grads, static_argnums=(3, 4))(
          state, batch, jax.random.key(0), 'sum', 4)
  np.testing.assert_allclose(accum_loss, loss, rtol=1e-6)
  diffs = _max_relative_diffs(grads, accum_grads)
  assert max(jax.tree.leaves(diffs)) <= 1e-5, diffs


def test_averaging_micro_batch_means_would_be_wrong():
  """The test data makes the normalization matter: a naive average of the
  micro-batches' 'mean' losses is not the whole batch's mean loss."""
  batch = _batches(1)[0]
  # Confident on odd examples, uniform on the (half unlabelled) even ones.
  confidence = np.where(np.arange(BATCH) % 2, 3.0, 0.0)[:, None, None, None]
  one_hot = np.eye(CLASSES)[np.minimum(batch['label'], CLASSES - 1)]
  logits = jnp.asarray(confidence * one_hot, jnp.float32)
  whole = float(losses.pixel_cross_entropy(logits, batch['label'], 'mean'))
  naive = np.mean([float(losses.pixel_cross_entropy(
      logits[i::2], batch['label'][i::2], 'mean')) for i in range(2)])
  assert abs(naive - whole) > 1e-3 * whole


def test_micro_batches_are_strided_slices():
  batch = {'x': np.arange(12 * 2).reshape(12, 2)}
  micro = jax.device_get(grad_accum.split_micro_batches(batch, 3))['x']
  assert micro.shape == (3, 4, 2)
  for i in range(3):
    np.testing.assert_array_equal(micro[i], batch['x'][i::3])


def test_batch_not_divisible_by_micro_batches_is_a_clear_error():
  config = _config(batch_size=8, grad_accum_steps=3)
  with pytest.raises(ValueError, match=r'config\.batch_size=8: must be a '
                     r'multiple of config\.grad_accum_steps x devices'):
    config_checks.validate_config(config, num_devices=1)
  mesh = sharding.create_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match=r'3 x 1 = 3'):
    sharding.check_batch_size(8, mesh, micro_batches=3)
  with pytest.raises(ValueError, match='grad_accum_steps'):
    config_checks.validate_config(_config(grad_accum_steps=0), num_devices=1)
