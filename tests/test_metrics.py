"""Metric tests against hand-worked confusion matrices and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import metrics


def test_confusion_matrix_hand_example_with_ignore_and_out_of_range():
  labels = np.array([[0, 0, 1, 1],
                     [2, 2, 255, 7]])  # 255 ignored, 7 out of range
  preds = np.array([[0, 1, 1, 1],
                    [2, 0, 2, 2]])
  hist = metrics.confusion_matrix(labels, preds, num_classes=3)
  expected = np.array([[1, 1, 0],   # gt 0: one right, one called 1
                       [0, 2, 0],   # gt 1: both right
                       [1, 0, 1]])  # gt 2: one called 0, one right
  np.testing.assert_array_equal(hist, expected)


def test_confusion_matrix_matches_numpy_under_jit():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (3, 17, 19))
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = rng.integers(0, 5, labels.shape)
  hist = jax.jit(metrics.confusion_matrix, static_argnums=2)(
      jnp.asarray(labels), jnp.asarray(preds), 5)
  valid = labels != 255
  expected = np.zeros((5, 5), np.int64)
  np.add.at(expected, (labels[valid], preds[valid]), 1)
  np.testing.assert_array_equal(hist, expected)


def test_scores_hand_computed():
  hist = np.array([[3, 1, 0],
                   [0, 2, 2],
                   [0, 0, 0]])  # class 2 never labelled but predicted twice
  s = metrics.segmentation_scores(hist)
  # pixel acc: (3 + 2) / 8
  assert s['overall_acc'] == pytest.approx(5 / 8)
  # per-class acc: 3/4, 2/4, 0/0 (NaN, left out) -> mean 0.625
  assert s['mean_acc'] == pytest.approx(0.625)
  # IU: 3 / (4 + 3 - 3) = 3/4; 2 / (4 + 3 - 2) = 2/5; 0 / (0 + 2 - 0) = 0
  np.testing.assert_allclose(s['per_class_iu'], [0.75, 0.4, 0.0])
  assert s['mean_iu'] == pytest.approx((0.75 + 0.4 + 0.0) / 3)
  # fw IU: freq 4/8, 4/8, 0 -> 0.5 * 0.75 + 0.5 * 0.4
  assert s['fwavacc'] == pytest.approx(0.575)


def test_absent_classes_are_nan_and_left_out_of_means():
  hist = np.array([[5, 0, 0],
                   [1, 3, 0],
                   [0, 0, 0]])  # class 2: 0/0 for both accuracy and IU
  s = metrics.segmentation_scores(hist)
  assert np.isnan(s['per_class_iu'][2])
  assert s['mean_iu'] == pytest.approx((5 / 6 + 3 / 4) / 2)
  assert s['mean_acc'] == pytest.approx((1 + 3 / 4) / 2)


def test_global_histogram_is_not_the_mean_of_batch_scores():
  # Batch A: perfect on a tiny image; batch B: poor on a large one. The
  # split's mean IU comes from the summed histogram, as in the paper.
  a = metrics.confusion_matrix(np.array([0, 1]), np.array([0, 1]), 2)
  b = metrics.confusion_matrix(np.array([0] * 8 + [1] * 8),
                               np.array([0] * 8 + [0] * 8), 2)
  total = metrics.segmentation_scores(a + b)['mean_iu']
  averaged = np.mean([metrics.segmentation_scores(h)['mean_iu'] for h in (a, b)])
  # Summed: IU0 = 9 / (9 + 17 - 9)... computed by hand: hist = [[9,0],[8,1]].
  assert total == pytest.approx((9 / 17 + 1 / 9) / 2)
  assert total != pytest.approx(averaged)
