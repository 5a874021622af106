"""config.dtype='bfloat16': bfloat16 activations, float32 everything else."""

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import models
from fcn_jax import sharding
from fcn_jax import train
from fcn_jax.configs import default

CLASSES, SIZE = 7, 24
# bfloat16 keeps 8 significant bits (relative rounding 2**-9 = 0.2 %) and
# errors add up over the 16 layers of FCN-8s: the logits may differ from
# float32 by at most 2 % of their largest magnitude (measured: 0.6 %, with
# 99.7 % of the pixels keeping their class).
FORWARD_TOLERANCE = 0.02


def _config(dtype, model='fcn8s'):
  config = default.get_tiny_config()
  config.model = model
  config.image_size = SIZE
  config.dtype = dtype
  return config


def _images(num=2, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(0, 60, (num, SIZE, SIZE, 3)), jnp.float32)


def _random_params(model, seed=0):
  """He-scaled random kernels, small random biases, drawn with numpy (the
  model's own init starts the score layers at zero, which makes the logits
  zero, and compiling its initializers is slow on the CPU)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), _images(1))['params']
  rng = np.random.default_rng(seed)

  def fill(x):
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    scale = np.sqrt(2.0 / fan_in) if len(x.shape) > 1 else 0.1
    return jnp.asarray(rng.normal(0, scale, x.shape), jnp.float32)
  return jax.tree.map(fill, shapes)


def test_bfloat16_forward_close_to_float32():
  f32 = models.create_model(_config('float32'), CLASSES)
  bf16 = models.create_model(_config('bfloat16'), CLASSES)
  params = _random_params(f32)
  images = _images()
  logits32 = jax.jit(f32.apply)({'params': params}, images)
  logits16 = jax.jit(bf16.apply)({'params': params}, images)
  assert logits16.dtype == jnp.float32  # Cast back for the loss.
  scale = float(jnp.max(jnp.abs(logits32)))
  error = float(jnp.max(jnp.abs(logits16 - logits32)))
  assert scale > 1.0
  assert error <= FORWARD_TOLERANCE * scale, (error, scale)
  # ... and rounding does change them: the computation is really bfloat16.
  assert error > 1e-4 * scale
  agree = float(jnp.mean(jnp.argmax(logits16, -1) == jnp.argmax(logits32, -1)))
  assert agree >= 0.95, agree


def test_bfloat16_convolutions_and_matmuls_run_in_bfloat16():
  model = models.create_model(_config('bfloat16'), CLASSES)
  params = jax.eval_shape(model.init, jax.random.key(0), _images(1))['params']
  jaxpr = jax.make_jaxpr(model.apply)({'params': params}, _images(1))
  convs = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
        convs.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for param in eqn.params.values():  # Nested jaxprs (jit, custom_vjp).
        for inner in param if isinstance(param, (list, tuple)) else [param]:
          inner = getattr(inner, 'jaxpr', inner)
          if hasattr(inner, 'eqns'):
            visit(inner)
  visit(jaxpr.jaxpr)
  # 15 trunk convolutions (fc6 may run as an im2col matmul) + 3 score
  # layers + 3 upsamplings.
  assert len(convs) >= 21, convs
  assert all(dtypes == ('bfloat16', 'bfloat16') for dtypes in convs), convs


def test_bfloat16_training_keeps_float32_state_and_lowers_loss():
  config = _config('bfloat16', model='fcn32s')
  mesh = sharding.create_mesh(jax.devices()[:1])
  model = models.create_model(config, CLASSES)
  init_key, _ = train.init_and_dropout_keys(0)
  state = train.create_train_state(config, model, init_key, mesh)
  p_train_step, _ = train.compile_steps(config, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': np.asarray(_images(config.batch_size)),
           'label': rng.integers(0, 3, (config.batch_size, SIZE, SIZE),
                                 dtype=np.int32)}
  batch = sharding.shard_batch(batch, mesh)
  step_losses = []
  for _ in range(6):
    state, metrics = p_train_step(state, batch, jax.random.key(1))
    assert metrics['loss'].dtype == jnp.float32
    step_losses.append(float(metrics['loss']))
  # Parameters and the optimizer's moments stay float32.
  float_dtypes = {x.dtype for x in jax.tree.leaves((state.params,
                                                    state.opt_state))
                  if jnp.issubdtype(x.dtype, jnp.floating)}
  assert float_dtypes == {jnp.dtype(jnp.float32)}, float_dtypes
  # Only labels 0-2 of 7 occur: the first steps learn that much.
  assert step_losses[0] > 1.5  # About log(7) = 1.95 from zero scores.
  assert step_losses[-1] < 0.8 * step_losses[0], step_losses
