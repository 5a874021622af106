"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

Keeps the last `keep` checkpoints plus the best one by validation mean IU.
Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save is never mistaken for a checkpoint.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as pp

BEST_METRIC = 'mean_iu'


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
      create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state,
         metrics: dict | None = None) -> None:
  """Saves `state` at `step`; `metrics` (with 'mean_iu') rank the best."""
  if step in manager.all_steps():
    return
  if metrics is not None:
    metrics = {BEST_METRIC: float(metrics[BEST_METRIC])}
  manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the checkpoint at `step` (default: latest) onto `abstract_state`.

  `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings (from
  jax.eval_shape), which places the restored arrays on the right devices.
  """
  step = manager.latest_step() if step is None else step
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
