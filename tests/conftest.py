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
