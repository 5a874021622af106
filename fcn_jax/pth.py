"""Reading PyTorch ``.pth`` files without torch, safely.

    state = pth.state_dict_from(pth.load_pth('vgg16_from_caffe.pth'))

A restricted unpickler rebuilds only tensors (as numpy arrays), dicts, lists
and plain values: it refuses every other global, so a malicious pickle cannot
run code. Both the zip format (torch >= 1.6) and the legacy format are read,
and every size a file declares is checked against what it holds before
anything is allocated (`MAX_EXPANDED_TENSOR_BYTES`, `MAX_ZIP_INFLATION`).
"""

from __future__ import annotations

import collections
import errno
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Mapping

import numpy as np

from fcn_jax import errors

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
