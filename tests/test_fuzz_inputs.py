"""Seeded fuzzing of every input format: corrupted files end in success or
in our one-line error class (a UserError), never in another exception, a
hang or unbounded memory.

Each format gets CASES mutations (bit flips, truncations, insertions,
overwritten and duplicated chunks) of a small valid file, from seed
SEEDS[format]; only the parsers run (no model). The per-format outcome
counts are in docs/fault_tolerance.md.
"""

import collections
import io
import os
import resource
import signal
import time

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

import pth_builder
from fcn_jax import errors
from fcn_jax import fault_tolerance
from fcn_jax import pth
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import tiny
from fcn_jax.data import decode
from fcn_jax.data import sbd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_MINI = os.path.join(ROOT, 'tests', 'data', 'voc-real-mini')
CASES = 300
SEEDS = {'jpeg': 101, 'png': 102, 'label_png': 103, 'mat': 104,
         'mat_uncompressed': 110,
         'pth_zip': 105, 'pth_legacy': 106, 'split': 107, 'config_json': 108,
         'caffemodel': 109, 'label_mat': 111, 'label_mat_uncompressed': 112}
CASE_TIMEOUT_S = 10  # A case running longer counts as a hang.
MEMORY_GROWTH_MB = 300  # Bound on the process's peak memory growth.


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
  """One random corruption of `data` (seeded)."""
  data = bytearray(data)
  kind = rng.integers(5)
  if kind == 0:  # Flip 1-8 bits.
    for _ in range(rng.integers(1, 9)):
      i = rng.integers(len(data))
      data[i] ^= 1 << int(rng.integers(8))
  elif kind == 1:  # Truncate.
    del data[rng.integers(len(data)):]
  elif kind == 2:  # Insert 1-64 random bytes.
    i = rng.integers(len(data) + 1)
    data[i:i] = rng.integers(0, 256, rng.integers(1, 65), np.uint8).tobytes()
  elif kind == 3:  # Overwrite a chunk with random bytes.
    i = rng.integers(len(data))
    n = int(rng.integers(1, 33))
    data[i:i + n] = rng.integers(0, 256, n, np.uint8).tobytes()
  else:  # Duplicate a chunk.
    i = rng.integers(len(data))
    chunk = data[i:i + int(rng.integers(1, 65))]
    j = rng.integers(len(data) + 1)
    data[j:j] = chunk
  return bytes(data)


class _Hang(Exception):
  pass


def _alarm(signum, frame):
  del signum, frame
  raise _Hang()


def fuzz(name, valid: bytes, parse, path, allowed=(errors.UserError,)):
  """Runs CASES mutations of `valid` through parse(path); returns counts."""
  rng = np.random.default_rng(SEEDS[name])
  parse(str(_write(path, valid)))  # The unmutated file parses.
  counts = collections.Counter()
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  previous = signal.signal(signal.SIGALRM, _alarm)
  try:
    for case in range(CASES):
      _write(path, mutate(valid, rng))
      signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
      try:
        parse(str(path))
        counts['parsed'] += 1
      except allowed as e:
        assert str(e).strip(), (name, case)
        counts['error'] += 1
      except _Hang:
        pytest.fail(f'{name} case {case} (seed {SEEDS[name]}) ran over '
                    f'{CASE_TIMEOUT_S}s')
      except Exception as e:  # pylint: disable=broad-except
        pytest.fail(f'{name} case {case} (seed {SEEDS[name]}): unhandled '
                    f'{type(e).__name__}: {e}')
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
  finally:
    signal.signal(signal.SIGALRM, previous)
  growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
  assert growth < MEMORY_GROWTH_MB, (name, growth)
  print(f'fuzz {name}: seed {SEEDS[name]}, {CASES} cases, '
        f'{counts["parsed"]} parsed, {counts["error"]} one-line errors')
  return counts


def _write(path, data):
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _encoded(image: Image.Image, fmt: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt)
  return buffer.getvalue()


def _small_photo() -> Image.Image:
  with Image.open(os.path.join(VOC_MINI, 'JPEGImages',
                               '2007_000063.jpg')) as image:
    return image.convert('RGB').resize((48, 36))


def _both_readers(path):
  decode.read_image(path)
  decode.read_input_image(path)


def _assert_mostly_refused(counts):
  # The corruptions are real: most of them are detected.
  assert counts['error'] > CASES // 4, counts


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_fuzz_images(tmp_path, fmt):
  valid = _encoded(_small_photo(), fmt.upper())
  counts = fuzz(fmt, valid, _both_readers, tmp_path / f'x.{fmt}')
  assert counts['parsed'] + counts['error'] == CASES
  if fmt == 'png':  # CRCs catch nearly everything; JPEG decodes garbage.
    _assert_mostly_refused(counts)


def test_fuzz_label_png(tmp_path):
  with Image.open(os.path.join(VOC_MINI, 'SegmentationClass',
                               '2007_000063.png')) as label:
    small = label.resize((48, 36), Image.NEAREST)
    valid = _encoded(small, 'PNG')
  assert Image.open(io.BytesIO(valid)).mode == 'P'
  _assert_mostly_refused(fuzz('label_png', valid, decode.read_label_png,
                              tmp_path / 'label.png'))


def _sbd_gtcls(label):
  """GTcls as SBD stores it: Segmentation, a cell of sparse boundary maps,
  CategoriesPresent."""
  boundaries = np.empty((3, 1), object)
  for i in range(3):
    boundaries[i, 0] = scipy.sparse.csc_matrix(label == i + 1)
  return {'Segmentation': label, 'Boundaries': boundaries,
          'CategoriesPresent': np.unique(label[label > 0]).astype(np.uint8)}


@pytest.mark.parametrize('compressed', [True, False])
@pytest.mark.parametrize('dtype', [np.uint8, np.float64])
def test_mat_reader_matches_scipy(tmp_path, compressed, dtype):
  label = np.random.default_rng(3).integers(0, 4, (17, 23)).astype(dtype)
  path = tmp_path / 'a.mat'
  scipy.io.savemat(path, {'before': np.ones(5), 'GTcls': _sbd_gtcls(label)},
                   do_compression=compressed)
  expected = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)[
      'GTcls'].Segmentation
  got = sbd.read_sbd_label(str(path))
  assert got.dtype == np.uint8 and got.shape == (17, 23)
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('compressed', [True, False])
def test_fuzz_sbd_mat(tmp_path, compressed):
  # scipy.io.loadmat crashed the whole process (segmentation fault) on
  # corrupted files of this kind, found by this test: SBD labels have their
  # own bounded reader (fcn_jax/data/mat5.py).
  label = np.zeros((20, 30), np.uint8)
  label[5:15, 10:25] = 2
  path = tmp_path / 'good.mat'
  scipy.io.savemat(path, {'GTcls': _sbd_gtcls(label)},
                   do_compression=compressed)
  valid = path.read_bytes()
  np.testing.assert_array_equal(sbd.read_sbd_label(str(path)), label)
  name = 'mat' if compressed else 'mat_uncompressed'
  fuzz(name, valid, sbd.read_sbd_label, tmp_path / 'x.mat')


@pytest.mark.parametrize('compressed', [True, False])
def test_fuzz_label_map_mat(tmp_path, compressed):
  # NYUDv2 / SIFT Flow / PASCAL-Context labels: a plain numeric variable,
  # read by the same bounded reader (scipy's agrees on the valid file).
  label = np.zeros((20, 30), np.uint16)
  label[5:15, 10:25] = 40
  path = tmp_path / 'good.mat'
  scipy.io.savemat(path, {'other': np.ones(3), 'segmentation': label},
                   do_compression=compressed)
  valid = path.read_bytes()
  expected = scipy.io.loadmat(path)['segmentation']
  got = decode.mat_label_map(str(path), 'segmentation', 0, 40)
  np.testing.assert_array_equal(got, expected)

  def parse(p):
    decode.mat_label_map(str(p), 'segmentation', 0, 40)
  name = 'label_mat' if compressed else 'label_mat_uncompressed'
  fuzz(name, valid, parse, tmp_path / 'x.mat')


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_fuzz_pth(tmp_path, fmt):
  tensors, zip_storages, legacy_storages, _ = pth_builder.small_state_dict()
  if fmt == 'zip':
    pth_builder.write_zip(tmp_path / 'good.pth', tensors, zip_storages)
    valid = (tmp_path / 'good.pth').read_bytes()
  else:
    valid = pth_builder.legacy_bytes(tensors, legacy_storages)
  _assert_mostly_refused(fuzz(f'pth_{fmt}', valid, pth.load_pth,
                              tmp_path / 'x.pth'))


def test_fuzz_split_list(tmp_path):
  valid = b''.join(f'2008_{i:06d}\n'.encode() for i in range(40))
  counts = fuzz('split', valid, decode.read_split, tmp_path / 'train.txt')
  assert counts['parsed'] > 0


def test_fuzz_config_json(tmp_path):
  config = tiny.get_config()
  config.num_classes = 7
  workdir_lib.save_config(config, str(tmp_path))
  path = tmp_path / 'config.json'
  valid = path.read_bytes()

  def parse(unused_path):
    fault_tolerance.check_resume_config(config, str(tmp_path), False)
    workdir_lib.load_config(str(tmp_path))
  _assert_mostly_refused(fuzz('config_json', valid, parse, path))


def test_fuzz_caffemodel(tmp_path):
  import caffe_testutil  # pylint: disable=g-import-not-at-top
  from fcn_jax import caffemodel  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  layers = [('conv1', 'Convolution', [rng.normal(size=(4, 3, 3, 3)).astype(
      np.float32), rng.normal(size=(4,)).astype(np.float32)], None),
            ('fc6', 'InnerProduct', [rng.normal(size=(5, 36)).astype(
                np.float32)], None)]
  valid = caffe_testutil.net_bytes(layers)
  fuzz('caffemodel', valid, caffemodel.read_caffemodel,
       tmp_path / 'x.caffemodel')
