"""The reference nyud-fcn32s-color-d recipe: early fusion of RGB and depth.

    python -m fcn_jax.main --workdir=runs/nyud-fcn32s-color-d \
        --config=fcn_jax/configs/nyud_fcn32s_color_d.py --config.data_dir=/path/to/nyud

One 4-channel first convolution, conv1_1_bgrd, on BGR + log depth. As the
reference solve.py, it starts from the ImageNet VGG16 with conv1_1's BGR
filters copied and the depth filter set to their mean over the three
colour channels; rate 1e-10. Paper: 30.5 mean IU ("RGBD").
"""

from fcn_jax.configs import nyud_fcn32s_color


def get_config():
  return nyud_fcn32s_color.get_config('color-d')
