"""The paper's FCN-8s at-once recipe (voc-fcn8s-atonce): no staging.

    python -m fcn_jax.convert --input=vgg16_from_caffe.pth \
        --output=weights/vgg16_from_caffe
    python -m fcn_jax.main --workdir=runs/voc-fcn8s-atonce \
        --config=fcn_jax/configs/voc_fcn8s_atonce.py --config.data_dir=/path/to/data

All three heads trained together from the ImageNet VGG16, with pool4 and
pool3 scaled by 0.01 and 0.0001 before scoring (the 'fcn8s-atonce' model), at
the FCN-32s learning rate 1e-10 for 300k iterations (75 x 4000); otherwise
the voc_fcn32s recipe. Reference: 65.4 mean IU on seg11valid (released
model; staged FCN-8s: 65.5); not run to completion here (it needs a GPU and
the datasets).
"""

from fcn_jax.configs import voc_fcn32s


def get_config():
  config = voc_fcn32s.get_config('fcn8s-atonce', learning_rate=1e-10)
  config.num_train_steps = 300_000
  return config
