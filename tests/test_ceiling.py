"""Output-stride ceiling tests against a hand-worked 5x5 label map."""

import os

import numpy as np
import pytest

from fcn_jax import ceiling
from fcn_jax.configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_MINI = os.path.join(ROOT, 'tests', 'data', 'voc-real-mini')

# 3 classes, 255 = unlabelled. With factor 2 the blocks are rows/cols
# [0:2], [2:4], [4:5] (the last ones 1 pixel wide).
LABELS = np.array([[0, 0, 1, 1, 2],
                   [0, 1, 1, 1, 2],
                   [2, 2, 255, 0, 0],
                   [2, 255, 255, 0, 1],
                   [1, 1, 0, 0, 255]])


def test_block_modes_hand_worked():
  # Block (1, 0) = 2, 2, 2, 255 -> 2 (void does not vote); (1, 2) = 0, 1 is
  # a tie -> the lower class 0; (2, 2) holds only void -> 255.
  expected = np.array([[0, 1, 2],
                       [2, 0, 0],
                       [1, 0, 255]])
  np.testing.assert_array_equal(ceiling.block_modes(LABELS, 2, 3), expected)


def test_block_centres_hand_worked():
  # Centres at offset floor(n/2): rows/cols 1, 3 and 4. (0, 0) takes
  # LABELS[1, 1] = 1 although the block's mode is 0; (1, 0)'s centre
  # LABELS[3, 1] is void -> the block's mode 2; (1, 2) takes LABELS[3, 4] = 1.
  expected = np.array([[1, 1, 2],
                       [2, 0, 1],
                       [1, 0, 255]])
  np.testing.assert_array_equal(ceiling.block_centres(LABELS, 2, 3), expected)


def test_ceiling_labels_upsample_nearest_to_the_original_size():
  expected = np.array([[0, 0, 1, 1, 2],
                       [0, 0, 1, 1, 2],
                       [2, 2, 0, 0, 0],
                       [2, 2, 0, 0, 0],
                       [1, 1, 0, 0, 255]])
  np.testing.assert_array_equal(ceiling.ceiling_labels(LABELS, 2, 3), expected)


def test_stride_ceiling_scores_hand_worked():
  results = ceiling.stride_ceiling([LABELS], [1, 2, 8], num_classes=3)
  # Factor 2: two pixels of class 1 ((1, 1) and (3, 4)) become 0, the other
  # 19 labelled pixels are right: hist = [[8,0,0],[2,6,0],[0,0,5]];
  # IU = 8/10, 6/8, 5/5.
  np.testing.assert_array_equal(results[2]['confusion_matrix'],
                                [[8, 0, 0], [2, 6, 0], [0, 0, 5]])
  assert results[2]['mean_iu'] == pytest.approx((0.8 + 0.75 + 1.0) / 3)
  assert results[2]['overall_acc'] == pytest.approx(19 / 21)
  # Factor 1 reproduces the labels.
  assert results[1]['mean_iu'] == 1.0
  # Factor 8 > the image: one block, the mode over 21 labelled pixels is
  # class 0 (8 pixels vs 8 of class 1: the tie goes to 0): IU 8/21, 0, 0.
  assert results[8]['mean_iu'] == pytest.approx(8 / 21 / 3)
  assert results['num_images'] == 1


def test_parse_strides_rejects_bad_values():
  assert ceiling.parse_strides('128,64,4') == [128, 64, 4]
  for bad in ('', '32,x', '0,4', '-8'):
    with pytest.raises(ValueError, match='--strides'):
      ceiling.parse_strides(bad)


def test_run_on_the_real_voc_sample_decreases_with_the_factor(capsys):
  config = default.get_config()
  config.update(dict(
      dataset='voc_dir', data_dir=VOC_MINI, train_split='train',
      val_split='val', num_classes=-1, skip_bad_examples=False))
  results = ceiling.run(config, [32, 4])
  assert results['num_images'] == 2
  # A finer stride can only lose less; at stride 4 VOC is near-perfect.
  assert results[32]['mean_iu'] < results[4]['mean_iu'] <= 1.0
  assert results[4]['mean_iu'] > 0.9
  assert '| 32 |' in capsys.readouterr().out
