"""Surviving preemption and failures: signals, workdir lock, resume checks.

What the training loop relies on (see docs/fault_tolerance.md):

* `StopSignals` turns SIGTERM (preemption notice) and SIGINT (Ctrl-C) into a
  request the loop checks after every step; it then writes a checkpoint and
  raises `Interrupted`, whose `exit_code` (143 or 130, i.e. 128 + signal) tells
  schedulers the run is not finished. A second signal kills at once. With
  several processes (jax.distributed) a signal usually reaches one of them
  first: every `preemption_check_every_steps` steps they exchange their
  requests through the coordination service (host only, no device sync), so
  all stop, save collectively and exit at the same step.
* `WorkdirLock` is an exclusive `flock` on `<workdir>/.lock`. The kernel drops
  it when the process dies, even by kill -9, so there is never a stale lock.
* `check_resume_config` compares the run's config with the `config.json` saved
  in the workdir on the keys that define the model and the data.
* `check_window` stops the run on a non-finite loss or gradient (naming the
  step and its images), or with config.skip_nonfinite logs the skipped
  update, before any checkpoint of that state is written.
* `TestFaults` injects failures for the fault-injection tests only, from the
  FCN_JAX_TEST_FAULTS environment variable; it does nothing when it is unset.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import socket
import threading

import jax
import numpy as np
from absl import logging

from fcn_jax import errors
from fcn_jax import workdir as workdir_lib

# Keys that define what a checkpoint is: resuming with other values would load
# parameters of another model, or train them on another problem.
RESUME_KEYS = ('model', 'num_classes', 'dataset', 'width')
LOCK_FILE = '.lock'
FAULTS_ENV = 'FCN_JAX_TEST_FAULTS'
FAULT_EVENTS = ('sigkill_after_step', 'sigkill_in_save', 'sigterm_after_step',
                'sigint_after_step', 'ctrl_c_after_step', 'nan_batch')


class ConfigError(ValueError, errors.UserError):
  """A bad flag or config value, or a config that contradicts the workdir's."""


class WorkdirLockedError(RuntimeError, errors.UserError):
  """Another trainer holds the workdir."""


class NonFiniteError(FloatingPointError, errors.UserError):
  """A non-finite loss or gradient; the last good checkpoint is kept."""


class Interrupted(Exception):
  """Training stopped on SIGTERM/SIGINT after writing a checkpoint."""

  def __init__(self, message: str, signum: int, step: int):
    super().__init__(message)
    self.signum = signum
    self.step = step
    # The shell's convention for "terminated by signal N".
    self.exit_code = 128 + signum


class StopSignals:
  """Records SIGTERM/SIGINT so the loop can stop cleanly between steps.

  Use as a context manager around the loop; the previous handlers come back
  on exit. Outside the main thread (where Python cannot install handlers) it
  does nothing and `signum` stays None.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      # None: a handler not installed from Python; the default is closest.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def agreed_signum(self, step: int, every: int) -> int | None:
    """The signal every process stops on after `step`, or None to go on.

    One process: its own request, at any step. Several: only at steps that
    are multiples of `every` (the same steps in every process), the first
    request of any process in process order, so all of them save the same
    step collectively and exit alike.
    """
    if jax.process_count() == 1:
      return self.signum
    if step % every:
      return None
    signums = _exchange(f'step_{step}', self.signum or 0,
                        previous=f'step_{step - every}')
    return next((s for s in signums if s), None)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:
      # Second signal: the user insists. Die by it now; Orbax's atomic
      # renames keep every finished checkpoint intact.
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signum = signum
    logging.warning('Received %s: stopping after the current step (with '
                    'several processes: the next step at which they all '
                    'check) and writing a checkpoint (send it again to stop '
                    'at once).', signal.Signals(signum).name)


class WorkdirLock:
  """Exclusive lock on a workdir, held while training; one trainer per workdir.

  Only JAX process 0 takes it (all processes of one job share the workdir).
  `flock` locks belong to the open file, so they vanish with the process;
  they do not work across machines on some network file systems.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._enabled = enabled
    self._file = None

  def __enter__(self) -> WorkdirLock:
    if not self._enabled:
      return self
    f = open(self.path, 'a+')
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or 'unknown process'
      f.close()
      raise WorkdirLockedError(
          f'{os.path.dirname(self.path)} is in use by another trainer '
          f'({holder}); wait for it to finish or use another --workdir.'
      ) from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      self._file.close()  # Closing the file releases the lock.
      self._file = None


def check_resume_config(config, workdir: str, allow_change: bool) -> None:
  """Refuses to resume `workdir` with a config that defines another model.

  Compares RESUME_KEYS of `config` (with num_classes already resolved) with
  the workdir's saved config.json. Other keys (steps, learning rate, logging)
  may change between runs: extending a finished run is a normal resume.

  Raises:
    ConfigError: if they differ and `allow_change` is False.
  """
  try:
    saved = workdir_lib.read_config(workdir)
  except workdir_lib.CheckpointError as e:
    raise ConfigError(f'{e} It describes the checkpoints in this '
                      'workdir.') from None
  if saved is None:
    return
  changed = [k for k in RESUME_KEYS
             if k in saved and saved[k] != config[k]]
  if not changed:
    return
  diff = ', '.join(f'{k}: {saved[k]!r} -> {config[k]!r}' for k in changed)
  if allow_change:
    logging.warning('Resuming %s with a changed config (%s), as '
                    'config.allow_config_change asks.', workdir, diff)
    return
  raise ConfigError(
      f'{workdir} holds checkpoints of another config ({diff}); use a new '
      '--workdir, or --config.allow_config_change=True to resume anyway.')


# The coordination service key prefix of the stop requests.
def _is_finite(step_metrics: dict) -> bool:
  return bool(np.isfinite(step_metrics['loss']) and
              np.isfinite(step_metrics['grad_norm']))


def check_window(config, workdir, manager, state, fetched):
  """Acts on the fetched steps' metrics in step order.

  `fetched` is what `prefetch.StepWindow.fetch` returns: (step, metrics,
  batch ids) of the steps since the last fetch.

  Returns (finite losses, the last step's metrics). A non-finite step stops
  the run, or with config.skip_nonfinite is reported as skipped.
  """
  skipped_later = sum(not _is_finite(m) for _, m, _ in fetched)
  finite = []
  for step, step_metrics, batch_ids in fetched:
    if _is_finite(step_metrics):
      finite.append(step_metrics['loss'])
      continue
    skipped_later -= 1
    skipped = (int(jax.device_get(state.skipped_updates)) - skipped_later
               if config.skip_nonfinite else 0)
    _handle_nonfinite(config, workdir, manager, skipped, step, step_metrics,
                      batch_ids)
  return finite, (fetched[-1][1] if fetched else {})


def _handle_nonfinite(config, workdir, manager, skipped, step, step_metrics,
                      batch_ids) -> None:
  """Skips (config.skip_nonfinite) or stops on a non-finite loss/gradient.

  `skipped` is the number of updates skipped up to and including `step`.
  """
  what = (f'loss {step_metrics["loss"]}, gradient norm '
          f'{step_metrics["grad_norm"]} at step {step} (batch of image ids '
          f'{_format_ids(batch_ids)})')
  if config.skip_nonfinite:
    logging.warning('Skipped the update of step %d: non-finite %s; %d updates '
                    'skipped so far.', step, what, skipped)
    return
  # Nothing of this step is saved; the cleanup waits for any save in flight.
  manager.wait_until_finished()
  raise NonFiniteError(
      f'Non-finite {what}. Stopped without saving; the last good checkpoint '
      f'is step {manager.latest_step()} in '
      f'{workdir_lib.checkpoint_dir(workdir)}. Lower the learning rate, '
      'check those images, or set config.skip_nonfinite=True to skip such '
      'updates.')


def _format_ids(batch_ids) -> str:
  if batch_ids is None:
    return '?'
  return '[' + ', '.join(str(i) for i in np.ravel(batch_ids).tolist()) + ']'


_STOP_KEYS = 'fcn_jax/stop_requests'
# How long a process waits for the others to reach the same check (they may
# be evaluating or saving): long, since giving up leaves them stuck anyway.
STOP_EXCHANGE_TIMEOUT_MS = 30 * 60 * 1000


def _distributed_client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def _exchange(name: str, value: int, previous: str | None = None) -> list[int]:
  """`value` of every process, in process order, via jax.distributed's
  key-value store (host to host: nothing waits for the devices).

  Falls back to a device all-gather without a coordination client.
  """
  client = _distributed_client()
  if client is None:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return [int(v) for v in np.ravel(
        multihost_utils.process_allgather(np.int32(value)))]
  me = jax.process_index()
  client.key_value_set(f'{_STOP_KEYS}/{name}/{me}', str(value))
  values = [value if i == me else int(client.blocking_key_value_get(
      f'{_STOP_KEYS}/{name}/{i}', STOP_EXCHANGE_TIMEOUT_MS))
            for i in range(jax.process_count())]
  if previous is not None:
    # Every process has read our previous key: it wrote this one after that.
    try:
      client.key_value_delete(f'{_STOP_KEYS}/{previous}/{me}')
    except Exception:  # pylint: disable=broad-except
      pass  # Not there (the first check of a resumed run): nothing to free.
  return values


class TestFaults:
  """Fault injection for tests (never set in real runs).

  FCN_JAX_TEST_FAULTS is a comma-separated list of EVENT@STEP with EVENT in
  FAULT_EVENTS, e.g. 'sigkill_in_save@3,nan_batch@5':
    sigkill_after_step / sigterm_after_step / sigint_after_step: the process
      sends itself that signal right after training step STEP;
    ctrl_c_after_step: SIGINT to this process and its child processes (the
      data workers), as Ctrl-C in a terminal does, and to nothing else (not
      the rest of the process group, e.g. the test runner);
    sigkill_in_save: kill -9 right after the (asynchronous) checkpoint save of
      step STEP has started, while Orbax is still writing it;
    nan_batch: the images of the batch of step STEP become NaN.
  """

  def __init__(self, spec: str = ''):
    self._at = {}
    for item in filter(None, (s.strip() for s in spec.split(','))):
      event, _, step = item.partition('@')
      if event not in FAULT_EVENTS or not step.isdigit():
        raise ConfigError(f'{FAULTS_ENV}={spec!r}: expected EVENT@STEP items '
                          f'with EVENT in {FAULT_EVENTS}.')
      self._at[event] = int(step)

  @classmethod
  def from_env(cls) -> TestFaults:
    return cls(os.environ.get(FAULTS_ENV, ''))

  def _due(self, event: str, step: int) -> bool:
    return self._at.get(event) == step

  def corrupt_batch(self, step: int, batch: dict) -> dict:
    if self._due('nan_batch', step):
      logging.warning('%s: NaN images in the batch of step %d.', FAULTS_ENV,
                      step)
      batch = dict(batch, image=np.full_like(batch['image'], np.nan))
    return batch

  def after_step(self, step: int) -> None:
    for event, signum in (('sigkill_after_step', signal.SIGKILL),
                          ('sigterm_after_step', signal.SIGTERM),
                          ('sigint_after_step', signal.SIGINT)):
      if self._due(event, step):
        logging.warning('%s: %s after step %d.', FAULTS_ENV, event, step)
        os.kill(os.getpid(), signum)
    if self._due('ctrl_c_after_step', step):
      children = _child_pids()
      logging.warning('%s: SIGINT to this process and its %d child processes '
                      'after step %d.', FAULTS_ENV, len(children), step)
      for pid in children:
        os.kill(pid, signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)

  def after_save_started(self, step: int, saving: bool) -> None:
    if self._due('sigkill_in_save', step):
      logging.warning('%s: kill -9 during the save of step %d (save still in '
                      'progress: %s).', FAULTS_ENV, step, saving)
      os.kill(os.getpid(), signal.SIGKILL)


def _child_pids() -> list[int]:
  """Pids of this process's children (Linux /proc, else multiprocessing's)."""
  pids = {p.pid for p in multiprocessing.active_children()}
  task_dir = f'/proc/{os.getpid()}/task'
  try:
    for task in os.listdir(task_dir):
      with open(os.path.join(task_dir, task, 'children')) as f:
        pids.update(int(pid) for pid in f.read().split())
  except OSError:
    pass
  pids.discard(os.getpid())
  return sorted(pids)
