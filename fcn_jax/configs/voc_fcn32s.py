"""The paper's FCN-32s recipe (voc-fcn32s): stage 1 of staged training.

    python -m fcn_jax.convert --input=vgg16_from_caffe.pth \
        --output=weights/vgg16_from_caffe
    python -m fcn_jax.main --workdir=runs/voc-fcn32s \
        --config=fcn_jax/configs/voc_fcn32s.py --config.data_dir=/path/to/data

Full-width VGG16 initialized from the ImageNet classifier (fc6/fc7
convolutionalized, fc8 discarded, score_fr zero), trained on SBD train with
evaluation on VOC2011 seg11valid, as in the reference solver: SGD, momentum
0.99, batch 1, the unnormalized (summed) per-pixel loss with a fixed learning
rate of 1e-10, weight decay 5e-4, bias learning rate x2, dropout 0.5, frozen
bilinear upsampling, 100k iterations (25 x 4000). The reference reports 63.6
mean IU on seg11valid; this recipe has not been run to completion here (it
needs a GPU and the datasets).
"""

from fcn_jax.configs import default


def get_config(variant: str = 'fcn32s', learning_rate: float = 1e-10,
               init_from: str = 'weights/vgg16_from_caffe'):
  config = default.get_config()
  config.model = variant
  config.width = 1.0
  config.learn_upsampling = False
  config.dropout_rate = 0.5
  config.input_padding = 100

  # SBD train (8498 images) / VOC2011 seg11valid (736), whole images.
  config.dataset = 'sbd'
  config.image_size = 0
  config.random_flip = False

  config.batch_size = 1
  config.eval_batch_size = 1
  config.num_train_steps = 100_000
  config.optimizer = 'sgd'
  config.momentum = 0.99
  config.learning_rate = learning_rate
  config.lr_schedule = 'constant'
  config.warmup_steps = 0
  config.weight_decay = 5e-4
  config.bias_lr_mult = 2.0
  config.loss_normalization = 'sum'

  config.log_every_steps = 20
  config.eval_every_steps = 4000
  config.checkpoint_every_steps = 4000

  # A converted checkpoint (python -m fcn_jax.convert) or an earlier stage's
  # workdir; relative to the current directory.
  config.init_from = init_from
  return config
