"""The run folder contract (fcn_jax.workdir): config, best/latest, params."""

import json
import os

import numpy as np
import pytest

from fcn_jax import checkpointing
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default


def _make_workdir(root, steps, records, unfinished=()):
  """Empty step directories plus a metrics.jsonl of `records` (dicts, or
  raw text for a line cut short)."""
  for step in steps:
    os.makedirs(os.path.join(root, 'checkpoints', str(step)))
  for step in unfinished:  # What Orbax has on disk while it writes a step.
    os.makedirs(os.path.join(
        root, 'checkpoints', f'{step}.orbax-checkpoint-tmp-1700000000'))
  with open(os.path.join(root, 'metrics.jsonl'), 'w') as f:
    for record in records:
      f.write(record if isinstance(record, str) else json.dumps(record))
      f.write('\n')
  return str(root)


def _val(step, mean_iu, **extra):
  return dict(step=step, split='val', mean_iu=mean_iu, **extra)


def test_best_is_the_highest_evaluated_finished_step(tmp_path):
  workdir = _make_workdir(tmp_path, [2, 4, 6], [
      _val(2, 0.3), {'step': 4, 'split': 'train', 'mean_iu': 0.99},
      _val(4, 0.5), _val(6, 0.4),
      _val(8, 0.9),  # Its checkpoint never finished.
      '{"step": 6, "split": "val", "mean_iu": 0.9'], unfinished=[8])
  assert workdir_lib.best_step(workdir) == 4
  assert workdir_lib.resolve_checkpoint(workdir, 'best') == os.path.join(
      workdir, 'checkpoints', '4')
  assert workdir_lib.checkpoint_step(
      workdir_lib.resolve_checkpoint(workdir, 'latest')) == 6
  assert workdir_lib.checkpoint_step(
      workdir_lib.resolve_checkpoint(workdir, 6)) == 6


def test_last_record_of_a_step_counts_and_ties_go_to_the_later_step(
    tmp_path):
  # Step 6 was evaluated again after a resume; it now ties with step 4.
  workdir = _make_workdir(tmp_path, [4, 6], [
      _val(4, 0.5), _val(6, 0.1), _val(6, 0.5)])
  assert workdir_lib.best_step(workdir) == 6


def test_without_evaluations_best_is_the_latest(tmp_path):
  workdir = _make_workdir(tmp_path, [3, 9], [_val(5, 0.7),
                                             _val(9, None)])  # NaN as null.
  assert workdir_lib.best_step(workdir) == 9
  os.remove(os.path.join(workdir, 'metrics.jsonl'))
  assert workdir_lib.best_step(workdir) == 9


def test_seeds_are_ranked_by_their_mean(tmp_path):
  workdir = _make_workdir(tmp_path, [2, 4], [
      _val(2, 0.2, seed=0), _val(2, 0.8, seed=1),   # Mean 0.5.
      _val(4, 0.6, seed=0), _val(4, 0.3, seed=1)])  # Mean 0.45.
  assert workdir_lib.best_step(workdir) == 2


def _state(value):
  return {'params': {'conv1_1': {'kernel': np.full((3, 3, 3, 2), value,
                                                   np.float32)}},
          'step': np.int32(0)}


def test_best_agrees_with_the_checkpoint_orbax_keeps(tmp_path):
  workdir = str(tmp_path)
  scores = {1: 0.2, 2: 0.7, 3: 0.4, 4: 0.3}
  manager = checkpointing.create_manager(workdir, keep=1)
  with open(workdir_lib.metrics_path(workdir), 'w') as f:
    for step, mean_iu in scores.items():
      f.write(json.dumps(_val(step, mean_iu)) + '\n')
      checkpointing.save(manager, step, _state(step), {'mean_iu': mean_iu})
      checkpointing.wait_until_saved(manager)
  kept = sorted(manager.all_steps())
  orbax_best = manager.best_step()
  manager.close()
  # Orbax's BestN keeps step 2, LatestN step 4; the rest is deleted.
  assert kept == sorted(workdir_lib.finished_steps(workdir)) == [2, 4]
  assert workdir_lib.best_step(workdir) == orbax_best == 2

  params, metadata = workdir_lib.load_params(workdir)  # The best step.
  np.testing.assert_array_equal(params['conv1_1']['kernel'],
                                np.full((3, 3, 3, 2), 2, np.float32))
  assert metadata == {'source': workdir_lib.step_dir(workdir, 2),
                      'format': 'fcn_jax-train'}  # No config.json here.
  latest = workdir_lib.restore_params(workdir_lib.step_dir(workdir, 4))
  assert float(latest['conv1_1']['kernel'][0, 0, 0, 0]) == 4.0


def test_converted_checkpoint_round_trip(tmp_path):
  params = {'conv1_1': {'kernel': np.arange(54, dtype=np.float32).reshape(
      3, 3, 3, 2), 'bias': np.ones(2, np.float32)}}
  path = str(tmp_path / 'converted')
  workdir_lib.save_params(path, params, {'format': 'vgg16-caffe', 'width': 1})
  loaded, metadata = workdir_lib.load_params(path)
  assert metadata == {'format': 'vgg16-caffe', 'width': 1}
  for got in (loaded, workdir_lib.restore_params(path)):
    np.testing.assert_array_equal(got['conv1_1']['kernel'],
                                  params['conv1_1']['kernel'])
    np.testing.assert_array_equal(got['conv1_1']['bias'], [1, 1])
  with pytest.raises(FileExistsError):
    workdir_lib.save_params(path, params, {})


def test_config_is_read_over_the_defaults(tmp_path):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'model': 'fcn16s', 'synthetic': {'val_size': 3}}, f)
  assert workdir_lib.read_config(workdir) == {'model': 'fcn16s',
                                              'synthetic': {'val_size': 3}}
  config = workdir_lib.load_config(workdir)
  defaults = default.get_config()
  assert config.model == 'fcn16s' and config.synthetic.val_size == 3
  assert config.learning_rate == defaults.learning_rate  # Not saved.
  assert (config.synthetic.train_size == defaults.synthetic.train_size)
  changed = workdir_lib.apply_overrides(config, {'synthetic.val_size': 5})
  assert changed.synthetic.val_size == 5 and config.synthetic.val_size == 3

  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write('[1, 2]')
  assert workdir_lib.read_config(workdir, strict=False) is None
  with pytest.raises(workdir_lib.CheckpointError, match='not an object'):
    workdir_lib.load_config(workdir)
  assert workdir_lib.read_config(str(tmp_path / 'none')) is None
