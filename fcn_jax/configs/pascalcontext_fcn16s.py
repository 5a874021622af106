"""The reference pascalcontext-fcn16s recipe (paper: 34.8 mean IU).

    python -m fcn_jax.main --workdir=runs/pascalcontext-fcn16s \
        --config=fcn_jax/configs/pascalcontext_fcn16s.py --config.data_dir=/path/to/data

From the trained pascalcontext_fcn32s.py run; rate 1e-12.
"""

from fcn_jax.configs import pascalcontext_fcn32s


def get_config():
  return pascalcontext_fcn32s.get_config('fcn16s', 1e-12,
                                         'runs/pascalcontext-fcn32s')
