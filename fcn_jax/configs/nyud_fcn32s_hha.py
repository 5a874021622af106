"""The reference nyud-fcn32s-hha recipe: FCN-32s on NYUDv2 HHA images.

    python -m fcn_jax.main --workdir=runs/nyud-fcn32s-hha \
        --config=fcn_jax/configs/nyud_fcn32s_hha.py --config.data_dir=/path/to/nyud

The colour recipe (nyud_fcn32s_color.py) on the HHA encoding of depth
(horizontal disparity, height above ground, angle with gravity), also
initialized from the ImageNet VGG16, rate 1e-10. Paper: 24.2 mean IU.
"""

from fcn_jax.configs import nyud_fcn32s_color


def get_config():
  return nyud_fcn32s_color.get_config('hha')
