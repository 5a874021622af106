"""The reference siftflow-fcn32s recipe: semantic and geometric heads.

    python -m fcn_jax.main --workdir=runs/siftflow-fcn32s \
        --config=fcn_jax/configs/siftflow_fcn32s.py --config.data_dir=/path/to/SiftFlowDataset

One VGG16 trunk with two FCN heads (33 semantic classes, 3 geometric), the
two summed losses, trained on trainval (2,486 images) and scored on test
(200) for both tasks: SGD, momentum 0.99, batch 1, fixed rate 1e-10, weight
decay 5e-4, 100k iterations (50 x 2000), from the ImageNet VGG16. The
semantic means are over the classes present in the test set.
"""

from fcn_jax.configs import voc_fcn32s


def get_config(variant: str = 'fcn32s', learning_rate: float = 1e-10,
               init_from: str = 'weights/vgg16_from_caffe'):
  config = voc_fcn32s.get_config(variant, learning_rate, init_from)
  config.dataset = 'siftflow'
  config.num_train_steps = 100_000
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  return config
