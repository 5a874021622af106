"""Gradient accumulation (Caffe's iter_size): a batch in micro-batches.

`accumulated_loss_and_grads` computes the loss and gradient of a whole batch
from k micro-batches in sequence (a `lax.scan`), so only one micro-batch's
activations are held at a time while the result equals that of the whole
batch; `train.train_step` uses it when config.grad_accum_steps > 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax.training import train_state

from fcn_jax import input_pipeline
from fcn_jax import losses
from fcn_jax import metrics as metrics_lib


def split_micro_batches(batch: dict, num: int, micro_batch_sharding=None):
  """(B, ...) arrays -> (num, B / num, ...); micro-batch i = examples i::num.

  Strided rather than contiguous: a device holding a contiguous block of the
  batch then holds its block of every micro-batch, so no data moves.
  """
  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    if micro_batch_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, micro_batch_sharding)
    return x
  return jax.tree.map(split, batch)


def accumulated_loss_and_grads(state: train_state.TrainState, batch: dict,
                               rng: jax.Array, loss_normalization: str,
                               num_micro_batches: int,
                               micro_batch_sharding=None):
  """Loss and gradient of the whole batch, one micro-batch at a time.

  Each micro-batch contributes its summed pixel loss divided by the whole
  batch's normalizer (images for 'sum', labelled pixels for 'mean'), so the
  sum over micro-batches is exactly the whole batch's loss, also when the
  micro-batches hold different numbers of labelled pixels.
  """
  label_keys = input_pipeline.label_keys(batch)
  if loss_normalization == 'sum':
    normalizers = {k: jnp.float32(batch[k].shape[0]) for k in label_keys}
  else:
    normalizers = {k: jnp.maximum(jnp.sum(batch[k] != metrics_lib.IGNORE_INDEX),
                                  1).astype(jnp.float32) for k in label_keys}

  def micro_loss_fn(params, micro_batch, micro_rng):
    logits = state.apply_fn({'params': params}, micro_batch['image'],
                            train=True, rngs={'dropout': micro_rng})
    if not isinstance(logits, dict):
      logits = {'label': logits}
    # 'sum' normalization divides by the micro-batch size: undo it. Several
    # heads (SIFT Flow) add up, each with its own normalizer.
    return sum(losses.pixel_cross_entropy(logits[k], micro_batch[k], 'sum')
               * micro_batch[k].shape[0] / normalizers[k] for k in label_keys)

  def accumulate(carry, xs):
    loss_sum, grad_sum = carry
    index, micro_batch = xs
    loss, grads = jax.value_and_grad(micro_loss_fn)(
        state.params, micro_batch, jax.random.fold_in(rng, index))
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  micro_batches = split_micro_batches(
      input_pipeline.model_arrays(batch), num_micro_batches,
      micro_batch_sharding)
  zeros = (jnp.zeros((), jnp.float32),
           jax.tree.map(jnp.zeros_like, state.params))
  (loss, grads), _ = jax.lax.scan(
      accumulate, zeros, (jnp.arange(num_micro_batches), micro_batches))
  return loss, grads
