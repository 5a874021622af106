"""Net surgery: PyTorch-layout weights -> fcn_jax parameters.

    params = surgery.from_vgg16(state, 'caffe')        # convolutionalized VGG16
    params = surgery.from_torchfcn(state, 'fcn8s')     # pytorch-fcn's FCNs

Kernel layout transforms (conv, transposed conv, fully connected -> conv),
folding torchvision's input normalization into conv1_1, the VGG16 and
pytorch-fcn name tables, the known weight files and their checksums, and
`merge_params`, which copies matching layers into a model's parameters
and `init_from`, which does so from a checkpoint or workdir (staged
training, ``config.init_from``). State dicts come from `fcn_jax.pth`
(or `fcn_jax.caffemodel`); `python -m fcn_jax.convert` writes the result.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from fcn_jax import layers
from fcn_jax import models
from fcn_jax import pth
from fcn_jax import workdir as workdir_lib

# Known weight files: official source, checksum, format and FCN variant.
# md5 values are those pytorch-fcn's own downloader verifies; torchvision names
# its files by the first 8 hex digits of their sha256.
KNOWN_WEIGHTS = {
    'vgg16_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=1adDBTGY3GcEB_47dvcibajyzi872RAs3',
        md5='aa75b158f4181e7f6230029eb96c1b13', format='vgg16-caffe'),
    'vgg16-397923af.pth': dict(
        url='https://download.pytorch.org/models/vgg16-397923af.pth',
        sha256_prefix='397923af', format='vgg16-torchvision'),
    'fcn32s_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f',
        md5='d3eb467a80e7da0468a20dfcbc13e6c8', format='torchfcn',
        variant='fcn32s'),
    'fcn16s_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP',
        md5='a2d4035f669f09483b39c9a14a0d6670', format='torchfcn',
        variant='fcn16s'),
    'fcn8s_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI',
        md5='de93e540ec79512f8770033849c8ae89', format='torchfcn',
        variant='fcn8s'),
    'fcn8s-atonce_from_caffe.pth': dict(
        url='https://drive.google.com/uc?id=0B9P1L--7Wd2vblE1VUIxV1o2d2M',
        md5='bfed4437e941fef58932891217fe6464', format='torchfcn',
        variant='fcn8s-atonce'),
}

# torchvision's input normalization (RGB, [0, 1] scale).
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)

CONV_NAMES = tuple(f'conv{block}_{i}'
                   for block, (n, _) in enumerate(models.VGG16_BLOCKS, start=1)
                   for i in range(1, n + 1))
# Indices of the Conv2d / Linear layers in torchvision's VGG16 Sequentials.
VGG16_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CLASSIFIER_INDICES = {'fc6': 0, 'fc7': 3, 'fc8': 6}

# Score and upsampling layers of each FCN head, in pytorch-fcn's names.
SCORE_LAYERS = {
    'fcn32s': ('score_fr',),
    'fcn16s': ('score_fr', 'score_pool4'),
    'fcn8s': ('score_fr', 'score_pool4', 'score_pool3'),
    'fcn8s-atonce': ('score_fr', 'score_pool4', 'score_pool3'),
}
UPSCORE_LAYERS = {  # name -> upsampling factor
    'fcn32s': {'upscore': 32},
    'fcn16s': {'upscore2': 2, 'upscore16': 16},
    'fcn8s': {'upscore2': 2, 'upscore_pool4': 2, 'upscore8': 8},
    'fcn8s-atonce': {'upscore2': 2, 'upscore_pool4': 2, 'upscore8': 8},
}


def conv_kernel(weight) -> np.ndarray:
  """torch Conv2d weight (out, in, kh, kw) -> flax kernel (kh, kw, in, out)."""
  weight = pth.to_numpy(weight)
  if weight.ndim != 4:
    raise ValueError(f'expected a 4-D conv weight, got shape {weight.shape}')
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32)


def conv_transpose_kernel(weight) -> np.ndarray:
  """torch ConvTranspose2d weight (in, out, kh, kw) -> (kh, kw, in, out).

  torch computes out[o, i*s+a, j*s+b] += x[c, i, j] * w[c, o, a, b];
  `layers.conv_transpose` computes the same with kernel[a, b, c, o]: a pure
  transpose, no spatial flip.
  """
  weight = pth.to_numpy(weight)
  if weight.ndim != 4:
    raise ValueError(f'expected a 4-D weight, got shape {weight.shape}')
  return np.ascontiguousarray(weight.transpose(2, 3, 0, 1), np.float32)


def linear_to_conv_kernel(weight, spatial: int) -> np.ndarray:
  """A Linear weight (out, in_ch*spatial*spatial) as a conv kernel.

  torch flattens the (C, H, W) feature map channel-major, so input index
  c*spatial*spatial + h*spatial + w becomes kernel[h, w, c, :]. This is the
  paper's observation that a fully connected layer is a convolution whose
  kernel covers its whole input.
  """
  weight = pth.to_numpy(weight)
  out_features, in_features = weight.shape
  channels = in_features // (spatial * spatial)
  if channels * spatial * spatial != in_features:
    raise ValueError(f'Linear weight {weight.shape} does not cover a '
                     f'{spatial}x{spatial} input.')
  kernel = weight.reshape(out_features, channels, spatial, spatial)
  return conv_kernel(kernel)


def fold_torchvision_normalization(kernel: np.ndarray, bias: np.ndarray):
  """Makes a conv1_1 that expects torchvision input accept ours.

  torchvision: x_tv[c] = (rgb[c] / 255 - mean[c]) / std[c], RGB order.
  fcn_jax: x[k] = bgr[k] - MEAN_BGR[k], so rgb[c] = x[2-c] + MEAN_BGR[2-c] and
  x_tv[c] = x[2-c] / (255 std[c]) + delta[c] with
  delta[c] = (MEAN_BGR[2-c] / 255 - mean[c]) / std[c]. conv1_1 is linear, so
  scaling and reordering the input channels and adding the delta's response to
  the bias gives the same output wherever the kernel sees image pixels. Where
  it overlaps the zero padding it differs by the delta's share: our zero is
  the Caffe mean colour, torchvision's zero its own mean colour (|delta| <
  0.02 in normalized units, under 1.3 grey levels).

  Args:
    kernel: (kh, kw, 3, O) torchvision conv1_1 kernel (RGB input channels).
    bias: (O,) its bias.

  Returns:
    (kernel, bias) for mean-subtracted BGR 0-255 input.
  """
  mean = np.asarray(TORCHVISION_MEAN_RGB, np.float64)
  std = np.asarray(TORCHVISION_STD_RGB, np.float64)
  mean_rgb = np.asarray(models.MEAN_BGR, np.float64)[::-1]
  delta = (mean_rgb / 255.0 - mean) / std
  kernel64 = kernel.astype(np.float64)
  new_bias = bias.astype(np.float64) + np.einsum('hwco,c->o', kernel64, delta)
  new_kernel = (kernel64 / (255.0 * std)[None, None, :, None])[:, :, ::-1]
  return (np.ascontiguousarray(new_kernel, np.float32),
          new_bias.astype(np.float32))


def torchvision_padding_value() -> np.ndarray:
  """The BGR value (our convention) that torchvision's zero padding means.

  Padding a torchvision-converted model's input with this instead of 0 makes
  the conversion exact; used by the tests.
  """
  mean = np.asarray(TORCHVISION_MEAN_RGB) * 255.0
  return (mean[::-1] - np.asarray(models.MEAN_BGR)).astype(np.float32)


def _layer(kernel, bias=None) -> dict[str, np.ndarray]:
  layer = {'kernel': kernel}
  if bias is not None:
    layer['bias'] = pth.to_numpy(bias).astype(np.float32).reshape(-1)
  return layer


def from_vgg16(state_dict: Mapping[str, Any], input_format: str = 'caffe',
               include_fc8: bool = True) -> dict:
  """Convolutionalizes a torchvision-layout VGG16 state dict.

  Args:
    state_dict: names 'features.{0,2,...,28}.{weight,bias}' and
      'classifier.{0,3,6}.{weight,bias}' (numpy arrays or torch tensors).
    input_format: 'caffe' (BGR, mean-subtracted 0-255, e.g.
      vgg16_from_caffe.pth; no change needed) or 'torchvision' (RGB, [0, 1],
      normalized; folded into conv1_1, see `fold_torchvision_normalization`).
    include_fc8: keep the 1000-way classifier as a 1x1 conv named 'fc8' (the
      heatmap demo uses it; FCN training discards it).

  Returns:
    {'conv1_1': {'kernel', 'bias'}, ..., 'fc6', 'fc7'[, 'fc8']} in flax layout.
  """
  if input_format not in ('caffe', 'torchvision'):
    raise ValueError(f"input_format={input_format!r}: expected 'caffe' or "
                     "'torchvision'.")
  state = {k: pth.to_numpy(v) for k, v in state_dict.items()}
  expected = [f'features.{i}.{p}' for i in VGG16_FEATURE_INDICES
              for p in ('weight', 'bias')]
  expected += [f'classifier.{i}.{p}' for i in VGG16_CLASSIFIER_INDICES.values()
               for p in ('weight', 'bias')]
  _check_names(state, expected, 'VGG16')
  params = {}
  for name, index in zip(CONV_NAMES, VGG16_FEATURE_INDICES):
    params[name] = _layer(conv_kernel(state[f'features.{index}.weight']),
                          state[f'features.{index}.bias'])
  if input_format == 'torchvision':
    params['conv1_1'] = dict(zip(('kernel', 'bias'), fold_torchvision_normalization(
        params['conv1_1']['kernel'], params['conv1_1']['bias'])))
  # fc6 reads pool5's 7x7 map; fc7 and fc8 read a 1x1 map.
  for name, index in VGG16_CLASSIFIER_INDICES.items():
    if name == 'fc8' and not include_fc8:
      continue
    spatial = 7 if name == 'fc6' else 1
    params[name] = _layer(
        linear_to_conv_kernel(state[f'classifier.{index}.weight'], spatial),
        state[f'classifier.{index}.bias'])
  return params


def _check_names(state, expected, what: str) -> None:
  missing = [k for k in expected if k not in state]
  unexpected = [k for k in state if k not in expected]
  if missing or unexpected:
    raise ValueError(
        f'Not a {what} state dict: missing {missing[:6]}'
        f'{"..." if len(missing) > 6 else ""}, unexpected {unexpected[:6]}'
        f'{"..." if len(unexpected) > 6 else ""}.')


def is_bilinear(kernel: np.ndarray, atol: float = 1e-6) -> bool:
  """Whether a (k, k, C, C) kernel is the channel-diagonal bilinear one."""
  size, channels = kernel.shape[0], kernel.shape[2]
  if kernel.shape != (size, size, channels, channels):
    return False
  return np.allclose(kernel, layers.bilinear_kernel(size, channels), atol=atol)


def guess_torchfcn_variant(state_dict: Mapping[str, Any]) -> str:
  """fcn8s / fcn16s / fcn32s from the layer names (8s at-once looks like 8s)."""
  if 'score_pool3.weight' in state_dict:
    return 'fcn8s'
  if 'score_pool4.weight' in state_dict:
    return 'fcn16s'
  return 'fcn32s'


def from_torchfcn(state_dict: Mapping[str, Any], variant: str,
                  learn_upsampling: bool | None = None) -> dict:
  """Params for ``get_model(variant)`` from a wkentaro/pytorch-fcn state dict.

  Args:
    state_dict: torchfcn names ('conv1_1.weight', 'score_fr.bias',
      'upscore2.weight', ...) -> numpy arrays or torch tensors.
    variant: 'fcn32s', 'fcn16s', 'fcn8s' or 'fcn8s-atonce'.
    learn_upsampling: None (default): keep the upsampling kernels only if they
      are not the bilinear ones (then the model needs learn_upsampling=True);
      True: always keep them; False: require bilinear kernels and drop them
      (the frozen model computes exactly those).

  Returns:
    The params pytree; 'upscore*' entries present iff learned upsampling is
    needed (see `has_learned_upsampling`).
  """
  if variant not in models.VARIANTS:
    raise ValueError(f'Unknown FCN variant {variant!r}; expected one of '
                     f'{models.VARIANTS}.')
  state = {k: pth.to_numpy(v) for k, v in state_dict.items()}
  layers = CONV_NAMES + ('fc6', 'fc7') + SCORE_LAYERS[variant]
  upscores = UPSCORE_LAYERS[variant]
  expected = [f'{n}.{p}' for n in layers for p in ('weight', 'bias')]
  expected += [f'{n}.weight' for n in upscores]
  _check_names(state, expected, f'pytorch-fcn {variant}')
  params = {n: _layer(conv_kernel(state[f'{n}.weight']), state[f'{n}.bias'])
            for n in layers}
  upsampling = {n: conv_transpose_kernel(state[f'{n}.weight'])
                for n in upscores}
  for name, kernel in upsampling.items():
    if kernel.shape[0] != 2 * upscores[name]:
      raise ValueError(f'{name}.weight: kernel size {kernel.shape[0]}, '
                       f'expected {2 * upscores[name]} for {variant}.')
  bilinear = all(is_bilinear(k) for k in upsampling.values())
  if learn_upsampling is False and not bilinear:
    raise ValueError(
        f'The {variant} upsampling kernels are not bilinear; the frozen model '
        'cannot reproduce them: use learn_upsampling=True.')
  if learn_upsampling or not bilinear:
    params.update({n: {'kernel': k} for n, k in upsampling.items()})
  return params


def has_learned_upsampling(params: Mapping[str, Any]) -> bool:
  """Whether params need ``get_model(..., learn_upsampling=True)``."""
  return any(name.startswith('upscore') for name in params)


def infer_width(params: Mapping[str, Any]) -> float:
  """The width multiplier of a VGG16 trunk, from conv1_1's output channels."""
  return params['conv1_1']['kernel'].shape[-1] / models.VGG16_BLOCKS[0][1]


def infer_num_classes(params: Mapping[str, Any]) -> int:
  return int(params['score_fr']['kernel'].shape[-1])


# ---------------------------------------------------------------------------
# Checksums and merging.
# ---------------------------------------------------------------------------


def file_digests(path: str) -> dict[str, str]:
  md5, sha256 = hashlib.md5(), hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      md5.update(chunk)
      sha256.update(chunk)
  return {'md5': md5.hexdigest(), 'sha256': sha256.hexdigest()}


def verify_checksum(path: str) -> dict | None:
  """Checks a known weight file's checksum; returns its KNOWN_WEIGHTS entry.

  Files are recognized by name; unknown names return None (not verified).
  """
  known = KNOWN_WEIGHTS.get(os.path.basename(path))
  if known is None:
    return None
  digests = file_digests(path)
  if 'md5' in known and digests['md5'] != known['md5']:
    raise ValueError(f'{path}: md5 {digests["md5"]} does not match the '
                     f'official {known["md5"]} (corrupt or different file; '
                     'rename it or pass --skip_checksum to convert anyway).')
  if ('sha256_prefix' in known
      and not digests['sha256'].startswith(known['sha256_prefix'])):
    raise ValueError(f'{path}: sha256 {digests["sha256"]} does not start with '
                     f'the official {known["sha256_prefix"]} (corrupt or '
                     'different file; pass --skip_checksum to convert anyway).')
  return known


def _flatten(params, prefix=()) -> dict[tuple, Any]:
  flat = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def merge_params(target, source) -> tuple[dict, dict[str, list[str]]]:
  """Copies `source` layers into `target` where names and shapes match.

  Layers of `target` missing in `source` keep their initialization (e.g. the
  zero-initialized score_pool4 of an FCN-16s seeded from an FCN-32s). A layer
  present in both with different shapes means the architectures differ
  (width, number of classes): that is an error, as is a source that matches
  nothing. Source layers the target lacks are ignored, except learned
  upsampling kernels that are not bilinear: dropping those would silently
  change the model.

  Returns:
    (merged params with the target's structure, report with the layer names
    under 'copied', 'initialized' and 'ignored').
  """
  flat_target, flat_source = _flatten(target), _flatten(source)
  layers = lambda flat: sorted({k[0] for k in flat})  # pylint: disable=unnecessary-lambda-assignment
  mismatched = [
      f'{"/".join(k)}: checkpoint {np.shape(flat_source[k])} vs model '
      f'{np.shape(v)}' for k, v in flat_target.items()
      if k in flat_source and np.shape(flat_source[k]) != np.shape(v)]
  if mismatched:
    raise ValueError('Checkpoint does not fit the model (different width or '
                     'number of classes?): ' + '; '.join(mismatched))
  copied = {k for k in flat_target if k in flat_source}
  if not copied:
    raise ValueError('Checkpoint shares no layer with the model: expected '
                     f'names like {layers(flat_target)[:4]}, got '
                     f'{layers(flat_source)[:4]}.')
  ignored = sorted({k[0] for k in flat_source if k not in flat_target})
  for name in ignored:
    if name.startswith('upscore') and not is_bilinear(
        np.asarray(source[name]['kernel'])):
      raise ValueError(
          f'Checkpoint has learned (non-bilinear) upsampling {name!r} but the '
          'model keeps upsampling frozen: set learn_upsampling=True.')
  merged = _unflatten({k: (np.asarray(flat_source[k], np.asarray(v).dtype)
                           if k in copied else v)
                       for k, v in flat_target.items()})
  report = {
      'copied': sorted({k[0] for k in copied}),
      'initialized': sorted({k[0] for k in flat_target if k not in copied}),
      'ignored': ignored,
  }
  return merged, report


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  tree = {}
  for key, value in flat.items():
    node = tree
    for part in key[:-1]:
      node = node.setdefault(part, {})
    node[key[-1]] = value
  return tree


def init_from(params, path: str):
  """`params` with every matching layer replaced by the checkpoint's.

  The arrays are placed like the corresponding `params` leaves (same
  sharding), so this can seed a freshly created, replicated TrainState.
  """
  source, metadata = workdir_lib.load_params(path)
  merged, report = merge_params(jax.device_get(params), source)
  logging.info('Initialized from %s (%s): copied %s.', path,
               metadata.get('format', '?'), ', '.join(report['copied']))
  if report['initialized']:
    logging.info('Layers not in the checkpoint, initialized from scratch: %s.',
                 ', '.join(report['initialized']))
  if report['ignored']:
    logging.info('Checkpoint layers the model does not use: %s.',
                 ', '.join(report['ignored']))
  merged = jax.tree.map(
      lambda new, old: jax.device_put(new, old.sharding)
      if hasattr(old, 'sharding') else new, merged, params)
  return merged
