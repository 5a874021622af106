"""Two processes joined by jax.distributed train like one process.

`python -m fcn_jax.main` runs as two CPU processes on localhost (one device
each, gloo collectives, --coordinator_address/--num_processes/--process_id),
and once as a single process. Both runs read the same global batches (each
process its half), so the checkpointed parameters and the logged metrics must
agree. Every subprocess has a timeout, so a missing peer cannot hang CI.
A SIGTERM to one process only stops both at the same step, and resuming
ends bit-identical to the uninterrupted two-process run.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from fcn_jax import fault_tolerance
from fcn_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
TIMEOUT_S = 600
CONFIG_FLAGS = [
    '--config=fcn_jax/configs/tiny.py', '--config.model=fcn32s',
    '--config.optimizer=sgd', '--config.momentum=0.9',
    '--config.learning_rate=0.05', '--config.loss_normalization=mean',
    '--config.batch_size=4', '--config.synthetic.val_size=6',
    f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
    f'--config.eval_every_steps={STEPS}',
    f'--config.checkpoint_every_steps={STEPS}',
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir, *extra_flags, faults='', cache_dir=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)  # One CPU device per process.
  env[fault_tolerance.FAULTS_ENV] = faults
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  return subprocess.Popen(
      [sys.executable, '-m', 'fcn_jax.main', f'--workdir={workdir}',
       *CONFIG_FLAGS, *extra_flags],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _wait_all(procs, returncode=0, timeout=TIMEOUT_S):
  """Output of every process; kills them all if one exceeds the timeout."""
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=timeout)[0])
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
    pytest.fail(f'A process did not finish within {timeout}s.')
  for proc, out in zip(procs, outputs):
    assert proc.returncode == returncode, out[-4000:]
  return outputs


def _params(workdir, key='params'):
  """The checkpointed parameters, restored onto this process's one device."""
  import jax
  path = os.path.join(workdir, 'checkpoints', str(STEPS), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        getattr(metadata, 'item_metadata', metadata))
    restored = checkpointer.restore(path, target)
    return restored[key] if key else restored


def _start_pair(workdir, cache_dir, *flags, faults=('', '')):
  address = f'localhost:{_free_port()}'
  return [_start(workdir, f'--coordinator_address={address}',
                 '--num_processes=2', f'--process_id={i}', *flags,
                 faults=faults[i], cache_dir=cache_dir) for i in range(2)]


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, cache_dir):
  single = str(tmp_path_factory.mktemp('single'))
  multi = str(tmp_path_factory.mktemp('multi'))
  procs = [_start(single, cache_dir=cache_dir)] + _start_pair(multi, cache_dir)
  outputs = _wait_all(procs)
  return single, multi, outputs


def test_processes_joined_into_one_mesh(runs):
  _, _, (single_log, log0, log1) = runs
  assert 'Devices: 1 ' in single_log
  for i, log in enumerate((log0, log1)):
    assert f'JAX process {i}/2' in log, log[-2000:]
    assert 'Devices: 2 ' in log, log[-2000:]


def test_two_processes_train_like_one(runs):
  single, multi, _ = runs
  import jax
  expected, actual = _params(single), _params(multi)
  for path, x in jax.tree_util.tree_leaves_with_path(expected):
    y = actual
    for key in path:
      y = y[key.key]
    x, y = np.asarray(x), np.asarray(y)
    assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(x)), path


def test_only_process_zero_logs_the_same_metrics(runs):
  single, multi, _ = runs
  expected, actual = workdir_lib.read_metrics(single), workdir_lib.read_metrics(multi)
  # One record per step and split: process 1 wrote nothing.
  assert [(r['step'], r['split']) for r in actual] == [
      (r['step'], r['split']) for r in expected]
  assert [r['split'] for r in expected].count('train') == STEPS
  for want, got in zip(expected, actual):
    for key in ('loss', 'mean_iu', 'overall_acc'):
      if key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7,
                                   err_msg=f'{key} at step {want["step"]}')


def test_each_process_saves_its_data_iterator_position(runs):
  # Each process reads its own slice of every global batch, so each saves
  # its own iterator state; after STEPS steps both slices stand at batch
  # STEPS, as the single process does.
  single, multi, _ = runs
  def states(workdir):
    data = os.path.join(workdir, 'checkpoints', str(STEPS), 'data')
    return {name: json.loads(open(os.path.join(data, name)).read())
            for name in sorted(os.listdir(data)) if name.endswith('.json')}
  multi_states = states(multi)
  assert list(multi_states) == ['process_0-of-2.json', 'process_1-of-2.json']
  (single_state,) = states(single).values()
  assert multi_states['process_0-of-2.json'] == single_state
  assert multi_states['process_1-of-2.json'] == single_state


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs, cache_dir,
                                                            tmp_path):
  # Process 1 alone is told to stop after step 1 (a preempted VM of a
  # slice); the processes compare requests every 2 steps, so both save step
  # 2 together and exit 143. (Before, process 1 saved alone while process 0
  # entered the next step's collectives: both hung.)
  _, multi, _ = runs
  workdir = str(tmp_path / 'preempted')
  every = '--config.preemption_check_every_steps=2'
  logs = _wait_all(_start_pair(workdir, cache_dir, every,
                               faults=('', 'sigterm_after_step@1')),
                   returncode=143, timeout=300)
  assert 'sigterm_after_step after step 1' in logs[1]
  for log in logs:
    assert 'Stopped by SIGTERM after step 2' in log, log[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']

  logs = _wait_all(_start_pair(workdir, cache_dir, every), timeout=300)
  for log in logs:
    assert 'Resumed from checkpoint at step 2' in log, log[-3000:]
  import jax
  expected = _params(multi, key=None)
  resumed = _params(workdir, key=None)
  leaves = jax.tree_util.tree_leaves_with_path(expected)
  assert len(leaves) > 30  # params, momentum, step
  for path, x in leaves:
    y = resumed
    for key in path:
      y = y[getattr(key, 'key', getattr(key, 'idx', None))]
    assert np.asarray(y).tobytes() == np.asarray(x).tobytes(), path
