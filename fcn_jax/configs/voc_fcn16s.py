"""The paper's FCN-16s recipe (voc-fcn16s): stage 2 of staged training.

    python -m fcn_jax.main --workdir=runs/voc-fcn16s \
        --config=fcn_jax/configs/voc_fcn16s.py --config.data_dir=/path/to/data

Initialized from the trained FCN-32s workdir runs/voc-fcn32s (its best
checkpoint by validation mean IU): every layer is copied except the new
score_pool4, which starts at zero, so training starts from the 32s
predictions (upsampled in two bilinear steps, x2 then x16). Same recipe as
voc_fcn32s.py with the learning rate lowered to 1e-12. Reference: 65.0 mean
IU on seg11valid; not run to completion here.
"""

from fcn_jax.configs import voc_fcn32s


def get_config():
  return voc_fcn32s.get_config('fcn16s', learning_rate=1e-12,
                               init_from='runs/voc-fcn32s')
