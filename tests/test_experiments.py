"""Tests of the ablation machinery: sweep runner, report, boundary metric and
the model options the sweeps compare (exact-offset padding, random upsampling
init)."""

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import report
from experiments import sweep
from fcn_jax import metrics
from fcn_jax import layers
from fcn_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Sweep expansion and naming.


def test_grid_and_seeds_expand_and_group_by_setting():
  runs = sweep.with_seeds(sweep.grid(model=['fcn32s', 'fcn8s'], width=[0.5]),
                          [0, 1, 2])
  assert len(runs) == 6
  # Seed-major: every setting once before the next seed.
  assert runs[0] == {'model': 'fcn32s', 'width': 0.5, 'seed': 0}
  assert runs[1] == {'model': 'fcn8s', 'width': 0.5, 'seed': 0}
  assert runs[5] == {'model': 'fcn8s', 'width': 0.5, 'seed': 2}
  # Only the varying key names runs; the seed does not change the setting.
  assert sweep.varying_keys(runs) == ['model']
  names = sweep.run_names(runs)
  assert names[:3] == ['model=fcn32s,seed=0', 'model=fcn8s,seed=0',
                       'model=fcn32s,seed=1']
  keys = sweep.varying_keys(runs)
  settings = [sweep.setting_name(r, keys) for r in runs]
  assert settings == ['model=fcn32s', 'model=fcn8s'] * 3


def test_run_command_formats_overrides():
  command = sweep.run_command('w', {'learning_rate': 1e-10, 'synthetic.seed': 3,
                                    'learn_upsampling': True}, 'cfg.py',
                              python='py')
  assert command == ['py', '-m', 'fcn_jax.main', '--workdir=w', '--config=cfg.py',
                     '--config.learning_rate=1e-10', '--config.synthetic.seed=3',
                     '--config.learn_upsampling=True']


@pytest.mark.parametrize('name', ['skips', 'upsampling', 'loss_optim', 'padding'])
def test_shipped_sweeps_load_with_two_seeds_per_setting(name):
  runs, _ = sweep.load_sweep(os.path.join(REPO, 'experiments', 'sweeps',
                                          f'{name}.py'))
  keys = sweep.varying_keys(runs)
  settings = [sweep.setting_name(r, keys) for r in runs]
  assert len(set(settings)) >= 2
  for setting in set(settings):
    assert settings.count(setting) >= 2  # Several seeds per setting.


def test_load_sweep_errors_name_the_file(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text('X = 1\n')
  with pytest.raises(ValueError, match='bad.py.*get_sweep'):
    sweep.load_sweep(str(path))
  path.write_text('def get_sweep():\n  return [{"seed": 0}, {"seed": 0}]\n')
  with pytest.raises(ValueError, match='duplicate'):
    sweep.load_sweep(str(path))


# ---------------------------------------------------------------------------
# Resumability, judged from files.


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def test_is_finished_from_files(tmp_path):
  run = str(tmp_path / 'run')
  assert not sweep.is_finished(run)
  _write(os.path.join(run, 'config.json'), json.dumps({'num_train_steps': 10}))
  _write(os.path.join(run, 'metrics.jsonl'),
         '{"step": 5, "split": "val", "mean_iu": 0.1}\n')
  assert not sweep.is_finished(run)  # Interrupted after the step-5 eval.
  with open(os.path.join(run, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 10, "split": "train", "loss": 1}\n{"step": 10, "spl')
  assert not sweep.is_finished(run)  # Killed while writing the final eval.
  with open(os.path.join(run, 'metrics.jsonl'), 'a') as f:
    f.write('\n{"step": 10, "split": "val", "mean_iu": 0.2}\n')
  assert sweep.is_finished(run)
  # A sweep whose overrides changed for this run trains it again.
  _write(os.path.join(run, 'sweep_run.json'),
         json.dumps({'overrides': {'seed': 0}, 'status': 'done'}))
  assert sweep.is_finished(run, {'seed': 0})
  assert not sweep.is_finished(run, {'seed': 1})
  assert not sweep.is_finished(run, {'seed': 0}, extra={'width': '0.5'})


# A stand-in for fcn_jax.main: writes config.json and metrics.jsonl like a
# real run, counts its invocations, and fails for width < 0.
_FAKE_MAIN = '''
import json, os, sys
args = dict(a.split('=', 1) for a in sys.argv[1:])
workdir = args['--workdir']
with open(os.path.join(workdir, 'calls'), 'a') as f:
  f.write('x')
if float(args['--config.width']) < 0:
  sys.exit('config.width must be positive')
steps = 4
json.dump({'num_train_steps': steps}, open(os.path.join(workdir, 'config.json'), 'w'))
with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
  f.write(json.dumps({'step': steps, 'split': 'val', 'mean_iu': 0.5}) + '\\n')
'''


def test_run_sweep_skips_finished_and_survives_failures(tmp_path, monkeypatch):
  script = tmp_path / 'fake_main.py'
  script.write_text(_FAKE_MAIN)
  monkeypatch.setattr(
      sweep, 'run_command',
      lambda workdir, overrides, config_file: (
          [sys.executable, str(script), f'--workdir={workdir}']
          + [f'--config.{k}={v}' for k, v in overrides.items()]))
  runs = sweep.with_seeds(sweep.grid(width=[-1.0, 0.5]), [0, 1])
  workdir = str(tmp_path / 'sweep')
  results = sweep.run_sweep(runs, workdir, parallel=2,
                            one_process_per_seed=True)
  assert results == {'width=-1.0,seed=0': 'failed', 'width=-1.0,seed=1': 'failed',
                     'width=0.5,seed=0': 'done', 'width=0.5,seed=1': 'done'}
  # Resumability is judged from the files: a second runner sees them.

  def calls(name):
    with open(os.path.join(workdir, name, 'calls')) as f:
      return len(f.read())

  # Again: finished runs are skipped (no new call); failed ones are retried.
  results = sweep.run_sweep(runs, workdir, parallel=2,
                            one_process_per_seed=True)
  assert results['width=0.5,seed=0'] == 'skipped'
  assert results['width=-1.0,seed=0'] == 'failed'
  assert calls('width=0.5,seed=0') == 1
  assert calls('width=-1.0,seed=0') == 2
  record = json.load(open(os.path.join(workdir, 'width=-1.0,seed=0',
                                       'sweep_run.json')))
  assert record['attempts'] == 2 and record['returncode'] != 0
  assert 'must be positive' in open(
      os.path.join(workdir, 'width=-1.0,seed=0', 'log.txt')).read()


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch, compile_cache_env):
  """Real fcn_jax.main runs: 2 settings x 2 seeds, one setting failing."""
  # The runs inherit one compilation cache: the resumed run loads its steps.
  for name, value in compile_cache_env.items():
    monkeypatch.setenv(name, value)
  tiny = os.path.join(REPO, 'fcn_jax', 'configs', 'tiny.py')
  base = {'num_train_steps': 2, 'log_every_steps': 1, 'eval_every_steps': 2,
          'checkpoint_every_steps': 2, 'batch_size': 2, 'synthetic.val_size': 2,
          'input_padding': 1, 'fc6_padding': 3, 'boundary_radius': 2}
  runs = sweep.with_seeds([dict(base, model='fcn8s'),
                           dict(base, model='nonexistent')], [0, 1])
  workdir = str(tmp_path / 'sweep')
  results = sweep.run_sweep(runs, workdir, tiny, parallel=2,
                            one_process_per_seed=True)
  assert results == {'model=fcn8s,seed=0': 'done', 'model=fcn8s,seed=1': 'done',
                     'model=nonexistent,seed=0': 'failed',
                     'model=nonexistent,seed=1': 'failed'}
  good = os.path.join(workdir, 'model=fcn8s,seed=0')
  assert 'config.model=' in open(os.path.join(
      workdir, 'model=nonexistent,seed=0', 'log.txt')).read()

  # Interrupt a finished run after its last checkpoint: drop its final eval
  # and mark it running. The rerun resumes it from the checkpoint; the other
  # finished run is skipped.
  metrics_path = os.path.join(good, 'metrics.jsonl')
  lines = open(metrics_path).read().splitlines()
  open(metrics_path, 'w').write(
      '\n'.join(l for l in lines if '"split": "val"' not in l) + '\n')
  record = json.load(open(os.path.join(good, 'sweep_run.json')))
  json.dump(dict(record, status='running'),
            open(os.path.join(good, 'sweep_run.json'), 'w'))
  results = sweep.run_sweep(runs, workdir, tiny, parallel=2,
                            one_process_per_seed=True)
  assert results['model=fcn8s,seed=0'] == 'done'
  assert results['model=fcn8s,seed=1'] == 'skipped'
  assert 'Resumed from checkpoint at step 2' in open(
      os.path.join(good, 'log.txt')).read()

  paths = report.write_report(workdir)
  rows = report.summarize(report.load_runs(workdir))
  assert [(r['setting'], r['seeds'], r['failed']) for r in rows] == [
      ('model=fcn8s', 2, 0), ('model=nonexistent', 0, 2)]
  assert rows[0]['boundary_mean_iu'][2] == 2
  assert len(rows[0]['per_class_iu']) == 7
  table = open(paths['md']).read()
  assert 'background' in table and '`model=nonexistent,seed=1`: failed' in table
  assert os.path.getsize(paths['curves']) > 0 and os.path.getsize(paths['bars']) > 0

  # The same sweep with each setting's seeds in one program: one process per
  # setting, and the report reads the same rows (on CPU the shared program
  # computes each seed's numbers bit for bit).
  shared_dir = str(tmp_path / 'shared')
  results = sweep.run_sweep(runs, shared_dir, tiny, parallel=2)
  assert results == {'model=fcn8s,seed=0': 'done', 'model=fcn8s,seed=1': 'done',
                     'model=nonexistent,seed=0': 'failed',
                     'model=nonexistent,seed=1': 'failed'}
  assert sorted(d for d in os.listdir(shared_dir) if 'seeds=' in d) == [
      'model=fcn8s,seeds=0+1', 'model=nonexistent,seeds=0+1']
  shared_rows = report.summarize(report.load_runs(shared_dir))
  for row, shared in zip(rows, shared_rows):
    for key in ('setting', 'seeds', 'failed', 'unfinished', 'step'):
      assert shared[key] == row[key], key
    for key in report.SCORES:
      assert shared[key] == row[key], key
    assert shared['per_class_iu'] == row['per_class_iu']
  # A seed's sub-workdir loads that seed of the shared checkpoints.
  from fcn_jax import inference  # pylint: disable=g-import-not-at-top
  segmenter = inference.load(os.path.join(shared_dir, 'model=fcn8s,seed=1'))
  assert segmenter.seed_note.startswith('Seed 1 of [0, 1]')
  separate = inference.load(os.path.join(workdir, 'model=fcn8s,seed=1'))
  for a, b in zip(jax.tree.leaves(segmenter.params),
                  jax.tree.leaves(separate.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-7)
  # Finished seeds are judged from their sub-workdirs' files, as before.
  for overrides in runs:
    name = sweep.run_name(overrides, ['model'])
    assert sweep.is_finished(os.path.join(shared_dir, name), overrides) == (
        overrides['model'] == 'fcn8s')


def test_seed_groups_share_a_program_per_setting():
  runs = sweep.with_seeds(sweep.grid(model=['fcn32s', 'fcn8s']), [0, 1, 2])
  runs.append({'model': 'fcn16s', 'seed': 0})
  groups = sweep.seed_groups(runs)
  assert groups == [[0, 2, 4], [1, 3, 5], [6]]
  assert sweep.group_name(runs, groups[1]) == 'model=fcn8s,seeds=0+1+2'
  assert sweep.group_overrides(runs, groups[1]) == {'model': 'fcn8s',
                                                    'seeds': '0,1,2'}
  # A seed with checkpoints of its own stays alone.
  assert sweep.seed_groups(runs, alone=[2]) == [[0, 4], [1, 3, 5], [2], [6]]


# ---------------------------------------------------------------------------
# Report statistics on hand-made metrics files.


def _make_sweep(root, finals):
  """A sweep dir with runs {(setting, seed): final val record or None}."""
  entries = []
  for (setting, seed), final in finals.items():
    name = f'{setting},seed={seed}'
    entries.append({'name': name, 'setting': setting,
                    'overrides': {'model': setting, 'seed': seed}})
    run = os.path.join(root, name)
    _write(os.path.join(run, 'config.json'),
           json.dumps({'num_train_steps': 20, 'dataset': 'none'}))
    status = 'failed' if final == 'failed' else 'done'
    _write(os.path.join(run, 'sweep_run.json'),
           json.dumps({'status': status, 'wall_s': 100.0 + seed}))
    if final == 'failed':
      continue
    lines = [{'step': 10, 'split': 'val', 'mean_iu': 0.0},
             {'step': 10, 'split': 'train', 'loss': 2.0, 'steps_per_sec': 1.0},
             {'step': 20, 'split': 'train', 'loss': 1.0, 'steps_per_sec': 3.0}]
    if final is not None:
      # A resumed run logs step 20 twice; the later record counts.
      lines += [dict(final, step=20, split='val', mean_iu=-1.0),
                dict(final, step=20, split='val')]
    _write(os.path.join(run, 'metrics.jsonl'),
           '\n'.join(json.dumps(l) for l in lines) + '\n')
  _write(os.path.join(root, 'sweep.json'), json.dumps({'runs': entries}))


def _scores(overall, mean_acc, mean_iu, fw, boundary, per_class):
  return {'overall_acc': overall, 'mean_acc': mean_acc, 'mean_iu': mean_iu,
          'fwavacc': fw, 'boundary_mean_iu': boundary,
          'per_class_iu': per_class}


def test_report_statistics_match_numpy(tmp_path):
  a = [_scores(0.9, 0.5, 0.40, 0.8, 0.30, [0.9, 0.1, None]),
       _scores(0.8, 0.6, 0.45, 0.7, 0.20, [0.8, 0.2, 0.5]),
       _scores(0.7, 0.4, 0.50, 0.6, 0.25, [0.7, 0.6, 0.3])]
  b = _scores(0.5, 0.2, 0.10, 0.4, 0.05, [0.5, 0.0, 0.0])
  root = str(tmp_path)
  _make_sweep(root, {('a', 0): a[0], ('a', 1): a[1], ('a', 2): a[2],
                     ('b', 0): b, ('b', 1): 'failed', ('b', 2): None})
  runs = report.load_runs(root)
  rows = report.summarize(runs)
  assert [r['setting'] for r in rows] == ['a', 'b']
  ra, rb = rows
  assert (ra['seeds'], ra['failed'], ra['unfinished']) == (3, 0, 0)
  assert (rb['seeds'], rb['failed'], rb['unfinished']) == (1, 1, 1)
  for key in ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc',
              'boundary_mean_iu'):
    values = np.array([s[key] for s in a])
    mean, std, n = ra[key]
    np.testing.assert_allclose([mean, std], [values.mean(), values.std(ddof=1)])
    assert n == 3
  # Per-class IU: the absent class (None) is left out of its statistics.
  mean, std, n = ra['per_class_iu'][2]
  np.testing.assert_allclose([mean, std], [0.4, np.std([0.5, 0.3], ddof=1)])
  assert n == 2
  np.testing.assert_allclose(ra['wall_s'][:2], [101.0, 1.0])
  np.testing.assert_allclose(ra['steps_per_sec'][0], 2.0)
  # One seed: a mean and no std.
  assert rb['mean_iu'][0] == 0.1 and math.isnan(rb['mean_iu'][1])

  paths = report.write_report(root)
  table = open(paths['md']).read()
  assert '| `a` | 3 | 80.0 ± 10.0 | 50.0 ± 10.0 | 45.0 ± 5.0 |' in table
  assert '| `b` | 1 (1 failed) (1 unfinished) | 50.0 |' in table
  assert '`b,seed=1`: failed' in table
  assert '`b,seed=2`: incomplete metrics' in table
  lines = open(paths['csv']).read().splitlines()
  assert len(lines) == 3
  header = lines[0].split(',')
  values = dict(zip(header, lines[1].split(',')))
  np.testing.assert_allclose(float(values['mean_iu_std']),
                             np.std([0.40, 0.45, 0.50], ddof=1))
  for key in ('curves', 'bars'):
    with open(paths[key], 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# ---------------------------------------------------------------------------
# Boundary metric, worked by hand.


def test_boundary_mask_and_mean_iu_by_hand():
  labels = np.array([[0, 0, 0, 1, 1],
                     [0, 0, 0, 1, 1],
                     [0, 0, 0, 0, 0],
                     [2, 2, 0, 0, 255]])
  preds = np.array([[0, 0, 0, 0, 1],
                    [0, 0, 0, 1, 1],
                    [0, 0, 0, 0, 0],
                    [0, 2, 0, 0, 0]])
  # Radius 1: a pixel is a boundary pixel when its 3x3 neighbourhood (inside
  # the image) holds another label, 255 included; 255 pixels never are.
  expected = np.array([[0, 0, 1, 1, 0],
                       [0, 0, 1, 1, 1],
                       [1, 1, 1, 1, 1],
                       [1, 1, 1, 1, 0]], bool)
  mask = metrics.boundary_mask(labels[None], radius=1)[0]
  np.testing.assert_array_equal(np.asarray(mask), expected)
  hist = np.asarray(metrics.boundary_confusion_matrix(labels[None], preds[None],
                                                      3, radius=1))
  # Boundary pixels: 9 (0->0), 1 (1->0), 2 (1->1), 1 (2->0), 1 (2->2).
  np.testing.assert_array_equal(hist, [[9, 0, 0], [1, 2, 0], [1, 0, 1]])
  scores = metrics.segmentation_scores(hist)
  np.testing.assert_allclose(scores['mean_iu'], (9 / 11 + 2 / 3 + 1 / 2) / 3)
  # Radius 2: (0, 0) is 3 rows from the 2s and 3 columns from the 1s.
  mask2 = np.asarray(metrics.boundary_mask(labels, radius=2))
  assert not mask2[0, 0] and mask2[1, 0] and mask2[0, 1]


# ---------------------------------------------------------------------------
# Model options of the sweeps.


def test_crop_offsets_reproduce_reference_and_exact_variant():
  assert models.crop_offsets('fcn32s') == {'final': 19}
  assert models.crop_offsets('fcn16s') == {'pool4': 5, 'final': 27}
  assert models.crop_offsets('fcn8s') == {'pool4': 5, 'pool3': 9, 'final': 31}
  # Exact variant: upscore2 (2n+2 wide) overhangs the skip by 1 on each side,
  # and a 2f-tap stride-f upsampling is centred f/2 pixels in.
  assert models.crop_offsets('fcn32s', 1, 3) == {'final': 16}
  assert models.crop_offsets('fcn16s', 1, 3) == {'pool4': -1, 'final': 8}
  assert models.crop_offsets('fcn8s', 1, 3) == {'pool4': -1, 'pool3': -1,
                                                'final': 4}
  # No padding anywhere: output pixel 0 would see input pixel 80 (the 7x7
  # fc6 eats 3 pool5 cells per side), so the border cannot be predicted.
  with pytest.raises(ValueError, match='cannot be aligned'):
    models.crop_offsets('fcn32s', 1, 0)


def _symmetric_params(model, rng, shape):
  """Random params whose kernels are symmetric under H and W flips (score
  layers random too, so the output is not identically zero)."""
  # Only the shapes of an init (running it at the 100-px padded size takes
  # seconds), and numpy's random numbers (JAX's, op by op, compile for every
  # new shape); biases are zero, which any flip leaves alone.
  params = jax.eval_shape(lambda r: models.init_params(model, r, shape[1]),
                          rng)
  leaves, treedef = jax.tree.flatten(params)
  noise = np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**30)))
  out = []
  for leaf in leaves:
    if leaf.ndim != 4:
      out.append(np.zeros(leaf.shape, np.float32))
      continue
    kernel = noise.standard_normal(leaf.shape).astype(np.float32) * 0.3
    out.append((kernel + kernel[::-1] + kernel[:, ::-1] + kernel[::-1, ::-1])
               / 4)
  return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in out])


def _flip_error(model, params, x):
  """max |f(flip x) - flip f(x)| over H and W flips, relative to max |f|."""
  apply = jax.jit(lambda p, v: model.apply({'params': p}, v))
  y = apply(params, x)
  errors = [jnp.abs(apply(params, jnp.flip(x, axis)) - jnp.flip(y, axis)).max()
            for axis in (1, 2)]
  return float(max(errors) / jnp.abs(y).max())


@pytest.mark.parametrize('variant,padding,fc6_padding,shape', [
    # Reference crops 19 and 5/9/31, at sizes whose pooled maps stay even.
    ('fcn32s', 100, 0, (1, 26, 58, 3)),
    ('fcn8s', 100, 0, (1, 26, 58, 3)),
    # Exact-offset variant: crops 16, -1/8 and -1/-1/4.
    ('fcn32s', 1, 3, (1, 32, 64, 3)),
    ('fcn16s', 1, 3, (1, 32, 64, 3)),
    ('fcn8s', 1, 3, (1, 32, 64, 3)),
])
def test_output_is_aligned_with_input(variant, padding, fc6_padding, shape):
  # With flip-symmetric kernels, an output aligned with the input pixel grid
  # commutes with flipping the input; a crop off by one pixel does not.
  model = models.get_model(variant, 3, width=1 / 32, input_padding=padding,
                           fc6_padding=fc6_padding, fast_ops='off')
  params = _symmetric_params(model, jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), shape)
  assert model.apply({'params': params}, x).shape == shape[:3] + (3,)
  assert _flip_error(model, params, x) < 1e-5


def test_misaligned_crop_breaks_flip_equivariance(monkeypatch):
  shape = (1, 32, 64, 3)
  model = models.get_model('fcn32s', 3, width=1 / 32, input_padding=1,
                           fc6_padding=3, fast_ops='off')
  params = _symmetric_params(model, jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), shape)
  exact = models.crop_offsets
  monkeypatch.setattr(models, 'crop_offsets',
                      lambda *a: dict(exact(*a), final=exact(*a)['final'] + 1))
  assert _flip_error(model, params, x) > 1e-2


def test_exact_variant_any_input_size():
  # Odd sizes included: with ceil-mode pooling a map of n cells has a finer
  # map of at most 2n cells, and upscore2 (2n + 2 cells) cropped by 1 covers it.
  model = models.get_model('fcn8s', 2, width=1 / 32, input_padding=1,
                           fc6_padding=3, fast_ops='off')
  # Shapes only: traced, not run.
  params = jax.eval_shape(lambda r: models.init_params(model, r),
                          jax.random.key(0))
  for h, w in ((1, 1), (7, 45), (33, 20)):
    out = jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params,
                         jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
    assert out.shape == (1, h, w, 2)


def test_unalignable_padding_is_a_clear_error():
  model = models.get_model('fcn8s', 2, width=1 / 32, input_padding=1,
                           fc6_padding=0, fast_ops='off')
  with pytest.raises(ValueError, match='input_padding=1, fc6_padding=0'):
    jax.eval_shape(lambda r: models.init_params(model, r, 256),
                   jax.random.key(0))


def test_random_upsampling_init():
  model = models.get_model('fcn32s', 4, width=1 / 32, learn_upsampling=True,
                           upsampling_init='random', fast_ops='off')
  params = models.init_params(model, jax.random.key(0))
  kernel = np.asarray(params['upscore']['kernel'])
  assert kernel.shape == (64, 64, 4, 4)
  # Unit gain: std sqrt(1 / (4 C)), and off-diagonal (cross-class) taps.
  np.testing.assert_allclose(kernel.std(), np.sqrt(1 / 16), rtol=0.05)
  assert np.abs(kernel[:, :, 0, 1]).max() > 0
  bilinear = models.init_params(
      models.get_model('fcn32s', 4, width=1 / 32, learn_upsampling=True,
                       fast_ops='off'), jax.random.key(0))
  np.testing.assert_allclose(bilinear['upscore']['kernel'],
                             layers.bilinear_kernel(64, 4))
  with pytest.raises(ValueError, match='learn_upsampling'):
    models.init_params(models.get_model('fcn32s', 4, width=1 / 32,
                                        upsampling_init='random'),
                       jax.random.key(0))


def test_seed_layouts_times_each_program(tmp_path):
  """experiments.seed_layouts' timing on the tiny config (one device), and its
  one-line error for an unknown program."""
  import subprocess  # pylint: disable=g-import-not-at-top
  from experiments import seed_layouts  # pylint: disable=g-import-not-at-top
  from fcn_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fcn_jax import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
  from fcn_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_tiny_config()
  config.fast_ops = 'off'
  train_source, _, info = input_pipeline.create_datasets(config)
  model = models.create_model(config, info.num_classes)
  datasets = [input_pipeline.train_dataset_from_config(
      train_source, seeds_lib.seed_config(config, s), info) for s in (0, 1)]
  row = seed_layouts.time_program('mesh', config, model, [0, 1], datasets, 2)
  assert row['program'] == 'mesh' and row['mesh'] == {'data': 1, 'seed': 1}
  assert len(row['step_times_s']) == 2 and min(row['step_times_s']) > 0
  assert row['step_s'] == pytest.approx(np.median(row['step_times_s']))
  assert row['first_step_s'] > 0
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  bad = subprocess.run(
      [sys.executable, '-m', 'experiments.seed_layouts', '--tiny',
       '--programs=mesh,pmap', f'--json={tmp_path / "x.json"}'], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: --programs: unknown ['pmap']; expected some of "
      "('batch', 'mesh', 'loop').")
  assert not (tmp_path / 'x.json').exists()
