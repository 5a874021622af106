"""Hostile input files: each is one clear error, in bounded memory and time,
with nothing written half-way."""

import os
import pickle
import resource
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import pth_builder
from fcn_jax import convert
from fcn_jax import errors
from fcn_jax import pth
from fcn_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _max_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_builder_files_are_valid(tmp_path):
  # The builder writes what torch writes (torch reads them too, when
  # installed); our reader gets the arrays back.
  tensors, zip_storages, legacy_storages, expected = (
      pth_builder.small_state_dict())
  zip_path, legacy_path = tmp_path / 'z.pth', tmp_path / 'l.pth'
  pth_builder.write_zip(zip_path, tensors, zip_storages)
  legacy_path.write_bytes(pth_builder.legacy_bytes(tensors, legacy_storages))
  for path in (zip_path, legacy_path):
    loaded = pth.load_pth(str(path))
    for key, value in expected.items():
      assert loaded[key].dtype == value.dtype
      np.testing.assert_array_equal(loaded[key], value)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  for path in (zip_path, legacy_path):
    loaded = torch.load(str(path), weights_only=True)
    np.testing.assert_array_equal(loaded['conv.weight'].numpy(),
                                  expected['conv.weight'])


def test_stride_zero_view_declaring_a_huge_tensor_is_refused(tmp_path):
  # One float, viewed as a 2^20 x 2^20 tensor (4 TiB) through stride 0.
  path = tmp_path / 'expand.pth'
  tensors = {'w': ('0', np.float32, 1, 0, (1 << 20, 1 << 20), (0, 0))}
  pth_builder.write_zip(path, tensors, {'0': np.ones(1, np.float32).tobytes()})
  before = _max_rss_mb()
  with pytest.raises(pth.WeightsFileError,
                     match=r'expand.pth: tensor of shape \(1048576, 1048576\)'
                     r'.*stride-0'):
    pth.load_pth(str(path))
  assert _max_rss_mb() - before < 100
  # A small broadcast view stays readable (what torch.expand saves).
  small = tmp_path / 'small.pth'
  pth_builder.write_zip(small, {'w': ('0', np.float32, 1, 0, (3, 2), (0, 0))},
                        {'0': np.full(1, 2.5, np.float32).tobytes()})
  np.testing.assert_array_equal(pth.load_pth(str(small))['w'],
                                np.full((3, 2), 2.5, np.float32))


def test_legacy_storage_declaring_2_40_elements_is_refused(tmp_path):
  path = tmp_path / 'legacy.pth'
  numel = 1 << 40
  tensors = {'w': ('0', np.float32, numel, 0, (4,), (1,))}
  path.write_bytes(pth_builder.legacy_bytes(
      tensors, {'0': (np.ones(4, np.float32).tobytes(), np.float32)},
      declared={'0': numel}))
  before = _max_rss_mb()
  with pytest.raises(pth.WeightsFileError,
                     match=r'legacy.pth: truncated or corrupt storage 0 '
                     r'\(declares 1099511627776 elements\)'):
    pth.load_pth(str(path))
  assert _max_rss_mb() - before < 100


def test_zip_storage_bomb_is_refused(tmp_path):
  path = tmp_path / 'bomb.pth'
  numel = (pth.MAX_EXPANDED_TENSOR_BYTES // 4) + 1024
  tensors = {'w': ('0', np.float32, numel, 0, (numel,), (1,))}
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED,
                       compresslevel=1) as f:
    f.writestr('archive/data.pkl', pth_builder.tensor_pickle(tensors))
    f.writestr('archive/data/0', bytes(numel * 4))
  assert os.path.getsize(path) < 1 << 20
  with pytest.raises(pth.WeightsFileError, match='decompression bomb'):
    pth.load_pth(str(path))


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_truncation_anywhere_is_one_clear_error(tmp_path, fmt):
  tensors, zip_storages, legacy_storages, _ = pth_builder.small_state_dict()
  good = tmp_path / 'good.pth'
  if fmt == 'zip':
    pth_builder.write_zip(good, tensors, zip_storages)
  else:
    good.write_bytes(pth_builder.legacy_bytes(tensors, legacy_storages))
  data = good.read_bytes()
  path = tmp_path / 'cut.pth'
  for size in range(len(data)):  # Every field, every byte of it.
    path.write_bytes(data[:size])
    with pytest.raises((pth.WeightsFileError, pickle.UnpicklingError),
                       match='cut.pth') as info:
      pth.load_pth(str(path))
    assert isinstance(info.value, errors.UserError) or 'refusing' in str(
        info.value), (size, repr(info.value))


def test_convert_cli_hostile_pth_is_one_line_and_writes_nothing(tmp_path):
  path = tmp_path / 'expand.pth'
  pth_builder.write_zip(path, {
      'conv1_1.weight': ('0', np.float32, 1, 0, (1 << 20, 1 << 20), (0, 0))},
                        {'0': np.ones(1, np.float32).tobytes()})
  output = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'fcn_jax.convert', f'--input={path}',
       f'--output={output}', '--format=torchfcn'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ') and 'stride-0' in lines[-1]
  assert 'Traceback' not in proc.stderr and 'MemoryError' not in proc.stderr
  assert not output.exists()


def _tar_with(path, hostile):
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(path, 'w') as tar:
    info = tarfile.TarInfo('VOC/JPEGImages/a.jpg')
    info.size = 3
    tar.addfile(info, io.BytesIO(b'abc'))
    tar.addfile(hostile)


def _member(name, kind, linkname=''):
  import tarfile  # pylint: disable=g-import-not-at-top
  info = tarfile.TarInfo(name)
  info.type = kind
  info.linkname = linkname
  return info


@pytest.mark.parametrize('case', ['symlink', 'hardlink', 'device', 'fifo',
                                  'outside', 'absolute'])
def test_tar_with_links_special_files_or_escapes_is_refused(tmp_path, case):
  import tarfile  # pylint: disable=g-import-not-at-top
  from fcn_jax.data import decode  # pylint: disable=g-import-not-at-top
  from fcn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  hostile = {
      'symlink': _member('VOC/link', tarfile.SYMTYPE, 'JPEGImages/a.jpg'),
      'hardlink': _member('VOC/hard', tarfile.LNKTYPE, 'VOC/JPEGImages/a.jpg'),
      'device': _member('VOC/dev', tarfile.CHRTYPE),
      'fifo': _member('VOC/fifo', tarfile.FIFOTYPE),
      'outside': _member('VOC/../../escaped.txt', tarfile.REGTYPE),
      'absolute': _member('/tmp/escaped-abs.txt', tarfile.REGTYPE),
  }[case]
  archive = tmp_path / 'voc.tar'
  _tar_with(archive, hostile)
  target = tmp_path / 'out' / 'voc'
  os.makedirs(target.parent)
  with pytest.raises(decode.DataError, match='voc.tar: cannot unpack') as info:
    tfds_builders._extract(str(archive), str(target))  # pylint: disable=protected-access
  assert '\n' not in str(info.value)
  assert os.listdir(target.parent) == []  # Nothing half-written, no partial.
  assert not (tmp_path / 'escaped.txt').exists()


def _png_bytes(width, height):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


def _with_declared_size(png: bytes, width: int, height: int) -> bytes:
  """`png` whose IHDR declares width x height (CRC fixed): a bomb header."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib as zlib_  # pylint: disable=g-import-not-at-top
  ihdr = bytearray(png[12:29])  # b'IHDR' + 13 data bytes.
  ihdr[4:12] = struct.pack('>II', width, height)
  crc = struct.pack('>I', zlib_.crc32(bytes(ihdr)) & 0xffffffff)
  return png[:12] + bytes(ihdr) + crc + png[33:]


def _jpeg_with_declared_size(width: int, height: int) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, 'JPEG')
  data = bytearray(buffer.getvalue())
  sof = data.index(b'\xff\xc0')  # Baseline frame header: P, Y, X.
  data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
  return bytes(data)


@pytest.mark.parametrize('kind', ['png', 'jpeg'])
def test_decompression_bomb_is_our_error_and_the_limit_can_be_raised(
    tmp_path, monkeypatch, kind):
  from fcn_jax.data import decode  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(decode.MAX_PIXELS_ENV, raising=False)
  # 60000 x 60000 declared in a file of a few hundred bytes; also one just
  # above the limit, where PIL itself only warns and would decode 300 MB.
  for width, height in ((60000, 60000), (10000, 9000)):
    path = tmp_path / f'bomb.{kind}'
    path.write_bytes(_with_declared_size(_png_bytes(8, 8), width, height)
                     if kind == 'png' else
                     _jpeg_with_declared_size(width, height))
    assert os.path.getsize(path) < 2000
    message = f'{width * height:,} pixels, above the limit of 89,478,485'
    with pytest.raises(decode.DataError, match=message):
      decode.read_image(str(path))
    with pytest.raises(decode.ImageError, match=message):
      decode.read_input_image(str(path))
    if kind == 'png':
      with pytest.raises(decode.DataError, match=message):
        decode.read_label_png(str(path))
  # A real image above a lowered limit is refused; raising it reads it.
  path = tmp_path / f'real.{kind}'
  path.write_bytes(_png_bytes(40, 30))
  try:
    decode.set_max_image_pixels(1000)
    with pytest.raises(decode.DataError,
                       match='raise config.max_image_pixels'):
      decode.read_image(str(path))
    decode.set_max_image_pixels(1200)
    assert decode.read_image(str(path)).shape == (30, 40, 3)
    assert decode.read_input_image(str(path))[0].shape == (30, 40, 3)
  finally:
    decode.set_max_image_pixels(decode.DEFAULT_MAX_IMAGE_PIXELS)


def test_huge_image_is_segmented_in_bands_with_bounded_memory():
  import tracemalloc  # pylint: disable=g-import-not-at-top
  from fcn_jax import inference  # pylint: disable=g-import-not-at-top
  from fcn_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fcn_jax import models  # pylint: disable=g-import-not-at-top
  from fcn_jax.configs import default  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  model = models.get_model('fcn8s', 4, width=1 / 16, input_padding=1,
                           fc6_padding=3)
  rng = np.random.default_rng(1)
  # Random He-scaled weights from the shapes alone (no eager init: fast).
  params = jax.tree.map(
      lambda s: (rng.normal(size=s.shape) * np.sqrt(
          2 / np.prod(s.shape[:-1])) if len(s.shape) == 4 else
                 np.zeros(s.shape)).astype(np.float32),
      jax.eval_shape(lambda: models.init_params(model, jax.random.key(0))))
  segmenter = inference.Segmenter(
      model=model, params=params, config=default.get_tiny_config(),
      class_names=('a', 'b', 'c', 'd'), palette=input_pipeline.voc_palette(4),
      max_pixels=32 * 32, auto_window=32)
  image = np.random.default_rng(0).integers(0, 256, (480, 40, 3), np.uint8)
  # Reference: every tile's probabilities summed into one whole-image buffer.
  full = np.argmax(segmenter.probabilities(image, window=32), axis=-1)
  assert len(np.unique(full)) > 1
  segmenter.logits(image[:32, :32])  # Compiled before measuring.
  tracemalloc.start()
  labels = segmenter.segment(image)  # No window asked: the budget tiles it.
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  np.testing.assert_array_equal(labels, full)
  whole_image_probabilities = 480 * 40 * 4 * 4
  assert peak < whole_image_probabilities / 2, peak


def test_orbax_checkpoint_declaring_absurd_sizes_is_refused(tmp_path):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  from fcn_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from fcn_jax import inference  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'converted')
  workdir_lib.save_params(path, {'conv1_1': {
      'kernel': np.ones((3, 3, 3, 4), np.float32),
      'bias': np.zeros(4, np.float32)}}, {'format': 'test'})
  # Rewrite one array's zarr metadata to declare 48 TiB (no data written).
  ts.open({'driver': 'zarr', 'path': 'conv1_1.kernel',
           'kvstore': {'driver': 'ocdbt', 'base': f'file://{path}/params/'},
           'metadata': {'shape': [1 << 20, 1 << 20, 3, 4],
                        'chunks': [1, 1, 3, 4], 'dtype': '<f4'}},
          create=True, delete_existing=True).result()
  before = _max_rss_mb()
  with pytest.raises(workdir_lib.DeclaredSizeError,
                     match='declares 52,776,558,133,264 bytes of arrays'):
    workdir_lib.load_params(path)
  with pytest.raises(workdir_lib.CheckpointError, match='refusing to allocate'):
    workdir_lib.restore_params(path)
  assert _max_rss_mb() - before < 100
