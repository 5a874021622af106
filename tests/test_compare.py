"""Paired bootstrap tests: hand-made predictions with a known difference, a
loop written independently with fcn_jax.metrics, and real workdirs."""

import json
import os

import numpy as np
import pytest

from experiments import compare
from experiments import report
from fcn_jax import evaluate
from fcn_jax import metrics
from inference_testutil import trained_workdir  # pylint: disable=unused-import


def image_hists(labels, preds, num_classes):
  return np.stack([evaluate.confusion(l, p, num_classes)
                   for l, p in zip(labels, preds)])


def test_known_difference_on_identical_images_has_a_point_interval():
  # 10 copies of one image (2 classes). A calls one of 4 class-0 pixels 1,
  # B is perfect. Every resample holds k copies of the same matrix, and
  # mean IU does not change when a matrix is scaled, so the interval is the
  # exact difference: A = (3/4 + 4/5) / 2 = 0.775, B = 1.
  label = np.array([[0, 0, 0, 0, 1, 1, 1, 1]])
  pred_a = np.array([[0, 0, 0, 1, 1, 1, 1, 1]])
  hists_a = image_hists([label] * 10, [pred_a] * 10, 2)
  hists_b = image_hists([label] * 10, [label] * 10, 2)
  result = compare.paired_bootstrap(hists_a, hists_b, num_resamples=200)
  assert result['mean_iu_a'] == pytest.approx(0.775)
  assert result['diff'] == pytest.approx(0.225)
  assert result['ci'] == pytest.approx([0.225, 0.225])
  assert result['per_class']['diff'] == pytest.approx([0.25, 0.2])


def test_identical_pair_gives_zero_and_an_interval_containing_it():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, (30, 6, 6))
  preds = np.where(rng.random(labels.shape) < 0.7, labels,
                   rng.integers(0, 3, labels.shape))
  hists = image_hists(labels, preds, 3)
  result = compare.paired_bootstrap(hists, hists.copy())
  assert result['diff'] == 0.0
  assert result['ci'][0] <= 0.0 <= result['ci'][1]


def test_better_on_half_the_images_worse_on_the_others_contains_zero():
  # B fixes A's errors on the even images and makes the same errors on the
  # odd ones: no real difference, but a wide interval.
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, (40, 8, 8))
  noisy = np.where(rng.random(labels.shape) < 0.6, labels,
                   rng.integers(0, 3, labels.shape))
  even = np.arange(40)[:, None, None] % 2 == 0
  preds_a = np.where(even, noisy, labels)
  preds_b = np.where(even, labels, noisy)
  result = compare.paired_bootstrap(image_hists(labels, preds_a, 3),
                                    image_hists(labels, preds_b, 3))
  low, high = result['ci']
  assert low < 0 < high and high - low > 0.05
  # And a clear gain is clearly positive: B perfect everywhere.
  better = compare.paired_bootstrap(image_hists(labels, preds_a, 3),
                                    image_hists(labels, labels, 3))
  assert better['ci'][0] > 0


def test_bootstrap_equals_a_loop_over_resampled_indices():
  # 2 seeds on side A, 3 on side B, 12 images of varying content.
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, (12, 5, 5))
  labels[rng.random(labels.shape) < 0.1] = 255

  def run_hists(accuracy):
    preds = np.where(rng.random(labels.shape) < accuracy, labels,
                     rng.integers(0, 4, labels.shape))
    return image_hists(labels, preds, 4)
  side_a = np.stack([run_hists(0.5), run_hists(0.55)])
  side_b = np.stack([run_hists(0.7), run_hists(0.75), run_hists(0.65)])
  result = compare.paired_bootstrap(side_a, side_b, num_resamples=300,
                                    seed=7)

  def side_score(side, index):
    return np.mean([metrics.segmentation_scores(h[index].sum(0))['mean_iu']
                    for h in side])
  draws = np.random.default_rng(7)
  diffs = []
  for _ in range(300):
    index = draws.integers(0, 12, 12)
    diffs.append(side_score(side_b, index) - side_score(side_a, index))
  everything = np.arange(12)
  assert result['diff'] == pytest.approx(
      side_score(side_b, everything) - side_score(side_a, everything))
  assert result['ci'] == pytest.approx(np.percentile(diffs, [2.5, 97.5]))
  assert result['image_se'] == pytest.approx(np.std(diffs, ddof=1))
  seed_a = [metrics.segmentation_scores(h.sum(0))['mean_iu'] for h in side_a]
  seed_b = [metrics.segmentation_scores(h.sum(0))['mean_iu'] for h in side_b]
  assert result['seed_se'] == pytest.approx(np.sqrt(
      np.var(seed_a, ddof=1) / 2 + np.var(seed_b, ddof=1) / 3))


def test_resolve_run_finds_a_settings_seeds_and_names_bad_paths(tmp_path):
  entries = [{'name': f'model=m{m},seed={s}', 'setting': f'model=m{m}',
              'overrides': {}} for m in (1, 2) for s in (0, 1)]
  (tmp_path / 'sweep.json').write_text(json.dumps({'runs': entries}))
  for entry in entries:
    os.makedirs(tmp_path / entry['name'])
    (tmp_path / entry['name'] / 'config.json').write_text('{}')
  assert compare.resolve_run(str(tmp_path / 'model=m2')) == [
      str(tmp_path / 'model=m2,seed=0'), str(tmp_path / 'model=m2,seed=1')]
  assert compare.resolve_run(str(tmp_path / 'model=m1,seed=1')) == [
      str(tmp_path / 'model=m1,seed=1')]
  with pytest.raises(compare.CompareError, match='model=m1'):
    compare.resolve_run(str(tmp_path / 'model=m3'))
  with pytest.raises(compare.CompareError, match='is a sweep'):
    compare.resolve_run(str(tmp_path))
  with pytest.raises(compare.CompareError, match='neither'):
    compare.resolve_run(str(tmp_path / 'nothing' / 'here'))


def test_runs_on_other_images_are_refused():
  labels = np.zeros((3, 4, 4), int)
  other = labels.copy()
  other[1, 0, 0] = 1
  with pytest.raises(compare.CompareError, match='same labelled images'):
    compare.check_same_images(['a', 'b'], [image_hists(labels, labels, 2),
                                           image_hists(other, other, 2)])


def test_compare_workdirs_evaluates_once_and_caches(trained_workdir,
                                                    monkeypatch, capsys):
  result = compare.compare(trained_workdir, trained_workdir, checkpoint='6',
                           num_resamples=200)
  # The training loop's own evaluation at step 6 (batched, on device).
  records = report.read_records(os.path.join(trained_workdir,
                                             'metrics.jsonl'))['val']
  trained = [r for r in records if r['step'] == 6][-1]
  hists, _ = compare.per_image_confusions(trained_workdir, '6')
  assert hists.shape == (8, 7, 7)
  scores = metrics.segmentation_scores(hists.sum(0))
  assert scores['overall_acc'] == pytest.approx(trained['overall_acc'])
  assert result['mean_iu_a'] == pytest.approx(trained['mean_iu'])
  assert result['diff'] == 0.0 and result['ci'] == [0.0, 0.0]
  # The second side came from the cache: evaluating again would fail.
  monkeypatch.setattr(evaluate, 'evaluate_segmenter', None)
  again = compare.compare(trained_workdir, trained_workdir, checkpoint='6',
                          num_resamples=200)
  assert again['mean_iu_b'] == result['mean_iu_b']
  text = compare.format_result(result)
  assert 'B - A +0.0 [+0.0, +0.0]' in text and '| rectangle |' in text


def test_report_baseline_column(tmp_path, trained_workdir):
  # A one-setting sweep of the tiny workdir's runs, against itself.
  sweep_dir = tmp_path / 'sweep'
  sweep_dir.mkdir()
  run_dir = sweep_dir / 'a,seed=0'
  os.symlink(trained_workdir, run_dir)
  (sweep_dir / 'sweep.json').write_text(json.dumps({'runs': [
      {'name': 'a,seed=0', 'setting': 'a', 'overrides': {'seed': 0}}]}))
  runs = report.load_runs(str(sweep_dir))
  with pytest.raises(ValueError, match='--baseline'):
    report.compare_to_baseline(str(sweep_dir), runs, 'b')
  rows = report.summarize(runs)
  table = report.markdown_table(rows, [], runs, 'a', {})
  assert 'mean IU - `a` (95% CI)' in table and '| baseline |' in table
