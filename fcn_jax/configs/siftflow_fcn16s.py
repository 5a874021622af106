"""The reference siftflow-fcn16s recipe (paper: 39.5 mean IU, 94.3 geometric
pixel accuracy).

    python -m fcn_jax.main --workdir=runs/siftflow-fcn16s \
        --config=fcn_jax/configs/siftflow_fcn16s.py --config.data_dir=/path/to/SiftFlowDataset

From the trained siftflow_fcn32s.py run; rate 1e-12 (siftflow-fcn16s/solver.prototxt).
"""

from fcn_jax.configs import siftflow_fcn32s


def get_config():
  return siftflow_fcn32s.get_config('fcn16s', 1e-12, 'runs/siftflow-fcn32s')
