"""FCN-16s late fusion of RGB and HHA on NYUDv2 (paper: 34.0 mean IU).

    python -m fcn_jax.main --workdir=runs/nyud-fcn16s-color-hha \
        --config=fcn_jax/configs/nyud_fcn16s_color_hha.py --config.data_dir=/path/to/nyud

The reference code has no folder or solver for this model (only the paper's
Table 4 row), so this is the reference's staging carried over: from the
trained two-stream FCN-32s (nyud_fcn32s_color_hha.py), each stream gains a
zero-initialized pool4 skip (score_pool4color, score_pool4hha) and the rate
drops 100-fold, as from voc-fcn32s (1e-10) to voc-fcn16s (1e-12): 1e-14.
"""

from fcn_jax.configs import nyud_fcn32s_color


def get_config():
  return nyud_fcn32s_color.get_config(
      'color-hha', variant='fcn16s', learning_rate=1e-14,
      init_from='runs/nyud-fcn32s-color-hha')
