"""What a parameter tree is: the model settings its names and shapes imply,
and whether it fits a given model (for checkpoints without a config)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fcn_jax import models
from fcn_jax import workdir as workdir_lib


def infer_architecture(params: dict) -> dict[str, Any]:
  """Model settings read off parameter names and shapes.

  FCN-8s and FCN-8s at-once have the same parameters (at-once only scales
  the skip inputs), so the variant 'fcn8s' is assumed for both.
  """
  if 'conv1' in params and 'score_fr' in params:  # FCN-AlexNet
    from fcn_jax import alexnet  # pylint: disable=g-import-not-at-top
    return dict(model='fcn-alexnet',
                num_classes=int(np.shape(params['score_fr']['kernel'])[-1]),
                width=(np.shape(params['conv1']['kernel'])[-1] /
                       alexnet.CONVS[0][1]),
                learn_upsampling='upscore' in params)
  try:
    conv1 = np.shape(params['conv1_1']['kernel'])[-1]
    num_classes = np.shape(params['score_fr']['kernel'])[-1]
  except (KeyError, TypeError) as e:
    raise workdir_lib.CheckpointError(
        f'Parameters lack {e}; not an FCN checkpoint.')
  if 'score_pool3' in params:
    variant = 'fcn8s'
  elif 'score_pool4' in params:
    variant = 'fcn16s'
  else:
    variant = 'fcn32s'
  return dict(model=variant, num_classes=int(num_classes),
              width=conv1 / models.VGG16_BLOCKS[0][1],
              learn_upsampling=any(k.startswith('upscore') for k in params))


def check_params_fit(model: models.FCN, params: dict, source: str) -> None:
  """Raises workdir.CheckpointError listing how `params` differ from what
  `model` expects (missing, unexpected or differently shaped arrays)."""
  expected = jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0)))
  flat_expected = {_path(p): x.shape for p, x in
                   jax.tree_util.tree_leaves_with_path(expected)}
  flat_saved = {_path(p): np.shape(x) for p, x in
                jax.tree_util.tree_leaves_with_path(params)}
  problems = []
  missing = sorted(set(flat_expected) - set(flat_saved))
  extra = sorted(set(flat_saved) - set(flat_expected))
  if missing:
    problems.append(f'missing {", ".join(missing[:4])}'
                    + (' ...' if len(missing) > 4 else ''))
  if extra:
    problems.append(f'unexpected {", ".join(extra[:4])}'
                    + (' ...' if len(extra) > 4 else ''))
  for name in sorted(set(flat_expected) & set(flat_saved)):
    if tuple(flat_expected[name]) != tuple(flat_saved[name]):
      problems.append(f'{name} is {tuple(flat_saved[name])} in the checkpoint '
                      f'but {tuple(flat_expected[name])} in the model')
  if problems:
    found = infer_architecture(params) if 'score_fr' in params else {}
    hint = (f' The checkpoint looks like {found["model"]} with '
            f'{found["num_classes"]} classes and width {found["width"]:g}.'
            if found else '')
    raise workdir_lib.CheckpointError(
        f'{source}: does not fit model {model.variant} with '
        f'{model.num_classes} classes and width {model.width:g}: '
        f'{"; ".join(problems[:3])}.{hint}')


def _path(path) -> str:
  return '/'.join(str(getattr(k, 'key', k)) for k in path)

