"""'tfds:<name>' without TensorFlow: our VOC builder on the real sample, read
back through TFDS array_record data sources."""

import os
import shutil
import sys
import tarfile

import numpy as np
import pytest

from fcn_jax import input_pipeline
from fcn_jax.configs import default
from fcn_jax.data import decode
from fcn_jax.data import prepare
from fcn_jax.data import tfds_sources
from fcn_jax.data import voc

import test_data_sbd

MINI = os.path.join(os.path.dirname(__file__), 'data', 'voc-real-mini')


@pytest.fixture(scope='module')
def prepared_voc(tmp_path_factory):
  """voc_segmentation/2012 built from a VOCdevkit copy of the real sample."""
  manual_dir = tmp_path_factory.mktemp('manual')
  shutil.copytree(MINI, manual_dir / 'VOCdevkit' / 'VOC2012')
  data_dir = tmp_path_factory.mktemp('tfds')
  prepare.prepare('voc_segmentation/2012', str(data_dir), str(manual_dir))
  return str(data_dir)


def _image_id(source, index):
  """The stored VOC/SBD image id of example `index` of a TfdsSource."""
  image_id = source._data()[index]['image_id']
  return image_id.decode() if isinstance(image_id, bytes) else image_id


def test_tfds_voc_reads_back_the_folder_exactly(prepared_voc):
  config = default.get_tiny_config()
  config.dataset = 'tfds:voc_segmentation/2012'
  config.data_dir = prepared_voc
  train, val, info = input_pipeline.create_datasets(config)
  assert 'tensorflow' not in sys.modules
  assert info.class_names == voc.VOC_CLASS_NAMES
  assert (len(train), len(val)) == (3, 2)
  folder = voc.VOCLayoutSource(MINI, 'trainval', 21)
  seen = set()
  for source in (train, val):
    for i in range(len(source)):
      example = source[i]
      image_id = _image_id(source, i)
      expected = folder[folder.ids.index(image_id)]
      seen.add(image_id)
      np.testing.assert_array_equal(example['label'], expected['label'])
      # Original JPEG bytes, decoded by PIL on both paths: identical pixels.
      np.testing.assert_array_equal(example['image'], expected['image'])
  assert seen == set(folder.ids)


def test_tfds_training_batches(prepared_voc):
  config = default.get_tiny_config()
  config.dataset = 'tfds:voc_segmentation/2012'
  config.data_dir = prepared_voc
  config.image_size = 32
  train, _, info = input_pipeline.create_datasets(config)
  batch = input_pipeline.train_dataset_from_config(train, config, info)[0]
  assert batch['image'].shape == (4, 32, 32, 3)
  assert batch['label'].dtype == np.int32
  assert set(np.unique(batch['label'])) <= set(range(21)) | {255}


def test_not_prepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(decode.DataError,
                     match='tfds:sbd_segmentation: not prepared under .*run: '
                     'python -m fcn_jax.data.prepare --name=sbd_segmentation'):
    tfds_sources.TfdsSource('sbd_segmentation', 'train', str(tmp_path), 21)


def test_pet_trimaps_map_to_classes():
  source = object.__new__(tfds_sources.TfdsSource)
  source.spec = tfds_sources.SPECS['oxford_iiit_pet']
  source.name = 'oxford_iiit_pet'
  source._lut = tfds_sources._label_lut(source.spec.label_map)
  trimap = np.array([[1, 2, 3], [3, 2, 1]], np.uint8)[..., None]
  image = np.zeros((2, 3, 3), np.uint8)
  _, label = source._arrays({'image': image, 'segmentation_mask': trimap}, 'x')
  np.testing.assert_array_equal(label, [[1, 0, 255], [255, 0, 1]])
  with pytest.raises(decode.DataError, match=r'label values \[0\] are not in '
                     "the label map of 'oxford_iiit_pet'"):
    source._arrays({'image': image, 'segmentation_mask': trimap * 0}, 'x')


def _folder_labels(source):
  return {image_id: source[i]['label'] for i, image_id in enumerate(source.ids)}


def _tfds_labels(name, data_dir, split, num_classes=21):
  source = tfds_sources.TfdsSource(name, split, data_dir, num_classes)
  return {_image_id(source, i): source[i]['label'] for i in range(len(source))}


def _assert_same_labels(got, expected):
  assert sorted(got) == sorted(expected)
  for image_id, label in expected.items():
    np.testing.assert_array_equal(got[image_id], label)


def test_voc_builder_reads_the_original_tar(tmp_path):
  # The archive as downloaded: VOCtrainval_11-May-2012.tar holding
  # VOCdevkit/VOC2012/..., left packed in the manual_dir.
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  with tarfile.open(manual_dir / 'VOCtrainval_11-May-2012.tar', 'w') as tar:
    tar.add(MINI, arcname='VOCdevkit/VOC2012')
  data_dir = str(tmp_path / 'tfds')
  prepare.prepare('voc_segmentation/2012', data_dir, str(manual_dir))
  for split in ('train', 'val'):
    _assert_same_labels(
        _tfds_labels('voc_segmentation/2012', data_dir, split),
        _folder_labels(voc.VOCLayoutSource(MINI, split, 21)))


def test_sbd_builder_reads_the_original_tgz(tmp_path):
  # benchmark.tgz holds benchmark_RELEASE/dataset/{img,cls,train.txt,val.txt}.
  unpacked = tmp_path / 'unpacked'
  rng = np.random.default_rng(0)
  labels = {'2008_000002': rng.integers(0, 21, (5, 7)).astype(np.uint8),
            '2008_000003': rng.integers(0, 21, (6, 4)).astype(np.uint8)}
  dataset = test_data_sbd._write_sbd(unpacked, labels)
  (dataset / 'train.txt').write_text('2008_000002\n')
  (dataset / 'val.txt').write_text('2008_000003\n')
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  with tarfile.open(manual_dir / 'benchmark.tgz', 'w:gz') as tar:
    tar.add(unpacked / 'benchmark_RELEASE', arcname='benchmark_RELEASE')
  data_dir = str(tmp_path / 'tfds')
  prepare.prepare('sbd_segmentation', data_dir, str(manual_dir))
  for split, image_id in (('train', '2008_000002'), ('val', '2008_000003')):
    _assert_same_labels(_tfds_labels('sbd_segmentation', data_dir, split),
                        {image_id: labels[image_id]})


def test_truncated_archive_names_the_file_and_leaves_nothing(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  with tarfile.open(tmp_path / 'whole.tgz', 'w:gz') as tar:
    tar.add(MINI, arcname='benchmark_RELEASE/dataset')
  data = (tmp_path / 'whole.tgz').read_bytes()
  (manual_dir / 'benchmark.tgz').write_bytes(data[:len(data) // 2])
  data_dir = tmp_path / 'tfds'
  with pytest.raises(decode.DataError, match='benchmark.tgz: cannot unpack'):
    prepare.prepare('sbd_segmentation', str(data_dir), str(manual_dir))
  extracted = data_dir / 'downloads' / 'extracted'
  assert not extracted.exists() or not os.listdir(extracted)
