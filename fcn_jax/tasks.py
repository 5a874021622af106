"""What a dataset asks of the model beyond PASCAL VOC's single RGB head.

NYUDv2 takes other inputs (`config.nyud_input`: HHA, RGB + depth in one
4-channel conv1_1_bgrd, or RGB and HHA in two streams), SIFT Flow has two
label maps scored by two heads. This module picks the model for a config,
the loss of a (possibly multi-head) output, the confusion matrices of an
evaluation and the reference's weight surgery for staged initialization.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcn_jax import losses
from fcn_jax import metrics as metrics_lib
from fcn_jax import models
from fcn_jax import multi_models
from fcn_jax import surgery
from fcn_jax import workdir as workdir_lib
from fcn_jax.data import nyud
from fcn_jax.data import pascal_context
from fcn_jax.data import siftflow

# Variants of the two-stream NYUDv2 model (the reference has FCN-32s; the
# paper also reports FCN-16s RGB-HHA).
LATE_FUSION_VARIANTS = ('fcn32s', 'fcn16s')
# Label key and layer suffix of each SIFT Flow head (siftflow-fcn*/net.py).
SIFTFLOW_HEADS = (('label', '_sem'), ('geo_label', '_geo'))
GEO_PREFIX = 'geo_'


def input_mode(config: ml_collections.ConfigDict) -> str:
  """'color' except for NYUDv2, where config.nyud_input says."""
  if config.dataset == 'nyud':
    return config.nyud_input
  return 'color'


def input_channels(config: ml_collections.ConfigDict) -> int:
  mode = input_mode(config)
  return nyud.INPUT_CHANNELS[mode] if mode in nyud.INPUT_CHANNELS else 3


def config_errors(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(key, message) for settings these datasets cannot use."""
  errors = []
  special = (config.dataset == 'siftflow' or input_mode(config) in
             ('color-d', 'color-hha'))
  if special and config.model not in models.VARIANTS:
    errors.append(('model', f'this {config.dataset} model is built on VGG16: '
                   f'expected one of {models.VARIANTS}'))
  if config.dataset == 'nyud':
    if config.nyud_input not in nyud.INPUTS:
      errors.append(('nyud_input', f'expected one of {nyud.INPUTS}'))
    elif (config.nyud_input == 'color-hha'
          and config.model not in LATE_FUSION_VARIANTS):
      errors.append(('model', 'the two-stream color-hha model is '
                     f'{" or ".join(LATE_FUSION_VARIANTS)}'))
  return errors


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 **kwargs) -> models.FCN:
  """The model of `config`; `kwargs` are FCN's options (width, dtype, ...)."""
  mode = input_mode(config)
  if config.dataset == 'siftflow':
    heads = ((SIFTFLOW_HEADS[0][0], num_classes, SIFTFLOW_HEADS[0][1]),
             (SIFTFLOW_HEADS[1][0], siftflow.NUM_GEO_CLASSES,
              SIFTFLOW_HEADS[1][1]))
    return _build(multi_models.TwoHeadFCN, config.model, num_classes,
                  heads=heads, **kwargs)
  if mode == 'color-d':
    return models.get_model(config.model, num_classes, input_channels=4,
                            conv1_1_name='conv1_1_bgrd', **kwargs)
  if mode == 'color-hha':
    return _build(multi_models.LateFusionFCN, config.model, num_classes,
                  input_channels=6, streams=('color', 'hha'), **kwargs)
  return models.get_model(config.model, num_classes, **kwargs)


def _build(cls, variant: str, num_classes: int, **kwargs):
  # get_model validates the variant and options; then build the subclass.
  base = models.get_model(variant, num_classes, **{
      k: v for k, v in kwargs.items() if k not in ('heads', 'streams',
                                                  'input_channels')})
  fields = {f: getattr(base, f) for f in base.__dataclass_fields__
            if f not in ('parent', 'name')}
  fields.update({k: v for k, v in kwargs.items()
                 if k in ('heads', 'streams', 'input_channels')})
  return cls(**fields)


# ---------------------------------------------------------------------------
# Loss and evaluation of single- and multi-head outputs.


def loss(logits: Any, batch: dict, normalization: str) -> jax.Array:
  """pixel_cross_entropy of the head(s): summed over heads, as the
  reference's two SoftmaxWithLoss layers (loss + loss_geo) are."""
  if not isinstance(logits, dict):
    return losses.pixel_cross_entropy(logits, batch['label'], normalization)
  return sum(losses.pixel_cross_entropy(logits[k], batch[k], normalization)
             for k in sorted(logits))


def add_confusion(hist: Any, batch: dict, logits: Any,
                  boundary_radius: int = 0) -> Any:
  """hist (an array, or {label key: array} for several heads) + the batch's
  confusion matrices; the boundary band is counted for 'label' only."""
  if not isinstance(hist, dict):
    return _add_one(hist, batch['label'], logits, boundary_radius)
  return {k: _add_one(h, batch[k], logits[k] if isinstance(logits, dict)
                      else logits, boundary_radius if k == 'label' else 0)
          for k, h in hist.items()}


def _add_one(hist, labels, logits, boundary_radius):
  preds = jnp.argmax(logits, axis=-1)
  num_classes = hist.shape[-1]
  counts = metrics_lib.confusion_matrix(labels, preds, num_classes)
  if hist.ndim == 3:
    counts = jnp.stack([counts, metrics_lib.boundary_confusion_matrix(
        labels, preds, num_classes, boundary_radius)])
  return hist + counts


def empty_hist(sizes: dict[str, int], boundary_radius: int = 0) -> Any:
  """Zero confusion matrices: one array, or a dict for several heads."""
  def zeros(key, classes):
    shape = (classes, classes)
    if boundary_radius > 0 and key == 'label':
      shape = (2,) + shape
    return np.zeros(shape, np.int32)
  if len(sizes) == 1:
    return zeros('label', sizes['label'])
  return {k: zeros(k, c) for k, c in sizes.items()}


def scores_of(hist: Any, present_only: bool = False) -> dict:
  """segmentation_scores of the main head (with boundary_mean_iu when the
  histogram has the boundary band), plus 'geo_'-prefixed scores of others."""
  heads = hist if isinstance(hist, dict) else {'label': hist}
  main = np.asarray(heads['label'])
  scores = metrics_lib.segmentation_scores(
      main[0] if main.ndim == 3 else main, present_only=present_only)
  if main.ndim == 3:
    scores['boundary_mean_iu'] = metrics_lib.segmentation_scores(
        main[1])['mean_iu']
  for key, other in heads.items():
    if key != 'label':
      prefix = key[:-len('label')]  # 'geo_label' -> 'geo_'
      for name, value in metrics_lib.segmentation_scores(other).items():
        scores[prefix + name] = value
  return scores


# ---------------------------------------------------------------------------
# Staged initialization (the reference's solve.py surgeries).


def init_from(params, config: ml_collections.ConfigDict):
  """`params` with layers copied from config.init_from (and, for the
  two-stream model, config.init_from_hha), as the reference solvers do:

  * color-d: conv1_1_bgrd gets conv1_1's BGR filters and, for depth, their
    mean over the three colour channels (nyud-fcn32s-color-d/solve.py);
  * color-hha with config.init_from_hha: every layer of the colour (HHA)
    single-stream run goes to its 'color' ('hha') stream (the reference's
    surgery.transplant with suffixes);
  * otherwise layers are copied by name (surgery.init_from), e.g. a
    two-stream FCN-16s from the two-stream FCN-32s.
  """
  mode = input_mode(config)
  if mode != 'color-d' and not (mode == 'color-hha'
                                and config.init_from_hha):
    return surgery.init_from(params, config.init_from)
  if mode == 'color-d':
    source, _ = workdir_lib.load_params(config.init_from)
    source = dict(source)
    if 'conv1_1' in source:
      conv = dict(source.pop('conv1_1'))
      kernel = np.asarray(conv['kernel'])  # (3, 3, in=3, out)
      conv['kernel'] = np.concatenate(
          [kernel, kernel.mean(axis=2, keepdims=True)], axis=2)
      source['conv1_1_bgrd'] = conv
  else:
    source = {}
    for suffix, path in (('color', config.init_from),
                         ('hha', config.init_from_hha)):
      stream, _ = workdir_lib.load_params(path)
      source.update({k + suffix: v for k, v in stream.items()
                     if not k.startswith('upscore')})
  merged, _ = surgery.merge_params(jax.device_get(params), source)
  return jax.tree.map(lambda new, old: jax.device_put(new, old.sharding)
                      if hasattr(old, 'sharding') else new, merged, params)


# ---------------------------------------------------------------------------
# Inputs of one image at inference time (predict, evaluate).


def shipped_class_names(dataset: str) -> tuple[str, ...] | None:
  """The class names fcn_jax ships for `dataset` (None if it ships none)."""
  readers = {'nyud': nyud.class_names, 'siftflow': siftflow.class_names,
             'pascal_context': pascal_context.class_names}
  return readers[dataset]() if dataset in readers else None


def uses_model_input(config: ml_collections.ConfigDict) -> bool:
  """Whether the model reads `model_input` instead of one RGB photo with the
  ImageNet mean (NYUDv2, SIFT Flow: other means, modalities or heads)."""
  return config.dataset in ('nyud', 'siftflow')


def extra_modalities(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Modalities besides the colour photo the model needs ('hha', 'depth')."""
  if config.dataset != 'nyud':
    return ()
  return tuple(m for m in nyud.MODALITIES[input_mode(config)] if m != 'color')


def model_input(config: ml_collections.ConfigDict, rgb: np.ndarray,
                extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
  """The preprocessed (H, W, C) float32 input of one image, as the training
  data source makes it: `rgb` is the (H, W, 3) uint8 photo, `extras` the
  arrays of `extra_modalities` ('hha': (H, W, 3) uint8, 'depth': (H, W))."""
  if config.dataset == 'siftflow':
    return siftflow.preprocess_image(rgb)
  return nyud.preprocess_inputs(input_mode(config), color=rgb,
                                **(extras or {}))


def head_class_names(config: ml_collections.ConfigDict,
                     class_names: tuple[str, ...]) -> dict[str, tuple]:
  """{label key: class names} of every head of the model of `config`."""
  names = {'label': tuple(class_names)}
  if config.dataset == 'siftflow':
    names['geo_label'] = siftflow.geo_class_names()
  return names
