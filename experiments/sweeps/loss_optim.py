"""Loss and optimization (PAMI Sec. 4.2), with SGD and a constant rate:

1. summed vs mean loss at batch 4 and momentum 0.9: the summed loss over
   64x64 = 4096 pixels gets a 4096x smaller rate, which makes the two the
   same update whenever no pixel is ignored (synthetic data), so any
   difference is numerical; on VOC (void pixels) they differ slightly.
2. batch 1 with momentum 0.99 vs batch 20 accumulated (grad_accum_steps=20,
   Caffe's iter_size) with momentum 0.9, all seeing 4000 images. Batch 1
   keeps the per-image effective step lr / (1 - momentum) / batch of the
   batch-4 baseline (1e-2 / 0.1 / 4 = 0.025). Batch 20 cannot: at that step
   (lr 5e-2), and at 2e-2, it diverged to NaN within 6 updates, so it uses
   the batch-4 rate 1e-2 (a 5x smaller step per image).

Every run warms the rate up linearly over its first 200 images or 50
updates, whichever is longer: without a warm-up the batch-4 runs diverged
to NaN within 5 steps (at 1e-2 and at 5e-3; 2e-3 had not left the
all-background solution after 250 steps), with it they train.

    python -m experiments.sweep --sweep=experiments/sweeps/loss_optim.py \
        --workdir=runs/sweeps/loss_optim --parallel=2
"""

from experiments import sweep
from experiments.sweeps import CPU_BASE, SEEDS

PIXELS = 64 * 64
IMAGES = CPU_BASE['batch_size'] * CPU_BASE['num_train_steps']
WARMUP_IMAGES = 200
MIN_WARMUP_STEPS = 50
SGD = {'optimizer': 'sgd', 'lr_schedule': 'constant'}


def _batch(size: int, evals: int = 4) -> dict:
  """Steps, warm-up and logging for `size` images per step over IMAGES."""
  steps = IMAGES // size
  return {'batch_size': size, 'num_train_steps': steps,
          'warmup_steps': max(MIN_WARMUP_STEPS, WARMUP_IMAGES // size),
          'log_every_steps': max(1, steps // 20),
          'eval_every_steps': steps // evals,
          'checkpoint_every_steps': steps // evals}


VARIANTS = (
    {'loss_normalization': 'mean', 'learning_rate': 1e-2, 'momentum': 0.9,
     **_batch(4)},
    {'loss_normalization': 'sum', 'learning_rate': 1e-2 / PIXELS,
     'momentum': 0.9, **_batch(4)},
    {'loss_normalization': 'mean', 'momentum': 0.99, 'learning_rate': 2.5e-4,
     **_batch(1)},
    {'loss_normalization': 'mean', 'grad_accum_steps': 20, 'momentum': 0.9,
     'learning_rate': 1e-2, **_batch(20)},
)


def get_sweep():
  settings = [dict(CPU_BASE, model='fcn8s', **SGD, **v) for v in VARIANTS]
  return sweep.with_seeds(settings, SEEDS)
