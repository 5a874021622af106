"""SBD loader on .mat fixtures in SBD's real format, and the seg11valid list."""

import os
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import input_pipeline
from fcn_jax.configs import default
from fcn_jax.data import decode
from fcn_jax.data import sbd

MINI = os.path.join(os.path.dirname(__file__), 'data', 'voc-real-mini')


def _write_sbd(root, labels):
  """SBD layout: img/<id>.jpg, cls/<id>.mat (GTcls struct), train.txt."""
  dataset = root / 'benchmark_RELEASE' / 'dataset'
  (dataset / 'img').mkdir(parents=True)
  (dataset / 'cls').mkdir()
  for image_id, label in labels.items():
    image = np.random.default_rng(0).integers(0, 255, label.shape + (3,))
    Image.fromarray(image.astype(np.uint8)).save(dataset / 'img' /
                                                 f'{image_id}.jpg')
    # The same struct fields as SBD's files; Segmentation is uint8 there.
    gtcls = {'Segmentation': label, 'Boundaries': np.zeros((21, 1), object),
             'CategoriesPresent': np.unique(label[label > 0]).astype(np.uint8)}
    scipy.io.savemat(dataset / 'cls' / f'{image_id}.mat', {'GTcls': gtcls})
  (dataset / 'train.txt').write_text('\n'.join(labels) + '\n')
  return dataset


def test_sbd_mat_labels_read_back_exactly(tmp_path):
  rng = np.random.default_rng(1)
  labels = {'2008_000002': rng.integers(0, 21, (7, 9)).astype(np.uint8),
            '2008_000003': rng.integers(0, 21, (5, 4)).astype(np.uint8)}
  dataset = _write_sbd(tmp_path, labels)
  source = sbd.SBDSource(str(dataset), 'train')
  assert len(source) == 2
  for index, (image_id, label) in enumerate(labels.items()):
    example = source[index]
    np.testing.assert_array_equal(example['label'], label)
    assert example['image'].shape == label.shape + (3,)
    assert source.ids[index] == image_id


def test_sbd_bad_mat_and_out_of_range(tmp_path):
  dataset = _write_sbd(tmp_path, {'a': np.full((3, 3), 30, np.uint8),
                                  'b': np.zeros((3, 3), np.uint8)})
  scipy.io.savemat(dataset / 'cls' / 'b.mat', {'other': np.zeros(2)})
  source = sbd.SBDSource(str(dataset), 'train')
  with pytest.raises(decode.DataError, match=r'a.mat: label values \[30\]'):
    source[0]  # pylint: disable=pointless-statement
  with pytest.raises(decode.DataError, match='b.mat: no GTcls.Segmentation'):
    source[1]  # pylint: disable=pointless-statement
  (dataset / 'cls' / 'b.mat').write_bytes(b'not a mat file')
  with pytest.raises(decode.DataError, match=r'b.mat: unreadable \.mat'):
    source[1]  # pylint: disable=pointless-statement


def test_seg11valid_is_the_papers_736_image_list():
  ids = sbd.packaged_split('seg11valid')
  assert len(ids) == 736 and len(set(ids)) == 736
  assert ids == sorted(ids)
  assert all(len(i) == 11 and i[4] == '_' and '2007' <= i[:4] <= '2011'
             for i in ids)
  # Per tests/data/voc-real-mini/PROVENANCE.md: the FCN demo image is in it,
  # the other four sample images are not.
  assert '2007_000129' in ids
  assert not {'2007_000063', '2011_000003', '2011_000006',
              '2011_000025'} & set(ids)


def test_sbd_dataset_trains_on_sbd_and_evaluates_on_seg11valid(tmp_path):
  _write_sbd(tmp_path, {'2008_000002': np.ones((4, 6), np.uint8)})
  voc2011 = tmp_path / 'VOCdevkit' / 'VOC2011'
  for sub in ('JPEGImages', 'SegmentationClass'):
    (voc2011 / sub).mkdir(parents=True)
    ext = '.jpg' if sub == 'JPEGImages' else '.png'
    shutil.copy(os.path.join(MINI, sub, '2007_000129' + ext), voc2011 / sub)
  config = default.get_tiny_config()
  config.dataset = 'sbd'
  config.data_dir = str(tmp_path)
  # Only one of the 736 seg11valid images is on disk: a clear error.
  with pytest.raises(decode.DataError,
                     match=r'VOC2011/JPEGImages/2007_000033.jpg: file not found '
                     r'\(735 of 736 examples of split .seg11valid.'):
    input_pipeline.create_datasets(config)
  config.skip_bad_examples = True
  train, val, info = input_pipeline.create_datasets(config)
  assert (info.num_classes, len(train), val.ids) == (21, 1, ['2007_000129'])
  assert (val[0]['label'] == 15).sum() == 61143  # person, per PROVENANCE.md
