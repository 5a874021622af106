"""Where the vmapped seeds program's arrays live, and its compiled steps.

config.seed_sharding picks the layout (`seed_layout`): 'mesh' gives the mesh
a 'seed' axis beside 'data' (each device trains only its seeds, on a larger
slice of their batches), 'batch' folds the seeds into the batch sharding
(every device trains every seed on its slice). fcn_jax/seeds.py runs the
training loop around these steps; docs/research_tools.md has the
measurements.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fcn_jax import fault_tolerance
from fcn_jax import input_pipeline
from fcn_jax import metrics as metrics_lib
from fcn_jax import sharding
from fcn_jax import train

ConfigError = fault_tolerance.ConfigError

# How the vmapped program lays the seeds out on the devices
# (config.seed_sharding).
SEED_SHARDINGS = ('batch', 'mesh')
SEED_AXIS = 'seed'


@dataclasses.dataclass(frozen=True)
class SeedLayout:
  """Where the vmapped program's arrays live.

  'batch' (seeds folded into the batch sharding): a 1-D 'data' mesh over all
  devices; every device holds every seed's state and runs every seed on its
  slice of each seed's batch. 'mesh': a 2-D ('data', 'seed') mesh; the seed
  axis splits the seeds over the devices of each process, so a device holds
  only its seeds' state and runs them on a larger slice of their batches.
  """
  mesh: Mesh
  state: NamedSharding  # the stacked train state (leading seed axis)
  batch: NamedSharding  # (seeds, batch, ...) training batches
  per_seed: NamedSharding  # (seeds, ...) keys, step metrics, histograms


def seed_layout(kind: str, num_seeds: int, devices=None) -> SeedLayout:
  """The layout `kind` (SEED_SHARDINGS) for `num_seeds` seeds on `devices`
  (default: all). With 'mesh' the seed axis has gcd(seeds, devices per
  process) devices, and the 'data' axis the rest (across processes)."""
  if kind not in SEED_SHARDINGS:
    raise ConfigError(f'config.seed_sharding={kind!r}: expected one of '
                      f'{SEED_SHARDINGS}.')
  devices = jax.devices() if devices is None else list(devices)
  if kind == 'batch':
    mesh = sharding.create_mesh(devices)
    return SeedLayout(mesh, sharding.replicated(mesh),
                      NamedSharding(mesh, P(None, sharding.DATA_AXIS)),
                      sharding.replicated(mesh))
  # Seeds stay within a process, so every process holds all seeds of its
  # slice of the batch, as the input pipeline reads it.
  per_process = {}
  for device in devices:
    per_process.setdefault(device.process_index, []).append(device)
  local = min(len(d) for d in per_process.values())
  seed_size = math.gcd(num_seeds, local)
  grid = np.concatenate([np.asarray(d[:local]).reshape(-1, seed_size)
                         for _, d in sorted(per_process.items())])
  mesh = Mesh(grid, (sharding.DATA_AXIS, SEED_AXIS))
  per_seed = NamedSharding(mesh, P(SEED_AXIS))
  return SeedLayout(mesh, per_seed,
                    NamedSharding(mesh, P(SEED_AXIS, sharding.DATA_AXIS)),
                    per_seed)


def compile_seed_steps(config, layout: SeedLayout):
  """The vmapped train and eval steps, jit-compiled with shardings."""
  step = functools.partial(
      train.train_step, loss_normalization=config.loss_normalization,
      skip_nonfinite=config.skip_nonfinite,
      grad_accum_steps=config.grad_accum_steps,
      # The micro-batch sharding constraint is for unbatched arrays; XLA
      # propagates the batch sharding through the vmapped scan anyway.
      micro_batch_sharding=None)
  per_seed = P(SEED_AXIS)
  p_train_step = jax.jit(
      _split_seeds(jax.vmap(step), layout, (per_seed,) * 3,
                   (per_seed, per_seed)),
      in_shardings=(layout.state, layout.batch, layout.per_seed),
      out_shardings=(layout.state, layout.per_seed), donate_argnums=0)
  eval_step = jax.vmap(functools.partial(
      train.eval_step, boundary_radius=config.boundary_radius),
                       in_axes=(0, 0, None))
  p_eval_step = jax.jit(
      _split_seeds(eval_step, layout, (per_seed, per_seed, P()), per_seed),
      in_shardings=(layout.state, layout.per_seed,
                    sharding.data_sharded(layout.mesh)),
      out_shardings=layout.per_seed, donate_argnums=1)
  return p_train_step, p_eval_step


def _split_seeds(fn, layout: SeedLayout, in_specs, out_specs):
  """`fn` on each device's own seeds, with a 'seed' mesh axis.

  The seed axis is manual (shard_map) and the 'data' axis stays XLA's: left
  to XLA, the partitioner splits the vmapped (grouped) convolutions over
  the seed axis into invalid ones (jax 0.10.2), and each device computes
  only its seeds anyway.
  """
  if SEED_AXIS not in layout.mesh.axis_names:
    return fn
  return jax.shard_map(fn, mesh=layout.mesh, in_specs=in_specs,
                       out_specs=out_specs, axis_names={SEED_AXIS},
                       check_vma=False)


def evaluate_seeds(p_eval_step, state, source, batch_size: int,
                   num_classes: int, num_seeds: int, layout: SeedLayout,
                   boundary_radius: int = 0, **batching) -> list[dict]:
  """`train.evaluate` for every seed at once: one score dict per seed."""
  shape = (num_seeds, num_classes, num_classes)
  if boundary_radius > 0:
    shape = (num_seeds, 2, num_classes, num_classes)
  hist = sharding.put(np.zeros(shape, np.int32), layout.per_seed)
  for batch in input_pipeline.eval_batches(source, batch_size, **batching):
    batch = sharding.shard_batch({k: batch[k] for k in ('image', 'label')},
                                 layout.mesh)
    hist = p_eval_step(state, hist, batch)
  hist = jax.device_get(hist)
  scores = []
  for seed_hist in hist:
    if boundary_radius <= 0:
      scores.append(metrics_lib.segmentation_scores(seed_hist))
      continue
    seed_scores = metrics_lib.segmentation_scores(seed_hist[0])
    seed_scores['boundary_mean_iu'] = metrics_lib.segmentation_scores(
        seed_hist[1])['mean_iu']
    scores.append(seed_scores)
  return scores
