"""Training and evaluation loop: pure jit-compiled steps, sharded over a mesh.

`train_step` and `eval_step` are pure functions of (state, batch). They are
compiled once with explicit shardings: the state replicated, the batch split
over the 'data' mesh axis. `train_and_evaluate` is the loop around them:
data, logging, evaluation and checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from fcn_jax import checkpointing
from fcn_jax import config_checks
from fcn_jax import dataset_info
from fcn_jax import fault_tolerance
from fcn_jax import grad_accum
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import optimizer
from fcn_jax import prefetch
from fcn_jax import sharding
from fcn_jax import summaries
from fcn_jax import tasks
from fcn_jax import workdir as workdir_lib
from fcn_jax import writers


class TrainState(train_state.TrainState):
  """Step, params and optimizer state (apply_fn and tx are static).

  `skipped_updates` counts steps whose update was dropped for a non-finite
  loss or gradient (config.skip_nonfinite); it is checkpointed with the rest.
  """
  skipped_updates: jax.Array | int = 0


def init_and_dropout_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """PRNG keys for parameter init and for dropout, derived from `seed`.

  Parameters are drawn with the 'rbg' generator: XLA compiles the model's
  random initializers about 5x faster with it than with threefry on CPU
  (seconds at every start). It is deterministic on a given platform, which
  is what identical replicas and reproducible runs need.
  """
  init_rng = jax.random.key(seed, impl='rbg')
  _, dropout_rng = jax.random.split(jax.random.key(seed))
  return init_rng, dropout_rng


def create_train_state(config, model, rng, mesh, image_size: int = 32):
  """Creates the replicated TrainState directly on the mesh's devices."""
  def init(rng):
    params = models.init_params(model, rng, image_size)
    tx = optimizer.create_optimizer(config, params)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  abstract = jax.eval_shape(init, rng)
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=state_sharding)(rng)


def train_step(state: TrainState, batch: dict, dropout_rng: jax.Array,
               loss_normalization: str = 'sum', skip_nonfinite: bool = False,
               grad_accum_steps: int = 1, micro_batch_sharding=None):
  """One SGD step on a (globally sharded) batch. Returns (state, metrics).

  With `grad_accum_steps` = k > 1 the batch is processed as k micro-batches
  in sequence (Caffe's iter_size) and their gradients are summed into the
  gradient of the whole batch's loss, so the update equals that of one step
  on the whole batch while activations are held for one micro-batch only.

  With `skip_nonfinite`, an update whose loss or gradient is not finite is
  dropped (params and optimizer state stay; the step counter advances, so
  the data order is unchanged) and counted in `state.skipped_updates`.
  """
  rng = jax.random.fold_in(dropout_rng, state.step)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch['image'], train=True,
                            rngs={'dropout': rng})
    return tasks.loss(logits, batch, loss_normalization)

  if grad_accum_steps > 1:
    loss, grads = grad_accum.accumulated_loss_and_grads(
        state, batch, rng, loss_normalization, grad_accum_steps,
        micro_batch_sharding)
  else:
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grads)
  grad_norm = optax.global_norm(grads)
  if skip_nonfinite:
    new_state = _keep_state_if_nonfinite(
        state, new_state, jnp.isfinite(loss) & jnp.isfinite(grad_norm))
  step_metrics = {
      'loss': loss,
      'grad_norm': grad_norm,
      'param_norm': optax.global_norm(new_state.params),
  }
  return new_state, step_metrics


def _keep_state_if_nonfinite(state: TrainState, new_state: TrainState,
                             finite: jax.Array) -> TrainState:
  """new_state if `finite`, else state with only the step counter advanced."""
  kept = state.replace(step=new_state.step,
                       skipped_updates=state.skipped_updates + 1)
  return jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                      new_state, kept)


def eval_step(state: TrainState, hist: jax.Array, batch: dict,
              boundary_radius: int = 0) -> jax.Array:
  """Adds the batch's confusion matrix to `hist` (summed over all devices).

  A (C, C) `hist` counts all pixels. A (2, C, C) `hist` (used when
  `boundary_radius` > 0) also counts, in hist[1], the pixels within
  `boundary_radius` of a label boundary (metrics.boundary_confusion_matrix).
  A two-headed model (SIFT Flow) has a dict of such matrices, one per label
  key (tasks.add_confusion).
  """
  logits = state.apply_fn({'params': state.params}, batch['image'], train=False)
  return tasks.add_confusion(hist, batch, logits, boundary_radius)


def compile_steps(config, mesh):
  """jit-compiled train and eval steps with explicit shardings."""
  replicated = sharding.replicated(mesh)
  data = sharding.data_sharded(mesh)
  p_train_step = jax.jit(
      functools.partial(train_step,
                        loss_normalization=config.loss_normalization,
                        skip_nonfinite=config.skip_nonfinite,
                        grad_accum_steps=config.grad_accum_steps,
                        micro_batch_sharding=sharding.micro_batch_sharded(mesh)),
      in_shardings=(replicated, data, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=0)
  p_eval_step = jax.jit(
      functools.partial(eval_step,
                        boundary_radius=config.boundary_radius),
      in_shardings=(replicated, replicated, data),
      out_shardings=replicated, donate_argnums=1)
  return p_train_step, p_eval_step


def evaluate(p_eval_step, state, source, batch_size: int, num_classes: int,
             mesh, boundary_radius: int = 0, return_hist: bool = False,
             extra_heads: dict | None = None, present_only: bool = False,
             reader=None, **batching):
  """The paper's scores over a whole split, from one global histogram.

  With `boundary_radius` > 0 (and `p_eval_step` compiled with it), the scores
  also hold 'boundary_mean_iu': mean IU over the pixels within
  `boundary_radius` of a label boundary. `batching` (pad_multiple, pad_size)
  goes to `input_pipeline.eval_batches`; a `reader`
  (input_pipeline.EvalReader of `source`, e.g. with worker processes) is read
  instead when given. Batches are placed on the devices ahead of their step.
  With `return_hist`, returns (scores, the main head's (C, C) confusion
  matrix). `extra_heads` ({'geo_label': 3}) adds the scores of further heads,
  prefixed 'geo_'; `present_only` averages the main head's means over the
  classes present in the split (tasks.scores_of).
  """
  sizes = dict({'label': num_classes}, **(extra_heads or {}))
  hist = sharding.replicate(tasks.empty_hist(sizes, boundary_radius), mesh)
  if reader is None:
    reader = input_pipeline.EvalReader(source, batch_size, **batching)
  batches = prefetch.DevicePrefetcher(
      iter(reader), lambda b: sharding.shard_batch(
          input_pipeline.model_arrays(b), mesh), len(reader))
  try:
    for batch, _ in batches:
      hist = p_eval_step(state, hist, batch)
  finally:
    batches.close()
  hist = jax.device_get(hist)
  scores = tasks.scores_of(hist, present_only)
  if not return_hist:
    return scores
  main = np.asarray(hist['label'] if isinstance(hist, dict) else hist)
  return scores, (main[0] if main.ndim == 3 else main)


def _format_scores(scores: dict) -> str:
  keys = ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc')
  text = ', '.join(f'{k}={scores[k]:.4f}' for k in keys)
  if 'num_classes_scored' in scores:
    text += (f' (means over the {scores["num_classes_scored"]} classes present '
             'in the ground truth)')
  if tasks.GEO_PREFIX + 'mean_iu' in scores:
    text += '; geometric: ' + ', '.join(
        f'{k}={scores[tasks.GEO_PREFIX + k]:.4f}' for k in keys)
  return text


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints).

  Returns the final validation scores (dict of segmentation_scores plus
  'step' and 'best_checkpoint').

  Raises:
    fault_tolerance.ConfigError: bad config, or one that contradicts the
      workdir's checkpoints (before anything is compiled).
    fault_tolerance.WorkdirLockedError: another trainer uses `workdir`.
    fault_tolerance.NonFiniteError: non-finite loss or gradient.
    fault_tolerance.Interrupted: SIGTERM/SIGINT; a checkpoint was written.
  """
  config_checks.validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  # Everything registered on `cleanup` runs on every exit, errors included:
  # above all it waits for an asynchronous checkpoint save to finish.
  with contextlib.ExitStack() as cleanup:
    cleanup.enter_context(fault_tolerance.WorkdirLock(
        workdir, enabled=jax.process_index() == 0))
    stop = cleanup.enter_context(fault_tolerance.StopSignals())
    from fcn_jax import seeds  # pylint: disable=g-import-not-at-top
    if seeds.seed_list(config) is not None:  # Many seeds, one program.
      return seeds.train_seeds(config, workdir, stop, cleanup)
    return _train_and_evaluate(config, workdir, stop, cleanup)


def prepare_run(config, workdir: str, mesh, cleanup, check_resume=None):
  """What every training loop does first: batch sizes checked against the
  mesh, the datasets, the config completed with num_classes, the checkpoint
  manager, the resume checks (plus `check_resume()`, if given, before
  anything is written) and config.json / dataset_info.json written.

  Returns (config, eval_batch_size, train_source, val_source, info, manager).
  """
  sharding.check_batch_size(config.batch_size, mesh,
                            micro_batches=config.grad_accum_steps)
  eval_batch_size = (config.batch_size if config.eval_batch_size == -1
                     else config.eval_batch_size)
  sharding.check_batch_size(eval_batch_size, mesh, 'eval_batch_size')

  train_source, val_source, info = input_pipeline.create_datasets(config)
  num_classes = config_checks.resolve_num_classes(config, info)
  config = ml_collections.ConfigDict(config.to_dict())
  config.num_classes = num_classes

  # Checked before the checkpoint manager exists: closing a manager right
  # after creating it can make Orbax's background thread log an error.
  if (os.path.isdir(workdir_lib.checkpoint_dir(workdir))
      and workdir_lib.finished_steps(workdir)):
    fault_tolerance.check_resume_config(
        config, workdir, config.allow_config_change)
    if check_resume is not None:
      check_resume()
  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  cleanup.callback(manager.close)
  if jax.process_index() == 0:
    workdir_lib.save_config(config, workdir)
    dataset_info.save(workdir, info.name, info.class_names, info.palette)
  return config, eval_batch_size, train_source, val_source, info, manager


def _train_and_evaluate(config, workdir, stop, cleanup) -> dict[str, Any]:
  """train_and_evaluate, with the workdir locked and signals caught."""
  mesh = sharding.create_mesh()
  (config, eval_batch_size, train_source, val_source, info,
   manager) = prepare_run(config, workdir, mesh, cleanup)
  num_classes = config.num_classes
  logging.info('Devices: %d (%s), mesh %s', jax.device_count(),
               jax.devices()[0].platform, dict(mesh.shape))
  logging.info('Dataset %s: %d classes, %d train / %d val images.', info.name,
               num_classes, info.train_size, info.val_size)

  model = models.create_model(config, num_classes)
  init_rng, dropout_rng = init_and_dropout_keys(config.seed)
  state = create_train_state(config, model, init_rng, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('Model %s (width %g): %s parameters.', config.model,
               config.width, f'{num_params:,}')

  train_ds = input_pipeline.train_dataset_from_config(train_source, config,
                                                      info)
  num_workers = input_pipeline.num_data_workers(config, info)
  train_iter = input_pipeline.train_iterator(
      train_ds, num_workers, config.data_prefetch)
  logging.info('Training batches read ahead by %s.',
               f'data worker processes ({num_workers})' if num_workers
               else 'threads of this process')
  cleanup.callback(train_iter.close)
  restored = checkpointing.restore_latest_valid(manager, workdir, state,
                                                train_iter)
  if restored is not None:
    state = restored
    logging.info('Resumed from checkpoint at step %d in %s.', int(state.step),
                 workdir_lib.checkpoint_dir(workdir))
    if not checkpointing.has_data_state(manager, int(state.step)):
      # Written before checkpoints held the iterator: batch s is ds[s].
      grain.experimental.set_next_index(train_iter, int(state.step))
  elif config.init_from:
    # Fresh run seeded from pretrained weights (VGG16, an earlier stage).
    state = state.replace(params=tasks.init_from(state.params, config))
  start_step = int(state.step)

  p_train_step, p_eval_step = compile_steps(config, mesh)
  writer = writers.MetricWriter(workdir, class_names=info.class_names)
  cleanup.callback(writer.close)
  schedule = optimizer.learning_rate_schedule(config)
  summary_examples, predict_fn = _summary_examples(config, val_source, state)
  dropout_rng = sharding.replicate(dropout_rng, mesh)
  faults = fault_tolerance.TestFaults.from_env()

  eval_reader = input_pipeline.EvalReader(
      val_source, eval_batch_size, num_workers, config.data_prefetch,
      **input_pipeline.batching_options(config, info))
  cleanup.callback(eval_reader.close)

  def run_eval(step):
    t0 = time.time()
    scores, hist = evaluate(
        p_eval_step, state, val_source, eval_batch_size, num_classes, mesh,
        config.boundary_radius, return_hist=True,
        extra_heads={k: len(n) for k, n in info.extra_heads},
        present_only=info.present_classes_only, reader=eval_reader)
    logging.info('Eval at step %d (%.1fs): %s', step, time.time() - t0,
                 _format_scores(scores))
    writer.write(step, 'val', scores)
    if predict_fn is not None:
      summaries.write_eval_images(writer, step, predict_fn, state.params,
                                  summary_examples, hist, info.class_names,
                                  info.palette)
    return scores

  scores = None
  timer_start, timer_step = time.time(), start_step
  record_time = time.time()
  train_losses = []
  batches = prefetch.DevicePrefetcher(
      train_iter, lambda b: sharding.shard_batch(
          input_pipeline.model_arrays(b), mesh),
      config.num_train_steps - start_step, config.device_prefetch,
      prepare=lambda i, b: faults.corrupt_batch(start_step + 1 + i, b),
      track_position=True)
  cleanup.callback(batches.close)
  # Step metrics stay on the device until a step that logs, evaluates, saves
  # or stops: no device-to-host transfer on the other steps.
  window = prefetch.StepWindow(config.device_prefetch)
  last_metrics = {}
  for step in range(start_step + 1, config.num_train_steps + 1):
    batch, batch_ids = next(batches)
    if step == start_step + 1:
      logging.info('Compiling the train step (the first step includes it)...')
      compile_start = time.time()
    state, step_metrics = p_train_step(state, batch, dropout_rng)
    if step == start_step + 1:
      # Dispatch returns once compiled; the step itself runs on.
      logging.info('Train step compiled in %.1fs.', time.time() - compile_start)
    window.add(step, step_metrics, batch_ids)
    faults.after_step(step)
    if step == start_step + 1:
      # The first step includes compilation; time from here on for the ETA.
      timer_start, timer_step = time.time(), step

    log_now, eval_now, save_now = due(config, step)
    # Read once: a signal may arrive meanwhile. (Several processes agree on
    # it at the same steps, host to host.)
    signum = stop.agreed_signum(
        step, config.preemption_check_every_steps)
    if log_now or eval_now or save_now or signum:
      # Before anything is saved: a non-finite step stops (or is skipped)
      # here, so no checkpoint ever holds a non-finite state.
      finite, last_metrics = fault_tolerance.check_window(
          config, workdir, manager, state, window.fetch())
      train_losses.extend(finite)

    if log_now:
      now = time.time()
      elapsed = now - timer_start
      rate = (step - timer_step) / elapsed if elapsed > 0 else float('nan')
      eta = (config.num_train_steps - step) / rate if rate > 0 else float('nan')
      record = {k: float(v) for k, v in last_metrics.items()}
      record['loss'] = (float(np.mean(train_losses)) if train_losses
                        else float('nan'))
      record['steps_per_sec'] = rate
      record['data_wait_frac'] = (batches.take_wait_seconds() /
                                  max(now - record_time, 1e-9))
      record_time = now
      # The rate of this step's update (optax counts updates from 0).
      record['learning_rate'] = float(schedule(step - 1))
      if config.skip_nonfinite:
        record['skipped_updates'] = int(jax.device_get(state.skipped_updates))
      train_losses = []
      writer.write(step, 'train', record)
      logging.info('Step %d/%d: loss %.4f, lr %.3g, %.2f steps/s, input '
                   'wait %.0f%%, ETA %s', step, config.num_train_steps,
                   record['loss'], record['learning_rate'], rate,
                   100 * record['data_wait_frac'], _format_duration(eta))

    if eval_now:
      scores = run_eval(step)
    if save_now:
      evaluated_now = scores is not None and eval_now
      checkpointing.save(manager, step, state,
                         scores if evaluated_now else None, batches.position())
      faults.after_save_started(step, saving=not os.path.isdir(
          workdir_lib.step_dir(workdir, step)))
    if signum:
      _stop_on_signal(signum, manager, workdir, step, state,
                      batches.position())

  batches.close()
  train_iter.close()
  if scores is None:  # Resumed a finished run: evaluate what we have.
    scores = run_eval(int(state.step))
    checkpointing.save(manager, int(state.step), state, scores)
  checkpointing.wait_until_saved(manager)
  writer.close()

  best_path = workdir_lib.step_dir(workdir, workdir_lib.best_step(workdir))
  logging.info('Final validation scores (step %d): %s', int(state.step),
               _format_scores(scores))
  logging.info('Best checkpoint (val mean IU): %s', best_path)
  logging.info('Metrics: %s; TensorBoard: tensorboard --logdir=%s',
               workdir_lib.metrics_path(workdir), workdir)
  return dict(scores, step=int(state.step), best_checkpoint=best_path)


def _stop_on_signal(signum, manager, workdir, step, state, train_iter) -> None:
  """Checkpoints `state` (unless step is saved already) and raises Interrupted."""
  checkpointing.save(manager, step, state, data_iterator=train_iter)
  checkpointing.wait_until_saved(manager)
  name = signal.Signals(signum).name
  raise fault_tolerance.Interrupted(
      f'Stopped by {name} after step {step}; checkpoint saved in '
      f'{workdir_lib.step_dir(workdir, step)}. '
      'Run the same command again to resume', signum, step)


def due(config, step: int) -> tuple[bool, bool, bool]:
  """Whether `step` logs, evaluates and saves (each every ..._every_steps
  steps, and all three at the last step)."""
  return tuple(step % every == 0 or step == config.num_train_steps
               for every in (config.log_every_steps, config.eval_every_steps,
                             config.checkpoint_every_steps))


def _format_duration(seconds: float) -> str:
  """'4m05s', or '3h07m' from an hour on."""
  if not np.isfinite(seconds):
    return '?'
  minutes, seconds = divmod(int(seconds), 60)
  if minutes >= 60:
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s'


def _summary_examples(config, val_source, state):
  """The validation examples shown in TensorBoard, and a predict function.

  Single-process runs only (the pictures are drawn by process 0 alone).
  """
  count = min(config.summary_images, len(val_source))
  if count <= 0 or jax.process_count() > 1:
    return [], None
  examples = [val_source[i] for i in range(count)]
  return examples, summaries.make_predict_fn(state.apply_fn)
