"""The reference pascalcontext-fcn32s recipe: the 59-class task.

    python -m fcn_jax.main --workdir=runs/pascalcontext-fcn32s \
        --config=fcn_jax/configs/pascalcontext_fcn32s.py --config.data_dir=/path/to/data

VOC2010 train (4,998 images) / val (5,105) with PASCAL-Context labels, 60
outputs (background + 59), from the ImageNet VGG16: SGD, momentum 0.99,
batch 1, summed loss, fixed rate 1e-10, weight decay 5e-4, 400k iterations
(the reference solve.py's 50 x 8000, scored every 8000). Paper (CVPR 2015
v2, Table 5): 31.8 mean IU on val.
"""

from fcn_jax.configs import voc_fcn32s


def get_config(variant: str = 'fcn32s', learning_rate: float = 1e-10,
               init_from: str = 'weights/vgg16_from_caffe'):
  config = voc_fcn32s.get_config(variant, learning_rate, init_from)
  config.dataset = 'pascal_context'
  config.num_train_steps = 400_000
  config.eval_every_steps = 8000
  config.checkpoint_every_steps = 8000
  return config
