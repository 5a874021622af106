"""Shared setup of the inference/evaluate/predict/export tests.

`trained_workdir` trains the tiny config once per test session (a few
seconds) and every test module that needs a real checkpoint reuses it.
"""

import contextlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax._src import monitoring as jax_monitoring

from fcn_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_MINI = os.path.join(ROOT, 'tests', 'data', 'voc-real-mini')
_CACHE = {}


@contextlib.contextmanager
def compile_listener(listener):
  """Registers a jax.monitoring duration listener for the `with` block only,
  so what it counts cannot depend on which tests ran before or after."""
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield
  finally:
    jax_monitoring.unregister_event_duration_listener(listener)


def tiny_training_run(tmp_path_factory) -> tuple[str, dict]:
  """(workdir, result of train_and_evaluate) of one get_tiny_config run.

  Trained once per test session: every module that needs a finished tiny run
  (the inference tests, test_train's end-to-end checks) reads the same one.
  """
  from fcn_jax import train  # pylint: disable=g-import-not-at-top
  from fcn_jax.configs import default  # pylint: disable=g-import-not-at-top
  if 'workdir' not in _CACHE:
    workdir = str(tmp_path_factory.mktemp('tiny_workdir'))
    _CACHE['result'] = train.train_and_evaluate(default.get_tiny_config(),
                                                workdir)
    _CACHE['workdir'] = workdir
  return _CACHE['workdir'], _CACHE['result']


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """A workdir trained with get_tiny_config (checkpoints at steps 3 and 6)."""
  # Several modules import this fixture; the cache makes it one run.
  return tiny_training_run(tmp_path_factory)[0]


def random_params(model, seed: int = 0):
  """Initial params with random (non-zero) score layers, so that every skip
  and every spatial position shapes the output (the reference initializes
  score layers to zero, which would make many comparisons trivial)."""
  params = models.init_params(model, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 64))

  def randomize(path, x):
    if str(getattr(path[0], 'key', '')).startswith('score'):
      return 0.1 * jax.random.normal(next(keys), x.shape)
    return x
  return jax.tree_util.tree_map_with_path(randomize, params)


def run_module(module: str, *args: str, timeout: int = 300):
  """Runs `python -m module args` from the repository root (CPU only)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def random_image(rng: np.random.Generator, height: int, width: int):
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
