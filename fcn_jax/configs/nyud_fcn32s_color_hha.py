"""The reference nyud-fcn32s-color-hha recipe: late fusion of RGB and HHA.

    python -m fcn_jax.main --workdir=runs/nyud-fcn32s-color-hha \
        --config=fcn_jax/configs/nyud_fcn32s_color_hha.py --config.data_dir=/path/to/nyud

Two VGG16 streams (conv1_1color ... score_frcolor and conv1_1hha ...
score_frhha), score maps averaged (the reference's Eltwise coefficients
0.5, 0.5) and upsampled together. Each stream starts from the trained
single-modality run (nyud_fcn32s_color.py and nyud_fcn32s_hha.py, their best
checkpoints), as the reference solve.py transplants them; rate 1e-12.
Paper: 32.8 mean IU.
"""

from fcn_jax.configs import nyud_fcn32s_color


def get_config():
  return nyud_fcn32s_color.get_config(
      'color-hha', learning_rate=1e-12, init_from='runs/nyud-fcn32s-color',
      init_from_hha='runs/nyud-fcn32s-hha')
