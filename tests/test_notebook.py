"""experiments/colab_tpu.ipynb runs top to bottom on the CPU (tiny config).

Its code cells are executed in order as one script in a subprocess, from the
notebook's folder as Jupyter would, without nbclient. The test then checks
what the notebook shows against the run's own files.
"""

import json
import os
import subprocess
import sys

import pytest

from fcn_jax import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'colab_tpu.ipynb')


def _code_cells():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4
  assert notebook['metadata']['accelerator'] == 'TPU'
  return [''.join(cell['source']) for cell in notebook['cells']
          if cell['cell_type'] == 'code']


def test_notebook_is_plain_python_without_outputs():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  for cell in notebook['cells']:
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [] and cell['execution_count'] is None
  for source in _code_cells():
    # No shell or magic lines: the cells run as a script (and on Colab).
    assert not any(line.lstrip().startswith(('!', '%'))
                   for line in source.splitlines()), source
    compile(source, NOTEBOOK, 'exec')


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('notebook'))
  env = dict(os.environ, JAX_PLATFORMS='cpu', FCN_NOTEBOOK_TINY='1',
             FCN_NOTEBOOK_WORKDIR=workdir, MPLBACKEND='Agg')
  env.pop('XLA_FLAGS', None)
  env.pop('PYTHONPATH', None)  # The install cell must find the checkout.
  script = '\n\n'.join(_code_cells())
  proc = subprocess.run([sys.executable, '-c', script], cwd=os.path.dirname(
      NOTEBOOK), env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir, proc.stdout


def test_notebook_trains_with_the_tiny_config(executed):
  workdir, stdout = executed
  from fcn_jax.configs import default
  tiny = default.get_tiny_config()
  assert f'fcn_jax from {ROOT}' in stdout
  assert f'tiny config; batch {tiny.batch_size} over 1 devices' in stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == tiny.num_train_steps
  # The scores it prints are the final validation record of metrics.jsonl.
  final = [r for r in writers.read_metrics(workdir) if r['split'] == 'val'][-1]
  assert final['step'] == tiny.num_train_steps
  assert f"'mean_iu': {round(final['mean_iu'], 4)}" in stdout, stdout


def test_notebook_shows_curve_and_predictions(executed):
  workdir, stdout = executed
  from PIL import Image
  for name, min_size in (('training_curve.png', (900, 300)),
                         ('predictions.png', (700, 900))):
    with Image.open(os.path.join(workdir, name)) as image:
      assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], (
          name, image.size)
  # One line per shown validation scene (the tiny config has 8).
  lines = [l for l in stdout.splitlines() if l.startswith('scene ')]
  assert [l.split(':')[0] for l in lines] == [f'scene {i}' for i in range(4)]
  for line in lines:
    assert 0.0 <= float(line.rsplit(' ', 1)[1]) <= 1.0
