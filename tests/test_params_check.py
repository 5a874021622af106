"""A model refuses parameters it would silently ignore (models.StrictParams)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import models
from fcn_jax import surgery

# 'SAME' padding everywhere: small maps, fast forward passes.
KW = dict(num_classes=3, width=1 / 32, input_padding=1, fc6_padding=3)


def _torchfcn_state_dict(variant, seed=0):
  """A pytorch-fcn-style state dict (torch layouts, numpy) with random,
  non-bilinear upsampling kernels, built from the model's shapes."""
  model = models.get_model(variant, learn_upsampling=True, **KW)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  state = {}
  for layer, arrays in shapes.items():
    kernel = rng.normal(size=arrays['kernel'].shape).astype(np.float32)
    if layer.startswith('upscore'):  # ConvTranspose2d: (in, out, kh, kw).
      state[f'{layer}.weight'] = kernel.transpose(2, 3, 0, 1)
    else:  # Conv2d: (out, in, kh, kw).
      state[f'{layer}.weight'] = kernel.transpose(3, 2, 0, 1)
      state[f'{layer}.bias'] = rng.normal(
          size=arrays['bias'].shape).astype(np.float32)
  return state


X = jnp.asarray(np.random.default_rng(1).normal(0, 50, (1, 32, 32, 3)),
                jnp.float32)


def test_learned_upsampling_kernels_are_not_ignored():
  params = surgery.from_torchfcn(_torchfcn_state_dict('fcn8s'), 'fcn8s')
  fixed = models.get_model('fcn8s', **KW)
  with pytest.raises(models.ParamsMismatchError) as info:
    fixed.apply({'params': params}, X)
  message = str(info.value)
  assert '\n' not in message
  assert 'would ignore upscore2, upscore8, upscore_pool4' in message
  assert 'learn_upsampling=True' in message
  # The same under jit (the check runs when tracing).
  with pytest.raises(models.ParamsMismatchError, match='upscore2'):
    jax.jit(lambda p, x: fixed.apply({'params': p}, x))(params, X)
  learned = models.get_model('fcn8s', learn_upsampling=True, **KW)
  logits = learned.apply({'params': params}, X)
  # What the fixed model would have returned with those kernels dropped
  # differs: ignoring them silently would be a wrong result, not a detail.
  dropped = {k: v for k, v in params.items() if not k.startswith('upscore')}
  fixed_logits = fixed.apply({'params': dropped}, X)
  assert np.abs(np.asarray(logits) - np.asarray(fixed_logits)).max() > 1e-3


def test_params_of_another_variant_are_refused():
  p8 = surgery.from_torchfcn(_torchfcn_state_dict('fcn8s'), 'fcn8s',
                             learn_upsampling=True)
  m32 = models.get_model('fcn32s', learn_upsampling=True, **KW)
  with pytest.raises(models.ParamsMismatchError) as info:
    m32.apply({'params': p8}, X)
  assert ('would ignore score_pool3, score_pool4, upscore2, upscore8, '
          'upscore_pool4') in str(info.value)
  assert 'another variant' in str(info.value)
  assert 'it needs upscore, which are missing' in str(info.value)
  p32 = surgery.from_torchfcn(_torchfcn_state_dict('fcn32s'), 'fcn32s',
                              learn_upsampling=True)
  m8 = models.get_model('fcn8s', learn_upsampling=True, **KW)
  with pytest.raises(models.ParamsMismatchError,
                     match='it needs score_pool3, score_pool4, upscore2'):
    m8.apply({'params': p32}, X)


def test_wrong_width_names_the_shapes():
  params = surgery.from_torchfcn(_torchfcn_state_dict('fcn32s'), 'fcn32s',
                                 learn_upsampling=True)
  wide = models.get_model('fcn32s', learn_upsampling=True,
                          **dict(KW, width=1 / 16))
  with pytest.raises(models.ParamsMismatchError,
                     match=r'shapes differ: conv1_1/bias \(2,\) \(model: '
                     r'\(4,\)\)'):
    wide.apply({'params': params}, X)


def test_fitting_params_pass_and_match_fcn8s_atonce():
  # Same tree, another variant that reads it all: no false alarm.
  params = surgery.from_torchfcn(_torchfcn_state_dict('fcn8s'), 'fcn8s',
                                 learn_upsampling=True)
  model = models.get_model('fcn8s-atonce', learn_upsampling=True, **KW)
  assert model.apply({'params': params}, X).shape == (1, 32, 32, 3)
