"""NYUDv2, SIFT Flow and PASCAL-Context loaders on fixtures in their formats."""

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import input_pipeline
from fcn_jax.configs import default
from fcn_jax.data import decode
from fcn_jax.data import nyud
from fcn_jax.data import pascal_context
from fcn_jax.data import siftflow

import beyond_voc_testutil as util

# The reference means (nyud_layers.py, siftflow_layers.py).
NYUD_BGR = np.array([116.190, 97.203, 92.318], np.float32)
NYUD_HHA = np.array([132.431, 94.076, 118.477], np.float32)


def _void_shift(raw):
  """The reference's uint8 `label -= 1`: 0 wraps around to 255."""
  return (raw.astype(np.uint8) - np.uint8(1)).astype(np.uint8)


def _config(dataset, data_dir, **kwargs):
  config = default.get_config()
  config.dataset = dataset
  config.data_dir = str(data_dir)
  for key, value in kwargs.items():
    config[key] = value
  return config


@pytest.mark.parametrize('mode', nyud.INPUTS)
def test_nyud_inputs_and_labels_read_back_exactly(tmp_path, mode):
  base, raw = util.write_nyud(tmp_path, {'trainval': ['0003', '0007'],
                                         'test': ['0011']})
  train, val, info = input_pipeline.create_datasets(
      _config('nyud', tmp_path, nyud_input=mode))
  assert (len(train), len(val), info.num_classes) == (2, 1, 40)
  assert info.class_names[0] == 'wall' and info.class_names[-1] == 'otherprop'
  arrays = raw['0007']
  example = train[1]
  np.testing.assert_array_equal(example['label'],
                                _void_shift(arrays['label']))
  bgr = arrays['color'][..., ::-1].astype(np.float32) - NYUD_BGR
  hha = arrays['hha'].astype(np.float32) - NYUD_HHA
  log_depth = np.log(arrays['depth'].astype(np.float32)) - 7.844
  expected = {'color': bgr, 'hha': hha,
              'color-d': np.dstack([bgr, log_depth]),
              'color-hha': np.dstack([bgr, hha])}[mode]
  np.testing.assert_allclose(example['image'], expected, rtol=1e-6, atol=1e-5)
  del base


def test_nyud_shipped_splits_are_the_reference_sizes():
  splits = nyud.packaged_splits()
  assert {k: len(v) for k, v in splits.items()} == {
      'train': 381, 'val': 414, 'test': 654, 'trainval': 795}
  assert splits['trainval'][0] == '5449'


def test_nyud_bad_files_are_named(tmp_path):
  base, _ = util.write_nyud(tmp_path, {'trainval': ['1', '2', '3', '4'],
                                       'test': ['5']})
  (base / 'data/hha/img_2.png').unlink()
  with pytest.raises(decode.DataError, match=r'img_2.png: file not found'):
    nyud.NYUDSource(str(base), 'trainval', 'color-hha')
  Image.fromarray(np.full((5, 5), 900, np.uint16)).save(
      base / 'data/depth/img_3.png')
  source = nyud.NYUDSource(str(base), 'trainval', 'color-d')
  with pytest.raises(decode.DataError,
                     match=r'depth/img_3.png: depth is 5x5 \(WxH\)'):
    source[2]  # pylint: disable=pointless-statement
  scipy.io.savemat(base / 'segmentation/img_4.mat',
                   {'segmentation': np.full((36, 40), 41, np.uint16)})
  with pytest.raises(decode.DataError, match=r'img_4.mat: .*41.*outside 0..40'):
    source[3]  # pylint: disable=pointless-statement
  scipy.io.savemat(base / 'segmentation/img_1.mat', {'labels': np.zeros(3)})
  with pytest.raises(decode.DataError,
                     match=r"img_1.mat: no variable 'segmentation'"):
    source[0]  # pylint: disable=pointless-statement
  skipping = nyud.NYUDSource(str(base), 'trainval', 'color-d', skip_bad=True)
  placeholder = skipping[0]
  assert placeholder['image'].shape[-1] == 4
  assert np.all(placeholder['label'] == 255)
  assert skipping.skipped.count == 1
  (base / 'empty.txt').write_text('\n')
  with pytest.raises(decode.DataError, match=r'empty.txt: split list is empty'):
    nyud.NYUDSource(str(base), 'empty')


def test_siftflow_labels_shift_and_geometric_void(tmp_path):
  _, raw = util.write_siftflow(tmp_path, {'trainval': ['coast_a', 'city_b'],
                                          'test': ['street_c']})
  train, val, info = input_pipeline.create_datasets(
      _config('siftflow', tmp_path))
  assert (len(train), len(val), info.num_classes) == (2, 1, 33)
  assert dict(info.extra_heads)['geo_label'] == ('sky', 'horizontal',
                                                 'vertical')
  assert info.present_classes_only
  example = train[0]
  semantic, geometric = raw['coast_a']['semantic'], raw['coast_a']['geometric']
  np.testing.assert_array_equal(example['label'], _void_shift(semantic))
  # The reference: geometric -1 -> 0 first, then the same shift.
  expected_geo = np.where(geometric <= 0, 255, geometric - 1)
  np.testing.assert_array_equal(example['geo_label'], expected_geo)
  assert example['image'].dtype == np.float32
  assert example['image'].shape == (32, 32, 3)


def test_siftflow_bad_geometric_label_is_named(tmp_path):
  base, _ = util.write_siftflow(tmp_path, {'trainval': ['a'], 'test': ['b']})
  path = base / 'GeoLabels' / util.SIFTFLOW_SUBDIR / 'a.mat'
  scipy.io.savemat(path, {'S': np.full((32, 32), 4.0)})
  source = siftflow.SIFTFlowSource(str(base), 'trainval')
  with pytest.raises(decode.DataError, match=r'GeoLabels.*a.mat: .*-1..3'):
    source[0]  # pylint: disable=pointless-statement
  scipy.io.savemat(path, {'S': np.zeros((16, 32))})
  with pytest.raises(decode.DataError, match=r'a.mat: geo label is 32x16'):
    source[0]  # pylint: disable=pointless-statement


def test_siftflow_shipped_lists():
  splits = siftflow.packaged_splits()
  assert len(splits['trainval']) == 2486 and len(splits['test']) == 200
  assert not set(splits['trainval']) & set(splits['test'])
  assert len(siftflow.class_names()) == 33
  assert siftflow.class_names()[27] == 'sky'


# Hand-made from the reference's classes-400.txt / classes-59.txt: raw
# LabelMap value -> task label (1-based names of classes-59.txt).
HAND_MAP = {0: 0, 1: 0,      # unlabelled, accordion (not in the 59)
            2: 1,            # aeroplane
            19: 52,          # bedclothes -> 'bedcloth'
            80: 28,          # cloth -> 'clothes'
            397: 11,         # table -> 'diningtable'
            258: 14,         # motorbike
            458: 59,         # wood
            459: 0}          # wool (not in the 59)


def test_pascal_context_400_to_59_mapping(tmp_path):
  _, raw = util.write_pascal_context(
      tmp_path, {'train': ['2008_000002'], 'val': ['2008_000003']},
      values=list(HAND_MAP))
  train, val, info = input_pipeline.create_datasets(
      _config('pascal_context', tmp_path))
  assert (len(train), len(val), info.num_classes) == (1, 1, 60)
  label_map = raw['2008_000002']
  expected = np.vectorize(HAND_MAP.get)(label_map)
  np.testing.assert_array_equal(train[0]['label'], expected)
  assert train[0]['image'].dtype == np.uint8


def test_pascal_context_table_matches_the_reference_loop():
  # The reference's own construction: list positions of the names, with
  # spaces removed and three 59-class names renamed.
  lines400 = [l.split(':', 1)[1].strip().replace(' ', '') for l in
              open(pascal_context.lists.__path__[0] +
                   '/pascal_context_classes-400.txt')]
  lines59 = [l.split(':', 1)[1].strip().replace(' ', '') for l in
             open(pascal_context.lists.__path__[0] +
                  '/pascal_context_classes-59.txt')][1:]
  for main, task in (('table', 'diningtable'), ('bedclothes', 'bedcloth'),
                     ('cloth', 'clothes')):
    lines59[lines59.index(task)] = main
  raw = np.arange(460)
  expected = np.zeros_like(raw)
  for index, name in enumerate(lines59):
    expected[raw == lines400.index(name) + 1] = index + 1
  np.testing.assert_array_equal(pascal_context.raw_to_task_table()[raw],
                                expected)


def test_pascal_context_bad_label_map_is_named(tmp_path):
  root, _ = util.write_pascal_context(tmp_path, {'train': ['x'], 'val': ['y']})
  path = root / 'pascal-context' / 'trainval' / 'x.mat'
  scipy.io.savemat(path, {'LabelMap': np.full((34, 38), 460, np.uint16)})
  train, _, _ = input_pipeline.create_datasets(
      _config('pascal_context', tmp_path))
  with pytest.raises(decode.DataError, match=r'x.mat: .*460.*outside 0..459'):
    train[0]  # pylint: disable=pointless-statement
  path.write_bytes(b'MATLAB 5.0 garbage')
  with pytest.raises(decode.DataError, match=r'x.mat: unreadable \.mat'):
    train[0]  # pylint: disable=pointless-statement


def test_two_label_batches_pad_both_maps_with_the_ignore_label():
  examples = [{'image': np.ones((2, 3, 3), np.float32),
               'label': np.zeros((2, 3), np.int32),
               'geo_label': np.ones((2, 3), np.int32), 'id': 0},
              {'image': np.ones((3, 2, 3), np.float32),
               'label': np.zeros((3, 2), np.int32),
               'geo_label': np.full((3, 2), 2, np.int32), 'id': 1}]
  batch = input_pipeline.pad_and_stack(examples, pad_multiple=4)
  assert batch['geo_label'].shape == (2, 4, 4)
  assert np.all(batch['geo_label'][0, 2:] == 255)
  assert np.all(batch['geo_label'][0, :2, :3] == 1)
  assert np.all(batch['geo_label'][1, :3, :2] == 2)
  assert np.all(batch['label'][1, :, 2:] == 255)
  rng = np.random.default_rng(0)
  cropped = input_pipeline._augment_and_preprocess(  # pylint: disable=protected-access
      examples[1], rng, flip=True, crop_size=2, scale_range=(1.0, 1.0))
  # Both label maps are cut by the same window (geo 2 / label 0 everywhere).
  assert np.all(cropped['geo_label'] == 2) and np.all(cropped['label'] == 0)
