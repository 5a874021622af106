"""Converts existing weights into fcn_jax parameters ("net surgery").

    python -m fcn_jax.convert --input=vgg16_from_caffe.pth --output=weights/vgg16
    python -m fcn_jax.convert --input=fcn8s_from_caffe.pth --output=weights/fcn8s

Sources:

* VGG16 ImageNet classifiers as PyTorch state dicts: the Caffe VGG16 converted
  by pytorch-fcn (``vgg16_from_caffe.pth``: BGR, mean-subtracted 0-255 input,
  exactly our convention) and torchvision's ``vgg16-397923af.pth`` (RGB in
  [0, 1], normalized by mean/std; the normalization and the channel swap are
  folded into conv1_1). The fully connected fc6/fc7/fc8 become 7x7, 1x1 and
  1x1 convolutions: the paper's convolutionalization.
* FCN-32s/16s/8s/8s-at-once weights of wkentaro/pytorch-fcn
  (``from_torchfcn``), e.g. its ``fcn8s_from_caffe.pth``.
* The reference's own Caffe ``.caffemodel`` files (format detected from the
  file; see fcn_jax/caffemodel.py for the reader and fcn_jax/caffe_models.py
  for the released models and their layer tables), e.g.
  ``fcn8s-heavy-pascal.caffemodel`` or ``VGG_ILSVRC_16_layers.caffemodel``.

``.pth`` files are read WITHOUT torch by a restricted unpickler that only
rebuilds tensors (it refuses every other global, so a malicious pickle cannot
run code). The output is an Orbax checkpoint directory holding ``params`` and
``metadata``; `load_params` reads it back, as well as a training workdir, and
`init_from` merges it into a model's parameters (``config.init_from``).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from fcn_jax import checkpointing
from fcn_jax import errors
from fcn_jax import layers
from fcn_jax import models

# Known weight files: official source, checksum, format and FCN variant.
# md5 values are those pytorch-fcn's own downloader verifies; torchvision names
# its files by the first 8 hex digits of their sha256.
KNOWN_WEIGHTS = {
    'vgg16_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=1adDBTGY3GcEB_47dvcibajyzi872RAs3',
        md5='aa75b158f4181e7f6230029eb96c1b13', format='vgg16-caffe'),
    'vgg16-397923af.pth': dict(
        url='https://download.pytorch.org/models/vgg16-397923af.pth',
        sha256_prefix='397923af', format='vgg16-torchvision'),
    'fcn32s_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f',
        md5='d3eb467a80e7da0468a20dfcbc13e6c8', format='torchfcn',
        variant='fcn32s'),
    'fcn16s_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP',
        md5='a2d4035f669f09483b39c9a14a0d6670', format='torchfcn',
        variant='fcn16s'),
    'fcn8s_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI',
        md5='de93e540ec79512f8770033849c8ae89', format='torchfcn',
        variant='fcn8s'),
    'fcn8s-atonce_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=0B9P1L--7Wd2vblE1VUIxV1o2d2M',
        md5='bfed4437e941fef58932891217fe6464', format='torchfcn',
        variant='fcn8s-atonce'),
}

FORMATS = ('vgg16-caffe', 'vgg16-torchvision', 'torchfcn', 'caffemodel')

# torchvision's input normalization (RGB, [0, 1] scale).
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)

CONV_NAMES = tuple(f'conv{block}_{i}'
                   for block, (n, _) in enumerate(models.VGG16_BLOCKS, start=1)
                   for i in range(1, n + 1))
# Indices of the Conv2d / Linear layers in torchvision's VGG16 Sequentials.
VGG16_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CLASSIFIER_INDICES = {'fc6': 0, 'fc7': 3, 'fc8': 6}

# Score and upsampling layers of each FCN head, in pytorch-fcn's names.
SCORE_LAYERS = {
    'fcn32s': ('score_fr',),
    'fcn16s': ('score_fr', 'score_pool4'),
    'fcn8s': ('score_fr', 'score_pool4', 'score_pool3'),
    'fcn8s-atonce': ('score_fr', 'score_pool4', 'score_pool3'),
}
UPSCORE_LAYERS = {  # name -> upsampling factor
    'fcn32s': {'upscore': 32},
    'fcn16s': {'upscore2': 2, 'upscore16': 16},
    'fcn8s': {'upscore2': 2, 'upscore_pool4': 2, 'upscore8': 8},
    'fcn8s-atonce': {'upscore2': 2, 'upscore_pool4': 2, 'upscore8': 8},
}

CONVERTED_MARKER = 'metadata'  # Sub-directory of a converted checkpoint.


# ---------------------------------------------------------------------------
# Reading .pth files without torch.
# ---------------------------------------------------------------------------

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'LongStorage': np.int64,
    'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'BFloat16Storage': 'bfloat16',
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
# A tensor may hold more elements than its storage only through overlapping
# (stride-0, expanded) views; state dicts have none. Above this size such a
# view is refused: it would allocate what the file only declares.
MAX_EXPANDED_TENSOR_BYTES = 64 << 20
# torch stores storages uncompressed; a zip entry that inflates more than
# this (and is large) is a decompression bomb.
MAX_ZIP_INFLATION = 100


class WeightsFileError(pickle.UnpicklingError, ValueError, errors.UserError):
  """A weights file is malformed, truncated or declares absurd sizes."""


class _StorageType:
  """Stands in for torch.FloatStorage & co.: only carries the dtype."""

  def __init__(self, name: str):
    dtype = _STORAGE_DTYPES[name]
    if dtype == 'bfloat16':
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


class _Storage:
  """A flat typed buffer; `data` is filled in once the bytes are read."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, numel, None


class _TensorRef:
  """A tensor to cut out of a storage once all storages are read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)

  def materialize(self, source: str) -> np.ndarray:
    data = self.storage.data
    shape, stride = self.size, self.stride
    # Bounds check before as_strided: a crafted file must not read outside
    # the storage.
    if (not all(type(v) is int for v in shape + stride + (self.offset,))  # pylint: disable=unidiomatic-typecheck
        or len(shape) != len(stride) or self.offset < 0
        or any(s < 0 for s in stride) or any(n < 0 for n in shape)):
      raise pickle.UnpicklingError(f'{source}: malformed tensor layout.')
    if data is None:
      raise pickle.UnpicklingError(f'{source}: tensor of a storage that the '
                                   'file does not contain.')
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    if (numel > data.size and
        numel * data.itemsize > MAX_EXPANDED_TENSOR_BYTES):
      raise pickle.UnpicklingError(
          f'{source}: tensor of shape {shape} ({numel} elements) views a '
          f'storage of only {data.size} (stride-0 / overlapping view); '
          'refusing to expand it.')
    if 0 not in shape:
      last = self.offset + sum((n - 1) * s for n, s in zip(shape, stride))
      if last >= data.size:
        raise pickle.UnpicklingError(
            f'{source}: tensor exceeds its storage ({last} >= {data.size}).')
    else:
      return np.zeros(shape, data.dtype)
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=shape,
        strides=[s * data.itemsize for s in stride], writeable=False)
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  # torch._utils._rebuild_tensor(_v2): requires_grad, hooks, metadata unused.
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError('tensor without a storage')
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
  return data


# The only globals a state dict needs. Everything else is refused: pickle's
# REDUCE would otherwise call any importable function (os.system, eval, ...).
_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Refused(WeightsFileError):
  """The pickle asks for a global outside the allowlist."""


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles torch state dicts into numpy, refusing any other global."""

  def __init__(self, file, source: str, load_storage):
    super().__init__(file)
    self._source = source
    self._load_storage = load_storage

  def find_class(self, module, name):
    if module == 'torch' and name in _STORAGE_DTYPES:
      # torch pickles the storage class; its dtype is all we need.
      return _StorageType(name)
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise _Refused(
        f'{self._source}: refusing to load global {module}.{name}; only '
        'tensors and dicts of tensors (state dicts) are supported.')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
      raise pickle.UnpicklingError(
          f'{self._source}: unsupported persistent id {pid!r:.80}.')
    storage_type = pid[1]
    if not isinstance(storage_type, _StorageType) or self._load_storage is None:
      raise pickle.UnpicklingError(f'{self._source}: bad storage type.')
    return self._load_storage(storage_type.dtype, *pid[2:])


def _materialize(obj, source: str):
  """Replaces every _TensorRef in a nested container by a numpy array."""
  if isinstance(obj, _TensorRef):
    return obj.materialize(source)
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v, source)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, source) for v in obj)
  return obj


def _checked_unpickle(f: io.BytesIO, path: str, load_storage):
  """Unpickles the next pickle of `f` after checking every length in it.

  The C unpickler allocates a declared bytes length before reading it (a
  10-byte file can ask for terabytes); pickletools reads the opcodes with
  their declared lengths checked against what is left, allocating nothing.
  """
  start = f.tell()
  for _ in pickletools.genops(f):
    pass
  f.seek(start)
  return _RestrictedUnpickler(f, path, load_storage).load()


def _load_zip(path: str):
  """torch >= 1.6 format: <root>/data.pkl plus one <root>/data/<key> per storage."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
    if len(pickles) != 1:
      raise ValueError(f'{path}: not a torch checkpoint (expected one '
                       f'data.pkl in the zip archive, found {len(pickles)}).')
    root = pickles[0][:-len('data.pkl')]
    byteorder = 'little'
    if root + 'byteorder' in archive.namelist():
      byteorder = archive.read(root + 'byteorder').decode().strip()
    storages = {}

    def load_storage(dtype, key, unused_location, numel, *unused):
      if key not in storages:
        storage = _Storage(dtype, numel)
        info = archive.getinfo(f'{root}data/{key}')
        if (info.file_size > MAX_EXPANDED_TENSOR_BYTES and
            info.file_size > MAX_ZIP_INFLATION * max(info.compress_size, 1)):
          raise pickle.UnpicklingError(
              f'{path}: storage {key} inflates from {info.compress_size} to '
              f'{info.file_size} bytes (a decompression bomb?).')
        raw = archive.read(info)
        data = np.frombuffer(raw, dtype.newbyteorder(
            '<' if byteorder == 'little' else '>'))
        storage.data = data.astype(dtype.newbyteorder('='), copy=False)
        storages[key] = storage
      return storages[key]

    info = archive.getinfo(pickles[0])
    if info.file_size > MAX_EXPANDED_TENSOR_BYTES:
      raise pickle.UnpicklingError(f'{path}: {pickles[0]} declares '
                                   f'{info.file_size} bytes; too large.')
    with io.BytesIO(archive.read(info)) as f:
      obj = _checked_unpickle(f, path, load_storage)
  return _materialize(obj, path)


class _View(_Storage):
  """A legacy storage view: a slice of a root storage."""

  def __init__(self, root: _Storage, offset: int, size: int):
    super().__init__(root.dtype, size)
    self.root, self.offset = root, offset

  def resolve(self):
    self.data = self.root.data[self.offset:self.offset + self.numel]


def _load_legacy(path: str):
  """torch < 1.6 format: magic, protocol, sys info, main pickle, storages."""
  with open(path, 'rb') as raw_file:
    contents = raw_file.read()
  with io.BytesIO(contents) as f:
    header = lambda: _checked_unpickle(f, path, None)  # pylint: disable=unnecessary-lambda-assignment
    try:
      magic = header()
    except _Refused:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path}: not a PyTorch .pth file ({e}).') from e
    if magic != _LEGACY_MAGIC:
      raise ValueError(f'{path}: not a PyTorch .pth file (bad magic number).')
    if header() != _LEGACY_PROTOCOL:
      raise ValueError(f'{path}: unsupported legacy torch protocol.')
    sys_info = header()
    if not sys_info.get('little_endian', True):
      raise ValueError(f'{path}: big-endian legacy files are not supported.')

    storages = {}

    def load_storage(dtype, root_key, unused_location, numel, view=None):
      if root_key not in storages:
        storages[root_key] = _Storage(dtype, numel)
      if view is not None:  # (view_key, offset, size) of the root storage.
        view_key, offset, size = view
        if view_key not in storages:
          storages[view_key] = _View(storages[root_key], offset, size)
        return storages[view_key]
      return storages[root_key]

    obj = _checked_unpickle(f, path, load_storage)
    keys = _checked_unpickle(f, path, None)
    file_size = len(contents)
    if not isinstance(keys, list) or any(k not in storages for k in keys):
      raise ValueError(f'{path}: corrupt storage list.')
    for key in keys:
      storage = storages[key]
      header = f.read(8)
      numel = int(np.frombuffer(header, '<i8')[0]) if len(header) == 8 else -1
      nbytes = numel * storage.dtype.itemsize
      # Check the size the file declares against what it holds before
      # reading: f.read(n) allocates n bytes first.
      if (numel != storage.numel or numel < 0 or
          nbytes > file_size - f.tell()):
        raise ValueError(f'{path}: truncated or corrupt storage {key} '
                         f'(declares {numel} elements).')
      storage.data = np.frombuffer(contents, storage.dtype, numel, f.tell())
      f.seek(nbytes, io.SEEK_CUR)
    for storage in storages.values():
      if isinstance(storage, _View):
        storage.resolve()
  return _materialize(obj, path)


# What a malformed pickle or archive raises from deep inside the readers.
_MALFORMED_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError,
                     KeyError, IndexError, AttributeError, OverflowError,
                     UnicodeDecodeError, zipfile.BadZipFile, zlib.error,
                     struct.error, RecursionError, NotImplementedError,
                     RuntimeError)  # zipfile: "encrypted" flag bits.


def load_pth(path: str):
  """Loads a PyTorch .pth file into numpy arrays, without torch.

  Only tensors, dicts, lists and plain values are rebuilt; any other object in
  the pickle raises `pickle.UnpicklingError` (no code from the file runs).
  Both the zip format (torch >= 1.6) and the legacy format are supported.
  Every size the file declares is checked against what it holds before
  anything is allocated.

  Raises:
    FileNotFoundError: no such file.
    pickle.UnpicklingError: the pickle asks for a global outside the allowlist.
    WeightsFileError: anything else wrong with the file (truncated, corrupt,
      absurd declared sizes), naming it.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such weights file.')
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    return _load_legacy(path)
  except (_Refused, WeightsFileError):
    raise
  except OSError as e:
    if e.errno != errno.EINVAL:  # zipfile seeking to a corrupt offset.
      raise
    raise WeightsFileError(f'{path}: corrupt zip archive ({e}).') from e
  except _MALFORMED_ERRORS as e:
    text = ' '.join(str(e).split())[:200] or type(e).__name__
    if not text.startswith(path):
      text = f'{path}: {text}'
    raise WeightsFileError(f'{text} (truncated or corrupt .pth file?)') from e


def to_numpy(x) -> np.ndarray:
  """A torch tensor or array-like as a numpy array (torch is not imported)."""
  if hasattr(x, 'detach'):
    x = x.detach().cpu()
    if str(x.dtype) == 'torch.bfloat16':
      x = x.float()
    x = x.numpy()
  return np.asarray(x)


def state_dict_from(obj, source: str = 'checkpoint') -> dict[str, np.ndarray]:
  """The flat {name: array} state dict inside a loaded .pth object."""
  if isinstance(obj, Mapping):
    for key in ('model_state_dict', 'state_dict', 'model'):
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f'{source}: expected a state dict (name -> tensor).')
  state = {}
  for name, value in obj.items():
    value = to_numpy(value)
    if value.dtype.kind not in 'fiub':
      raise ValueError(f'{source}: entry {name!r} is not a tensor.')
    state[str(name)] = value
  return state


# ---------------------------------------------------------------------------
# Layout conversions.
# ---------------------------------------------------------------------------


def conv_kernel(weight) -> np.ndarray:
  """torch Conv2d weight (out, in, kh, kw) -> flax kernel (kh, kw, in, out)."""
  weight = to_numpy(weight)
  if weight.ndim != 4:
    raise ValueError(f'expected a 4-D conv weight, got shape {weight.shape}')
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32)


def conv_transpose_kernel(weight) -> np.ndarray:
  """torch ConvTranspose2d weight (in, out, kh, kw) -> (kh, kw, in, out).

  torch computes out[o, i*s+a, j*s+b] += x[c, i, j] * w[c, o, a, b];
  `layers.conv_transpose` computes the same with kernel[a, b, c, o]: a pure
  transpose, no spatial flip.
  """
  weight = to_numpy(weight)
  if weight.ndim != 4:
    raise ValueError(f'expected a 4-D weight, got shape {weight.shape}')
  return np.ascontiguousarray(weight.transpose(2, 3, 0, 1), np.float32)


def linear_to_conv_kernel(weight, spatial: int) -> np.ndarray:
  """A Linear weight (out, in_ch*spatial*spatial) as a conv kernel.

  torch flattens the (C, H, W) feature map channel-major, so input index
  c*spatial*spatial + h*spatial + w becomes kernel[h, w, c, :]. This is the
  paper's observation that a fully connected layer is a convolution whose
  kernel covers its whole input.
  """
  weight = to_numpy(weight)
  out_features, in_features = weight.shape
  channels = in_features // (spatial * spatial)
  if channels * spatial * spatial != in_features:
    raise ValueError(f'Linear weight {weight.shape} does not cover a '
                     f'{spatial}x{spatial} input.')
  kernel = weight.reshape(out_features, channels, spatial, spatial)
  return conv_kernel(kernel)


def fold_torchvision_normalization(kernel: np.ndarray, bias: np.ndarray):
  """Makes a conv1_1 that expects torchvision input accept ours.

  torchvision: x_tv[c] = (rgb[c] / 255 - mean[c]) / std[c], RGB order.
  fcn_jax: x[k] = bgr[k] - MEAN_BGR[k], so rgb[c] = x[2-c] + MEAN_BGR[2-c] and
  x_tv[c] = x[2-c] / (255 std[c]) + delta[c] with
  delta[c] = (MEAN_BGR[2-c] / 255 - mean[c]) / std[c]. conv1_1 is linear, so
  scaling and reordering the input channels and adding the delta's response to
  the bias gives the same output wherever the kernel sees image pixels. Where
  it overlaps the zero padding it differs by the delta's share: our zero is
  the Caffe mean colour, torchvision's zero its own mean colour (|delta| <
  0.02 in normalized units, under 1.3 grey levels).

  Args:
    kernel: (kh, kw, 3, O) torchvision conv1_1 kernel (RGB input channels).
    bias: (O,) its bias.

  Returns:
    (kernel, bias) for mean-subtracted BGR 0-255 input.
  """
  mean = np.asarray(TORCHVISION_MEAN_RGB, np.float64)
  std = np.asarray(TORCHVISION_STD_RGB, np.float64)
  mean_rgb = np.asarray(models.MEAN_BGR, np.float64)[::-1]
  delta = (mean_rgb / 255.0 - mean) / std
  kernel64 = kernel.astype(np.float64)
  new_bias = bias.astype(np.float64) + np.einsum('hwco,c->o', kernel64, delta)
  new_kernel = (kernel64 / (255.0 * std)[None, None, :, None])[:, :, ::-1]
  return (np.ascontiguousarray(new_kernel, np.float32),
          new_bias.astype(np.float32))


def torchvision_padding_value() -> np.ndarray:
  """The BGR value (our convention) that torchvision's zero padding means.

  Padding a torchvision-converted model's input with this instead of 0 makes
  the conversion exact; used by the tests.
  """
  mean = np.asarray(TORCHVISION_MEAN_RGB) * 255.0
  return (mean[::-1] - np.asarray(models.MEAN_BGR)).astype(np.float32)


def _layer(kernel, bias=None) -> dict[str, np.ndarray]:
  layer = {'kernel': kernel}
  if bias is not None:
    layer['bias'] = to_numpy(bias).astype(np.float32).reshape(-1)
  return layer


def from_vgg16(state_dict: Mapping[str, Any], input_format: str = 'caffe',
               include_fc8: bool = True) -> dict:
  """Convolutionalizes a torchvision-layout VGG16 state dict.

  Args:
    state_dict: names 'features.{0,2,...,28}.{weight,bias}' and
      'classifier.{0,3,6}.{weight,bias}' (numpy arrays or torch tensors).
    input_format: 'caffe' (BGR, mean-subtracted 0-255, e.g.
      vgg16_from_caffe.pth; no change needed) or 'torchvision' (RGB, [0, 1],
      normalized; folded into conv1_1, see `fold_torchvision_normalization`).
    include_fc8: keep the 1000-way classifier as a 1x1 conv named 'fc8' (the
      heatmap demo uses it; FCN training discards it).

  Returns:
    {'conv1_1': {'kernel', 'bias'}, ..., 'fc6', 'fc7'[, 'fc8']} in flax layout.
  """
  if input_format not in ('caffe', 'torchvision'):
    raise ValueError(f"input_format={input_format!r}: expected 'caffe' or "
                     "'torchvision'.")
  state = {k: to_numpy(v) for k, v in state_dict.items()}
  expected = [f'features.{i}.{p}' for i in VGG16_FEATURE_INDICES
              for p in ('weight', 'bias')]
  expected += [f'classifier.{i}.{p}' for i in VGG16_CLASSIFIER_INDICES.values()
               for p in ('weight', 'bias')]
  _check_names(state, expected, 'VGG16')
  params = {}
  for name, index in zip(CONV_NAMES, VGG16_FEATURE_INDICES):
    params[name] = _layer(conv_kernel(state[f'features.{index}.weight']),
                          state[f'features.{index}.bias'])
  if input_format == 'torchvision':
    params['conv1_1'] = dict(zip(('kernel', 'bias'), fold_torchvision_normalization(
        params['conv1_1']['kernel'], params['conv1_1']['bias'])))
  # fc6 reads pool5's 7x7 map; fc7 and fc8 read a 1x1 map.
  for name, index in VGG16_CLASSIFIER_INDICES.items():
    if name == 'fc8' and not include_fc8:
      continue
    spatial = 7 if name == 'fc6' else 1
    params[name] = _layer(
        linear_to_conv_kernel(state[f'classifier.{index}.weight'], spatial),
        state[f'classifier.{index}.bias'])
  return params


def _check_names(state, expected, what: str) -> None:
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  if missing or unexpected:
    raise ValueError(
        f'Not a {what} state dict: missing {missing[:6]}'
        f'{"..." if len(missing) > 6 else ""}, unexpected {unexpected[:6]}'
        f'{"..." if len(unexpected) > 6 else ""}.')


def is_bilinear(kernel: np.ndarray, atol: float = 1e-6) -> bool:
  """Whether a (k, k, C, C) kernel is the channel-diagonal bilinear one."""
  size, channels = kernel.shape[0], kernel.shape[2]
  if kernel.shape != (size, size, channels, channels):
    return False
  return np.allclose(kernel, layers.bilinear_kernel(size, channels), atol=atol)


def guess_torchfcn_variant(state_dict: Mapping[str, Any]) -> str:
  """fcn8s / fcn16s / fcn32s from the layer names (8s at-once looks like 8s)."""
  if 'score_pool3.weight' in state_dict:
    return 'fcn8s'
  if 'score_pool4.weight' in state_dict:
    return 'fcn16s'
  return 'fcn32s'


def from_torchfcn(state_dict: Mapping[str, Any], variant: str,
                  learn_upsampling: bool | None = None) -> dict:
  """Params for ``get_model(variant)`` from a wkentaro/pytorch-fcn state dict.

  Args:
    state_dict: torchfcn names ('conv1_1.weight', 'score_fr.bias',
      'upscore2.weight', ...) -> numpy arrays or torch tensors.
    variant: 'fcn32s', 'fcn16s', 'fcn8s' or 'fcn8s-atonce'.
    learn_upsampling: None (default): keep the upsampling kernels only if they
      are not the bilinear ones (then the model needs learn_upsampling=True);
      True: always keep them; False: require bilinear kernels and drop them
      (the frozen model computes exactly those).

  Returns:
    The params pytree; 'upscore*' entries present iff learned upsampling is
    needed (see `has_learned_upsampling`).
  """
  if variant not in models.VARIANTS:
    raise ValueError(f'Unknown FCN variant {variant!r}; expected one of '
                     f'{models.VARIANTS}.')
  state = {k: to_numpy(v) for k, v in state_dict.items()}
  layers = CONV_NAMES + ('fc6', 'fc7') + SCORE_LAYERS[variant]
  upscores = UPSCORE_LAYERS[variant]
  expected = [f'{n}.{p}' for n in layers for p in ('weight', 'bias')]
  expected += [f'{n}.weight' for n in upscores]
  _check_names(state, expected, f'pytorch-fcn {variant}')
  params = {n: _layer(conv_kernel(state[f'{n}.weight']), state[f'{n}.bias'])
            for n in layers}
  upsampling = {n: conv_transpose_kernel(state[f'{n}.weight'])
                for n in upscores}
  for name, kernel in upsampling.items():
    if kernel.shape[0] != 2 * upscores[name]:
      raise ValueError(f'{name}.weight: kernel size {kernel.shape[0]}, '
                       f'expected {2 * upscores[name]} for {variant}.')
  bilinear = all(is_bilinear(k) for k in upsampling.values())
  if learn_upsampling is False and not bilinear:
    raise ValueError(
        f'The {variant} upsampling kernels are not bilinear; the frozen model '
        'cannot reproduce them: use learn_upsampling=True.')
  if learn_upsampling or not bilinear:
    params.update({n: {'kernel': k} for n, k in upsampling.items()})
  return params


def has_learned_upsampling(params: Mapping[str, Any]) -> bool:
  """Whether params need ``get_model(..., learn_upsampling=True)``."""
  return any(name.startswith('upscore') for name in params)


def infer_width(params: Mapping[str, Any]) -> float:
  """The width multiplier of a VGG16 trunk, from conv1_1's output channels."""
  return params['conv1_1']['kernel'].shape[-1] / models.VGG16_BLOCKS[0][1]


def infer_num_classes(params: Mapping[str, Any]) -> int:
  return int(params['score_fr']['kernel'].shape[-1])


# ---------------------------------------------------------------------------
# Checksums, saving and loading.
# ---------------------------------------------------------------------------


def file_digests(path: str) -> dict[str, str]:
  md5, sha256 = hashlib.md5(), hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      md5.update(chunk)
      sha256.update(chunk)
  return {'md5': md5.hexdigest(), 'sha256': sha256.hexdigest()}


def verify_checksum(path: str) -> dict | None:
  """Checks a known weight file's checksum; returns its KNOWN_WEIGHTS entry.

  Files are recognized by name; unknown names return None (not verified).
  """
  known = KNOWN_WEIGHTS.get(os.path.basename(path))
  if known is None:
    return None
  digests = file_digests(path)
  if 'md5' in known and digests['md5'] != known['md5']:
    raise ValueError(f'{path}: md5 {digests["md5"]} does not match the '
                     f'official {known["md5"]} (corrupt or different file; '
                     'rename it or pass --skip_checksum to convert anyway).')
  if ('sha256_prefix' in known
      and not digests['sha256'].startswith(known['sha256_prefix'])):
    raise ValueError(f'{path}: sha256 {digests["sha256"]} does not start with '
                     f'the official {known["sha256_prefix"]} (corrupt or '
                     'different file; pass --skip_checksum to convert anyway).')
  return known


def save_params(path: str, params, metadata: Mapping[str, Any]) -> None:
  """Writes params + JSON metadata as an Orbax checkpoint directory."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'{path}: output already exists; choose a new path.')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(path, ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        metadata=ocp.args.JsonSave(dict(metadata))))


def _restore_tree(item_dir: str, subtree: str | None = None):
  """Restores (a subtree of) an Orbax PyTree checkpoint as numpy arrays."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(item_dir).item_metadata
    if subtree is not None:
      if subtree not in tree:
        raise ValueError(f'{item_dir}: checkpoint has no {subtree!r} entry.')
      tree = {subtree: tree[subtree]}
    checkpointing.check_declared_sizes(item_dir, tree)
    item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), dict(tree))
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return restored[subtree] if subtree is not None else restored


def _training_step_dir(path: str) -> str | None:
  """The checkpoint step directory a training workdir (or its checkpoints/) means.

  The best step by validation mean IU when recorded, else the latest.
  """
  ckpt_dir = os.path.join(path, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    if os.path.basename(os.path.normpath(path)) != 'checkpoints':
      return None
    ckpt_dir = path
  workdir = os.path.dirname(os.path.abspath(ckpt_dir))
  # Read-only: a trainer may be writing a checkpoint in this workdir now.
  manager = checkpointing.create_read_only_manager(workdir)
  step = manager.best_step()
  if step is None:
    step = manager.latest_step()
  manager.close()
  if step is None:
    raise ValueError(f'{path}: training workdir without any checkpoint.')
  return os.path.join(checkpointing.checkpoint_dir(workdir), str(step))


def load_params(path: str) -> tuple[dict, dict]:
  """Reads params from a converted checkpoint or a training checkpoint.

  Accepts: a directory written by `save_params` / ``python -m
  fcn_jax.convert``; a training workdir (its best checkpoint by validation
  mean IU, else the latest); its ``checkpoints`` directory; or one step
  directory ``<workdir>/checkpoints/<step>``.

  Returns:
    (params as nested dict of numpy arrays, metadata dict).
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such checkpoint directory.')
  if os.path.isdir(os.path.join(path, 'params')):
    params = _restore_tree(os.path.join(path, 'params'))
    with open(os.path.join(path, CONVERTED_MARKER, 'metadata')) as f:
      metadata = json.load(f)
    return params, metadata
  step_dir = _training_step_dir(path) or path
  item_dir = os.path.join(step_dir, 'default')
  if not os.path.isdir(item_dir):
    raise ValueError(f'{path}: neither a converted checkpoint (python -m '
                     'fcn_jax.convert) nor a training workdir / checkpoint.')
  metadata = {'source': step_dir, 'format': 'fcn_jax-train'}
  config_path = os.path.join(os.path.dirname(os.path.dirname(step_dir)),
                             'config.json')
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
    metadata.update(variant=config.get('model'),
                    num_classes=config.get('num_classes'),
                    width=config.get('width'),
                    learn_upsampling=config.get('learn_upsampling'))
  return _restore_tree(item_dir, 'params'), metadata


def _flatten(params, prefix=()) -> dict[tuple, Any]:
  flat = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def merge_params(target, source) -> tuple[dict, dict[str, list[str]]]:
  """Copies `source` layers into `target` where names and shapes match.

  Layers of `target` missing in `source` keep their initialization (e.g. the
  zero-initialized score_pool4 of an FCN-16s seeded from an FCN-32s). A layer
  present in both with different shapes means the architectures differ
  (width, number of classes): that is an error, as is a source that matches
  nothing. Source layers the target lacks are ignored, except learned
  upsampling kernels that are not bilinear: dropping those would silently
  change the model.

  Returns:
    (merged params with the target's structure, report with the layer names
    under 'copied', 'initialized' and 'ignored').
  """
  flat_target, flat_source = _flatten(target), _flatten(source)
  layers = lambda flat: sorted({k[0] for k in flat})  # pylint: disable=unnecessary-lambda-assignment
  mismatched = [
      f'{"/".join(k)}: checkpoint {np.shape(flat_source[k])} vs model '
      f'{np.shape(v)}' for k, v in flat_target.items()
      if k in flat_source and np.shape(flat_source[k]) != np.shape(v)]
  if mismatched:
    raise ValueError('Checkpoint does not fit the model (different width or '
                     'number of classes?): ' + '; '.join(mismatched))
  copied = {k for k in flat_target if k in flat_source}
  if not copied:
    raise ValueError('Checkpoint shares no layer with the model: expected '
                     f'names like {layers(flat_target)[:4]}, got '
                     f'{layers(flat_source)[:4]}.')
  ignored = sorted({k[0] for k in flat_source if k not in flat_target})
  for name in ignored:
    if name.startswith('upscore') and not is_bilinear(
        np.asarray(source[name]['kernel'])):
      raise ValueError(
          f'Checkpoint has learned (non-bilinear) upsampling {name!r} but the '
          'model keeps upsampling frozen: set learn_upsampling=True.')
  merged = _unflatten({k: (np.asarray(flat_source[k], np.asarray(v).dtype)
                           if k in copied else v)
                       for k, v in flat_target.items()})
  report = {
      'copied': sorted({k[0] for k in copied}),
      'initialized': sorted({k[0] for k in flat_target if k not in copied}),
      'ignored': ignored,
  }
  return merged, report


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  tree = {}
  for key, value in flat.items():
    node = tree
    for part in key[:-1]:
      node = node.setdefault(part, {})
    node[key[-1]] = value
  return tree


def init_from(params, path: str):
  """`params` with every matching layer replaced by the checkpoint's.

  The arrays are placed like the corresponding `params` leaves (same
  sharding), so this can seed a freshly created, replicated TrainState.
  """
  source, metadata = load_params(path)
  merged, report = merge_params(jax.device_get(params), source)
  logging.info('Initialized from %s (%s): copied %s.', path,
               metadata.get('format', '?'), ', '.join(report['copied']))
  if report['initialized']:
    logging.info('Layers not in the checkpoint, initialized from scratch: %s.',
                 ', '.join(report['initialized']))
  if report['ignored']:
    logging.info('Checkpoint layers the model does not use: %s.',
                 ', '.join(report['ignored']))
  merged = jax.tree.map(
      lambda new, old: jax.device_put(new, old.sharding)
      if hasattr(old, 'sharding') else new, merged, params)
  return merged


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _is_caffemodel(input_path: str, fmt: str) -> bool:
  """--format=caffemodel, or auto with a file that looks like one."""
  from fcn_jax import caffemodel  # pylint: disable=g-import-not-at-top
  if fmt != 'auto' or not os.path.isfile(input_path):
    return fmt == 'caffemodel'
  return (input_path.endswith('.caffemodel')
          or caffemodel.looks_like_caffemodel(input_path))


def convert_file(input_path: str, output: str, fmt: str = 'auto',
                 variant: str = '', skip_checksum: bool = False) -> dict:
  """Converts one .pth or .caffemodel file into a checkpoint at `output`.

  Returns the metadata written next to the params. For a .caffemodel,
  `variant` may name a reference model or architecture (see
  `caffe_models.convert_caffemodel`).
  """
  if _is_caffemodel(input_path, fmt):
    from fcn_jax import caffe_models  # pylint: disable=g-import-not-at-top
    if os.path.exists(output):  # Before reading a large file.
      raise FileExistsError(f'{os.path.abspath(output)}: output already '
                            'exists; choose a new path.')
    params, metadata = caffe_models.convert_caffemodel(input_path, variant)
    save_params(output, params, metadata)
    return metadata
  known = None if skip_checksum else verify_checksum(input_path)
  if fmt == 'auto':
    fmt = known['format'] if known else ''
  state = state_dict_from(load_pth(input_path), input_path)
  if not fmt:
    if 'conv1_1.weight' in state:
      fmt = 'torchfcn'
    else:
      raise ValueError(
          f'{input_path}: cannot tell the input convention of this VGG16 '
          "file; pass --format=vgg16-caffe or --format=vgg16-torchvision.")
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r}: expected one of {FORMATS} or auto.')
  metadata = {'source': os.path.abspath(input_path), 'format': fmt,
              'input': 'BGR, 0-255, minus models.MEAN_BGR'}
  if known:
    metadata['checksum_verified'] = True
  if fmt == 'torchfcn':
    variant = variant or (known or {}).get('variant') or guess_torchfcn_variant(
        state)
    params = from_torchfcn(state, variant)
    metadata.update(variant=variant, num_classes=infer_num_classes(params),
                    learn_upsampling=has_learned_upsampling(params))
  else:
    params = from_vgg16(state, fmt.split('-')[1])
    metadata.update(variant='vgg16', num_classes=1000)
  metadata['width'] = infer_width(params)
  save_params(output, params, metadata)
  return metadata


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  metadata = convert_file(f.input, f.output, f.format, f.variant,
                          f.skip_checksum)
  logging.info('Wrote %s: %s', os.path.abspath(f.output), json.dumps(metadata))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fcn_jax import caffe_models  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('input', None,
                      'PyTorch .pth or Caffe .caffemodel file to convert.')
  flags.DEFINE_string('output', None, 'Directory to write (must not exist).')
  flags.DEFINE_enum('format', 'auto', ('auto',) + FORMATS,
                    'Source: auto = .caffemodel by its content, else known '
                    'file name, else pytorch-fcn names.')
  flags.DEFINE_enum('variant', '', ('',) + models.MODELS + tuple(sorted(
      set(caffe_models.REFERENCE_MODELS) - set(models.MODELS))),
                    'FCN variant of a pytorch-fcn file (default: from names; '
                    'fcn8s-atonce must be given unless the file is known), or '
                    'reference model of a .caffemodel (default: from its file '
                    'name, else its layer names).')
  flags.DEFINE_bool('skip_checksum', False,
                    'Convert a known file name even if its checksum differs.')
  flags.mark_flags_as_required(['input', 'output'])


if __name__ == '__main__':
  from fcn_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  # The reader's errors name the file: one line, no traceback.
  cli.run(main, user_errors=(OSError, ValueError, pickle.UnpicklingError),
          path_flags=('input', 'output'))
