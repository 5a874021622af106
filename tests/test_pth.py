"""Tests of fcn_jax.pth: reading .pth files without torch, and refusing
malicious or malformed ones.

The torch tests compare against torch.save's own files; they skip when torch
is not installed (.ci/run installs it: pip install torch==2.13.0).
"""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from fcn_jax import pth

try:
  import torch
  from torch import nn as tnn
except ImportError:  # The torch tests skip.
  torch = None

needs_torch = pytest.mark.skipif(torch is None, reason='needs torch (test extra)')


@needs_torch
@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_load_pth_matches_torch_save(tmp_path, legacy):
  base = torch.randn(4, 6)
  conv = tnn.Conv2d(2, 3, 3)
  data = collections.OrderedDict(
      weight=torch.randn(3, 5, 2, 2),
      steps=torch.arange(5, dtype=torch.int64),
      transposed=base.t(),            # Non-contiguous strides.
      view=base[1:3, 2:],             # Offset into a shared storage.
      half=torch.randn(4).half(),
      empty=torch.zeros(0, 3),
      nested=conv.state_dict(),       # Carries _metadata via BUILD.
      param=tnn.Parameter(torch.randn(2)),
      epoch=7, name='fcn')
  path = str(tmp_path / 'x.pth')
  torch.save(data, path, _use_new_zipfile_serialization=not legacy)
  assert zipfile.is_zipfile(path) != legacy
  loaded = pth.load_pth(path)
  for key in ('weight', 'steps', 'transposed', 'view', 'half', 'empty'):
    expected = data[key].numpy()
    assert loaded[key].dtype == expected.dtype, key
    np.testing.assert_array_equal(loaded[key], expected)
  for key, value in data['nested'].items():
    np.testing.assert_array_equal(loaded['nested'][key], value.numpy())
  np.testing.assert_array_equal(loaded['param'], data['param'].detach().numpy())
  assert loaded['epoch'] == 7 and loaded['name'] == 'fcn'


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  payload = pickle.dumps({'conv1_1.weight': _Exploit(marker)}, protocol=2)
  bare = tmp_path / 'bare.pth'
  bare.write_bytes(payload)
  # torch's legacy layout: magic number, protocol, system info, then the
  # state dict pickle.
  legacy = tmp_path / 'legacy.pth'
  legacy.write_bytes(b''.join(pickle.dumps(v, protocol=2) for v in (
      pth._LEGACY_MAGIC, pth._LEGACY_PROTOCOL,
      {'little_endian': True})) + payload)
  archive = tmp_path / 'zip.pth'
  with zipfile.ZipFile(archive, 'w') as z:
    z.writestr('archive/data.pkl', payload)
  for path in (bare, legacy, archive):
    with pytest.raises(pickle.UnpicklingError, match='refusing to load global'):
      pth.load_pth(str(path))
  assert not marker.exists()
  # Sanity: the same payload would have run the command under plain pickle.
  pickle.loads(payload)
  assert marker.exists()


def test_eval_via_builtins_is_refused(tmp_path):
  path = tmp_path / 'eval.pth'
  path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
  with pytest.raises(pickle.UnpicklingError, match='builtins.eval'):
    pth.load_pth(str(path))


@needs_torch
def test_tensor_beyond_its_storage_is_refused(tmp_path):
  good = str(tmp_path / 'good.pth')
  torch.save({'w': torch.randn(8)}, good)
  bad = str(tmp_path / 'bad.pth')
  with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, 'w') as dst:
    for name in src.namelist():
      content = src.read(name)
      if name.endswith('/data/0'):
        content = content[:4 * 5]  # 5 of the 8 floats.
      dst.writestr(name, content)
  with pytest.raises(pickle.UnpicklingError, match='exceeds its storage'):
    pth.load_pth(bad)


def test_not_a_pth_file(tmp_path):
  path = tmp_path / 'notes.pth'
  path.write_text('hello')
  with pytest.raises((ValueError, pickle.UnpicklingError), match='notes.pth'):
    pth.load_pth(str(path))
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    pth.load_pth(str(tmp_path / 'missing.pth'))


def test_numpy_pickle_is_refused(tmp_path):
  # Plain pickles of numpy arrays need numpy's reconstruct global: refused
  # too (only torch's tensor format is read).
  path = tmp_path / 'arrays.pth'
  path.write_bytes(pickle.dumps({'w': np.zeros(3)}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match='refusing'):
    pth.load_pth(str(path))
