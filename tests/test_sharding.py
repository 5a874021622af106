"""Data parallelism on 8 simulated CPU devices equals one device.

The comparison runs in a subprocess because the device count is fixed when
JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=8). It trains a
few steps with SGD and the mean loss (so float reassociation in the
cross-device gradient sum is not amplified) from the same initial state on a
1-device and an 8-device mesh, and evaluates both.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

NUM_DEVICES = 8
STEPS = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(batch_size):
  from fcn_jax.configs import default
  config = default.get_tiny_config()
  config.model = 'fcn32s'  # Cheapest to compile; the step code is the same.
  config.batch_size = batch_size
  config.image_size = 24
  config.synthetic.val_size = 12  # Eval batch 8: one full and one padded.
  config.eval_batch_size = 8
  config.optimizer = 'sgd'
  config.momentum = 0.9
  config.learning_rate = 0.05
  config.loss_normalization = 'mean'
  return config


def _relative_diffs(a, b):
  import jax
  return [float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30))
          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


def _worker() -> dict:
  """Runs in the 8-device subprocess; returns what the test asserts."""
  import tempfile

  import jax
  from fcn_jax import input_pipeline
  from fcn_jax import metrics
  from fcn_jax import models
  from fcn_jax import sharding
  from fcn_jax import train

  assert jax.device_count() == NUM_DEVICES, jax.devices()
  mesh1 = sharding.create_mesh(jax.devices()[:1])
  mesh8 = sharding.create_mesh()
  config = _tiny_config(8)
  train_source, val_source, info = input_pipeline.create_datasets(config)
  model = models.create_model(config, info.num_classes)
  init = jax.device_get(train.create_train_state(
      config, model, train.init_and_dropout_keys(0)[0], mesh1))

  def run(config, mesh):
    state = jax.device_put(init, sharding.replicated(mesh))
    p_train_step, p_eval_step = train.compile_steps(config, mesh)
    ds = input_pipeline.train_dataset(train_source, config.batch_size,
                                      config.seed)
    rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
    step_metrics, shards = [], 0
    for step in range(STEPS):
      batch = sharding.shard_batch(
          {k: ds[step][k] for k in ('image', 'label')}, mesh)
      shards = len(batch['image'].addressable_shards)
      state, m = p_train_step(state, batch, rng)
      step_metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    hist = jax.numpy.zeros((info.num_classes,) * 2, jax.numpy.int32)
    hist = jax.device_put(hist, sharding.replicated(mesh))
    for batch in input_pipeline.eval_batches(val_source, 8):
      batch = sharding.shard_batch(
          {k: batch[k] for k in ('image', 'label')}, mesh)
      hist = p_eval_step(state, hist, batch)
    return (jax.device_get(state.params), step_metrics, shards,
            np.asarray(jax.device_get(hist)))

  result = {}
  one = {}
  for batch_size in (8, 16):
    config = _tiny_config(batch_size)
    p1, m1, s1, h1 = run(config, mesh1)
    p8, m8, s8, h8 = run(config, mesh8)
    one[batch_size] = p1
    result[str(batch_size)] = {
        'param_rel_diffs': _relative_diffs(p1, p8),
        'param_change': _relative_diffs(jax.device_get(init.params), p1),
        'metrics_1': m1, 'metrics_8': m8, 'shards_1': s1, 'shards_8': s8,
        'hist_1': h1.tolist(), 'hist_8': h8.tolist(),
        'scores_8': {k: float(v) for k, v in
                     metrics.segmentation_scores(h8).items()
                     if np.ndim(v) == 0},
    }
  # Gradient accumulation on 8 devices: 16 = 2 micro-batches x 8 devices.
  config = _tiny_config(16)
  config.grad_accum_steps = 2
  p8, m8, _, _ = run(config, mesh8)
  result['accum'] = {'param_rel_diffs': _relative_diffs(one[16], p8),
                     'metrics_8': m8}
  # Labelled pixels of the validation split, counted on the host.
  result['val_labelled'] = int(sum(
      np.sum(val_source[i]['label'] != metrics.IGNORE_INDEX)
      for i in range(len(val_source))))
  # A batch that does not split over 8 devices: the clear error.
  errors = []
  try:
    sharding.check_batch_size(12, mesh8)
  except ValueError as e:
    errors.append(str(e))
  config = _tiny_config(12)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train.train_and_evaluate(config, workdir)
  except ValueError as e:
    errors.append(str(e))
  result['errors'] = errors
  return result


@pytest.fixture(scope='module')
def eight_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={NUM_DEVICES}')
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('batch_size', ['8', '16'])
def test_eight_devices_train_like_one(eight_devices, batch_size):
  r = eight_devices[batch_size]
  assert (r['shards_1'], r['shards_8']) == (1, NUM_DEVICES)
  # Every array moved in training, and moved the same way on 8 devices.
  assert min(r['param_change']) > 1e-4
  assert max(r['param_rel_diffs']) <= 1e-5, r['param_rel_diffs']
  for m1, m8 in zip(r['metrics_1'], r['metrics_8']):
    for key in m1:
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize('batch_size', ['8', '16'])
def test_eight_devices_sum_confusion_matrices(eight_devices, batch_size):
  r = eight_devices[batch_size]
  hist_1, hist_8 = np.asarray(r['hist_1']), np.asarray(r['hist_8'])
  # A sum over devices counts every labelled pixel of the split once (a mean
  # over 8 devices would count 1/8 of them; padding adds none).
  assert hist_8.sum() == eight_devices['val_labelled']
  np.testing.assert_array_equal(hist_8, hist_1)


def test_accumulation_on_eight_devices(eight_devices):
  diffs = eight_devices['accum']['param_rel_diffs']
  assert max(diffs) <= 1e-5, diffs
  for m, ref in zip(eight_devices['accum']['metrics_8'],
                    eight_devices['16']['metrics_1']):
    np.testing.assert_allclose(m['loss'], ref['loss'], rtol=1e-5)


def test_indivisible_batch_is_a_clear_error(eight_devices):
  errors = eight_devices['errors']
  assert len(errors) == 2, errors
  for message in errors:
    assert 'batch_size=12' in message and '(8)' in message, message
    assert '\n' not in message


if __name__ == '__main__':
  print(json.dumps(_worker()))
