"""VOC-layout loaders ('voc', 'voc_dir') on the real sample and bad inputs."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fcn_jax import input_pipeline
from fcn_jax.configs import default
from fcn_jax.data import decode
from fcn_jax.data import voc

MINI = os.path.join(os.path.dirname(__file__), 'data', 'voc-real-mini')

# From tests/data/voc-real-mini/PROVENANCE.md (class index -> pixels).
HISTOGRAMS = {
    '2007_000063': {0: 72224, 9: 78930, 12: 27632, 255: 8714},
    '2007_000129': {0: 54389, 2: 34183, 15: 61143, 255: 17285},
    '2011_000025': {0: 62022, 6: 118222, 7: 7256},
}


def _config(data_dir, **overrides):
  config = default.get_tiny_config()
  config.dataset = 'voc_dir'
  config.data_dir = data_dir
  config.update(overrides)
  return config


def _copy_mini(tmp_path, name='mini'):
  root = tmp_path / name
  shutil.copytree(MINI, root)
  for dirpath, _, filenames in os.walk(root):  # The shared copy is read-only.
    os.chmod(dirpath, 0o755)
    for filename in filenames:
      os.chmod(os.path.join(dirpath, filename), 0o644)
  return root


def test_voc_dir_reads_real_sample_with_its_meta_data():
  train, val, info = input_pipeline.create_datasets(_config(MINI))
  assert train.ids == ['2007_000063', '2011_000003', '2011_000025']
  assert val.ids == ['2007_000129', '2011_000006']
  assert info.num_classes == 21 and info.class_names[0] == '_background_'
  assert (info.train_size, info.val_size) == (3, 2)
  example = val[0]
  # 2007_000129 is 334x500 (WxH) per PROVENANCE.md.
  assert example['image'].shape == (500, 334, 3)
  assert example['image'].dtype == np.uint8
  assert example['label'].shape == (500, 334)


@pytest.mark.parametrize('image_id', sorted(HISTOGRAMS))
def test_label_class_histogram_read_back_exactly(image_id):
  _, _, info = input_pipeline.create_datasets(_config(MINI))
  source = voc.VOCLayoutSource(MINI, 'trainval', info.num_classes)
  label = source[source.ids.index(image_id)]['label']
  values, counts = np.unique(label, return_counts=True)
  assert dict(zip(values.tolist(), counts.tolist())) == HISTOGRAMS[image_id]


def test_palette_label_is_read_as_indices_not_colours():
  path = os.path.join(MINI, 'SegmentationClass', '2007_000063.png')
  with Image.open(path) as image:
    assert image.mode == 'P'
    indices = np.array(image)  # PIL's palette indices, independently.
    rgb = np.array(image.convert('RGB'))
  label = decode.read_label_png(path)
  np.testing.assert_array_equal(label, indices)
  # The colours are the VOC colour map of those indices (255 -> 224,224,192).
  np.testing.assert_array_equal(rgb, input_pipeline.voc_palette()[label])
  assert (label == 255).sum() == 8714


def test_grayscale_label_png(tmp_path):
  label = np.array([[0, 1, 255], [2, 2, 0]], np.uint8)
  path = str(tmp_path / 'l.png')
  Image.fromarray(label, 'L').save(path)
  np.testing.assert_array_equal(decode.read_label_png(path), label)
  Image.fromarray(np.zeros((2, 3, 3), np.uint8), 'RGB').save(path)
  with pytest.raises(decode.DataError, match="l.png: label PNG has mode 'RGB'"):
    decode.read_label_png(path)


def test_16_bit_label_png_is_read_when_it_fits_and_refused_otherwise(
    tmp_path):
  label = np.array([[0, 1, 255], [2, 20, 0]], np.uint16)
  path = str(tmp_path / 'l16.png')
  Image.fromarray(label).save(path)
  with Image.open(path) as image:
    assert image.mode == 'I;16'  # A real 16-bit PNG, not 8-bit.
  np.testing.assert_array_equal(decode.read_label_png(path),
                                label.astype(np.uint8))
  label[1, 1] = 256 + 20  # Would wrap to 20 as uint8.
  Image.fromarray(label).save(path)
  with pytest.raises(decode.DataError,
                     match=r'l16.png: label values 0..276 do not fit 0..255'):
    decode.read_label_png(path)


def test_voc_finds_vocdevkit_year_folder(tmp_path):
  devkit = tmp_path / 'VOCdevkit'
  devkit.mkdir()
  _copy_mini(devkit, 'VOC2012')
  config = _config(str(tmp_path), dataset='voc')
  train, val, info = input_pipeline.create_datasets(config)
  assert info.class_names == voc.VOC_CLASS_NAMES
  assert (len(train), len(val)) == (3, 2)
  assert train.root == str(devkit / 'VOC2012')
  config.voc_year = '2011'
  with pytest.raises(decode.DataError, match='no VOC folder found'):
    input_pipeline.create_datasets(config)


def test_missing_data_dir():
  with pytest.raises(decode.DataError, match="data_dir='/nonexistent/x'.*not "
                     'found'):
    input_pipeline.create_datasets(_config('/nonexistent/x'))


def test_missing_image_names_the_file_or_is_skipped(tmp_path):
  root = _copy_mini(tmp_path)
  os.remove(root / 'JPEGImages' / '2011_000003.jpg')
  with pytest.raises(decode.DataError, match='2011_000003.jpg: file not found'):
    input_pipeline.create_datasets(_config(str(root)))
  train, _, _ = input_pipeline.create_datasets(
      _config(str(root), skip_bad_examples=True))
  assert train.ids == ['2007_000063', '2011_000025']


def test_size_mismatch(tmp_path):
  root = _copy_mini(tmp_path)
  path = root / 'SegmentationClass' / '2011_000025.png'
  with Image.open(path) as image:
    image.crop((0, 0, 100, 50)).save(path)
  train, _, _ = input_pipeline.create_datasets(_config(str(root)))
  with pytest.raises(decode.DataError,
                     match=r'2011_000025.png: label is 100x50 \(WxH\) but its '
                     r'image .*2011_000025.jpg is 500x375'):
    train[2]  # pylint: disable=pointless-statement


def test_label_out_of_range_or_skipped(tmp_path):
  root = _copy_mini(tmp_path)
  path = root / 'SegmentationClass' / '2011_000025.png'
  label = decode.read_label_png(str(path))
  label[0, :3] = [21, 40, 255]
  Image.fromarray(label, 'L').save(path)
  train, _, _ = input_pipeline.create_datasets(_config(str(root)))
  with pytest.raises(decode.DataError, match=r'2011_000025.png: label values '
                     r'\[21, 40\] are outside \[0, 21\)'):
    train[2]  # pylint: disable=pointless-statement
  train, _, _ = input_pipeline.create_datasets(
      _config(str(root), skip_bad_examples=True))
  example = train[2]
  assert (example['label'] == 255).all()  # Contributes nothing.
  assert train.skipped.count == 1


def test_truncated_image(tmp_path):
  root = _copy_mini(tmp_path)
  path = root / 'JPEGImages' / '2011_000006.jpg'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  _, val, _ = input_pipeline.create_datasets(_config(str(root)))
  with pytest.raises(decode.DataError,
                     match='2011_000006.jpg: unreadable or truncated image'):
    val[1]  # pylint: disable=pointless-statement


def test_empty_split_and_missing_split(tmp_path):
  root = _copy_mini(tmp_path)
  (root / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('\n\n')
  with pytest.raises(decode.DataError, match='val.txt: split list is empty'):
    input_pipeline.create_datasets(_config(str(root)))
  with pytest.raises(decode.DataError, match='nope.txt: split list not found'):
    input_pipeline.create_datasets(_config(str(root), val_split='nope'))


def test_num_classes_without_class_names_file(tmp_path):
  root = _copy_mini(tmp_path)
  os.remove(root / 'class_names.txt')
  with pytest.raises(decode.DataError, match='no class_names.txt'):
    input_pipeline.create_datasets(_config(str(root)))
  _, _, info = input_pipeline.create_datasets(_config(str(root),
                                                      num_classes=21))
  assert info.class_names[20] == 'class_20'
  # With fewer classes, index 15 (person) in the labels is out of range.
  train, _, _ = input_pipeline.create_datasets(_config(str(root),
                                                       num_classes=10))
  with pytest.raises(decode.DataError, match=r'label values \[12\]'):
    train[0]  # pylint: disable=pointless-statement
