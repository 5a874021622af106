"""The optimizer and learning-rate schedule of a training config.

The reference recipe is SGD with momentum, Caffe-style L2 weight decay on the
convolution kernels (not on biases nor on the upsampling filters) and twice
the learning rate on biases; `create_optimizer` builds it, or Adam / AdamW,
as one optax chain, with the schedule of `learning_rate_schedule`.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
LR_SCHEDULES = ('constant', 'cosine', 'poly')


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  decay_steps = max(1, config.num_train_steps - config.warmup_steps)
  if config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
  elif config.lr_schedule == 'poly':
    # mmsegmentation's default: lr * (1 - t / T) ** power, down to 0.
    main = optax.polynomial_schedule(config.learning_rate, 0.0,
                                     config.poly_power, decay_steps)
  else:
    main = optax.constant_schedule(config.learning_rate)
  if config.warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.join_schedules([warmup, main], [config.warmup_steps])


def _is_decayed_kernel(path, _) -> bool:
  # Weight decay on convolution kernels only: not on biases (the reference),
  # nor on the (bilinear) upsampling filters.
  names = [getattr(k, 'key', str(k)) for k in path]
  return names[-1] == 'kernel' and not names[0].startswith('upscore')


def _is_bias(path, _) -> bool:
  return getattr(path[-1], 'key', None) == 'bias'


def create_optimizer(config: ml_collections.ConfigDict,
                     params) -> optax.GradientTransformation:
  """The reference recipe's optimizer, generalized.

  Caffe-style L2 decay is added to the gradient of kernels before the
  optimizer; biases get `bias_lr_mult` times the learning rate (applied to the
  final update, which for a fixed multiplier equals scaling their rate).
  """
  decay_mask = jax.tree_util.tree_map_with_path(_is_decayed_kernel, params)
  bias_mask = jax.tree_util.tree_map_with_path(_is_bias, params)
  schedule = learning_rate_schedule(config)
  l2_decay = config.weight_decay
  if config.optimizer == 'sgd':
    optimizer = optax.sgd(schedule, momentum=config.momentum or None)
  elif config.optimizer == 'adamw':
    # Decoupled weight decay (same kernels) instead of the L2 gradient term.
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay,
                            mask=decay_mask)
    l2_decay = 0.0
  else:
    optimizer = optax.adam(schedule)
  return optax.chain(
      optax.add_decayed_weights(l2_decay, mask=decay_mask),
      optimizer,
      optax.masked(optax.scale(config.bias_lr_mult), bias_mask),
  )
