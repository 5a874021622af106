"""A seconds-long config for smoke runs and tests.

    python -m fcn_jax.main --workdir=/tmp/fcn_tiny --config=fcn_jax/configs/tiny.py
"""

from fcn_jax.configs import default


def get_config():
  return default.get_tiny_config()
