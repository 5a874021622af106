"""Loss and optimization (PAMI Sec. 4.2), with SGD and a constant rate:

1. summed vs mean loss at batch 4 and momentum 0.9: the summed loss over
   64x64 = 4096 pixels gets a 4096x smaller rate, which makes the two the
   same update whenever no pixel is ignored (synthetic data), so any
   difference is numerical; on VOC (void pixels) they differ slightly.
2. batch 1 with momentum 0.99 vs batch 20 accumulated (grad_accum_steps=20,
   Caffe's iter_size) with momentum 0.9, both seeing 1200 images. The rates
   keep the per-image effective step lr / (1 - momentum) / batch equal to
   the batch-4 baseline's (1e-2 / 0.1 / 4 = 0.025).

    python -m experiments.sweep --sweep=experiments/sweeps/loss_optim.py \
        --workdir=runs/sweeps/loss_optim --parallel=2
"""

from experiments import sweep
from experiments.sweeps import CPU_BASE, SEEDS

PIXELS = 64 * 64
IMAGES = CPU_BASE['batch_size'] * CPU_BASE['num_train_steps']
SGD = {'optimizer': 'sgd', 'lr_schedule': 'constant', 'warmup_steps': 0}

VARIANTS = (
    {'loss_normalization': 'mean', 'learning_rate': 1e-2, 'momentum': 0.9},
    {'loss_normalization': 'sum', 'learning_rate': 1e-2 / PIXELS,
     'momentum': 0.9},
    {'loss_normalization': 'mean', 'batch_size': 1, 'momentum': 0.99,
     'learning_rate': 2.5e-4, 'num_train_steps': IMAGES,
     'log_every_steps': 100, 'eval_every_steps': IMAGES // 3,
     'checkpoint_every_steps': IMAGES // 3},
    {'loss_normalization': 'mean', 'batch_size': 20, 'grad_accum_steps': 20,
     'momentum': 0.9, 'learning_rate': 5e-2, 'num_train_steps': IMAGES // 20,
     'log_every_steps': 5, 'eval_every_steps': IMAGES // 60,
     'checkpoint_every_steps': IMAGES // 60},
)


def get_sweep():
  settings = [dict(CPU_BASE, model='fcn8s', **SGD, **v) for v in VARIANTS]
  return sweep.with_seeds(settings, SEEDS)
