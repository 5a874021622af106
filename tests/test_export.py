"""Tests of fcn_jax.export: the exported function equals the model."""

import os
import subprocess
import sys

import numpy as np

from fcn_jax import export
from fcn_jax import inference
from inference_testutil import ROOT
from inference_testutil import random_image
from inference_testutil import trained_workdir  # pylint: disable=unused-import

_SERVE = '''
import sys
import numpy as np
from fcn_jax import export
model = export.load(sys.argv[1])
np.save(sys.argv[3], model.logits(np.load(sys.argv[2])))
# Serving needs no training code.
assert 'flax' not in sys.modules and 'fcn_jax.models' not in sys.modules
'''


def test_symbolic_export_parity_without_training_code(trained_workdir,
                                                      tmp_path):
  segmenter = inference.load(trained_workdir, '6', bucket=False)
  files = export.export_segmenter(segmenter, str(tmp_path / 'model'),
                                  platforms=('cpu',))
  assert {os.path.basename(f) for f in files} == {
      'fcn.jax_export', 'params.npz', 'meta.json'}
  image = random_image(np.random.default_rng(0), 37, 51)  # Odd size.
  np.save(tmp_path / 'image.npy', image)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  result = subprocess.run(
      [sys.executable, '-c', _SERVE, str(tmp_path / 'model'),
       str(tmp_path / 'image.npy'), str(tmp_path / 'out.npy')],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  served = np.load(tmp_path / 'out.npy')
  expected = segmenter.logits(image)
  assert served.shape == expected.shape == (37, 51, 7)
  np.testing.assert_allclose(served, expected, rtol=0,
                             atol=1e-5 * np.abs(expected).max())


def test_bucketed_export_parity(trained_workdir, tmp_path):
  segmenter = inference.load(trained_workdir, '6')  # Bucketed padding.
  export.export_segmenter(segmenter, str(tmp_path / 'model'),
                          shapes=export.parse_shapes('32x64,64x64'),
                          platforms=('cpu',))
  model = export.load(str(tmp_path / 'model'))
  assert model.class_names == list(segmenter.class_names)
  rng = np.random.default_rng(1)
  for height, width in ((23, 41), (50, 63)):  # -> 32x64 and 64x64.
    image = random_image(rng, height, width)
    expected = segmenter.logits(image)
    np.testing.assert_allclose(model.logits(image), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(model.segment(image),
                                  segmenter.segment(image))
  try:
    model.logits(random_image(rng, 65, 10))
    raise AssertionError('expected a ValueError')
  except ValueError as e:
    assert 'exceeds every exported shape' in str(e)
