"""Sweep files for `python -m experiments.sweep --sweep=experiments/sweeps/<name>.py`.

CPU_BASE is the shared budget that makes each sweep finish on a 2-core CPU in
under an hour on the synthetic dataset: a 1/16-width VGG16 trunk (same depth,
padding and crops as the paper's), 64x64 scenes, batch 4, 1000 steps (one
pass over the 4000 training scenes; at 300 steps FCN-32s had barely left the
all-background solution, see experiments/RESULTS.md). On VOC/SBD with an
accelerator, override it per run with --set (e.g. --set=width=1.0
--set=dataset=sbd --set=num_train_steps=100000).
"""

CPU_BASE = {
    'width': 0.0625,
    'batch_size': 4,
    'num_train_steps': 1000,
    'warmup_steps': 50,
    'log_every_steps': 50,
    'eval_every_steps': 250,
    'checkpoint_every_steps': 250,
    'synthetic.val_size': 100,
}

# Seeds per setting: the report gives mean +- std over them.
SEEDS = (0, 1)
