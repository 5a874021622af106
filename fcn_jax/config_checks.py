"""One-line errors for config values a run cannot use.

`validate_config` checks a training config before anything is compiled or
written; `resolve_num_classes` reconciles config.num_classes with the
dataset's. Both raise `fault_tolerance.ConfigError`, naming the key.
"""

from __future__ import annotations

import jax
import ml_collections

from fcn_jax import fault_tolerance
from fcn_jax import input_pipeline
from fcn_jax import losses
from fcn_jax import models
from fcn_jax import optimizer
from fcn_jax import tasks


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: int | None = None) -> None:
  """One-line errors for bad config values, before anything is compiled.

  Args:
    config: the training config.
    num_devices: devices the global batch is split over (default: all).

  Raises:
    fault_tolerance.ConfigError (a ValueError): naming the key, its value
      and what is wrong.
  """
  def check(ok, key, message):
    if not ok:
      raise fault_tolerance.ConfigError(
          f'config.{key}={config[key]!r}: {message}')
  check(config.model in models.MODELS, 'model',
        f'expected one of {models.MODELS}')
  check(input_pipeline.is_known_dataset(config.dataset), 'dataset',
        f'expected one of {input_pipeline.DATASETS}')
  check(config.optimizer in optimizer.OPTIMIZERS, 'optimizer',
        f'expected one of {optimizer.OPTIMIZERS}')
  check(config.lr_schedule in optimizer.LR_SCHEDULES, 'lr_schedule',
        f'expected one of {optimizer.LR_SCHEDULES}')
  check(config.loss_normalization in losses.NORMALIZATIONS,
        'loss_normalization', f'expected one of {losses.NORMALIZATIONS}')
  check(config.num_train_steps > 0, 'num_train_steps', 'must be positive')
  check(config.batch_size > 0, 'batch_size', 'must be positive')
  check(config.width > 0, 'width', 'must be positive')
  check(config.num_classes == -1 or config.num_classes > 0, 'num_classes',
        'must be positive, or -1 to take it from the dataset')
  check(config.image_size >= 0, 'image_size', 'must be >= 0')
  check(config.dtype in ('float32', 'bfloat16'), 'dtype',
        "expected 'float32' or 'bfloat16'")
  check(config.fast_ops in models.FAST_OPS_MODES, 'fast_ops',
        f'expected one of {models.FAST_OPS_MODES}')
  check(config.data_workers >= -1, 'data_workers',
        'must be >= 0, or -1 for auto')
  check(config.data_prefetch > 0, 'data_prefetch', 'must be positive')
  check(config.device_prefetch > 0, 'device_prefetch',
        'must be positive')
  for key in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'preemption_check_every_steps'):
    check(config[key] > 0, key, 'must be positive')
  for key, message in tasks.config_errors(config):
    check(False, key, message)
  num_devices = jax.device_count() if num_devices is None else num_devices
  check(config.batch_size % num_devices == 0, 'batch_size',
        f'must be a multiple of the number of devices ({num_devices})')
  if config.eval_batch_size != -1:
    check(config.eval_batch_size > 0 and
          config.eval_batch_size % num_devices == 0, 'eval_batch_size',
          f'must be -1 or a positive multiple of the number of devices '
          f'({num_devices})')
  check(config.grad_accum_steps > 0, 'grad_accum_steps', 'must be positive')
  micro = config.grad_accum_steps * num_devices
  check(config.batch_size % micro == 0, 'batch_size',
        f'must be a multiple of config.grad_accum_steps x devices '
        f'({config.grad_accum_steps} x {num_devices} = {micro})')


def resolve_num_classes(config: ml_collections.ConfigDict,
                        info: input_pipeline.DatasetInfo) -> int:
  """config.num_classes, or the dataset's when -1; they must agree."""
  if config.num_classes == -1:
    return info.num_classes
  if config.num_classes != info.num_classes:
    raise fault_tolerance.ConfigError(
        f'config.num_classes={config.num_classes} contradicts dataset '
        f'{info.name!r}, which has {info.num_classes} classes; use -1 to take '
        'it from the dataset.')
  return config.num_classes
