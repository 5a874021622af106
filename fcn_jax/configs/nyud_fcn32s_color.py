"""The reference nyud-fcn32s-color recipe: FCN-32s on NYUDv2 RGB.

    python -m fcn_jax.main --workdir=runs/nyud-fcn32s-color \
        --config=fcn_jax/configs/nyud_fcn32s_color.py --config.data_dir=/path/to/nyud

From the ImageNet VGG16 (python -m fcn_jax.convert, see voc_fcn32s.py),
trained on trainval (795 images) and scored on test (654), as the reference
solver: SGD, momentum 0.99, batch 1, summed loss, fixed rate 1e-10, weight
decay 5e-4, 100k iterations (50 x 2000, scored every 2000). Paper (CVPR 2015
v2, Table 4): 29.2 mean IU on test. Not run to completion here.
"""

from fcn_jax.configs import voc_fcn32s


def get_config(nyud_input: str = 'color', variant: str = 'fcn32s',
               learning_rate: float = 1e-10,
               init_from: str = 'weights/vgg16_from_caffe',
               init_from_hha: str = ''):
  config = voc_fcn32s.get_config(variant, learning_rate, init_from)
  config.dataset = 'nyud'
  config.nyud_input = nyud_input
  config.init_from_hha = init_from_hha
  config.num_train_steps = 100_000
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  return config
