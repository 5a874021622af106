"""The paper's FCN-8s recipe (voc-fcn8s): stage 3 of staged training.

    python -m fcn_jax.main --workdir=runs/voc-fcn8s \
        --config=fcn_jax/configs/voc_fcn8s.py --config.data_dir=/path/to/data

Initialized from the trained FCN-16s workdir runs/voc-fcn16s; the new
score_pool3 starts at zero. Same recipe with the learning rate lowered to
1e-14. Reference: 65.5 mean IU on seg11valid; not run to completion here.
"""

from fcn_jax.configs import voc_fcn32s


def get_config():
  return voc_fcn32s.get_config('fcn8s', learning_rate=1e-14,
                               init_from='runs/voc-fcn16s')
