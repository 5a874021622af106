"""Metric logging without TensorFlow: JSON lines plus TensorBoard events."""

from __future__ import annotations

import json
import logging as std_logging
import math

import jax
from absl import logging

from fcn_jax import workdir as workdir_lib


def _jsonable(value):
  """Floats as floats, NaN as null (strict JSON has no NaN), lists elementwise."""
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  value = float(value)
  return None if math.isnan(value) else value


class MetricWriter:
  """Appends one JSON object per record to `<workdir>/metrics.jsonl` and
  mirrors scalars to TensorBoard event files in the workdir.

  Only process 0 writes, so multi-host runs produce one log. With
  `class_names`, per-class lists are tagged by name in TensorBoard
  (`val/per_class_iu/<name>`), else by index.
  """

  def __init__(self, workdir: str, class_names=None):
    self._enabled = jax.process_index() == 0
    self._class_names = list(class_names) if class_names else None
    self._path = workdir_lib.metrics_path(workdir)
    self._tb = None
    if self._enabled:
      from tensorboardX import SummaryWriter  # Light, TensorFlow-free.
      self._tb = SummaryWriter(workdir)

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split}
    record.update({k: _jsonable(v) for k, v in metrics.items()})
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in metrics.items():
      values = enumerate(value) if isinstance(value, (list, tuple)) else [
          (None, value)]
      for i, v in values:
        # Classes absent from a split score NaN; TensorBoard has no use for it.
        if v is not None and not math.isnan(float(v)):
          tag = (f'{split}/{key}' if i is None else
                 f'{split}/{key}/{self._element_name(i, len(value))}')
          self._tb.add_scalar(tag, float(v), step)
    self._tb.flush()

  def _element_name(self, index: int, length: int) -> str:
    if self._class_names and length == len(self._class_names):
      return self._class_names[index]
    return str(index)

  def write_image(self, step: int, tag: str, image) -> None:
    """An (H, W, 3) uint8 RGB picture as a TensorBoard image summary."""
    if not self._enabled:
      return
    self._tb.add_image(tag, image, step, dataformats='HWC')
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class _QuietLibraries:
  """Hides INFO chatter of Orbax and JAX internals; warnings still show."""

  def filter(self, record) -> bool:
    noisy = ('/orbax/', '/jax/_src/')
    return record.levelno > std_logging.INFO or not any(
        part in record.pathname for part in noisy)


def quiet_library_logs() -> None:
  """For command lines: keep the log to what fcn_jax itself says."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
