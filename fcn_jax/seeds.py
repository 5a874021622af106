"""Many seeds in one program: independent runs trained together.

    python -m fcn_jax.main --workdir=runs/fcn8s_seeds --config.seeds=0,1,2,3
    python -m fcn_jax.main --workdir=runs/fcn8s_seeds --config.seeds=4

trains one independent model per seed in one process, with one compiled
train step. Every seed reads the batches it would read alone (its own
shuffled order and augmentation, `input_pipeline.train_dataset` with
config.seed = that seed), starts from the parameters
`train.create_train_state` gives that seed, and takes the same updates, so
each seed's parameters equal those of a separate run with
`--config.seed=<seed>`.

How the seeds share the step (`program_kind`): on accelerators one
`jax.vmap`ped step over the parameters, the optimizer state, the dropout
keys and the batches ('vmap', equal to separate runs to float tolerance); on
CPU the ordinary train step, compiled once and applied to each seed in turn
('loop', equal bit for bit, and faster there than the vmapped step, whose
convolutions XLA:CPU runs as slow grouped convolutions).

The stacked train state (a leading seed axis on every array) is one
checkpoint; the best checkpoint is ranked by the mean over seeds of the
validation mean IU. metrics.jsonl gets one record per seed per logged step,
with a 'seed' key. With 'vmap' the seed axis combines with data parallelism
in one of two layouts (config.seed_sharding, fcn_jax/seed_sharding.py):
'batch' folds the seeds into the batch sharding (every device runs every
seed on its slice of the batch), 'mesh' gives the mesh a 'seed' axis
(every device runs some of the seeds on a larger slice). With 'loop' each
seed's step is the ordinary data-parallel one.

`params_of_seed` picks one seed's parameters out of such a checkpoint for
evaluate / predict / export (`--seed=K`; by default the seed with the best
validation mean IU at that step, read from metrics.jsonl).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from fcn_jax import checkpointing
from fcn_jax import fault_tolerance
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import prefetch
from fcn_jax import seed_sharding
from fcn_jax import sharding
from fcn_jax import surgery
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax import writers

ConfigError = fault_tolerance.ConfigError


def seed_list(config: ml_collections.ConfigDict) -> list[int] | None:
  """The seeds of config.seeds ('' -> None: one ordinary run).

  '0,1,2,3' (or '5,' for the single seed 5) lists seeds; a lone number
  '4' is a count, seeds 0..3.
  """
  return _parse_seeds(config.seeds)


def _parse_seeds(seeds: str | int) -> list[int] | None:
  text = str(seeds or '').strip()
  if not text:
    return None
  try:
    values = [int(p) for p in text.split(',') if p.strip()]
  except ValueError:
    values = []
  if not values or any(v < 0 for v in values):
    raise ConfigError(f'config.seeds={text!r}: expected a count (e.g. 4) or '
                      'comma-separated non-negative seeds (e.g. 0,1,2,3).')
  if ',' not in text:
    return list(range(values[0]))
  if len(set(values)) != len(values):
    raise ConfigError(f'config.seeds={text!r}: a seed is listed twice.')
  return values


def seed_config(config: ml_collections.ConfigDict,
                seed: int) -> ml_collections.ConfigDict:
  """`config` as a separate run of `seed` would have it."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  config.seeds = ''
  return config


def stack_trees(trees: Sequence[Any]):
  """Pytrees of equal leaves -> one pytree with a leading axis (static
  fields, e.g. a TrainState's optimizer, are taken from the first)."""
  leaves = [jax.tree.leaves(t) for t in trees]
  treedef = jax.tree.structure(trees[0])
  return jax.tree.unflatten(treedef, [jnp.stack(xs) for xs in zip(*leaves)])


def create_seed_states(config, model, seeds: Sequence[int], mesh,
                       state_sharding: NamedSharding | None = None):
  """The stacked TrainState: seed k's slice is what a separate run of seed k
  starts from (each initialized on its own, not under vmap, so that the
  'rbg' initializer draws exactly the separate run's numbers). Placed with
  `state_sharding` (default: replicated on `mesh`)."""
  states = [train.create_train_state(
      config, model, train.init_and_dropout_keys(s)[0], mesh) for s in seeds]
  stacked = stack_trees(states)
  return jax.device_put(stacked, state_sharding or sharding.replicated(mesh))


def dropout_keys(seeds: Sequence[int]) -> jax.Array:
  """(seeds,) dropout keys, key k as `train.init_and_dropout_keys(seeds[k])`."""
  keys = [jax.random.key_data(train.init_and_dropout_keys(s)[1])
          for s in seeds]
  return jax.random.wrap_key_data(np.stack(keys))


def _stacked_batches(datasets, start: int, stop: int):
  """Host batches start..stop - 1 of every seed's dataset, stacked:
  {'image': (seeds, batch, ...), 'label': ...}."""
  for index in range(start, stop):
    batches = [input_pipeline.model_arrays(ds[index]) for ds in datasets]
    yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def seed_batch(datasets, index: int,
               layout: seed_sharding.SeedLayout) -> dict:
  """Batch `index` of every seed's dataset, stacked and sharded."""
  return sharding.put(next(_stacked_batches(datasets, index, index + 1)),
                      layout.batch)


SEED_PROGRAMS = ('auto', 'vmap', 'loop')


def program_kind(mode: str = 'auto', platform: str | None = None) -> str:
  """How the seeds share a program: config.seed_program `mode`, where 'auto'
  depends on `platform` (default: JAX's backend).

  'vmap' (auto on accelerators): one vmapped train step for all seeds, which
  fills a device that one small model leaves idle. 'loop' (auto on CPU): the
  ordinary compiled train step, compiled once and applied to each seed in
  turn. On XLA:CPU a convolution whose kernel is batched over seeds becomes a
  grouped convolution, slower than the separate ones
  (docs/research_tools.md), and the loop computes exactly a separate run's
  numbers, bit for bit.
  """
  if mode not in SEED_PROGRAMS:
    raise ConfigError(f'config.seed_program={mode!r}: expected one of '
                      f'{SEED_PROGRAMS}.')
  if mode != 'auto':
    return mode
  platform = platform or jax.default_backend()
  return 'loop' if platform == 'cpu' else 'vmap'


class _VmapProgram:
  """All seeds in one vmapped step: a stacked state (leading seed axis)."""

  def __init__(self, config, layout, eval_args):
    self._layout = layout
    self._eval_args = eval_args
    self._train, self._eval = seed_sharding.compile_seed_steps(config, layout)

  def place(self, batch):
    return sharding.put(batch, self._layout.batch)

  def train(self, state, batch, rngs):
    return self._train(state, batch, rngs)

  @staticmethod
  def to_host_metrics(step_metrics):
    return step_metrics

  @staticmethod
  def unstacked(stacked):
    return stacked  # Created and restored onto the layout's state sharding.

  @staticmethod
  def stacked(state):
    return state

  @staticmethod
  def step(state) -> int:
    return int(jax.device_get(state.step)[0])

  def evaluate(self, state, num_seeds):
    args = self._eval_args
    return seed_sharding.evaluate_seeds(self._eval, state, args['source'],
                          args['batch_size'], args['num_classes'], num_seeds,
                          self._layout, args['boundary_radius'],
                          **args['batching'])


class _LoopProgram:
  """The ordinary train step, compiled once, applied to each seed in turn:
  a list of per-seed states."""

  def __init__(self, config, mesh, eval_args, info):
    self._mesh = mesh
    self._eval_args = eval_args
    self._info = info
    self._train, self._eval = train.compile_steps(config, mesh)

  def place(self, batch):
    return [sharding.shard_batch({k: v[i] for k, v in batch.items()},
                                 self._mesh)
            for i in range(len(next(iter(batch.values()))))]

  def train(self, states, batches, rngs):
    results = [self._train(state, batch, rng)
               for state, batch, rng in zip(states, batches, rngs)]
    return [r[0] for r in results], [r[1] for r in results]

  @staticmethod
  def to_host_metrics(step_metrics):
    """Fetched per-seed dicts -> one dict of (seeds,) arrays."""
    return {k: np.stack([m[k] for m in step_metrics])
            for k in step_metrics[0]}

  def unstacked(self, stacked):
    return [jax.device_put(jax.tree.map(lambda x, k=k: x[k], stacked),
                           sharding.replicated(self._mesh))
            for k in range(len(jax.device_get(stacked.step)))]

  def stacked(self, states):
    return jax.device_put(stack_trees(states),
                          sharding.replicated(self._mesh))

  @staticmethod
  def step(states) -> int:
    return int(jax.device_get(states[0].step))

  def evaluate(self, states, num_seeds):
    del num_seeds
    args = self._eval_args
    return [train.evaluate(
        self._eval, state, args['source'], args['batch_size'],
        args['num_classes'], self._mesh, args['boundary_radius'],
        extra_heads={k: len(n) for k, n in self._info.extra_heads},
        present_only=self._info.present_classes_only, **args['batching'])
            for state in states]


def train_seeds(config, workdir: str, stop, cleanup) -> dict[str, Any]:
  """`train._train_and_evaluate` for config.seeds (workdir locked, signals
  caught). Returns the best seed's final scores plus 'seeds',
  'seed_mean_iu', 'best_seed', 'step' and 'best_checkpoint'."""
  seeds = seed_list(config)
  kind = program_kind(config.seed_program)
  layout = seed_sharding.seed_layout(config.seed_sharding,
                                            len(seeds)) if kind == 'vmap' \
      else None
  mesh = layout.mesh if layout else sharding.create_mesh()
  (config, eval_batch_size, train_source, val_source, info,
   manager) = train.prepare_run(
       config, workdir, mesh, cleanup,
       check_resume=lambda: _check_same_seeds(workdir, seeds))
  num_classes = config.num_classes
  logging.info('Seeds %s in one program (%s%s); devices: %d (%s), mesh %s.',
               seeds, kind, f', seed_sharding={config.seed_sharding}'
               if layout else '', jax.device_count(),
               jax.devices()[0].platform, dict(mesh.shape))
  if layout:
    config = _without_vmapped_fast_ops(config)

  model = models.create_model(config, num_classes)
  state = create_seed_states(config, model, seeds, mesh,
                             layout.state if layout else None)
  restored = checkpointing.restore_latest_valid(manager, workdir, state)
  if restored is not None:
    state = restored
    logging.info('Resumed %d seeds from step %d.', len(seeds),
                 int(state.step[0]))
  elif config.init_from:
    params = [surgery.init_from(jax.tree.map(lambda x: x[k],
                                                   state.params),
                                      config.init_from)
              for k in range(len(seeds))]
    state = state.replace(params=jax.device_put(
        stack_trees(params), jax.tree.map(lambda x: x.sharding, state.params)))
  start_step = int(jax.device_get(state.step)[0])
  # Batch t of a separate run is its dataset's element t - 1 (what its
  # iterator hands out, also after a resume at step t - 1).
  datasets = [input_pipeline.train_dataset_from_config(
      train_source, seed_config(config, s), info) for s in seeds]
  eval_args = dict(source=val_source, batch_size=eval_batch_size,
                   num_classes=num_classes,
                   boundary_radius=config.boundary_radius,
                   batching=input_pipeline.batching_options(config, info))
  if layout:
    program = _VmapProgram(config, layout, eval_args)
    rngs = sharding.put(dropout_keys(seeds), layout.per_seed)
  else:
    program = _LoopProgram(config, mesh, eval_args, info)
    rngs = [sharding.replicate(train.init_and_dropout_keys(s)[1], mesh)
            for s in seeds]
  state = program.unstacked(state)
  writer = writers.MetricWriter(workdir)
  cleanup.callback(writer.close)

  def run_eval(step):
    seed_scores = program.evaluate(state, len(seeds))
    for seed, scores in zip(seeds, seed_scores):
      writer.write(step, 'val', dict(scores, seed=seed))
    logging.info('Eval at step %d: mean IU per seed %s', step,
                 ', '.join(f'{s}: {x["mean_iu"]:.4f}'
                           for s, x in zip(seeds, seed_scores)))
    return seed_scores

  seed_scores = None
  losses = []
  timer = (time.time(), start_step)
  faults = fault_tolerance.TestFaults.from_env()
  batches = prefetch.DevicePrefetcher(
      _stacked_batches(datasets, start_step, config.num_train_steps),
      program.place, config.num_train_steps - start_step,
      config.device_prefetch,
      prepare=lambda i, b: faults.corrupt_batch(start_step + 1 + i, b))
  cleanup.callback(batches.close)
  # As in the single-seed loop: step metrics stay on the device until a step
  # that logs, evaluates, saves or stops.
  window = prefetch.StepWindow(config.device_prefetch)
  last_metrics = {}
  for step in range(start_step + 1, config.num_train_steps + 1):
    batch, _ = next(batches)
    state, step_metrics = program.train(state, batch, rngs)
    window.add(step, step_metrics)
    faults.after_step(step)
    if step == start_step + 1:
      timer = (time.time(), step)
    log_now, evaluated, save_now = train.due(config, step)
    signum = stop.agreed_signum(step, config.preemption_check_every_steps)
    if log_now or evaluated or save_now or signum:
      for fetched_step, fetched, _ in window.fetch():
        fetched = program.to_host_metrics(fetched)
        _check_finite(config, manager, fetched_step, seeds, fetched)
        losses.append(fetched['loss'])
        last_metrics = fetched
    if log_now:
      elapsed = time.time() - timer[0]
      rate = (step - timer[1]) / elapsed if elapsed > 0 else float('nan')
      mean_loss = np.mean(losses, axis=0)
      for k, seed in enumerate(seeds):
        record = {key: float(v[k]) for key, v in last_metrics.items()}
        record.update(loss=float(mean_loss[k]), steps_per_sec=rate,
                      seed=seed)
        writer.write(step, 'train', record)
      losses = []
      logging.info('Step %d/%d: loss per seed %s, %.2f steps/s', step,
                   config.num_train_steps,
                   ', '.join(f'{x:.4f}' for x in mean_loss), rate)
    if evaluated:
      seed_scores = run_eval(step)
    if save_now or signum:
      checkpointing.save(manager, step, program.stacked(state),
                         _ranking(seed_scores) if evaluated else None)
      faults.after_save_started(step, saving=not os.path.isdir(
          workdir_lib.step_dir(workdir, step)))
    if signum:
      checkpointing.wait_until_saved(manager)
      raise fault_tolerance.Interrupted(
          f'Stopped by {signal.Signals(signum).name} after step {step}; '
          f'checkpoint saved in {workdir_lib.checkpoint_dir(workdir)}. Run '
          'the same command again to resume', signum, step)
  batches.close()

  step = program.step(state)
  if seed_scores is None:  # Resumed a finished run.
    seed_scores = run_eval(step)
  checkpointing.wait_until_saved(manager)
  best = int(np.argmax([s['mean_iu'] for s in seed_scores]))
  best_path = workdir_lib.step_dir(workdir, workdir_lib.best_step(workdir))
  logging.info('Final mean IU per seed: %s; best seed %d. Checkpoints hold '
               'all seeds: %s', [round(s['mean_iu'], 4) for s in seed_scores],
               seeds[best], best_path)
  return dict(seed_scores[best], step=step,
              best_checkpoint=best_path, seeds=seeds, best_seed=seeds[best],
              seed_mean_iu=[s['mean_iu'] for s in seed_scores])


def _without_vmapped_fast_ops(config):
  """The vmapped program's config: XLA:CPU's collectives deadlock on vmapped
  fast CPU ops across several devices, so there fast_ops 'auto' means the
  plain ops and 'on' is refused."""
  if jax.default_backend() != 'cpu' or jax.device_count() == 1:
    return config
  if config.fast_ops == 'on':
    raise ConfigError("config.fast_ops='on' with the vmapped seeds program "
                      '(config.seed_program) on several CPU devices hangs '
                      "XLA:CPU's collectives; use fast_ops='auto' or 'off'.")
  config = ml_collections.ConfigDict(config.to_dict())
  config.fast_ops = 'off'
  return config


def _ranking(seed_scores: Sequence[dict]) -> dict:
  """The checkpoint's ranking metric: the mean over seeds of mean IU."""
  return {'mean_iu': float(np.mean([s['mean_iu'] for s in seed_scores]))}


def _check_finite(config, manager, step, seeds, step_metrics) -> None:
  finite = np.isfinite(step_metrics['loss']) & np.isfinite(
      step_metrics['grad_norm'])
  if finite.all() or config.skip_nonfinite:
    return
  bad = [s for s, ok in zip(seeds, finite) if not ok]
  checkpointing.wait_until_saved(manager)
  raise fault_tolerance.NonFiniteError(
      f'Non-finite loss or gradient at step {step} for seed(s) {bad}. '
      f'Stopped without saving; the last good checkpoint is step '
      f'{manager.latest_step()}. Lower the learning rate or set '
      'config.skip_nonfinite=True.')


def _check_same_seeds(workdir: str, seeds: Sequence[int]) -> None:
  """Refuses to resume a workdir trained with other seeds."""
  try:
    saved = seed_list(workdir_lib.load_config(workdir))
  except ValueError:  # No readable config.json (CheckpointError), bad seeds.
    return
  if saved is not None and list(saved) != list(seeds):
    raise ConfigError(f'config.seeds gives seeds {list(seeds)} but '
                      f'{workdir} was trained with seeds {saved}; use the '
                      'same config.seeds or another workdir.')


# ---------------------------------------------------------------------------
# Reading one seed back.


def best_seed_index(workdir: str | None, seeds: Sequence[int],
                    step: int | None) -> int | None:
  """Index of the seed with the best validation mean IU at `step` (the
  latest evaluated step if None), from the workdir's metrics.jsonl."""
  if not workdir:
    return None
  scores = {}
  for record in workdir_lib.val_records(workdir):
    if 'seed' in record and (step is None or record['step'] == step):
      scores[record['seed']] = record.get('mean_iu') or float('-inf')
  ranked = [(scores[s], -k) for k, s in enumerate(seeds) if s in scores]
  return -max(ranked)[1] if ranked else None


def params_of_seed(params, config: ml_collections.ConfigDict,
                   workdir: str | None, step: int | None,
                   seed: int | None = None) -> tuple[Any, str]:
  """One seed's parameters from a checkpoint of config.seeds.

  Args:
    params: the restored parameters (a leading seed axis if config.seeds).
    config: the run's config.
    workdir: where metrics.jsonl ranks the seeds (None: no ranking).
    step: the checkpoint's step.
    seed: the seed to take (a value of config.seeds); None = the best by
      validation mean IU at `step` (the first seed when unknown).

  Returns:
    (params, a sentence saying which seed was taken, '' for ordinary runs).

  Raises:
    ConfigError: `seed` given for an ordinary run, or not one of the seeds.
  """
  seeds = seed_list(config)
  if seeds is None:
    if seed is not None and seed != config.seed:
      raise ConfigError(f'--seed={seed}: this run trained one model, with '
                        f'config.seed={config.seed}.')
    return params, ''
  if seed is not None:
    if seed not in seeds:
      raise ConfigError(f'--seed={seed}: the checkpoint holds seeds {seeds}.')
    index, why = seeds.index(seed), 'chosen with --seed'
  else:
    index = best_seed_index(workdir, seeds, step)
    why = 'the best validation mean IU at this step'
    if index is None:
      index, why = 0, 'the first one; no validation scores found'
  params = jax.tree.map(lambda x: np.asarray(x)[index], params)
  return params, (f'Seed {seeds[index]} of {seeds} ({why}; --seed=K picks '
                  'another).')
