"""Fully Convolutional Networks (Long, Shelhamer, Darrell; CVPR 2015, PAMI 2016).

The VGG16 classifier in its convolutionalized form (fc6 = 7x7 conv, fc7 = 1x1
conv) with the paper's FCN-32s / FCN-16s / FCN-8s / FCN-8s at-once heads.

Everything follows the Caffe reference (voc-fcn*/net.py) exactly:

* conv1_1 pads by 100 so that even a 1x1 input survives the five pools and
  the 7x7 fc6, and 2x2/2 max pooling rounds up (Caffe's ceil mode);
* skip scores are cropped by fixed offsets (5 for pool4, 9 for pool3) and the
  upsampled result by 19 (32s), 27 (16s) or 31 (8s), which aligns the output
  pixel grid with the input so logits have the input's height and width;
* upsampling is a transposed convolution with a bilinear, channel-diagonal
  kernel, frozen by default;
* score layers start at zero.

Layout is NHWC. Parameter names are the Caffe layer names, so reference
weights map one to one onto ``params[layer_name]``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcn_jax import errors
from fcn_jax import fast_ops as fast_ops_lib
from fcn_jax import layers

# Per-channel mean of the ImageNet training set in BGR order, 0-255 scale, as
# used by the Caffe VGG16 and every FCN reference model.
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

VARIANTS = ('fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce')
# Every model get_model builds: the VGG16 FCNs and FCN-AlexNet (alexnet.py).
MODELS = VARIANTS + ('fcn-alexnet',)

# VGG16's five convolution blocks: (number of 3x3 convs, output channels).
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_CHANNELS = 4096

# Crop offsets of the reference nets (pixel-exact alignment of the skips and
# of the final upsampled score with the padded input).
CROP_POOL4 = 5
CROP_POOL3 = 9
FINAL_CROP = {'fcn32s': 19, 'fcn16s': 27, 'fcn8s': 31, 'fcn8s-atonce': 31}

# FCN-8s at-once scales the pool features before scoring so that the skips
# start as small perturbations of the coarse prediction (PAMI, Sec. 4.3).
ATONCE_SCALE_POOL4 = 0.01
ATONCE_SCALE_POOL3 = 0.0001

# fast_ops modes: 'auto' uses the custom-gradient ops (fcn_jax/fast_ops.py)
# where they win, i.e. on CPU; 'on' forces them, 'off' the plain XLA ops.
FAST_OPS_MODES = ('auto', 'on', 'off')


def use_fast_ops(mode: str) -> bool:
  """Resolves a fast_ops mode for the current default backend."""
  if mode not in FAST_OPS_MODES:
    raise ValueError(f'Unknown fast_ops mode {mode!r}; '
                     f'expected one of {FAST_OPS_MODES}.')
  if mode == 'auto':
    return jax.default_backend() == 'cpu'
  return mode == 'on'


def use_fast_layer(mode: str, name: str, batch_size: int) -> bool:
  """Whether layer `name` uses its fast op under fast_ops `mode`.

  'on': every layer; 'off': none; 'auto': on CPU the layers where the fast
  op was measured faster at this batch size (fast_ops.CPU_FAST_LAYERS).
  """
  if mode == 'auto':
    return (use_fast_ops(mode) and
            fast_ops_lib.cpu_fast_layer(name, batch_size))
  return use_fast_ops(mode)


def scaled_channels(channels: int, width: float) -> int:
  """Channel count under the `width` multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def crop_offsets(variant: str, input_padding: int = 100,
                 fc6_padding: int = 0) -> dict[str, int]:
  """Crop offsets that align every score map with the input pixel grid.

  Index j of a map with stride S corresponds to input coordinate S*j + c (the
  centre of its receptive field); c follows from the layer geometry: conv1_1
  with padding p shifts by p - 1, a 2x2/2 pool of stride S centres at
  (S - 1) / 2, fc6 (7x7, padding q) centres on pool5 index j + 3 - q, and a
  2s-tap stride-s upsampling puts output o on input index (o - s + 0.5) / s.
  With the reference's p = 100, q = 0 this gives Caffe's 5, 9 and 19/27/31.
  With p = 1, q = 3 (every layer 'SAME', no extra padding) the skips are
  already aligned up to one pixel and the final crop is stride / 2.

  Returns:
    {'pool4': d4, 'pool3': d3, 'final': f} (skips only where the variant has
    them). A skip offset d >= 0 crops the skip score by d (the reference's
    case); d < 0 crops the upsampled coarse score by -d instead. The final
    upsampled score is cropped by f.

  Raises:
    ValueError: when the geometry cannot align the output with the input.
  """
  shift = input_padding - 1
  def pool_offset(stride):
    return (stride - 1) / 2 - shift
  def upsampled(offset, stride, factor):
    return offset - (stride // factor) * (factor - 0.5)
  def integer(value, what):
    if value != int(value):
      raise ValueError(f'{what} offset {value} is not an integer.')
    return int(value)

  offset, stride = 32 * (3 - fc6_padding) + pool_offset(32), 32
  offsets = {}
  skips = {'fcn32s': (), 'fcn16s': (('pool4', 16),)}.get(
      variant, (('pool4', 16), ('pool3', 8)))
  for name, skip_stride in skips:
    up = upsampled(offset, stride, 2)
    skip = pool_offset(skip_stride)
    offsets[name] = integer((up - skip) / skip_stride, name)
    # The fused map lives on the grid of whichever map was not cropped.
    offset, stride = max(up, skip), skip_stride
  final = -upsampled(offset, stride, stride)
  if final < 0:
    raise ValueError(
        f'input_padding={input_padding}, fc6_padding={fc6_padding}: the '
        f'{variant} output starts {-final} pixels inside the input and cannot '
        'be aligned with it; use more padding.')
  offsets['final'] = integer(final, 'final')
  return offsets


class ParamsMismatchError(ValueError, errors.UserError):
  """Parameters that do not fit a model: some it would silently ignore, or
  some it needs are missing or shaped differently."""


# Expected parameter shapes per module configuration (see StrictParams).
_EXPECTED_PARAMS_CACHE: dict[Any, dict[str, tuple]] = {}


def _flat_shapes(tree) -> dict[str, tuple]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(x))
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


class StrictParams:
  """Mixin for linen Modules: `apply` refuses params it would not use.

  Flax silently ignores entries of the params tree that no layer reads (e.g.
  learned upsampling kernels given to a model with fixed bilinear
  upsampling, or the skip layers of another variant), which gives other
  results without a word. `apply` compares the given tree with what `init`
  creates for this module (computed once per configuration, shapes only)
  and raises ParamsMismatchError naming the layers. Subclasses may override
  `params_hint` to say which setting fixes a mismatch.
  """

  # Whether parameter shapes depend on the input's spatial size (FCNs: no).
  params_depend_on_input_size = False

  def apply(self, variables, *args, **kwargs):
    params = variables.get('params') if hasattr(variables, 'get') else None
    if params is not None and args and kwargs.get('method') is None:
      check_params(self, params, args[0])
    return super().apply(variables, *args, **kwargs)  # pytype: disable=attribute-error

  def params_hint(self, unexpected: list[str], missing: list[str]) -> str:
    del unexpected, missing
    return ''


def _module_key(module, sample) -> Any:
  fields = tuple((f.name, getattr(module, f.name))
                 for f in dataclasses.fields(module)
                 if f.name not in ('parent', 'name'))
  shape = tuple(np.shape(sample))
  shape = shape[-1:] if not module.params_depend_on_input_size else shape[1:]
  return (type(module), fields, shape, str(getattr(sample, 'dtype', '')))


def expected_param_shapes(module, sample) -> dict[str, tuple]:
  """'layer/param' -> shape of what `module.init` creates for `sample`'s shape."""
  key = _module_key(module, sample)
  if key not in _EXPECTED_PARAMS_CACHE:
    struct = jax.ShapeDtypeStruct((1,) + tuple(np.shape(sample))[1:],
                                  getattr(sample, 'dtype', jnp.float32))
    variables = jax.eval_shape(
        lambda x: module.init(jax.random.key(0), x), struct)
    _EXPECTED_PARAMS_CACHE[key] = _flat_shapes(variables.get('params', {}))
  return _EXPECTED_PARAMS_CACHE[key]


def check_params(module, params, sample) -> None:
  """Raises ParamsMismatchError if `params` differ from what `module` uses.

  Args:
    module: a linen Module (e.g. from `get_model`).
    params: the params tree to apply it with.
    sample: an input of the shape it is applied to (array or tracer).
  """
  expected = expected_param_shapes(module, sample)
  given = _flat_shapes(params)
  if given == expected:
    return
  layer_names = lambda keys: sorted({k.split('/')[0] for k in keys})  # pylint: disable=unnecessary-lambda-assignment
  unexpected = layer_names(set(given) - set(expected))
  missing = layer_names(set(expected) - set(given))
  reshaped = [f'{k} {given[k]} (model: {expected[k]})'
              for k in sorted(set(given) & set(expected))
              if given[k] != expected[k]]
  problems = []
  if unexpected:
    problems.append(f'the model would ignore {", ".join(unexpected)}')
  if missing:
    problems.append(f'it needs {", ".join(missing)}, which are missing')
  if reshaped:
    problems.append('shapes differ: ' + ', '.join(reshaped[:4]) +
                    (' ...' if len(reshaped) > 4 else ''))
  hint = module.params_hint(unexpected, missing)
  raise ParamsMismatchError(
      f'Parameters do not fit {describe_module(module)}: '
      f'{"; ".join(problems)}.{" " + hint if hint else ""}')


def describe_module(module) -> str:
  names = ('variant', 'num_classes', 'width', 'learn_upsampling')
  fields = ', '.join(f'{n}={getattr(module, n)!r}' for n in names
                     if hasattr(module, n))
  return f'{type(module).__name__}({fields})'


class FCN(StrictParams, nn.Module):
  """FCN-32s / 16s / 8s / 8s at-once on a convolutionalized VGG16.

  Attributes:
    variant: one of VARIANTS.
    num_classes: number of output classes (21 for PASCAL VOC).
    width: multiplier for every channel count (1.0 = the paper's VGG16).
    learn_upsampling: make the bilinear upsampling kernels trainable.
    dropout_rate: dropout after fc6 and fc7 in training (0.5 in the paper).
    input_padding: zero padding of conv1_1 (100 in the reference).
    dtype: computation dtype (parameters stay float32; logits are float32).
    conv_init: kernel initializer of the trunk (the reference fine-tunes from
      ImageNet weights; He init is what trains from scratch without them).
    fast_ops: 'auto' (custom-gradient ops on CPU, where they are faster),
      'on' or 'off' (plain XLA ops). Same function, parameters and gradients.
    upsampling_init: 'bilinear' (the paper) or 'random' initialization of the
      learned upsampling kernels (needs learn_upsampling=True).
    fc6_padding: zero padding of the 7x7 fc6 (0 in the reference). With
      input_padding=1 and fc6_padding=3 every layer is 'SAME': the
      exact-offset variant without the 100-pixel padding, valid for any
      input size at a fraction of the cost. Crops follow `crop_offsets`.
  """
  variant: str = 'fcn8s'
  num_classes: int = 21
  width: float = 1.0
  learn_upsampling: bool = False
  dropout_rate: float = 0.5
  input_padding: int = 100
  dtype: Any = jnp.float32
  conv_init: Callable[..., Any] = nn.initializers.kaiming_normal()
  fast_ops: str = 'auto'
  upsampling_init: str = 'bilinear'
  fc6_padding: int = 0
  # Channels of the input (3 = BGR; more for RGB-D inputs), and the name of
  # the first convolution (the reference's RGB-D net calls it conv1_1_bgrd).
  input_channels: int = 3
  conv1_1_name: str = 'conv1_1'

  def params_hint(self, unexpected: list[str], missing: list[str]) -> str:
    upscore = lambda names: [n for n in names if n.startswith('upscore')]  # pylint: disable=unnecessary-lambda-assignment
    hints = []
    if len(upscore(unexpected)) < len(unexpected) or len(upscore(missing)) < len(
        missing):
      hints.append('Parameters of another variant? Build the model they were '
                   'made for (get_model(variant), --config.model).')
    if upscore(unexpected) and not self.learn_upsampling:
      hints.append('upscore* are learned upsampling kernels: build the model '
                   'with learn_upsampling=True (get_model(..., '
                   'learn_upsampling=True), --config.learn_upsampling=True).')
    elif upscore(missing) and self.learn_upsampling:
      hints.append('The parameters have fixed bilinear upsampling: build the '
                   'model with learn_upsampling=False '
                   '(--config.learn_upsampling=False).')
    if not hints:
      hints.append('Build the model with the class count and width they were '
                   'made for (--config.num_classes, --config.width).')
    return ' '.join(hints)

  def _conv(self, features: int, kernel: int, name: str, padding: Any = 'SAME',
            conv_fn: Callable[..., Any] | None = None):
    return nn.Conv(features, (kernel, kernel), padding=padding,
                   kernel_init=self.conv_init, dtype=self.dtype, name=name,
                   conv_general_dilated=conv_fn)

  def _score(self, name: str, num_classes: int | None = None):
    # Zero-initialized, as in the reference: training starts from the
    # coarse prediction and learns the skips as corrections.
    return nn.Conv(num_classes or self.num_classes, (1, 1),
                   kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name=name)

  def _upsample(self, factor: int, name: str, num_classes: int | None = None):
    return layers.Upsample(num_classes or self.num_classes, factor,
                    self.learn_upsampling, self.dtype, self.upsampling_init,
                    name=name)

  def backbone(self, x: jax.Array, train: bool,
               suffix: str = '') -> dict[str, jax.Array]:
    """Convolutionalized VGG16: returns the pool1..pool5 and fc7 maps.

    The same maps are sown into the 'intermediates' collection (pool1..pool5,
    and fc6_out, fc7_out after ReLU/dropout), so callers can read the convolutionalized
    classifier with ``model.apply(..., mutable=['intermediates'])``.
    Every layer name gets `suffix` (a second stream: conv1_1hha, ...).
    """
    # The batch size is static: each layer's op is chosen at trace time.
    fast = functools.partial(use_fast_layer, self.fast_ops,
                             batch_size=x.shape[0])
    features = {}
    for block, (num_convs, channels) in enumerate(VGG16_BLOCKS, start=1):
      for i in range(1, num_convs + 1):
        pad = self.input_padding if (block, i) == (1, 1) else 1
        name = (self.conv1_1_name if (block, i) == (1, 1)
                else f'conv{block}_{i}')
        # Chosen by the layer's own name (a second stream's too).
        conv_fn = (fast_ops_lib.conv_chunked_weight_grad
                   if fast(f'conv{block}_{i}') else None)
        x = self._conv(scaled_channels(channels, self.width), 3,
                       name + suffix, padding=[(pad, pad)] * 2,
                       conv_fn=conv_fn)(x)
        x = nn.relu(x)
      x = (fast_ops_lib.max_pool_2x2_ceil if fast(f'pool{block}')
           else layers.max_pool_ceil)(x)
      features[f'pool{block}'] = x
      self.sow('intermediates', f'pool{block}{suffix}', x)
    # fc6/fc7: the classifier's fully connected layers as convolutions. fc6
    # reads a 7x7x512 window, exactly the input of VGG16's first FC layer.
    fc = scaled_channels(FC_CHANNELS, self.width)
    for name, kernel in (('fc6', 7), ('fc7', 1)):
      conv_fn = (fast_ops_lib.conv_im2col if name == 'fc6' and fast(name)
                 else None)
      pad = self.fc6_padding if name == 'fc6' else 0
      x = nn.relu(self._conv(fc, kernel, name + suffix,
                             padding=[(pad, pad)] * 2, conv_fn=conv_fn)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      self.sow('intermediates', f'{name}{suffix}_out', x)
    features['fc7'] = x
    return features

  def check_settings(self) -> None:
    """ValueError for an unknown variant or an impossible upsampling init."""
    if self.variant not in VARIANTS:
      raise ValueError(f'Unknown FCN variant {self.variant!r}; '
                       f'expected one of {VARIANTS}.')
    if self.upsampling_init not in layers.UPSAMPLING_INITS:
      raise ValueError(f'Unknown upsampling_init {self.upsampling_init!r}; '
                       f'expected one of {layers.UPSAMPLING_INITS}.')
    if self.upsampling_init == 'random' and not self.learn_upsampling:
      raise ValueError("upsampling_init='random' needs learn_upsampling=True "
                       '(a frozen random upsampling cannot learn).')

  def coarse_score(self, feats: dict[str, jax.Array], suffix: str = '',
                   num_classes: int | None = None) -> jax.Array:
    """The score map before the final upsampling: score_fr (FCN-32s), or
    score_fr fused with the pool4 (and pool3) skips. Layer names get
    `suffix` (a second head or stream: score_fr_geo, score_frhha, ...)."""
    offsets = crop_offsets(self.variant, self.input_padding, self.fc6_padding)
    score = self._score('score_fr' + suffix, num_classes)(feats['fc7'])
    if self.variant == 'fcn32s':
      return score
    pool4, pool3 = feats['pool4'], feats['pool3']
    if self.variant == 'fcn8s-atonce':
      pool4 = pool4 * ATONCE_SCALE_POOL4
      pool3 = pool3 * ATONCE_SCALE_POOL3
    score = self._upsample(2, 'upscore2' + suffix, num_classes)(score)
    score = layers.fuse_skip(score, self._score('score_pool4' + suffix,
                                         num_classes)(pool4),
                      offsets['pool4'])
    if self.variant == 'fcn16s':
      return score
    score = self._upsample(2, 'upscore_pool4' + suffix, num_classes)(score)
    return layers.fuse_skip(score, self._score('score_pool3' + suffix,
                                        num_classes)(pool3), offsets['pool3'])

  def upsample_to_input(self, score: jax.Array, height: int, width: int,
                        suffix: str = '',
                        num_classes: int | None = None) -> jax.Array:
    """The final upsampling (upscore / upscore16 / upscore8) and crop to the
    (height, width) of the input; float32 logits."""
    factor = {'fcn32s': 32, 'fcn16s': 16}.get(self.variant, 8)
    name = {32: 'upscore', 16: 'upscore16', 8: 'upscore8'}[factor]
    score = self._upsample(factor, name + suffix, num_classes)(score)
    offsets = crop_offsets(self.variant, self.input_padding, self.fc6_padding)
    score = layers.crop_like(score, offsets['final'], height, width)
    if score.shape[1:3] != (height, width):
      raise ValueError(
          f'A {height}x{width} input is too small for input_padding='
          f'{self.input_padding}, fc6_padding={self.fc6_padding}: the output '
          f'covers only {score.shape[1]}x{score.shape[2]} (fc6 needs a 7x7 '
          'pool5 window; pad more, e.g. input_padding=1, fc6_padding=3).')
    return score.astype(jnp.float32)

  def check_input(self, images: jax.Array) -> None:
    if images.shape[-1] != self.input_channels:
      raise ValueError(f'The model takes {self.input_channels}-channel inputs; '
                       f'got shape {tuple(images.shape)}.')

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Maps (N, H, W, 3) mean-subtracted BGR images to (N, H, W, C) logits."""
    self.check_settings()
    self.check_input(images)
    feats = self.backbone(images.astype(self.dtype), train)
    return self.upsample_to_input(self.coarse_score(feats), *images.shape[1:3])


def get_model(variant: str, num_classes: int = 21, **kwargs) -> FCN:
  """Returns the FCN `variant` ('fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce',
  or 'fcn-alexnet', see `MODELS`).

  Keyword arguments go to `FCN` (width, learn_upsampling, dtype, fast_ops,
  ...) or `alexnet.FCNAlexNet` (the same attributes). With the defaults the
  CPU gets the fast custom-gradient ops. Call as
  ``model.apply({'params': params}, images, train=False)``.
  """
  if variant not in MODELS:
    raise ValueError(f'Unknown model {variant!r}; expected one of {MODELS}.')
  if num_classes < 1:
    raise ValueError(f'num_classes must be positive, got {num_classes}.')
  use_fast_ops(kwargs.get('fast_ops', 'auto'))  # Validates the mode.
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  if variant == 'fcn-alexnet':
    from fcn_jax import alexnet  # pylint: disable=g-import-not-at-top
    return alexnet.FCNAlexNet(num_classes=num_classes, **kwargs)
  return FCN(variant=variant, num_classes=num_classes, **kwargs)


def init_params(model: FCN, rng: jax.Array, image_size: int = 32):
  """Initializes parameters with a small dummy input (FCNs take any size)."""
  channels = getattr(model, 'input_channels', 3)
  dummy = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  return model.init({'params': rng}, dummy, train=False)['params']


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The model a training config describes, with `num_classes` classes.

  Args:
    config: a config over configs/default.py (model, width, dtype, ...).
    num_classes: classes of the (first) head.

  Returns:
    An `FCN`, `alexnet.FCNAlexNet`, or the dataset's variant of them.
  """
  # tasks picks the NYUDv2 / SIFT Flow variants (other inputs, two heads);
  # it builds on this module, hence the import here.
  from fcn_jax import tasks  # pylint: disable=g-import-not-at-top
  return tasks.create_model(
      config, num_classes, width=config.width,
      learn_upsampling=config.learn_upsampling,
      dropout_rate=config.dropout_rate, input_padding=config.input_padding,
      dtype=config.dtype,
      upsampling_init=config.upsampling_init,
      fc6_padding=config.fc6_padding,
      fast_ops=config.fast_ops)
