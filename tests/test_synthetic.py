"""The built-in synthetic dataset: determinism, labels, thin structures."""

import numpy as np
import pytest

from fcn_jax.data import synthetic


def test_examples_are_deterministic_and_splits_differ():
  a = synthetic.SyntheticShapes('train', 10, 48, seed=3)
  b = synthetic.SyntheticShapes('train', 10, 48, seed=3)
  for i in (0, 7):
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    np.testing.assert_array_equal(a[i]['label'], b[i]['label'])
  val = synthetic.SyntheticShapes('val', 10, 48, seed=3)
  other_seed = synthetic.SyntheticShapes('train', 10, 48, seed=4)
  assert not np.array_equal(a[0]['image'], val[0]['image'])
  assert not np.array_equal(a[0]['image'], other_seed[0]['image'])
  assert not np.array_equal(a[0]['image'], a[1]['image'])


def test_shapes_types_and_every_class_present():
  ds = synthetic.SyntheticShapes('train', 60, 40)
  counts = np.zeros(len(synthetic.CLASS_NAMES), int)
  for i in range(len(ds)):
    ex = ds[i]
    assert ex['image'].shape == (40, 40, 3) and ex['image'].dtype == np.uint8
    assert ex['label'].shape == (40, 40) and ex['label'].dtype == np.int32
    counts += np.bincount(ex['label'].ravel(), minlength=len(counts))
  assert counts.sum() == 60 * 40 * 40
  assert np.all(counts > 0), counts
  assert counts[0] > counts[1:].max()  # background dominates, as in VOC


def test_labels_agree_with_the_pixels_colours():
  # Each object class is drawn in its own hue: the mean colour of a class's
  # pixels is closer to its own base colour than to any other class's.
  ds = synthetic.SyntheticShapes('val', 40, 64)
  colors = np.array([synthetic._CLASS_COLORS[c] for c in range(1, 7)], float)
  for i in range(len(ds)):
    ex = ds[i]
    for cls in np.unique(ex['label']):
      if cls == 0:
        continue
      pixels = ex['image'][ex['label'] == cls].astype(float)
      if len(pixels) < 10:
        continue
      # Compare chromaticity (the stripe texture only scales brightness).
      mean = pixels.mean(0)
      chroma = mean / mean.sum()
      ref = colors / colors.sum(1, keepdims=True)
      assert np.argmin(np.abs(ref - chroma).sum(1)) + 1 == cls


def test_lines_and_rings_are_thinner_than_the_fcn8s_stride():
  # No 7x7 window lies entirely inside a line or a ring (thickness <= 6 px):
  # such structures fall between the stride-8 predictions of FCN-8s and are
  # invisible at FCN-32s's stride, which is what makes the skips matter.
  ds = synthetic.SyntheticShapes('train', 80, 64)
  thin_pixels = inside = 0
  for i in range(len(ds)):
    label = ds[i]['label']
    for cls in (4, 5):
      mask = label == cls
      thin_pixels += mask.sum()
      windows = np.lib.stride_tricks.sliding_window_view(mask, (7, 7))
      inside += windows.all(axis=(2, 3)).sum()
  assert thin_pixels > 1000
  assert inside <= 0.01 * thin_pixels  # only where two of them cross


def test_bad_arguments():
  with pytest.raises(ValueError, match='split'):
    synthetic.SyntheticShapes('test')
  with pytest.raises(IndexError):
    synthetic.SyntheticShapes('train', 5)[5]
