"""The reference pascalcontext-fcn8s recipe (paper: 35.1 mean IU).

    python -m fcn_jax.main --workdir=runs/pascalcontext-fcn8s \
        --config=fcn_jax/configs/pascalcontext_fcn8s.py --config.data_dir=/path/to/data

From the trained pascalcontext_fcn16s.py run; rate 1e-14.
"""

from fcn_jax.configs import pascalcontext_fcn32s


def get_config():
  return pascalcontext_fcn32s.get_config('fcn8s', 1e-14,
                                         'runs/pascalcontext-fcn16s')
