"""The synthetic default (fcn_jax/configs/default.py) with four seeds.

    python -m experiments.sweep --sweep=experiments/sweeps/seeds.py \
        --workdir=runs/sweeps/seeds [--one_process_per_seed]

One setting, seeds 0-3: by default the four seeds share one program
(config.seeds); with --one_process_per_seed each seed runs in a process of
its own. docs/research_tools.md compares the wall times of the two.
"""

from experiments import sweep

SEEDS = (0, 1, 2, 3)


def get_sweep():
  return sweep.with_seeds([{}], SEEDS)
