"""Tests of fcn_jax.predict (CLI) and the palette PNG format it writes."""

import os
import re
import shutil

import numpy as np
from PIL import Image

from fcn_jax import inference
from fcn_jax import tiling
from fcn_jax import input_pipeline
from fcn_jax import predict
from fcn_jax import visualize
from fcn_jax.data import decode
from inference_testutil import VOC_MINI
from inference_testutil import run_module
from inference_testutil import trained_workdir  # pylint: disable=unused-import

import pytest


def test_palette_png_round_trip(tmp_path):
  labels = np.random.default_rng(0).integers(0, 21, (17, 23)).astype(np.uint8)
  palette = input_pipeline.voc_palette(21)
  path = str(tmp_path / 'labels.png')
  visualize.save_label_png(path, labels, palette)
  with Image.open(path) as image:
    assert image.mode == 'P'
    np.testing.assert_array_equal(np.asarray(image), labels)
    stored = np.asarray(image.getpalette()[:63], np.uint8).reshape(21, 3)
  np.testing.assert_array_equal(stored, palette)
  # VOC colours by hand: 1 = (128, 0, 0), 15 (person) = (192, 128, 128).
  assert tuple(stored[1]) == (128, 0, 0) and tuple(stored[15]) == (192, 128, 128)
  np.testing.assert_array_equal(decode.read_label_png(path), labels)


def test_empty_folder_and_missing_input(tmp_path):
  with pytest.raises(ValueError, match='holds no images'):
    predict.list_images(str(tmp_path))
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
    predict.list_images(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    predict.list_images(str(tmp_path / 'nowhere'))
  result = run_module('fcn_jax.predict', f'--checkpoint={tmp_path}',
                      f'--input={tmp_path}', f'--output={tmp_path}/out')
  assert result.returncode == 1
  assert f'--input={tmp_path}: folder holds no images' in result.stderr


def test_predict_folder_of_mixed_images(trained_workdir, tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  for name in ('2007_000129', '2011_000003'):  # 334x500 and 500x338.
    shutil.copy(os.path.join(VOC_MINI, 'JPEGImages', f'{name}.jpg'), folder)
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (31, 45), dtype=np.uint8)
  Image.fromarray(gray).save(folder / 'gray.png')
  Image.fromarray(rng.integers(0, 256, (21, 33, 4), dtype=np.uint8)).save(
      folder / 'rgba.png')
  Image.fromarray(gray.astype(np.uint16) * 257).save(folder / 'deep16.png')
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  # Stored 24 wide and 40 high, shown (and segmented) 40 wide and 24 high:
  # EXIF orientation 6 (in the 32x64 bucket of the small images).
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)).save(
      folder / 'sideways.jpg', exif=exif)
  (folder / 'README.txt').write_text('not an image, skipped')
  out = tmp_path / 'out'
  result = run_module('fcn_jax.predict', f'--workdir={trained_workdir}',
                      '--checkpoint=6', f'--input={folder}', f'--output={out}',
                      '--probabilities')
  # The broken file fails (named, non-zero exit); the others are written.
  assert result.returncode == 2, result.stderr[-2000:]  # Some failed.
  assert 'broken.jpg: cannot read image' in result.stderr
  assert 'Segmented 6 of 7 image(s)' in result.stdout
  assert '_CHECKPOINT_METADATA' not in result.stderr  # No Orbax warning.
  for warning in ('gray.png: grayscale', 'rgba.png: alpha',
                  'deep16.png: 16-bit'):
    assert warning in result.stderr
  sizes = {'2007_000129': (500, 334), '2011_000003': (338, 500),
           'gray': (31, 45), 'rgba': (21, 33), 'deep16': (31, 45),
           'sideways': (24, 40)}
  names = inference.load(trained_workdir, '6').class_names
  for stem, size in sizes.items():
    with Image.open(out / f'{stem}.png') as labels:
      assert labels.mode == 'P' and labels.size[::-1] == size
    with Image.open(out / f'{stem}_overlay.png') as overlay:
      assert overlay.size[::-1] == size
    for name in names:
      assert (out / f'{stem}_prob_{name}.png').exists()
  assert not (out / 'broken.png').exists()
  # 5 distinct sizes, 3 bucket shapes: 512x384, 384x512 and 32x64 (shared by
  # the 31x45, 21x33 and 24x40 images): one compilation each.
  compiled = int(re.search(r'(\d+) compilation', result.stdout).group(1))
  buckets = {(tiling.bucket_size(h), tiling.bucket_size(w))
             for h, w in sizes.values()}
  assert buckets == {(512, 384), (384, 512), (32, 64)}
  assert compiled == len(buckets) < len(set(sizes.values()))
  # The label PNG holds what the API predicts for the same photo.
  segmenter = inference.load(trained_workdir, '6')
  photo = np.asarray(Image.open(folder / '2007_000129.jpg'))
  np.testing.assert_array_equal(
      decode.read_label_png(str(out / '2007_000129.png')),
      segmenter.segment(photo))


def test_wrong_architecture_exits_nonzero(trained_workdir, tmp_path):
  image = tmp_path / 'x.png'
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  result = run_module('fcn_jax.predict', f'--workdir={trained_workdir}',
                      '--model=fcn32s', f'--input={image}',
                      f'--output={tmp_path}/out')
  assert result.returncode == 1
  assert 'does not fit model fcn32s' in result.stderr
  assert 'checkpoints/' in result.stderr
