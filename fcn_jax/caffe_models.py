"""The reference's released Caffe models and how their layers map to ours.

shelhamer/fcn.berkeleyvision.org releases fourteen FCNs as ``.caffemodel``
files (the URL is in each model folder's ``caffemodel-url``) and starts from
two ImageNet classifiers, VGG_ILSVRC_16_layers (VGG16) and bvlc_alexnet /
bvlc_reference_caffenet (AlexNet / CaffeNet). `REFERENCE_MODELS` lists them
all; `layer_table` gives, for each, the Caffe layer name -> fcn_jax param
path table, and `params_from_net` converts a parsed file (`caffemodel`) with
it:

* Convolution blobs (out, in / group, kh, kw) -> flax (kh, kw, in / group,
  out): the same layout as torch's Conv2d, also for grouped convolutions
  (flax's feature_group_count splits channels the way Caffe's group does).
* Deconvolution blobs (in, out, kh, kw) -> (kh, kw, in, out), as torch's
  ConvTranspose2d. Upsampling kernels equal to our bilinear ones are dropped
  (the frozen model computes exactly them), as in the .pth path.
* InnerProduct blobs (out, in) of the ImageNet nets (fc6 over a 7x7 VGG16 or
  6x6 AlexNet pool5 map, fc7/fc8 over 1x1) become convolutions: the paper's
  convolutionalization and the reference's surgery.transplant.
* FCN-8s at-once's Scale layers (scale_pool4 = 0.01, scale_pool3 = 1e-4,
  frozen) are checked against the constants the model applies and dropped.

The NYUDv2 two-stream (color-hha) and SIFT Flow two-headed models have
tables too; their layers keep the reference's suffixed names (conv1_1color,
score_frhha, score_fr_sem, upscore2_geo, ...), which are also the param
names of `multi_models.LateFusionFCN` and `multi_models.TwoHeadFCN`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

from fcn_jax import caffemodel
from fcn_jax import models
from fcn_jax import surgery

DL = 'http://dl.caffe.berkeleyvision.org/'

VGG16_CONVS = tuple(
    f'conv{block}_{i}' for block, (n, _) in enumerate(models.VGG16_BLOCKS, 1)
    for i in range(1, n + 1))
ALEXNET_CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')

# Score / upsampling layers of the VGG FCN heads (reference names).
HEADS = {
    'fcn32s': ('score_fr', 'upscore'),
    'fcn16s': ('score_fr', 'upscore2', 'score_pool4', 'upscore16'),
    'fcn8s': ('score_fr', 'upscore2', 'score_pool4', 'upscore_pool4',
              'score_pool3', 'upscore8'),
}
HEADS['fcn8s-atonce'] = HEADS['fcn8s']

# The at-once model's frozen Scale layers and the constants models.FCN uses.
ATONCE_SCALES = {'scale_pool4': models.ATONCE_SCALE_POOL4,
                 'scale_pool3': models.ATONCE_SCALE_POOL3}

# Spatial size of the input of each InnerProduct layer (convolutionalized).
INNER_PRODUCT_SPATIAL = {
    'vgg16': {'fc6': 7, 'fc7': 1, 'fc8': 1},
    'alexnet': {'fc6': 6, 'fc7': 1, 'fc8': 1},
}


@dataclasses.dataclass(frozen=True)
class ReferenceModel:
  """One released model.

  Attributes:
    name: the reference's model folder ('voc-fcn8s', ...) or base net.
    file: the official file name (the last part of `url`).
    url: where the reference downloads it from.
    arch: 'fcn32s' / 'fcn16s' / 'fcn8s' / 'fcn8s-atonce' / 'fcn-alexnet'
      (models.get_model names), 'vgg16' / 'alexnet' (ImageNet classifiers),
      'fcn32s-color-hha' (two VGG16 streams) or 'siftflow-<fcn..s>' (two
      heads on one trunk).
    num_classes: classes of the score layers (1000 for the classifiers;
      SIFT Flow: the semantic head, its geometric head has 3).
    dataset: the benchmark it is scored on.
  """
  name: str
  file: str
  url: str
  arch: str
  num_classes: int
  dataset: str


def _fcn(name, file, arch, num_classes, dataset):
  return ReferenceModel(name, file, DL + file, arch, num_classes, dataset)


REFERENCE_MODELS = {m.name: m for m in (
    _fcn('voc-fcn32s', 'fcn32s-heavy-pascal.caffemodel', 'fcn32s', 21, 'voc'),
    _fcn('voc-fcn16s', 'fcn16s-heavy-pascal.caffemodel', 'fcn16s', 21, 'voc'),
    _fcn('voc-fcn8s', 'fcn8s-heavy-pascal.caffemodel', 'fcn8s', 21, 'voc'),
    _fcn('voc-fcn8s-atonce', 'fcn8s-atonce-pascal.caffemodel', 'fcn8s-atonce',
         21, 'voc'),
    _fcn('voc-fcn-alexnet', 'fcn-alexnet-pascal.caffemodel', 'fcn-alexnet', 21,
         'voc'),
    _fcn('nyud-fcn32s-color', 'nyud-fcn32s-color-heavy.caffemodel', 'fcn32s',
         40, 'nyud'),
    _fcn('nyud-fcn32s-hha', 'nyud-fcn32s-hha-heavy.caffemodel', 'fcn32s', 40,
         'nyud'),
    _fcn('nyud-fcn32s-color-hha', 'nyud-fcn32s-color-hha-heavy.caffemodel',
         'fcn32s-color-hha', 40, 'nyud'),
    _fcn('siftflow-fcn32s', 'siftflow-fcn32s-heavy.caffemodel',
         'siftflow-fcn32s', 33, 'siftflow'),
    _fcn('siftflow-fcn16s', 'siftflow-fcn16s-heavy.caffemodel',
         'siftflow-fcn16s', 33, 'siftflow'),
    _fcn('siftflow-fcn8s', 'siftflow-fcn8s-heavy.caffemodel', 'siftflow-fcn8s',
         33, 'siftflow'),
    _fcn('pascalcontext-fcn32s', 'pascalcontext-fcn32s-heavy.caffemodel',
         'fcn32s', 60, 'pascal_context'),
    _fcn('pascalcontext-fcn16s', 'pascalcontext-fcn16s-heavy.caffemodel',
         'fcn16s', 60, 'pascal_context'),
    _fcn('pascalcontext-fcn8s', 'pascalcontext-fcn8s-heavy.caffemodel',
         'fcn8s', 60, 'pascal_context'),
    ReferenceModel(
        'vgg16', 'VGG_ILSVRC_16_layers.caffemodel',
        'http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/'
        'VGG_ILSVRC_16_layers.caffemodel', 'vgg16', 1000, 'imagenet'),
    ReferenceModel('bvlc_alexnet', 'bvlc_alexnet.caffemodel',
                   DL + 'bvlc_alexnet.caffemodel', 'alexnet', 1000,
                   'imagenet'),
    ReferenceModel('bvlc_reference_caffenet',
                   'bvlc_reference_caffenet.caffemodel',
                   DL + 'bvlc_reference_caffenet.caffemodel', 'alexnet', 1000,
                   'imagenet'),
)}

MODELS_BY_FILE = {m.file: m for m in REFERENCE_MODELS.values()}


def _identity(names) -> dict[str, tuple[str, ...]]:
  return {name: (name,) for name in names}


def table_for_arch(arch: str) -> dict[str, tuple[str, ...]]:
  """Caffe layer name -> param path (tuple of keys) for an architecture."""
  if arch in HEADS:
    return _identity(VGG16_CONVS + ('fc6', 'fc7') + HEADS[arch])
  if arch == 'vgg16':
    return _identity(VGG16_CONVS + ('fc6', 'fc7', 'fc8'))
  if arch == 'alexnet':
    return _identity(ALEXNET_CONVS + ('fc6', 'fc7', 'fc8'))
  if arch == 'fcn-alexnet':
    return _identity(ALEXNET_CONVS + ('fc6', 'fc7', 'score_fr', 'upscore'))
  if arch == 'fcn32s-color-hha':
    # nyud-fcn32s-color-hha/net.py: one VGG16 stream per modality, layer names
    # suffixed by the modality; the summed score is upsampled once.
    table = {'upscore': ('upscore',)}
    for stream in ('color', 'hha'):
      for name in VGG16_CONVS + ('fc6', 'fc7', 'score_fr'):
        table[name + stream] = (name + stream,)
    return table
  if arch.startswith('siftflow-'):
    # siftflow-fcn*/net.py: a shared trunk and a semantic and a geometric
    # head, each with its own score / upsampling layers suffixed _sem / _geo.
    table = _identity(VGG16_CONVS + ('fc6', 'fc7'))
    for head in ('sem', 'geo'):
      for name in HEADS[arch[len('siftflow-'):]]:
        table[f'{name}_{head}'] = (f'{name}_{head}',)
    return table
  raise ValueError(f'No Caffe layer table for architecture {arch!r}.')


def layer_table(model: str) -> dict[str, tuple[str, ...]]:
  """The Caffe layer name -> param path table of a `REFERENCE_MODELS` entry."""
  if model not in REFERENCE_MODELS:
    raise ValueError(f'Unknown reference model {model!r}; expected one of '
                     f'{sorted(REFERENCE_MODELS)}.')
  return table_for_arch(REFERENCE_MODELS[model].arch)


def guess_arch(layer_names) -> str:
  """The architecture a set of Caffe layer names (with weights) belongs to.

  FCN-8s at-once is told from FCN-8s by its Scale layers; the datasets'
  models share architectures (see `guess_model`).
  """
  names = set(layer_names)
  if 'conv1_1color' in names:
    return 'fcn32s-color-hha'
  if 'score_fr_sem' in names:
    return 'siftflow-' + _vgg_head(names, '_sem')
  if 'conv1' in names:
    return 'fcn-alexnet' if 'score_fr' in names else 'alexnet'
  if 'conv1_1' in names:
    if 'score_fr' in names:
      head = _vgg_head(names, '')
      return 'fcn8s-atonce' if head == 'fcn8s' and 'scale_pool4' in names else (
          head)
    return 'vgg16'
  raise caffemodel.CaffeModelError(
      f'no known layers (expected conv1_1 or conv1, found '
      f'{sorted(names)[:6]})')


def _vgg_head(names, suffix: str) -> str:
  if 'score_pool3' + suffix in names:
    return 'fcn8s'
  if 'score_pool4' + suffix in names:
    return 'fcn16s'
  return 'fcn32s'


def guess_model(path: str, net: caffemodel.CaffeNet) -> ReferenceModel:
  """The reference model of a file: by official file name, else by layers.

  Unknown names get a synthetic entry with the architecture read off the
  layer names and the class count off score_fr (or fc8).
  """
  known = MODELS_BY_FILE.get(os.path.basename(path))
  arch = guess_arch(layer.name for layer in net.layers)
  if known is not None and known.arch == arch:
    return known
  layers = net.by_name()
  score = next((layers[n] for n in ('score_fr', 'score_fr_sem',
                                    'score_frcolor', 'fc8') if n in layers),
               None)
  num_classes = int(score.blobs[0].shape[0]) if score is not None else 0
  return ReferenceModel(os.path.basename(path), os.path.basename(path), '',
                        arch, num_classes, '')


# ---------------------------------------------------------------------------
# Conversion.
# ---------------------------------------------------------------------------


def _weight_and_bias(layer: caffemodel.CaffeLayer, source: str):
  if not 1 <= len(layer.blobs) <= 2:
    raise caffemodel.CaffeModelError(
        f'{source}: layer {layer.name!r} has {len(layer.blobs)} blobs, '
        'expected a weight and an optional bias.')
  bias = layer.blobs[1].reshape(-1) if len(layer.blobs) == 2 else None
  return layer.blobs[0], bias


def _conv_weight(weight: np.ndarray, name: str, source: str) -> np.ndarray:
  if weight.ndim != 4:
    raise caffemodel.CaffeModelError(
        f'{source}: layer {name!r} weight has shape {weight.shape}, expected '
        '(out, in, kh, kw).')
  return weight


def _inner_product_kernel(weight: np.ndarray, spatial: int, name: str,
                          source: str) -> np.ndarray:
  # Legacy 4-D blobs store an (out, in) matrix as (1, 1, out, in).
  if weight.ndim == 4 and weight.shape[:2] == (1, 1):
    weight = weight[0, 0]
  if weight.ndim != 2:
    raise caffemodel.CaffeModelError(
        f'{source}: InnerProduct {name!r} weight has shape {weight.shape}.')
  try:
    return surgery.linear_to_conv_kernel(weight, spatial)
  except ValueError as e:
    raise caffemodel.CaffeModelError(f'{source}: layer {name!r}: {e}') from e


def _layer_params(layer: caffemodel.CaffeLayer, arch: str, source: str):
  """{'kernel'[, 'bias']} of one layer in flax layout."""
  weight, bias = _weight_and_bias(layer, source)
  if layer.type == 'InnerProduct':
    spatial = INNER_PRODUCT_SPATIAL.get(arch, {}).get(layer.name)
    if spatial is None:
      raise caffemodel.CaffeModelError(
          f'{source}: unexpected InnerProduct layer {layer.name!r}.')
    kernel = _inner_product_kernel(weight, spatial, layer.name, source)
  elif layer.type == 'Deconvolution':
    kernel = surgery.conv_transpose_kernel(
        _conv_weight(weight, layer.name, source))
  else:
    kernel = surgery.conv_kernel(_conv_weight(weight, layer.name, source))
  params = {'kernel': kernel}
  if bias is not None:
    if bias.size != kernel.shape[-1]:
      raise caffemodel.CaffeModelError(
          f'{source}: layer {layer.name!r} has {bias.size} biases for '
          f'{kernel.shape[-1]} outputs.')
    params['bias'] = bias.astype(np.float32)
  return params


def _check_atonce_scales(layers: Mapping[str, caffemodel.CaffeLayer],
                         source: str) -> None:
  for name, value in ATONCE_SCALES.items():
    if name not in layers:
      raise caffemodel.CaffeModelError(f'{source}: FCN-8s at-once without '
                                       f'its {name!r} layer.')
    scale = layers[name].blobs[0]
    if not np.allclose(scale, value, rtol=1e-6, atol=0):
      raise caffemodel.CaffeModelError(
          f'{source}: {name!r} scales by {float(scale.reshape(-1)[0]):g}, '
          f'the at-once model by the reference constant {value:g}.')


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_net(net: caffemodel.CaffeNet, arch: str, source: str = '',
                    learn_upsampling: bool | None = None
                    ) -> tuple[dict, dict[str, list[str]]]:
  """Params for `arch` from the layers of a parsed .caffemodel.

  Args:
    net: `caffemodel.read_caffemodel`'s result.
    arch: a `ReferenceModel.arch`.
    source: the file name, for messages.
    learn_upsampling: None: keep the upsampling kernels only if one of them
      is not bilinear (then the model needs learn_upsampling=True); True:
      always keep them; False: require bilinear kernels and drop them.

  Returns:
    (params pytree, report with the Caffe layer names 'ignored' (weight-
    carrying layers the model has no place for, e.g. an ImageNet net's
    'fc8' when not in the table) and 'dropped' (bilinear upsampling, at-once
    scales)).

  Raises:
    CaffeModelError: a layer of the table is missing or has the wrong kind
      of blobs.
  """
  source = source or net.name or '.caffemodel'
  table = table_for_arch(arch)
  layers = net.by_name()
  missing = [name for name in table if name not in layers]
  if missing:
    raise caffemodel.CaffeModelError(
        f'{source}: not a {arch} model: missing layers {missing[:6]}'
        f'{"..." if len(missing) > 6 else ""} (found '
        f'{[layer.name for layer in net.layers][:6]}...).')
  dropped = []
  if arch == 'fcn8s-atonce':
    _check_atonce_scales(layers, source)
    dropped += list(ATONCE_SCALES)
  params, upsampling = {}, {}
  for name, path in table.items():
    layer = layers[name]
    value = _layer_params(layer, arch, source)
    if path[-1].startswith('upscore'):
      upsampling[name] = (path, value)
    else:
      _set(params, path, value)
  bilinear = all(surgery.is_bilinear(v['kernel']) for _, v in
                 upsampling.values())
  if learn_upsampling is False and not bilinear:
    raise caffemodel.CaffeModelError(
        f'{source}: the upsampling kernels are not bilinear; the frozen model '
        'cannot reproduce them (use learn_upsampling=True).')
  if learn_upsampling or not bilinear:
    for path, value in upsampling.values():
      _set(params, path, {'kernel': value['kernel']})
  else:
    dropped += list(upsampling)
  ignored = [layer.name for layer in net.layers
             if layer.name not in table and layer.name not in dropped]
  return params, {'ignored': ignored, 'dropped': dropped}


def convert_caffemodel(path: str, model: str = '',
                       learn_upsampling: bool | None = None
                       ) -> tuple[dict, dict]:
  """Reads and converts one .caffemodel.

  Args:
    path: the file.
    model: a `REFERENCE_MODELS` name or an architecture ('fcn8s-atonce',
      ...) to force; '' = by file name, else by layer names.
    learn_upsampling: as in `params_from_net`.

  Returns:
    (params, metadata) with the keys `workdir.save_params` writes.
  """
  net = caffemodel.read_caffemodel(path)
  if model in REFERENCE_MODELS:
    ref = REFERENCE_MODELS[model]
  elif model:
    ref = dataclasses.replace(guess_model(path, net), arch=model)
  else:
    ref = guess_model(path, net)
  params, report = params_from_net(net, ref.arch, path, learn_upsampling)
  metadata = {
      'source': os.path.abspath(path), 'format': 'caffemodel',
      'caffe_format': net.format, 'reference_model': ref.name,
      'input': 'BGR, 0-255, minus models.MEAN_BGR',
      'variant': {'vgg16': 'vgg16', 'alexnet': 'alexnet'}.get(ref.arch,
                                                               ref.arch),
      'num_classes': _num_classes(params),
      'learn_upsampling': any(k.startswith('upscore') for k in params),
      'ignored_layers': report['ignored'], 'dropped_layers': report['dropped'],
  }
  trunk = (params.get('conv1_1') or params.get('conv1')
           or params['conv1_1color'])
  base = (models.VGG16_BLOCKS[0][1] if 'conv1' not in params
          else ALEXNET_CONV1_CHANNELS)
  metadata['width'] = trunk['kernel'].shape[-1] / base
  return params, metadata


ALEXNET_CONV1_CHANNELS = 96


def _num_classes(params: Mapping) -> int:
  for path in (('score_fr',), ('score_fr_sem',), ('score_frcolor',),
               ('fc8',)):
    node = params
    for key in path:
      node = node.get(key, {}) if isinstance(node, Mapping) else {}
    if 'kernel' in node:
      return int(node['kernel'].shape[-1])
  return 0
