"""Fault injection on real training runs: kill, signal, corrupt, misconfigure.

The end-to-end tests start `python -m fcn_jax.main` on the tiny config as
subprocesses. Failures are injected with FCN_JAX_TEST_FAULTS (see
fault_tolerance.TestFaults) or by the test itself (truncated files, a held
lock). All runs share one JAX compilation cache, so only the first run of a
model compiles; the uninterrupted reference run starts first and runs in the
background while the interrupted chain runs.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from fcn_jax import checkpointing
from fcn_jax import config_checks
from fcn_jax import fault_tolerance
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import optimizer
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 420  # Per run; a compile on a busy 2-core machine can take minutes.
# Dropout on, so a wrongly restored RNG would change the result.
FLAGS = ('--config=fcn_jax/configs/tiny.py', '--config.dropout_rate=0.5')


def _env(cache_dir, faults='', **extra):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
             JAX_LOG_COMPILES='1')
  env[fault_tolerance.FAULTS_ENV] = faults
  env.update(extra)
  return env


def _start(workdir, cache_dir, *flags, faults='', **env):
  # A session (process group) of its own, so a Ctrl-C fault reaches the run
  # and its data workers, not pytest.
  return subprocess.Popen(
      [sys.executable, '-m', 'fcn_jax.main', f'--workdir={workdir}', *FLAGS,
       *flags], cwd=ROOT, env=_env(cache_dir, faults, **env),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)


def _finish(proc):
  try:
    out, _ = proc.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f'timed out after {TIMEOUT}s:\n{out[-3000:]}')
  return proc.returncode, out


def _run(workdir, cache_dir, *flags, faults='', **env):
  return _finish(_start(workdir, cache_dir, *flags, faults=faults, **env))


def _steps(workdir):
  """Finished checkpoint steps on disk (Orbax renames them when complete)."""
  root = workdir_lib.checkpoint_dir(workdir)
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def _temporary_dirs(workdir):
  """Orbax's directories of unfinished saves."""
  root = workdir_lib.checkpoint_dir(workdir)
  return [d for d in os.listdir(root) if 'tmp' in d]


def _saved_arrays(workdir, step):
  """Every array of a checkpoint (params, optimizer state, step) as numpy."""
  path = os.path.join(workdir_lib.checkpoint_dir(workdir), str(step),
                      'default')
  tree = ocp.StandardCheckpointer().restore(path)
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _log_time(out, pattern):
  """Seconds of the day of the first absl log line matching `pattern`."""
  match = re.search(r'^\w\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*' + pattern, out,
                    re.M)
  assert match, pattern
  h, m, s = match.groups()
  return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted run, started at once and awaited by whoever needs it."""
  workdir = tmp_path_factory.mktemp('reference')
  proc = _start(workdir, cache_dir)
  finished = []

  def wait():
    if not finished:
      rc, out = _finish(proc)
      assert rc == 0, out[-3000:]
      finished.append(True)
    return workdir
  yield wait
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


def test_interrupted_runs_resume_bit_exact(reference, cache_dir, tmp_path):
  """kill -9 (mid-save, mid-interval), SIGTERM, SIGINT, NaN, a corrupted
  checkpoint: rerunning the same command still ends bit-identical."""
  workdir = tmp_path / 'run'

  # 1. kill -9 while Orbax writes checkpoint 3 asynchronously.
  rc, out = _run(workdir, cache_dir, faults='sigkill_in_save@3')
  assert rc == -signal.SIGKILL, out[-3000:]
  assert 'kill -9 during the save of step 3' in out
  after_kill = _steps(workdir)
  # Usually the kill lands while Orbax still writes: only its temporary
  # directory exists, never a step directory with partial contents.
  assert (after_kill == [] and _temporary_dirs(workdir)) or after_kill == [3]

  # 2. SIGTERM after step 4: a checkpoint at step 4, exit status 143.
  rc, out = _run(workdir, cache_dir, faults='sigterm_after_step@4')
  assert rc == 143, out[-3000:]
  assert ('Resumed from checkpoint at step 3' in out) == (after_kill == [3])
  assert not _temporary_dirs(workdir)  # Removed when the run started.
  assert 'Stopped by SIGTERM after step 4' in out
  assert ('Run the same command again to resume: python -m fcn_jax.main '
          f'--workdir={workdir}') in out
  # Finishing the step and saving took less time than this run's own start
  # (imports, restore, compilation, one step), measured in the same log, so
  # a loaded machine slows both alike.
  signalled = _log_time(out, 'sigterm_after_step after step 4')
  assert (_log_time(out, 'Stopped by SIGTERM') - signalled <
          signalled - _log_time(out, ''))
  assert _steps(workdir) == [3, 4]

  # 3. NaN images in the batch of step 5: error naming the step and the
  # images of that batch (batch of step s = ds[s - 1]); nothing saved.
  rc, out = _run(workdir, cache_dir, faults='nan_batch@5')
  assert rc == 1, out[-3000:]
  config = tiny.get_config()
  train_source, _, info = input_pipeline.create_datasets(config)
  ids = input_pipeline.train_dataset_from_config(train_source, config,
                                                 info)[4]['id']
  message = _error_lines(out)
  assert len(message) == 1, out[-3000:]
  assert ('Non-finite loss nan, gradient norm nan at step 5 (batch of image '
          f'ids [{", ".join(str(i) for i in ids)}])') in message[0]
  assert 'the last good checkpoint is step 4' in message[0]
  assert 'Traceback' not in out
  assert _steps(workdir) == [3, 4]

  # 4. Truncate the newest checkpoint's largest file (a power loss after the
  # rename); then kill -9 between checkpoints, after step 5.
  step4 = os.path.join(workdir_lib.checkpoint_dir(workdir), '4')
  files = [os.path.join(d, f) for d, _, fs in os.walk(step4) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  rc, out = _run(workdir, cache_dir, faults='sigkill_after_step@5')
  assert rc == -signal.SIGKILL, out[-3000:]
  assert 'Checkpoint at step 4 is damaged' in out
  assert 'Resumed from checkpoint at step 3' in out
  moved = os.listdir(workdir_lib.corrupt_dir(workdir))
  assert len(moved) == 1 and moved[0].startswith('4-')
  assert _steps(workdir) == [3]

  # 5. SIGINT (Ctrl-C) after step 4: exit status 130, checkpoint at step 4.
  rc, out = _run(workdir, cache_dir, faults='sigint_after_step@4')
  assert rc == 130, out[-3000:]
  assert 'Stopped by SIGINT after step 4' in out
  assert _steps(workdir) == [3, 4]

  # 6. The same command, undisturbed, finishes the run.
  rc, out = _run(workdir, cache_dir)
  assert rc == 0, out[-3000:]
  assert 'Resumed from checkpoint at step 4' in out

  resumed = _saved_arrays(workdir, 6)
  expected = _saved_arrays(reference(), 6)
  assert resumed.keys() == expected.keys()
  assert len(expected) > 100  # params, Adam moments, counts, step
  for key, value in expected.items():
    assert resumed[key].dtype == value.dtype, key
    assert resumed[key].tobytes() == value.tobytes(), key
  assert int(resumed["['step']"]) == 6


def _error_lines(out):
  return [line for line in out.splitlines()
          if line.startswith(('E', 'FATAL', 'error: '))]


def test_ctrl_c_with_data_workers_saves_and_resumes_bit_exact(
    reference, cache_dir, tmp_path):
  # Ctrl-C signals the data worker processes too (they ignore it): the run
  # still finishes its step, saves (with the iterator's state) and exits 130;
  # the rerun ends bit-identical to the reference, which read its batches
  # without workers.
  workdir = tmp_path / 'run'
  workers = '--config.data_workers=1'
  rc, out = _run(workdir, cache_dir, workers, faults='ctrl_c_after_step@4')
  assert rc == 130, out[-3000:]
  assert 'Stopped by SIGINT after step 4' in out
  assert _steps(workdir) == [3, 4]
  rc, out = _run(workdir, cache_dir, workers)
  assert rc == 0, out[-3000:]
  assert 'Resumed from checkpoint at step 4' in out
  resumed = _saved_arrays(workdir, 6)
  expected = _saved_arrays(reference(), 6)
  assert resumed.keys() == expected.keys()
  for key, value in expected.items():
    assert resumed[key].tobytes() == value.tobytes(), key


def test_refuses_bad_flags_locked_or_changed_workdir(reference, cache_dir,
                                                      tmp_path):
  """One-line errors, exit status 1, and nothing compiled."""
  changed = tmp_path / 'changed'
  shutil.copytree(reference(), changed)
  locked = tmp_path / 'locked'
  os.makedirs(locked)
  cases = {
      'model': (tmp_path / 'a', ['--config.model=fcn4s'], {},
                "config.model='fcn4s': expected one of ('fcn32s'"),
      'steps': (tmp_path / 'b', ['--config.num_train_steps=-5'], {},
                'config.num_train_steps=-5: must be positive'),
      'dataset': (tmp_path / 'c', ['--config.dataset=voc2099'], {},
                  "config.dataset='voc2099': expected one of"),
      'key': (tmp_path / 'd', ['--config.no_such_key=1'], {},
              "--config.no_such_key: no such config key 'no_such_key'"),
      'devices': (tmp_path / 'e', ['--config.batch_size=3'],
                  {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'},
                  'config.batch_size=3: must be a multiple of the number of '
                  'devices (2)'),
      'locked': (locked, [], {},
                 f'{locked} is in use by another trainer (pid {os.getpid()}'),
      'changed': (changed, ['--config.width=0.0625'], {},
                  'holds checkpoints of another config (width: 0.03125 -> '
                  '0.0625); use a new --workdir, or '
                  '--config.allow_config_change=True'),
  }
  with fault_tolerance.WorkdirLock(str(locked)):
    procs = {name: _start(workdir, cache_dir, *flags, **env)
             for name, (workdir, flags, env, _) in cases.items()}
    results = {name: _finish(proc) for name, proc in procs.items()}
  for name, (workdir, _, _, message) in cases.items():
    rc, out = results[name]
    assert rc == 1, (name, out[-3000:])
    errors = _error_lines(out)
    assert len(errors) == 1 and message in errors[0], (name, out[-3000:])
    assert 'Traceback' not in out, name
    assert 'Compiling jit(' not in out, name
  assert _steps(changed) == [3, 6]  # Untouched.


# In-process tests of the pieces (no subprocess, no model compilation).


def _toy_state():
  """A TrainState around a 1x1 'conv' (a matmul) with SGD + momentum."""
  def apply_fn(variables, image, train=True, rngs=None):
    del train, rngs
    return image @ variables['params']['w']
  params = {'w': jnp.ones((3, 2), jnp.float32)}
  return train.TrainState.create(apply_fn=apply_fn, params=params,
                                 tx=optax.sgd(0.1, momentum=0.9))


def test_skip_nonfinite_drops_update_and_counts():
  step_fn = jax.jit(lambda s, b, r: train.train_step(
      s, b, r, 'mean', skip_nonfinite=True))
  rng = jax.random.key(0)
  label = jnp.array([[[0, 1]]], jnp.int32)
  image = jnp.array([[[[1., 0., 0.], [0., 1., 0.]]]])
  state = _toy_state()
  after_bad, metrics = step_fn(
      state, {'image': jnp.full_like(image, jnp.nan), 'label': label}, rng)
  assert np.isnan(metrics['loss'])
  assert int(after_bad.step) == 1 and int(after_bad.skipped_updates) == 1
  np.testing.assert_array_equal(after_bad.params['w'], state.params['w'])
  jax.tree.map(np.testing.assert_array_equal, after_bad.opt_state,
               state.opt_state)

  after_good, metrics = step_fn(after_bad, {'image': image, 'label': label},
                                rng)
  assert np.isfinite(metrics['loss'])
  assert int(after_good.step) == 2 and int(after_good.skipped_updates) == 1
  # Hand-computed: logits are (1, 1) at both pixels, so p = (.5, .5).
  # Pixel 0 (x = e0, label 0): d/dw[0] = (p - y) / 2 pixels = (-.25, .25);
  # pixel 1 (x = e1, label 1): d/dw[1] = (.25, -.25); w[2] gets nothing.
  # The first SGD step (zero momentum buffer) moves w by -0.1 * gradient.
  expected = np.ones((3, 2), np.float32)
  expected[0] += [0.025, -0.025]
  expected[1] += [-0.025, 0.025]
  np.testing.assert_allclose(after_good.params['w'], expected, rtol=1e-6)


def _abstract_tiny_state(**overrides):
  config = tiny.get_config()
  config.update(overrides)
  model = models.create_model(config, 7)

  def init(rng):
    params = models.init_params(model, rng, 32)
    return train.TrainState.create(
        apply_fn=model.apply, params=params,
        tx=optimizer.create_optimizer(config, params))
  return jax.eval_shape(init, jax.random.key(0))


def test_restore_falls_back_past_damaged_checkpoints(reference, tmp_path,
                                                     caplog):
  workdir = tmp_path / 'copy'
  shutil.copytree(reference(), workdir)
  # Step 6 loses its array index: a missing file.
  os.remove(os.path.join(workdir_lib.checkpoint_dir(workdir), '6',
                         'default', 'manifest.ocdbt'))
  abstract = _abstract_tiny_state()
  manager = checkpointing.create_manager(str(workdir))
  with caplog.at_level(logging.WARNING):
    state = checkpointing.restore_latest_valid(manager, str(workdir), abstract)
  manager.close()
  assert 'Checkpoint at step 6 is damaged' in caplog.text
  assert int(state.step) == 3
  expected = _saved_arrays(reference(), 3)
  np.testing.assert_array_equal(
      state.params['fc6']['kernel'], expected["['params']['fc6']['kernel']"])
  assert _steps(workdir) == [3]
  assert [d.split('-')[0] for d in
          os.listdir(workdir_lib.corrupt_dir(workdir))] == ['6']

  # With every checkpoint damaged it refuses to start over silently.
  shutil.rmtree(os.path.join(workdir_lib.checkpoint_dir(workdir), '3',
                             'default', 'd'))
  shutil.rmtree(os.path.join(workdir_lib.checkpoint_dir(workdir), '3',
                             'default', 'ocdbt.process_0'))
  manager = checkpointing.create_manager(str(workdir))
  with pytest.raises(RuntimeError, match='No readable checkpoint'):
    checkpointing.restore_latest_valid(manager, str(workdir), abstract)
  manager.close()


def test_restore_of_another_model_is_an_error_not_a_corruption(reference,
                                                               tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(reference(), workdir)
  manager = checkpointing.create_manager(str(workdir))
  wider = _abstract_tiny_state(width=1 / 16)
  with pytest.raises(fault_tolerance.ConfigError, match='holds other arrays'):
    checkpointing.restore_latest_valid(manager, str(workdir), wider)
  manager.close()
  assert _steps(workdir) == [3, 6]
  assert not os.path.exists(workdir_lib.corrupt_dir(workdir))


def test_resume_config_check(tmp_path):
  config = tiny.get_config()
  config.num_classes = 7
  workdir_lib.save_config(config, str(tmp_path))
  fault_tolerance.check_resume_config(config, str(tmp_path), False)
  config.learning_rate = 0.5  # Not a RESUME_KEY: resuming is fine.
  fault_tolerance.check_resume_config(config, str(tmp_path), False)
  config.model, config.num_classes = 'fcn32s', 21
  with pytest.raises(fault_tolerance.ConfigError,
                     match=r"model: 'fcn8s' -> 'fcn32s', num_classes: 7 -> 21"):
    fault_tolerance.check_resume_config(config, str(tmp_path), False)
  fault_tolerance.check_resume_config(config, str(tmp_path), True)


def test_validate_config_messages():
  config = tiny.get_config()
  config_checks.validate_config(config, num_devices=4)
  with pytest.raises(ValueError, match=r'^config\.batch_size=4: must be a '
                     r'multiple of the number of devices \(8\)$'):
    config_checks.validate_config(config, num_devices=8)
  config.eval_batch_size = 6
  with pytest.raises(fault_tolerance.ConfigError, match='eval_batch_size=6'):
    config_checks.validate_config(config, num_devices=4)


def test_workdir_lock_is_exclusive_and_released(tmp_path):
  with fault_tolerance.WorkdirLock(str(tmp_path)):
    # flock locks are per open file: a second open in this process conflicts
    # exactly like another process would.
    with pytest.raises(fault_tolerance.WorkdirLockedError,
                       match=f'pid {os.getpid()}'):
      with fault_tolerance.WorkdirLock(str(tmp_path)):
        pass
  with fault_tolerance.WorkdirLock(str(tmp_path)):
    pass  # Released on exit.


def test_ctrl_c_fault_signals_only_this_process_and_its_children(
    monkeypatch):
  child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  sent = []
  monkeypatch.setattr(os, 'kill', lambda pid, sig: sent.append((pid, sig)))
  monkeypatch.setattr(os, 'killpg', lambda *args: sent.append(('group',)))
  try:
    fault_tolerance.TestFaults('ctrl_c_after_step@2').after_step(2)
  finally:
    monkeypatch.undo()  # The real os.kill again.
    child.kill()
    child.wait()
  assert ('group',) not in sent
  assert (os.getpid(), signal.SIGINT) in sent
  assert (child.pid, signal.SIGINT) in sent
  assert all(sig == signal.SIGINT for _, sig in sent)


def test_fault_spec_is_validated():
  with pytest.raises(fault_tolerance.ConfigError, match='EVENT@STEP'):
    fault_tolerance.TestFaults('explode@3')
  faults = fault_tolerance.TestFaults('nan_batch@2')
  batch = {'image': np.ones((1, 2, 2, 3), np.float32)}
  assert np.isfinite(faults.corrupt_batch(1, batch)['image']).all()
  assert np.isnan(faults.corrupt_batch(2, batch)['image']).all()
