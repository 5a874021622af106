"""experiments/colab_tpu.ipynb runs top to bottom on the CPU, installed the
way a Colab user installs it.

Its code cells are executed in order as one script in a subprocess, as
Jupyter would, without nbclient, by the Python of a fresh virtual
environment, from a directory outside the checkout. The install cell really
runs `pip install` from a git URL: a file:// URL of a local git repository
holding this checkout's files. To stay fast and offline, the new
environment sees this one's packages through a .pth file and pip gets
`--no-deps --no-build-isolation --no-index`; fcn_jax itself is only
importable from what pip installed. The test then checks what the notebook
shows against the run's own files.
"""

import json
import os
import shutil
import site
import subprocess
import sys

import pytest

from fcn_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'colab_tpu.ipynb')


def _notebook():
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4
  assert notebook['metadata']['accelerator'] == 'TPU'
  return notebook


def _code_cells():
  return [''.join(cell['source']) for cell in _notebook()['cells']
          if cell['cell_type'] == 'code']


def test_notebook_is_plain_python_without_outputs():
  for cell in _notebook()['cells']:
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [] and cell['execution_count'] is None
  for source in _code_cells():
    # No shell or magic lines: the cells run as a script (and on Colab).
    assert not any(line.lstrip().startswith(('!', '%'))
                   for line in source.splitlines()), source
    compile(source, NOTEBOOK, 'exec')
  # The repository URL is one marked variable at the top of the first cell.
  first = _code_cells()[0].splitlines()
  assert first[0].startswith('# ==== Set this')
  assert first[1] == "REPO_URL = 'https://github.com/OWNER/fcn_jax'"


def _run_install_cell(env_updates):
  env = dict(os.environ, **env_updates)
  return subprocess.run([sys.executable, '-c', _code_cells()[0]], env=env,
                        capture_output=True, text=True, timeout=60,
                        check=False)


def test_asking_for_a_missing_tpu_stops_before_installing(tmp_path):
  # The CPU test machine has no TPU: the notebook says so and stops instead
  # of quietly training the tiny config on the CPU.
  proc = _run_install_cell({'FCN_NOTEBOOK_ACCELERATOR': 'tpu',
                            'FCN_NOTEBOOK_REPO_URL': f'file://{tmp_path}'})
  assert proc.returncode == 1
  assert ("RuntimeError: ACCELERATOR='tpu' but this runtime has no TPU "
          '(found: ') in proc.stderr
  assert 'Change runtime type' in proc.stderr
  proc = _run_install_cell({'FCN_NOTEBOOK_ACCELERATOR': 'cpu'})
  assert proc.returncode == 1
  assert 'Set REPO_URL' in proc.stderr  # Still the OWNER placeholder.


def _git_repository_of_this_checkout(dest):
  """A git repository (committed) holding the checkout's files as they are
  now, tracked or new, without ignored ones."""
  try:
    listed = subprocess.run(
        ['git', '-C', ROOT, 'ls-files', '-z', '--cached', '--others',
         '--exclude-standard'], capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout (or no git): no clone to install from')
  for name in listed.decode().split('\0'):
    if name and os.path.isfile(os.path.join(ROOT, name)):
      os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
  git = ['git', '-C', str(dest), '-c', 'user.name=test',
         '-c', 'user.email=test@example.com']
  for command in (['init', '--quiet'], ['add', '--all'],
                  ['commit', '--quiet', '-m', 'snapshot']):
    subprocess.run(git + command, check=True, capture_output=True)


def _venv_seeing_this_environment(dest):
  """A fresh venv whose Python also sees this environment's packages (so
  pip and the dependencies need no download), but not this checkout."""
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(dest)],
                 check=True)
  python = os.path.join(dest, 'bin', 'python')
  purelib = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
      capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(purelib, 'parent_environment.pth'), 'w') as f:
    f.write('\n'.join(site.getsitepackages()) + '\n')
  return python, purelib


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
  base = tmp_path_factory.mktemp('notebook')
  repo, workdir, cwd = base / 'repo', base / 'workdir', base / 'cwd'
  for path in (repo, workdir, cwd):
    path.mkdir()
  _git_repository_of_this_checkout(repo)
  python, purelib = _venv_seeing_this_environment(base / 'venv')
  env = dict(os.environ, JAX_PLATFORMS='cpu', FCN_NOTEBOOK_WORKDIR=str(workdir),
             FCN_NOTEBOOK_REPO_URL=f'file://{repo}',
             FCN_NOTEBOOK_ACCELERATOR='cpu', MPLBACKEND='Agg',
             FCN_NOTEBOOK_PIP_ARGS='--no-deps --no-build-isolation --no-index')
  env.pop('XLA_FLAGS', None)
  env.pop('PYTHONPATH', None)  # fcn_jax must come from the pip install.
  script = '\n\n'.join(_code_cells())
  proc = subprocess.run([python, '-c', script], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return str(workdir), proc.stdout, purelib


def test_notebook_installs_from_git_and_trains_the_tiny_config(executed):
  workdir, stdout, purelib = executed
  assert f'fcn_jax from {purelib} for CPU' in stdout
  assert os.path.isfile(os.path.join(purelib, 'fcn_jax', 'train.py'))
  # Package data came along: the seg11valid list.
  assert os.path.isfile(os.path.join(purelib, 'fcn_jax', 'data', 'splits',
                                     'seg11valid.txt'))
  from fcn_jax.configs import default
  tiny = default.get_tiny_config()
  assert f'tiny config; batch {tiny.batch_size} over 1 cpu devices' in stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == tiny.num_train_steps
  # The scores it prints are the final validation record of metrics.jsonl.
  final = [r for r in workdir_lib.read_metrics(workdir) if r['split'] == 'val'][-1]
  assert final['step'] == tiny.num_train_steps
  assert f"'mean_iu': {round(final['mean_iu'], 4)}" in stdout, stdout


def test_notebook_shows_curve_and_predictions(executed):
  workdir, stdout, _ = executed
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
  # Class names from the run's dataset_info.json.
  with open(os.path.join(workdir, 'dataset_info.json')) as f:
    names = json.load(f)['class_names']
  assert f'classes: {", ".join(names)}' in stdout
