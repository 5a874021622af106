"""Calibration (ECE) tests against numpy and a hand-worked example."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from fcn_jax import calibration
from fcn_jax import evaluate
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import workdir as workdir_lib
from inference_testutil import trained_workdir  # pylint: disable=unused-import


def numpy_ece(prob_maps, label_maps, num_bins=15):
  """ECE written independently: np.digitize on (lo, hi] bins, per-bin means."""
  conf = np.concatenate([p.max(-1).ravel() for p in prob_maps])
  pred = np.concatenate([p.argmax(-1).ravel() for p in prob_maps])
  labels = np.concatenate([l.ravel() for l in label_maps])
  num_classes = prob_maps[0].shape[-1]
  keep = labels < num_classes
  conf, pred, labels = conf[keep], pred[keep], labels[keep]
  edges = np.linspace(0, 1, num_bins + 1)
  which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, num_bins - 1)
  ece = 0.0
  for b in range(num_bins):
    in_bin = which == b
    if in_bin.any():
      ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean()
                                 - conf[in_bin].mean())
  return ece, np.bincount(which, minlength=num_bins)


def test_ece_hand_worked():
  # Two classes; confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 1.0
  # (right), and an unlabelled 0.7 that must not count. Bins (of 15):
  # 0.9 -> (0.867, 0.933]: 2 pixels, 1 right, confidences 1.8 -> |1 - 1.8|;
  # 0.6 -> (0.533, 0.6]: |1 - 0.6|; 1.0 -> (0.933, 1]: |1 - 1|.
  # ECE = (0.8 + 0.4 + 0) / 4 = 0.3.
  probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.0, 1.0],
                    [0.7, 0.3]], np.float32)
  labels = np.array([0, 0, 0, 1, 255])
  scores = calibration.calibration_scores(
      calibration.calibration_sums(probs, labels))
  assert scores['ece'] == pytest.approx(0.3, abs=1e-6)
  assert scores['bin_count'][13] == 2 and scores['bin_count'][8] == 1
  assert scores['bin_count'][14] == 1 and sum(scores['bin_count']) == 4
  assert scores['bin_accuracy'][13] == 0.5
  assert np.isnan(scores['bin_accuracy'][0])


def test_accumulated_ece_matches_numpy_over_images_of_mixed_sizes():
  rng = np.random.default_rng(0)
  prob_maps, label_maps = [], []
  for height, width in ((5, 7), (9, 4), (16, 16)):
    logits = rng.normal(size=(height, width, 4)) * rng.uniform(0.2, 4)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, (height, width))
    labels[rng.random(labels.shape) < 0.2] = 255
    prob_maps.append(probs.astype(np.float32))
    label_maps.append(labels)
  # Padding to 16 x 16 buckets must add nothing.
  accumulator = calibration.Accumulator(bucket=lambda n: 16)
  for probs, labels in zip(prob_maps, label_maps):
    accumulator.add(probs, labels)
  scores = accumulator.scores()
  expected_ece, expected_counts = numpy_ece(prob_maps, label_maps)
  np.testing.assert_array_equal(scores['bin_count'], expected_counts)
  assert scores['ece'] == pytest.approx(expected_ece, rel=1e-5)
  assert isinstance(accumulator.sums['count'], jax.Array)


def test_evaluate_reports_ece_and_writes_reliability_png(trained_workdir,
                                                         tmp_path):
  record = evaluate.run(trained_workdir, '6', output_dir=str(tmp_path),
                        progress=False)
  config = workdir_lib.load_config(trained_workdir)
  _, val, _ = input_pipeline.create_datasets(config)
  segmenter = inference.load(trained_workdir, '6')
  prob_maps = [segmenter.probabilities(val[i]['image'])
               for i in range(len(val))]
  expected_ece, expected_counts = numpy_ece(
      prob_maps, [val[i]['label'] for i in range(len(val))])
  assert record['ece'] == pytest.approx(expected_ece, rel=1e-5)
  assert record['calibration']['bin_count'] == expected_counts.tolist()
  with open(tmp_path / 'eval_val_step6.json') as f:
    assert json.load(f)['ece'] == record['ece']
  with Image.open(tmp_path / 'eval_val_step6_reliability.png') as plot:
    assert plot.size[0] > 360 and plot.size[1] > 360
