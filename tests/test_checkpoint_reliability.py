"""Checkpoints under trouble: damage vs passing errors, readers, full disks.

Small in-process checkpoints (a few arrays, or the tiny model's parameters
as zeros): no training, no compilation of a model.
"""

import errno
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.serialization import serialization

from fcn_jax import checkpointing
from fcn_jax import inference
from fcn_jax import models
from fcn_jax import surgery
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import tiny


def _weights(step):
  return np.random.default_rng(step).normal(size=300).astype(np.float32)


def _state(step):
  return {'w': jnp.asarray(_weights(step)),
          'b': {'c': jnp.full((4, 5), step, jnp.int32)},
          'step': jnp.int32(step)}


@pytest.fixture(scope='module')
def saved_workdir(tmp_path_factory):
  """A workdir with finished checkpoints at steps 1 and 2."""
  workdir = str(tmp_path_factory.mktemp('saved'))
  manager = checkpointing.create_manager(workdir)
  for step in (1, 2):
    checkpointing.save(manager, step, _state(step))
  checkpointing.wait_until_saved(manager)
  manager.close()
  return workdir


@pytest.fixture
def workdir(saved_workdir, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(saved_workdir, copy)
  return copy


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
  monkeypatch.setattr(checkpointing, 'RESTORE_BACKOFF_S', 0.0)


def _abstract():
  return jax.eval_shape(lambda: _state(1))


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(workdir_lib.checkpoint_dir(workdir))
                if d.isdigit())


def _restore_with_failures(monkeypatch, workdir, errors):
  """restore_latest_valid while the first len(errors) reads raise errors."""
  calls = []
  original = ocp.CheckpointManager.restore

  def failing_restore(self, *args, **kwargs):
    calls.append(1)
    if len(calls) <= len(errors):
      raise errors[len(calls) - 1]
    return original(self, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', failing_restore)
  manager = checkpointing.create_manager(workdir)
  try:
    return checkpointing.restore_latest_valid(manager, workdir, _abstract()), calls
  finally:
    manager.close()


@pytest.mark.parametrize('error', [
    OSError(errno.EIO, 'Input/output error'),
    PermissionError(errno.EACCES, 'Permission denied'),
    OSError(errno.ENOSPC, 'No space left on device'),
    TimeoutError(errno.ETIMEDOUT, 'Connection timed out'),
    MemoryError(),
    ValueError('UNAVAILABLE: Error reading "w/0": [OS error 5: Input/output '
               'error]'),
    RuntimeError('something nobody has seen before'),
], ids=['EIO', 'EACCES', 'ENOSPC', 'ETIMEDOUT', 'MemoryError',
        'tensorstore-io', 'unknown'])
def test_errors_that_prove_no_damage_stop_and_move_nothing(
    monkeypatch, workdir, error):
  errors = [error] * checkpointing.RESTORE_ATTEMPTS
  with pytest.raises(checkpointing.CheckpointUnavailableError) as info:
    _restore_with_failures(monkeypatch, workdir, errors)
  message = str(info.value)
  assert '\n' not in message
  assert f'step 2 in {workdir_lib.checkpoint_dir(workdir)}' in message
  assert type(error).__name__ in message and 'left in place' in message
  assert _steps(workdir) == [1, 2]
  assert not os.path.exists(workdir_lib.corrupt_dir(workdir))


def test_a_passing_error_is_retried(monkeypatch, workdir, caplog):
  with caplog.at_level(logging.WARNING):
    state, calls = _restore_with_failures(
        monkeypatch, workdir, [OSError(errno.EIO, 'Input/output error')])
  assert len(calls) == 2 and int(state['step']) == 2
  np.testing.assert_array_equal(state['w'], _weights(2))
  assert 'trying again' in caplog.text
  assert _steps(workdir) == [1, 2]


def _largest_file(step_dir):
  data = os.path.join(step_dir, 'default', 'ocdbt.process_0', 'd')
  files = [os.path.join(data, f) for f in os.listdir(data)]
  return max(files, key=os.path.getsize)


def _truncate_largest(step_dir):
  path = _largest_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_metadata(step_dir):
  path = os.path.join(step_dir, 'default', '_METADATA')
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize('damage', [
    _truncate_largest,
    _truncate_metadata,
    lambda d: os.remove(os.path.join(d, 'default', 'manifest.ocdbt')),
    lambda d: os.remove(os.path.join(d, 'default', '_METADATA')),
    lambda d: shutil.rmtree(os.path.join(d, 'default', 'ocdbt.process_0')),
    lambda d: shutil.rmtree(os.path.join(d, 'default')),
], ids=['truncated-data', 'truncated-metadata', 'no-manifest', 'no-metadata',
        'no-data-dir', 'no-item'])
def test_proven_damage_moves_the_step_and_falls_back(workdir, damage, caplog):
  damage(os.path.join(workdir_lib.checkpoint_dir(workdir), '2'))
  manager = checkpointing.create_manager(workdir)
  with caplog.at_level(logging.WARNING):
    state = checkpointing.restore_latest_valid(manager, workdir, _abstract())
  manager.close()
  assert int(state['step']) == 1
  np.testing.assert_array_equal(state['w'], _weights(1))
  assert 'Checkpoint at step 2 is damaged' in caplog.text
  assert _steps(workdir) == [1]
  assert [d.split('-')[0] for d in
          os.listdir(workdir_lib.corrupt_dir(workdir))] == ['2']


def test_a_lost_directory_is_trouble_not_damage(workdir):
  # The step vanished between listing and reading (an unmounted volume):
  # nothing proves the checkpoint itself damaged.
  step_dir = os.path.join(workdir_lib.checkpoint_dir(workdir), '2')
  error = FileNotFoundError(errno.ENOENT, 'No such file', step_dir)
  assert checkpointing.classify_restore_error(error, step_dir + 'x') == 'trouble'
  assert checkpointing.classify_restore_error(error, step_dir) == 'damaged'


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    monkeypatch, tmp_path):
  workdir = str(tmp_path)
  manager = checkpointing.create_manager(workdir, keep=1)
  checkpointing.save(manager, 1, _state(1))
  checkpointing.wait_until_saved(manager)

  async def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  # The background write of the array data (TensorStore) fails.
  monkeypatch.setattr(serialization, 'async_serialize_from_host', disk_full)
  with pytest.raises(checkpointing.CheckpointUnavailableError) as info:
    checkpointing.save(manager, 2, _state(2))
    checkpointing.wait_until_saved(manager)
  monkeypatch.undo()
  manager.close()
  message = str(info.value)
  assert 'No space left on device' in message and '\n' not in message
  assert f'step 1 in {workdir_lib.checkpoint_dir(workdir)} is intact' in message
  assert _steps(workdir) == [1]  # keep=1 did not delete it for step 2.
  manager = checkpointing.create_manager(workdir, keep=1)
  restored = checkpointing.restore_latest_valid(manager, workdir, _abstract())
  manager.close()
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(_state(1))):
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


# Readers of a workdir.


def _tree_snapshot(root):
  return {os.path.relpath(os.path.join(d, name), root):
          (os.path.getsize(os.path.join(d, name)),
           os.path.getmtime(os.path.join(d, name)))
          for d, dirs, files in os.walk(root) for name in dirs + files}


@pytest.fixture(scope='module')
def model_workdir(tmp_path_factory):
  """A tiny model's workdir: config.json, a checkpoint, a save in progress."""
  workdir = str(tmp_path_factory.mktemp('model'))
  config = tiny.get_config()
  config.num_classes = 7
  model = models.create_model(config, 7)
  shapes = jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0), 32))
  params = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)
  manager = checkpointing.create_manager(workdir)
  checkpointing.save(manager, 3, {'params': params, 'step': np.int32(3)},
                     metrics={'mean_iu': 0.5})
  checkpointing.wait_until_saved(manager)
  manager.close()
  workdir_lib.save_config(config, workdir)
  return workdir, params


def test_readers_leave_a_save_in_progress_alone(model_workdir):
  workdir, params = model_workdir
  # What Orbax has on disk while a trainer writes step 4.
  in_progress = os.path.join(workdir_lib.checkpoint_dir(workdir),
                             '4.orbax-checkpoint-tmp-1700000000')
  os.makedirs(os.path.join(in_progress, 'default'))
  with open(os.path.join(in_progress, 'default', 'partial'), 'wb') as f:
    f.write(b'\0' * 100)
  before = _tree_snapshot(workdir)

  loaded, metadata = workdir_lib.load_params(workdir)
  assert metadata['format'] == 'fcn_jax-train'
  np.testing.assert_array_equal(loaded['score_fr']['kernel'],
                                params['score_fr']['kernel'])
  merged = surgery.init_from(
      jax.tree.map(np.zeros_like, params), workdir)
  np.testing.assert_array_equal(merged['conv1_1']['kernel'],
                                params['conv1_1']['kernel'])
  segmenter = inference.load(workdir)
  assert segmenter.checkpoint.endswith(os.path.join('checkpoints', '3'))
  manager = checkpointing.create_read_only_manager(workdir)
  assert manager.best_step() == 3 and manager.all_steps() == [3]
  manager.close()

  assert _tree_snapshot(workdir) == before
