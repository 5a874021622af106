"""Many seeds in one program: each seed equals a separate run of that seed."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from fcn_jax import fault_tolerance
from fcn_jax import inference
from fcn_jax import seed_sharding
from fcn_jax import seeds
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default
from inference_testutil import ROOT
from inference_testutil import trained_workdir  # pylint: disable=unused-import

# The resumed seeds run loads the programs of the first one.
pytestmark = pytest.mark.usefixtures('persistent_compile_cache')

SEEDS = (0, 1)


def relative_errors(stacked, separate, index):
  """Per array: ||seeds run's slice - separate run|| / ||separate run||."""
  def error(a, b):
    a, b = np.asarray(a)[index], np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
  return jax.tree.leaves(jax.tree.map(error, stacked, separate))


def _killed_seeds_run(workdir, cache_dir, kill_after):
  """`python -m fcn_jax.main` of the tiny config with seeds 0,1, killed by
  SIGKILL (fault injection) right after step `kill_after`."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  env[fault_tolerance.FAULTS_ENV] = f'sigkill_after_step@{kill_after}'
  return subprocess.run(
      [sys.executable, '-m', 'fcn_jax.main', f'--workdir={workdir}',
       '--config=fcn_jax/configs/tiny.py',
       '--config.seeds=' + ','.join(str(s) for s in SEEDS)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit())


@pytest.fixture(scope='module')
def runs(tmp_path_factory, trained_workdir, persistent_compile_cache):
  """A seeds=0,1 run trained to step 3, resumed to step 6 in a process
  killed (SIGKILL) after step 5, and resumed again (from step 3) to step 6;
  and the separate runs of seeds 0 (the shared tiny workdir) and 1."""
  root = tmp_path_factory.mktemp('seeds')
  separate = default.get_tiny_config()
  separate.seed = 1
  train.train_and_evaluate(separate, str(root / 'seed1'))
  workdir = str(root / 'seeds')
  config = default.get_tiny_config()
  config.seeds = ','.join(str(s) for s in SEEDS)
  config.num_train_steps = 3
  train.train_and_evaluate(config, workdir)
  killed = _killed_seeds_run(workdir, persistent_compile_cache, 5)
  after_kill = _checkpoint_steps(workdir)
  config.num_train_steps = 6
  result = train.train_and_evaluate(config, workdir)
  return {'seeds': workdir, 0: trained_workdir, 1: str(root / 'seed1'),
          'result': result, 'killed': killed, 'after_kill': after_kill}


def test_the_run_was_killed_and_resumed(runs):
  killed = runs['killed']
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert 'Resumed 2 seeds from step 3' in killed.stderr
  assert 'sigkill_after_step after step 5' in killed.stderr
  # Steps 4 and 5 of the killed process are lost; the last run redid them.
  assert runs['after_kill'] == [3]
  assert _checkpoint_steps(runs['seeds']) == [3, 6]


@pytest.mark.parametrize('step', [3, 6])
def test_each_seed_equals_its_separate_run(runs, step):
  # Step 3: after training; step 6: after a kill (after step 5) and a resume.
  stacked = workdir_lib.restore_params(
      os.path.join(runs['seeds'], 'checkpoints', str(step)))
  for index, seed in enumerate(SEEDS):
    separate = workdir_lib.restore_params(
        os.path.join(runs[seed], 'checkpoints', str(step)))
    errors = relative_errors(stacked, separate, index)
    assert max(errors) < 1e-5, (seed, step, max(errors))
    if seeds.program_kind() == 'loop':
      # On CPU the seeds share the ordinary compiled step: bit for bit.
      assert max(errors) == 0, (seed, step, max(errors))
  # The two seeds really are different models.
  assert max(relative_errors(stacked, workdir_lib.restore_params(
      os.path.join(runs[1], 'checkpoints', str(step))), 0)) > 1e-2


def test_metrics_carry_the_seed_and_the_result_names_the_best(runs):
  with open(os.path.join(runs['seeds'], 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  val = {(r['step'], r['seed']): r['mean_iu'] for r in records
         if r['split'] == 'val'}
  assert set(val) == {(s, k) for s in (3, 6) for k in SEEDS}
  assert {r['seed'] for r in records if r['split'] == 'train'} == set(SEEDS)
  # The separate run's own evaluation at step 6 gives the same score.
  with open(os.path.join(runs[1], 'metrics.jsonl')) as f:
    single = [json.loads(line) for line in f]
  single_val = [r for r in single if r['split'] == 'val' and r['step'] == 6]
  assert val[(6, 1)] == pytest.approx(single_val[-1]['mean_iu'], abs=1e-3)
  result = runs['result']
  assert result['seeds'] == list(SEEDS)
  assert result['best_seed'] == SEEDS[int(np.argmax(
      [val[(6, k)] for k in SEEDS]))]


def test_inference_loads_one_seed(runs):
  stacked = workdir_lib.restore_params(
      os.path.join(runs['seeds'], 'checkpoints', '6'))
  segmenter = inference.load(runs['seeds'], '6', seed=1)
  assert max(relative_errors(stacked, segmenter.params, 1)) == 0
  assert 'Seed 1 of [0, 1] (chosen with --seed' in segmenter.seed_note
  default_pick = inference.load(runs['seeds'], '6')
  best = runs['result']['best_seed']
  assert default_pick.seed_note.startswith(f'Seed {best} of [0, 1] (the best')
  with pytest.raises(seeds.ConfigError, match='--seed=5'):
    inference.load(runs['seeds'], '6', seed=5)


def test_seed_list_parsing():
  config = default.get_tiny_config()
  for text, expected in (('', None), ('4', [0, 1, 2, 3]), ('0,2,5', [0, 2, 5]),
                         ('7,', [7])):
    config.seeds = text
    assert seeds.seed_list(config) == expected
  for bad in ('x', '0,0', '-1', '1,a'):
    config.seeds = bad
    with pytest.raises(seeds.ConfigError, match='config.seeds'):
      seeds.seed_list(config)


def test_program_and_layout_choices():
  assert seeds.program_kind('auto', 'cpu') == 'loop'
  assert seeds.program_kind('auto', 'gpu') == 'vmap'
  assert seeds.program_kind('vmap', 'cpu') == 'vmap'
  with pytest.raises(seeds.ConfigError, match="config.seed_program='pmap'"):
    seeds.program_kind('pmap')
  with pytest.raises(seeds.ConfigError, match="config.seed_sharding='x'"):
    seed_sharding.seed_layout('x', 2)
  # One device: both layouts put everything on it.
  for kind in seed_sharding.SEED_SHARDINGS:
    layout = seed_sharding.seed_layout(kind, 4, jax.devices()[:1])
    assert layout.mesh.size == 1


EIGHT_DEVICES = textwrap.dedent('''
    import sys
    import jax, numpy as np
    from absl import logging
    from jax.sharding import PartitionSpec as P
    from fcn_jax import input_pipeline, models, seed_sharding, seeds, sharding, train
    from fcn_jax import workdir as workdir_lib
    from fcn_jax.configs import default
    assert jax.device_count() == 8
    config = default.get_tiny_config()
    config.batch_size = 8
    config.fast_ops = 'off'  # As train_seeds does for the vmapped program.
    train_source, _, info = input_pipeline.create_datasets(config)
    model = models.create_model(config, info.num_classes)
    datasets = [input_pipeline.train_dataset_from_config(
        train_source, seeds.seed_config(config, s), info) for s in (0, 1)]
    results = {}
    # Per device: (seeds, images) of a batch, seeds of the state.
    expected = {'batch': ((2, 1), 2), 'mesh': ((1, 2), 1)}
    for kind in ('batch', 'mesh'):
      layout = seed_sharding.seed_layout(kind, 2)
      state = seeds.create_seed_states(config, model, (0, 1), layout.mesh,
                                       layout.state)
      step, _ = seed_sharding.compile_seed_steps(config, layout)
      rngs = sharding.put(seeds.dropout_keys((0, 1)), layout.per_seed)
      for t in range(2):
        batch = seeds.seed_batch(datasets, t, layout)
        state, _ = step(state, batch, rngs)
      shards = batch['image'].addressable_shards
      assert len(shards) == 8 and shards[0].data.shape[:2] == expected[kind][0]
      kernel = state.params['score_fr']['kernel']
      assert kernel.addressable_shards[0].data.shape[0] == expected[kind][1]
      results[kind] = jax.device_get(state.params)
    # The seed axis: gcd(seeds, devices per process).
    for num_seeds, shape in ((2, (4, 2)), (4, (2, 4)), (3, (8, 1)), (16, (1, 8))):
      mesh = seed_sharding.seed_layout('mesh', num_seeds).mesh
      assert (mesh.shape['data'], mesh.shape['seed']) == shape, (num_seeds, mesh)
    # Both layouts against separate runs of the ordinary step.
    mesh = sharding.create_mesh()
    p_step, _ = train.compile_steps(config, mesh)
    for k, seed in enumerate((0, 1)):
      init_rng, rng = train.init_and_dropout_keys(seed)
      state = train.create_train_state(config, model, init_rng, mesh)
      for t in range(2):
        state, _ = p_step(state, sharding.shard_batch(
            input_pipeline.model_arrays(datasets[k][t]), mesh), rng)
      for kind, params in results.items():
        errors = jax.tree.leaves(jax.tree.map(
            lambda a, b: np.linalg.norm(a[k] - b) / np.linalg.norm(b),
            params, jax.device_get(state.params)))
        print(kind, 'vs separate, seed', seed, max(errors))
        assert max(errors) < 1e-5
    # The whole loop with a 'seed' mesh axis: train to step 2 (checkpoint),
    # resume to step 3.
    config.seeds = '0,1'
    config.seed_program = 'vmap'
    config.seed_sharding = 'mesh'
    config.fast_ops = 'auto'
    config.num_train_steps = 2
    workdir = sys.argv[1]
    train.train_and_evaluate(config, workdir)
    stacked = workdir_lib.restore_params(workdir_lib.step_dir(workdir, 2))
    errors = jax.tree.leaves(jax.tree.map(
        lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b),
        stacked, results['mesh']))
    print('train_seeds vs the mesh steps', max(errors))
    assert max(errors) < 1e-6
    config.num_train_steps = 3
    logging.set_verbosity(logging.INFO)  # 'Resumed ...' to stderr.
    result = train.train_and_evaluate(config, workdir)
    assert result['step'] == 3 and result['seeds'] == [0, 1]
    print('resumed to step 3')
''')


def test_seed_axis_with_data_parallelism_on_8_devices(tmp_path):
  # A compilation cache: the whole loop's steps are the ones compiled above
  # it in the script, and its resume compiles them again.
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  result = subprocess.run(
      [sys.executable, '-c', EIGHT_DEVICES, str(tmp_path / 'run')], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'mesh vs separate, seed 1' in result.stdout
  assert 'resumed to step 3' in result.stdout
  assert 'Resumed 2 seeds from step 2' in result.stderr
