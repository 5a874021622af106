"""The paper's FCN-AlexNet recipe (voc-fcn-alexnet).

    python -m fcn_jax.convert --input=bvlc_alexnet.caffemodel \
        --output=weights/bvlc_alexnet
    python -m fcn_jax.main --workdir=runs/voc-fcn-alexnet \
        --config=fcn_jax/configs/voc_fcn_alexnet.py --config.data_dir=/path/to/data

FCN-AlexNet (fcn_jax/alexnet.py) initialized from the ImageNet AlexNet
(conv1-conv5 copied, fc6/fc7 convolutionalized to 6x6 and 1x1, fc8
discarded, score_fr zero), trained on SBD train and evaluated on VOC2011
seg11valid as the reference solver.prototxt / solve.py: SGD, momentum 0.9,
the normalized loss (mean over labelled pixels) with a fixed learning rate
of 1e-4, iter_size 20 as gradient accumulation (batch 20 of whole images,
one at a time), weight decay 5e-4, bias learning rate x2, dropout 0.5, frozen
bilinear upsampling, 100k iterations. Two small differences: the batch's
loss is normalized by all its labelled pixels at once (Caffe normalizes each
image by its own and averages the 20), and the 20 images are padded to a
common bucket shape (ignored label) before being processed one at a time.
The reference reports 48.0 mean IU on seg11valid; this recipe has not been
run to completion here (it needs a GPU and the datasets).
"""

from fcn_jax.configs import voc_fcn32s


def get_config():
  config = voc_fcn32s.get_config('fcn-alexnet', learning_rate=1e-4,
                                 init_from='weights/bvlc_alexnet')
  config.momentum = 0.9
  config.loss_normalization = 'mean'
  config.batch_size = 20
  config.grad_accum_steps = 20
  config.num_train_steps = 100_000
  # One step is 20 images here (one reference iteration): evaluate and
  # checkpoint every 4000 iterations as solve.py does.
  return config
