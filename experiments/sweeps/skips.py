"""The paper's skip-architecture table: FCN-32s vs FCN-16s vs FCN-8s (staged
heads trained at once, zero-initialized skips) vs FCN-8s at-once (scaled
skips). Besides the four scores, evaluation reports boundary_mean_iu (mean IU
within 3 pixels of label boundaries), where finer skips should matter most.

    python -m experiments.sweep --sweep=experiments/sweeps/skips.py \
        --workdir=runs/sweeps/skips --parallel=2
    python -m experiments.report runs/sweeps/skips
"""

from experiments import sweep
from experiments.sweeps import CPU_BASE, SEEDS

# FCN-32s vs FCN-8s first: the comparison that matters most if a sweep is
# cut short (runs execute in this order).
MODELS = ('fcn32s', 'fcn8s', 'fcn16s', 'fcn8s-atonce')


def get_sweep():
  settings = [dict(model=m, **CPU_BASE) for m in MODELS]
  return sweep.with_seeds(settings, SEEDS)
