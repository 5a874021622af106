"""Upsampling: fixed bilinear (the reference) vs learned from a bilinear init
vs learned from a random init, on FCN-8s.

    python -m experiments.sweep --sweep=experiments/sweeps/upsampling.py \
        --workdir=runs/sweeps/upsampling --parallel=2
"""

from experiments import sweep
from experiments.sweeps import CPU_BASE, SEEDS

VARIANTS = (
    {'learn_upsampling': False, 'upsampling_init': 'bilinear'},
    {'learn_upsampling': True, 'upsampling_init': 'bilinear'},
    {'learn_upsampling': True, 'upsampling_init': 'random'},
)


def get_sweep():
  settings = [dict(model='fcn8s', **v, **CPU_BASE) for v in VARIANTS]
  return sweep.with_seeds(settings, SEEDS)
