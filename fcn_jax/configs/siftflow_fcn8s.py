"""The reference siftflow-fcn8s recipe.

    python -m fcn_jax.main --workdir=runs/siftflow-fcn8s \
        --config=fcn_jax/configs/siftflow_fcn8s.py --config.data_dir=/path/to/SiftFlowDataset

From the trained siftflow_fcn16s.py run; rate 1e-12, as the reference's
siftflow-fcn8s/solver.prototxt (not 1e-14 as for VOC).
"""

from fcn_jax.configs import siftflow_fcn32s


def get_config():
  return siftflow_fcn32s.get_config('fcn8s', 1e-12, 'runs/siftflow-fcn16s')
