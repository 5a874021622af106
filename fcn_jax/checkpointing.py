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
exists. A checkpoint that is complete on disk but proven damaged (files
Orbax wrote missing or truncated, undecodable array data or metadata, e.g.
after a power loss) is moved to `<workdir>/corrupt_checkpoints/` and the
previous one is restored instead. Any other failure to read (an I/O error, a
full disk, a permission or network problem, memory, or an error not known to
mean damage) is retried with a short backoff and then stops the run with
`CheckpointUnavailableError`, every checkpoint left where it is.

Paths come from `fcn_jax.workdir`, which also reads a workdir back for
evaluation, prediction, export and init_from (parameters only, files only,
so it is safe while a trainer writes). `create_read_only_manager` is the
Orbax view of a workdir that never cleans up, deletes, creates or locks.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
from absl import logging

from fcn_jax import errors
from fcn_jax import fault_tolerance
from fcn_jax import workdir as workdir_lib

BEST_METRIC = 'mean_iu'
# Item names inside a step directory. 'default' is the name Orbax gives a
# single saved item, which keeps checkpoints written before the data item
# existed readable.
STATE_ITEM = 'default'
DATA_ITEM = 'data'


# Restoring a step: attempts before giving up on an error that does not prove
# damage, and the first pause between them (doubled each time).
RESTORE_ATTEMPTS = 3
RESTORE_BACKOFF_S = 1.0
# OSError numbers that say "the storage or the machine is in trouble", not
# "the checkpoint is damaged" (ENOENT inside an existing step is damage).
TROUBLE_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        'EIO', 'EACCES', 'EPERM', 'ENOSPC', 'EDQUOT', 'ETIMEDOUT', 'EAGAIN',
        'EBUSY', 'EINTR', 'ENOMEM', 'ESTALE', 'ENOTCONN', 'ECONNRESET',
        'ECONNREFUSED', 'EHOSTDOWN', 'EHOSTUNREACH', 'ENETDOWN',
        'ENETUNREACH', 'EROFS', 'ENODEV', 'ENXIO', 'EMFILE', 'ENFILE')
    if hasattr(errno, name))
# TensorStore status codes (first word of its ValueError messages).
_DAMAGE_CODES = ('DATA_LOSS', 'NOT_FOUND', 'OUT_OF_RANGE',
                 'FAILED_PRECONDITION')
_TROUBLE_CODES = ('UNKNOWN', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED',
                  'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'ABORTED', 'CANCELLED',
                  'INTERNAL', 'UNAUTHENTICATED')


class CheckpointUnavailableError(RuntimeError, errors.UserError):
  """Checkpoints exist but none can be restored, or a save failed (I/O, disk
  full, permissions, memory); no intact checkpoint was moved or deleted."""


def _best_metric(metrics) -> float:
  return metrics[BEST_METRIC]


def create_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the last `keep` steps and the best mean IU."""
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1,
               keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_metric, best_mode='max', preservation_policy=policy,
      create=True, cleanup_tmp_directories=True)
  # Named items: otherwise Orbax takes a step holding a 'default' folder for
  # a single-item checkpoint and refuses to read the data item next to it.
  return ocp.CheckpointManager(workdir_lib.checkpoint_dir(workdir),
                               options=options,
                               item_names=(STATE_ITEM, DATA_ITEM))


def create_read_only_manager(workdir: str) -> ocp.CheckpointManager:
  """A CheckpointManager that only reads `workdir`'s checkpoints.

  It never cleans up temporary directories (one may be a save in progress
  of a trainer running in the same workdir), deletes, creates or locks
  anything; `best_step` still ranks by validation mean IU.
  """
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_metric, best_mode='max', read_only=True, create=False,
      cleanup_tmp_directories=False, enable_async_checkpointing=False)
  return ocp.CheckpointManager(workdir_lib.checkpoint_dir(workdir),
                               options=options,
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
  with _save_errors(manager, step):
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)


def wait_until_saved(manager: ocp.CheckpointManager) -> None:
  """Waits for an asynchronous save; a failed one (disk full...) raises
  CheckpointUnavailableError naming the last finished checkpoint."""
  with _save_errors(manager, None):
    manager.wait_until_finished()


class _save_errors:  # pylint: disable=invalid-name
  """Turns an OSError of a save (ENOSPC, EIO...) into one clear error.

  Orbax writes into a temporary directory and only then renames it, and it
  deletes old steps only after a save has finished, so the previous
  checkpoint is intact when this raises.
  """

  def __init__(self, manager: ocp.CheckpointManager, step: int | None):
    self._manager = manager
    self._step = step

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc is None:
      return False
    cause = _find_in_chain(exc, lambda e: isinstance(e, (OSError,
                                                         MemoryError)))
    if cause is None:
      return False
    finished = [s for s in _finished_steps(self._manager.directory)
                if s != self._step]
    what = ('the checkpoint' if self._step is None
            else f'the checkpoint of step {self._step}')
    last = (f'step {max(finished)} in {self._manager.directory} is intact'
            if finished else 'no earlier checkpoint exists')
    raise CheckpointUnavailableError(
        f'Saving {what} failed ({_describe(cause)}); {last}. Free space or '
        'fix the storage, then run the same command again to resume.'
    ) from exc


def _finished_steps(directory) -> list[int]:
  try:
    return sorted(int(d) for d in os.listdir(str(directory)) if d.isdigit())
  except OSError:
    return []


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


def _quarantine(manager: ocp.CheckpointManager, workdir: str, step: int) -> str:
  """Moves an unreadable step aside, so it is neither restored nor overwritten.

  Kept rather than deleted, for inspection. Only process 0 moves it.
  """
  source = workdir_lib.step_dir(workdir, step)
  target = os.path.join(workdir_lib.corrupt_dir(workdir),
                        f'{step}-{int(time.time())}')
  if jax.process_index() == 0 and os.path.exists(source):
    os.makedirs(workdir_lib.corrupt_dir(workdir), exist_ok=True)
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
        workdir_lib.step_dir(workdir, step))
  except Exception:  # pylint: disable=broad-except
    return False
  saved = [counts for counts in saved if counts]  # Empty: unreadable.
  return bool(saved) and wanted not in saved


def _exception_chain(exc: BaseException) -> list[BaseException]:
  chain, seen = [], set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    chain.append(exc)
    exc = exc.__cause__ or exc.__context__
  return chain


def _find_in_chain(exc: BaseException, predicate):
  return next((e for e in _exception_chain(exc) if predicate(e)), None)


def _describe(exc: BaseException) -> str:
  text = ' '.join(str(exc).split())[:300]
  return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _status_code(exc: BaseException) -> str:
  return str(exc).lstrip().split(':', 1)[0] if isinstance(exc,
                                                          ValueError) else ''


def _is_trouble(exc: BaseException) -> bool:
  """Errors of the machine or storage rather than of the checkpoint."""
  if isinstance(exc, MemoryError):
    return True
  if isinstance(exc, OSError):
    return exc.errno != errno.ENOENT and not isinstance(exc,
                                                        FileNotFoundError)
  text = str(exc)
  return (_status_code(exc) in _TROUBLE_CODES or
          any(f'[OS error {n}' in text or f'errno={n}' in text
              for n in TROUBLE_ERRNOS))


def _is_damage(exc: BaseException) -> bool:
  """Errors that only a damaged checkpoint produces: files Orbax wrote
  missing, truncated or undecodable (JSON, OCDBT, zstd, zarr)."""
  return (isinstance(exc, (FileNotFoundError, json.JSONDecodeError)) or
          _status_code(exc) in _DAMAGE_CODES or
          (isinstance(exc, KeyError) and 'was not found in the checkpoint'
           in str(exc)))


def classify_restore_error(exc: BaseException, step_dir: str) -> str:
  """'damaged' if `exc` proves the checkpoint at `step_dir` damaged, else
  'trouble' (retry, then stop; never move the checkpoint)."""
  chain = _exception_chain(exc)
  if not os.path.isdir(step_dir) or any(_is_trouble(e) for e in chain):
    return 'trouble'  # E.g. the whole directory vanished: a lost mount.
  if any(_is_damage(e) for e in chain):
    return 'damaged'
  return 'trouble'  # Not known to mean damage: do not touch the checkpoint.


def _restore_or_classify(manager, workdir, step, abstract_state,
                         data_iterator):
  """(state, None) if step `step` restores, else (None, error) for proven
  damage. Raises CheckpointUnavailableError after RESTORE_ATTEMPTS failures
  that prove nothing."""
  step_dir = workdir_lib.step_dir(workdir, step)
  damaged = 0
  for attempt in range(RESTORE_ATTEMPTS):
    try:
      return restore(manager, abstract_state, step, data_iterator), None
    except Exception as e:  # pylint: disable=broad-except
      error = e  # MemoryError included: it is an Exception.
    if _holds_other_structure(workdir, step, abstract_state):
      raise fault_tolerance.ConfigError(
          f'Checkpoint at step {step} in '
          f'{workdir_lib.checkpoint_dir(workdir)} holds other arrays than '
          'this config builds (another model, width, class count, upsampling '
          'or optimizer): resume with the config it was trained with, or use '
          'a new --workdir.') from error
    if classify_restore_error(error, step_dir) == 'damaged':
      damaged += 1
      if damaged >= 2:  # The same kind of damage twice: not a passing read.
        return None, error
    elif attempt == RESTORE_ATTEMPTS - 1:
      raise CheckpointUnavailableError(
          f'Cannot read the checkpoint at step {step} in '
          f'{workdir_lib.checkpoint_dir(workdir)} after {RESTORE_ATTEMPTS} '
          f'attempts ({_describe(error)}); this does not show that the '
          'checkpoint is damaged, so every checkpoint was left in place. Fix '
          'the storage, memory or permissions and run the same command again '
          '(if you know this checkpoint is damaged, move its directory away '
          'by hand).'
      ) from error
    logging.warning('Reading the checkpoint at step %d failed (%s); trying '
                    'again.', step, _describe(error))
    time.sleep(RESTORE_BACKOFF_S * 2 ** attempt)
  return None, error


def restore_latest_valid(manager: ocp.CheckpointManager, workdir: str,
                         abstract_state,
                         data_iterator: grain.DatasetIterator | None = None):
  """Restores the newest readable checkpoint; None if there is none at all.

  `data_iterator`, if given, is moved to the restored step's saved position
  (see `restore`).

  Checkpoints proven damaged (truncated or missing files, undecodable
  data) are moved aside with a warning, and the next older one is tried.
  Any other error is retried and then raised: see `classify_restore_error`.

  Raises:
    CheckpointUnavailableError: a checkpoint cannot be read for a reason
      that does not prove damage (I/O, permissions, memory, unknown; all
      checkpoints are left in place), or every checkpoint is damaged (rather
      than silently training from scratch).
    fault_tolerance.ConfigError: if a checkpoint is intact but holds other
      arrays (another model or optimizer) than `abstract_state`.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    state, e = _restore_or_classify(manager, workdir, step, abstract_state,
                                    data_iterator)
    if e is None:
      return state
    target = _quarantine(manager, workdir, step)
    logging.warning(
        'Checkpoint at step %d is damaged (%s); moved it to %s and falling '
        'back to the previous checkpoint.', step, _describe(e), target)
  if steps:
    raise CheckpointUnavailableError(
        f'No readable checkpoint in {workdir_lib.checkpoint_dir(workdir)} '
        f'(tried steps {steps}, moved to {workdir_lib.corrupt_dir(workdir)}); '
        'refusing to start over silently. Run again to train from scratch.')
  return None
