"""Shared test setup: on the CPU (the repository root is on the path through
pyproject.toml's `pythonpath`).

Under CI=true (how .ci/run runs) a test skipped because torch is missing
fails instead: the PyTorch parity tests are the only end-to-end checks
against an independent implementation, and a silent skip hides their loss.
"""

import os

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# Skip reasons that name a test-only dependency CI must have.
REQUIRED_IN_CI = ('torch',)


def _in_ci() -> bool:
  return os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  del item, call
  outcome = yield
  report = outcome.get_result()
  if not (_in_ci() and report.skipped and isinstance(report.longrepr, tuple)):
    return
  reason = str(report.longrepr[2])
  missing = [name for name in REQUIRED_IN_CI if name in reason]
  if missing:
    report.outcome = 'failed'
    report.longrepr = (f'Skipped under CI=true ({reason}): {missing[0]} is '
                       'required in CI (pip install torch==2.13.0).')


@pytest.fixture(scope='module')
def compile_cache_env(tmp_path_factory) -> dict:
  """Environment variables that give this module's JAX subprocesses one
  compilation cache.

  Runs of the same program then compile it once: the later ones load the
  executable the first one stored (the same bits, so bit-exact comparisons
  between runs still hold). The cache key covers XLA_FLAGS and the backend.
  """
  return {'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('jax_cache')),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '-1'}

@pytest.fixture(scope='module')
def persistent_compile_cache(tmp_path_factory):
  """This module's in-process jits share a persistent compilation cache.

  `train.train_and_evaluate` builds new jitted steps on every call, so each
  call of the same config would compile the same program again; with the
  cache, only the first does. Opt-in per module (not suite-wide): tests that
  count backend compilations must not see cache hits from other modules.
  """
  import jax
  from jax._src import compilation_cache
  names = ('jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  saved = {name: getattr(jax.config, name) for name in names}
  cache_dir = tmp_path_factory.mktemp('jax_cache')
  for name, value in zip(names, (str(cache_dir), 0, -1)):
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield cache_dir
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
