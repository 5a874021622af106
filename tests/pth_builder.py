"""Writes PyTorch .pth files (zip and legacy formats) without torch.

The pickles are assembled opcode by opcode, so tests can declare any sizes,
strides and storage lengths, including absurd ones a real torch.save never
writes. Only the pieces fcn_jax.convert reads are produced.
"""

import io
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): 'FloatStorage',
                  np.dtype(np.int64): 'LongStorage'}
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _int(value: int) -> bytes:
  return pickle.dumps(value, protocol=2)[2:-1]  # BININT* or LONG1: no memo.


def _str(text: str) -> bytes:
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def _global(module: str, name: str) -> bytes:
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _tuple(items) -> bytes:
  return b'(' + b''.join(items) + b't'


def tensor_pickle(tensors: dict, legacy: bool = False) -> bytes:
  """data.pkl of {name: (storage_key, dtype, storage_numel, offset, size,
  stride)}; legacy persistent ids carry a 6th (view) element."""
  out = [b'\x80\x02', _global('collections', 'OrderedDict'), b')R']
  for name, (key, dtype, numel, offset, size, stride) in tensors.items():
    pid = [_str('storage'), _global('torch', _STORAGE_NAMES[np.dtype(dtype)]),
           _str(key), _str('cpu'), _int(numel)]
    if legacy:
      pid.append(b'N')
    out += [_str(name), _global('torch._utils', '_rebuild_tensor_v2'),
            b'(', _tuple(pid), b'Q', _int(offset),
            _tuple(_int(n) for n in size), _tuple(_int(s) for s in stride),
            b'\x89', _global('collections', 'OrderedDict'), b')R', b'tR',
            b's']
  out.append(b'.')
  return b''.join(out)


def write_zip(path, tensors: dict, storages: dict, compression=None) -> None:
  """tensors as in `tensor_pickle`; storages: key -> raw bytes."""
  with zipfile.ZipFile(path, 'w', compression or zipfile.ZIP_STORED) as f:
    f.writestr('archive/data.pkl', tensor_pickle(tensors))
    f.writestr('archive/byteorder', 'little')
    f.writestr('archive/version', '3\n')
    for key, raw in storages.items():
      f.writestr(f'archive/data/{key}', raw)


def legacy_bytes(tensors: dict, storages: dict,
                 declared: dict | None = None) -> bytes:
  """The legacy format; `declared` overrides a storage's element count."""
  out = io.BytesIO()
  for header in (LEGACY_MAGIC, 1001, {'little_endian': True}):
    pickle.dump(header, out, protocol=2)
  out.write(tensor_pickle(tensors, legacy=True))
  keys = list(storages)
  pickle.dump(keys, out, protocol=2)
  for key in keys:
    raw, dtype = storages[key]
    numel = (declared or {}).get(key, len(raw) // np.dtype(dtype).itemsize)
    out.write(struct.pack('<q', numel))
    out.write(raw)
  return out.getvalue()


def small_state_dict():
  """A valid two-tensor state dict: (tensors, zip storages, legacy storages,
  expected arrays)."""
  w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
  b = np.array([3, -1], np.int64)
  tensors = {'conv.weight': ('0', np.float32, 12, 0, (3, 4), (4, 1)),
             'conv.bias': ('1', np.int64, 2, 0, (2,), (1,))}
  zip_storages = {'0': w.tobytes(), '1': b.tobytes()}
  legacy_storages = {'0': (w.tobytes(), np.float32),
                     '1': (b.tobytes(), np.int64)}
  return tensors, zip_storages, legacy_storages, {'conv.weight': w,
                                                  'conv.bias': b}
