"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

Keeps the last `keep` checkpoints plus the best one by validation mean IU.
Each step holds two items: 'default' (the TrainState: params, optimizer
state, step) and 'data' (the grain training iterator's state, one JSON file
per process), so a resumed run reads the same next batches.
Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save is never mistaken for a checkpoint; leftover temporary
directories are removed when the next run opens the manager. Saves are
asynchronous, but a save first waits for the previous one, and old steps are
deleted only after the new one is complete, so a finished checkpoint always
exists. A checkpoint that is complete on disk but unreadable (truncated or
missing files, e.g. after a power loss) is moved to
`<workdir>/corrupt_checkpoints/` and the previous one is restored instead.
"""

from __future__ import annotations

import collections
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from fcn_jax import fault_tolerance
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as pp

BEST_METRIC = 'mean_iu'
# Item names inside a step directory. 'default' is the name Orbax gives a
# single saved item, which keeps checkpoints written before the data item
# existed readable.
STATE_ITEM = 'default'
DATA_ITEM = 'data'


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _best_metric(metrics) -> float:
  return metrics[BEST_METRIC]


def create_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the last `keep` steps and the best mean IU."""
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=keep),
      pp.BestN(get_metric_fn=_best_metric, n=1,
               keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_metric, best_mode='max', preservation_policy=policy,
      create=True, cleanup_tmp_directories=True)
  # Named items: otherwise Orbax takes a step holding a 'default' folder for
  # a single-item checkpoint and refuses to read the data item next to it.
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=(STATE_ITEM, DATA_ITEM))


def save(manager: ocp.CheckpointManager, step: int, state,
         metrics: dict | None = None,
         data_iterator: grain.DatasetIterator | None = None) -> None:
  """Saves `state` (and `data_iterator`'s position) at `step`.

  `metrics` (with 'mean_iu') rank the best checkpoint. The iterator's state
  is read before this returns, so the caller may go on iterating.
  """
  if step in manager.all_steps():
    return
  if metrics is not None:
    metrics = {BEST_METRIC: float(metrics[BEST_METRIC])}
  items = {STATE_ITEM: ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)


def has_data_state(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether the checkpoint at `step` holds a data iterator state."""
  return os.path.isdir(os.path.join(manager.directory, str(step), DATA_ITEM))


def restore(manager: ocp.CheckpointManager, abstract_state,
            step: int | None = None,
            data_iterator: grain.DatasetIterator | None = None):
  """Restores the checkpoint at `step` (default: latest) onto `abstract_state`.

  `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings (from
  jax.eval_shape), which places the restored arrays on the right devices.
  If given, `data_iterator` is set to the saved position when the checkpoint
  has one (see `has_data_state`); it is left alone otherwise.
  """
  step = manager.latest_step() if step is None else step
  items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None and has_data_state(manager, step):
    items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]


def corrupt_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'corrupt_checkpoints')


def _quarantine(manager: ocp.CheckpointManager, workdir: str, step: int) -> str:
  """Moves an unreadable step aside, so it is neither restored nor overwritten.

  Kept rather than deleted, for inspection. Only process 0 moves it.
  """
  source = os.path.join(checkpoint_dir(workdir), str(step))
  target = os.path.join(corrupt_dir(workdir), f'{step}-{int(time.time())}')
  if jax.process_index() == 0 and os.path.exists(source):
    os.makedirs(corrupt_dir(workdir), exist_ok=True)
    os.rename(source, target)
  manager.reload()
  return target


def _saved_shape_counts(step_dir: str) -> list[collections.Counter]:
  """Array shapes+dtypes of each item saved in `step_dir`, from its metadata."""
  counts = []
  for root, _, files in os.walk(step_dir):
    if '_METADATA' in files:
      tree = ocp.StandardCheckpointer().metadata(root).item_metadata
      counts.append(collections.Counter(
          (tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree)))
  return counts


def _holds_other_structure(workdir: str, step: int, abstract_state) -> bool:
  """Whether step's metadata is readable and describes another train state.

  Tells "this config builds a different model or optimizer than the
  checkpoint holds" (a user error: the checkpoint is fine and must stay) from
  damaged files (unreadable metadata, or matching metadata but unreadable
  arrays).
  """
  wanted = collections.Counter(
      (tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(abstract_state))
  try:
    saved = _saved_shape_counts(
        os.path.join(checkpoint_dir(workdir), str(step)))
  except Exception:  # pylint: disable=broad-except
    return False
  saved = [counts for counts in saved if counts]  # Empty: unreadable.
  return bool(saved) and wanted not in saved


def restore_latest_valid(manager: ocp.CheckpointManager, workdir: str,
                         abstract_state,
                         data_iterator: grain.DatasetIterator | None = None):
  """Restores the newest readable checkpoint; None if there is none at all.

  `data_iterator`, if given, is moved to the restored step's saved position
  (see `restore`).

  Unreadable checkpoints (truncated or missing files) are moved aside with a
  warning, and the next older one is tried.

  Raises:
    fault_tolerance.ConfigError: if a checkpoint is intact but holds other
      arrays (another model or optimizer) than `abstract_state`.
    RuntimeError: if checkpoints exist but none of them can be read (rather
      than silently training from scratch).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore(manager, abstract_state, step, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax/TensorStore raise many types for damaged files; any failure to
      # read a step whose metadata matches this config means it is unusable.
      if _holds_other_structure(workdir, step, abstract_state):
        raise fault_tolerance.ConfigError(
            f'Checkpoint at step {step} in {checkpoint_dir(workdir)} holds '
            'other arrays than this config builds (another model, width, '
            'class count, upsampling or optimizer): resume with the config it '
            'was trained with, or use a new --workdir.') from e
      target = _quarantine(manager, workdir, step)
      reason = ' '.join(str(e).split())[:300]
      logging.warning(
          'Checkpoint at step %d is unreadable (%s: %s); moved it to %s and '
          'falling back to the previous checkpoint.', step, type(e).__name__,
          reason, target)
  if steps:
    raise RuntimeError(
        f'No readable checkpoint in {checkpoint_dir(workdir)} (tried steps '
        f'{steps}, moved to {corrupt_dir(workdir)}); refusing to start over '
        'silently. Run again to train from scratch.')
  return None
