"""Input padding: the reference's 100-pixel conv1_1 padding (fixed crops 5, 9,
31) vs the exact-offset variant without it (every layer 'SAME': conv1_1 pads
1 and fc6 pads 3; crops 1, 1, 4 from models.crop_offsets). Compare accuracy
and cost (wall time, steps/s in the report).

    python -m experiments.sweep --sweep=experiments/sweeps/padding.py \
        --workdir=runs/sweeps/padding --parallel=2
"""

from experiments import sweep
from experiments.sweeps import CPU_BASE, SEEDS

VARIANTS = (
    {'input_padding': 100, 'fc6_padding': 0},
    {'input_padding': 1, 'fc6_padding': 3},
)


def get_sweep():
  settings = [dict(model='fcn8s', **v, **CPU_BASE) for v in VARIANTS]
  return sweep.with_seeds(settings, SEEDS)
