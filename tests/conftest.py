"""Shared test setup: on the CPU (the repository root is on the path through
pyproject.toml's `pythonpath`)."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
