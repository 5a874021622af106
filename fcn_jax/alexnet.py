"""FCN-AlexNet: the paper's second backbone (reference voc-fcn-alexnet).

Exactly the reference net.py (AlexNet / CaffeNet layer order):

  conv1 11x11/4 pad 100, ReLU, pool1 3x3/2, norm1 LRN
  conv2 5x5 pad 2 group 2, ReLU, pool2 3x3/2, norm2 LRN
  conv3 3x3 pad 1, ReLU; conv4 3x3 pad 1 group 2, ReLU;
  conv5 3x3 pad 1 group 2, ReLU, pool5 3x3/2
  fc6 6x6 conv, ReLU, dropout; fc7 1x1, ReLU, dropout; score_fr 1x1
  upscore: 63-tap stride-32 transposed convolution (bilinear, frozen);
  crop onto the input by `final_crop` (18 for the reference padding).

Pools round up (Caffe's ceil mode); LRN is Caffe's across-channel
normalization x / (1 + alpha / n * sum of x^2 over n channels)^beta. Channel
counts scale with `width` (kept even, for the two groups). Parameter names
are the Caffe layer names, so the released fcn-alexnet-pascal.caffemodel and
an ImageNet bvlc_alexnet (fc6/fc7 reshaped to 6x6 and 1x1 convolutions) map
one to one.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax import layers
from fcn_jax import models

# (name, output channels, kernel, stride, padding, groups); conv1's padding
# is the model's input_padding.
CONVS = (('conv1', 96, 11, 4, None, 1), ('conv2', 256, 5, 1, 2, 2),
         ('conv3', 384, 3, 1, 1, 1), ('conv4', 384, 3, 1, 1, 2),
         ('conv5', 256, 3, 1, 1, 2))
POOLED = ('conv1', 'conv2', 'conv5')  # Followed by a 3x3/2 max pool.
NORMALIZED = ('conv1', 'conv2')  # Pool followed by LRN.
POOL_SIZE, POOL_STRIDE = 3, 2
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0
FC6_KERNEL = 6
FC_CHANNELS = 4096
UPSCORE_KERNEL, UPSCORE_STRIDE = 63, 32
INPUT_PADDING = 100


def even_channels(channels: int, width: float) -> int:
  """Channels under `width`, rounded to a multiple of 2 (the two groups)."""
  return 2 * max(1, int(round(channels * width / 2)))


def trunk_geometry(input_padding: int = INPUT_PADDING, fc6_padding: int = 0):
  """(kernel, stride, padding) of every layer from the input to fc7."""
  geometry = []
  for name, _, kernel, stride, pad, _ in CONVS:
    geometry.append((kernel, stride, input_padding if pad is None else pad))
    if name in POOLED:
      geometry.append((POOL_SIZE, POOL_STRIDE, 0))
  geometry += [(FC6_KERNEL, 1, fc6_padding), (1, 1, 0)]
  return geometry


def final_crop(input_padding: int = INPUT_PADDING, fc6_padding: int = 0) -> int:
  """The offset that aligns the upsampled score with the input.

  Caffe's coord_map: a layer (kernel k, stride s, padding p) puts output
  index j at input coordinate s*j + (k-1)/2 - p; composed from the input to
  fc7 that is 32*j + b. The stride-32, 63-tap upscore puts score index j at
  output index 32*j + 31, so input coordinate u is upscore index u + 31 - b.
  """
  scale, shift = Fraction(1), Fraction(0)
  for kernel, stride, pad in trunk_geometry(input_padding, fc6_padding):
    shift += scale * (Fraction(kernel - 1, 2) - pad)
    scale *= stride
  assert scale == UPSCORE_STRIDE
  crop = Fraction(UPSCORE_KERNEL - 1, 2) - shift
  if crop != int(crop) or crop < 0:
    raise ValueError(f'input_padding={input_padding}, fc6_padding='
                     f'{fc6_padding}: the output cannot be aligned with the '
                     f'input (offset {crop}).')
  return int(crop)


def local_response_norm(x: jax.Array, size: int = LRN_SIZE,
                        alpha: float = LRN_ALPHA, beta: float = LRN_BETA,
                        k: float = LRN_K) -> jax.Array:
  """Caffe's across-channel LRN on NHWC: x / (k + alpha/size * sum x^2)^beta.

  The sum runs over the `size` channels centred on each channel, zero-padded
  at the ends (Caffe's LRNLayer, ACROSS_CHANNELS).
  """
  half = (size - 1) // 2
  padded = jnp.pad(x * x, ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
  channels = x.shape[-1]
  # A sum of `size` shifted slices: plain, differentiable ops.
  squares = sum(padded[..., i:i + channels] for i in range(size))
  return x / (k + (alpha / size) * squares) ** beta


def max_pool_ceil(x: jax.Array, size: int = POOL_SIZE,
                  stride: int = POOL_STRIDE) -> jax.Array:
  """size x size / stride max pooling that rounds up (Caffe's output size
  ceil((H - size) / stride) + 1; the last window is padded with -inf)."""
  pads = []
  for length in x.shape[1:3]:
    if length < size:
      raise ValueError(f'a {length}-pixel map is smaller than the {size}x'
                       f'{size} pooling window; pad the input more.')
    out = -(-(length - size) // stride) + 1
    pads.append((0, (out - 1) * stride + size - length))
  return nn.max_pool(x, (size, size), strides=(stride, stride), padding=pads)


class FCNAlexNet(models.StrictParams, nn.Module):
  """FCN-AlexNet (single stream, stride 32), the reference voc-fcn-alexnet.

  Attributes mirror `models.FCN` so configs, training and inference treat
  both alike: variant ('fcn-alexnet'), num_classes, width, learn_upsampling,
  dropout_rate, input_padding (100 in the reference), dtype, conv_init,
  upsampling_init, fc6_padding (0 in the reference). fast_ops is accepted
  and unused (the VGG custom-gradient ops do not apply here). Like `FCN`,
  `apply` refuses params the model would ignore (models.StrictParams).
  """
  variant: str = 'fcn-alexnet'
  num_classes: int = 21
  width: float = 1.0
  learn_upsampling: bool = False
  dropout_rate: float = 0.5
  input_padding: int = INPUT_PADDING
  dtype: Any = jnp.float32
  conv_init: Callable[..., Any] = nn.initializers.kaiming_normal()
  fast_ops: str = 'auto'
  upsampling_init: str = 'bilinear'
  fc6_padding: int = 0

  def _conv(self, features, kernel, name, stride=1, pad=0, groups=1):
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=[(pad, pad)] * 2, feature_group_count=groups,
                   kernel_init=self.conv_init, dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Maps (N, H, W, 3) mean-subtracted BGR images to (N, H, W, C) logits."""
    if self.upsampling_init not in layers.UPSAMPLING_INITS:
      raise ValueError(f'Unknown upsampling_init {self.upsampling_init!r}; '
                       f'expected one of {layers.UPSAMPLING_INITS}.')
    if self.upsampling_init == 'random' and not self.learn_upsampling:
      raise ValueError("upsampling_init='random' needs learn_upsampling=True.")
    crop = final_crop(self.input_padding, self.fc6_padding)
    height, width = images.shape[1:3]
    x = images.astype(self.dtype)
    for name, channels, kernel, stride, pad, groups in CONVS:
      pad = self.input_padding if pad is None else pad
      x = nn.relu(self._conv(even_channels(channels, self.width), kernel, name,
                             stride, pad, groups)(x))
      if name in POOLED:
        x = max_pool_ceil(x)
        self.sow('intermediates', f'pool{name[-1]}', x)
      if name in NORMALIZED:
        x = local_response_norm(x)
    fc = models.scaled_channels(FC_CHANNELS, self.width)
    for name, kernel, pad in (('fc6', FC6_KERNEL, self.fc6_padding),
                              ('fc7', 1, 0)):
      x = nn.relu(self._conv(fc, kernel, name, pad=pad)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      self.sow('intermediates', f'{name}_out', x)
    # Zero-initialized like the reference's score layers (Caffe's default
    # constant filler).
    score = nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros,
                    dtype=self.dtype, name='score_fr')(x)
    score = layers.Upsample(self.num_classes, UPSCORE_STRIDE,
                            self.learn_upsampling, self.dtype,
                            self.upsampling_init, kernel_size=UPSCORE_KERNEL,
                            name='upscore')(score)
    score = layers.crop_like(score, crop, height, width)
    if score.shape[1:3] != (height, width):
      raise ValueError(
          f'A {height}x{width} input is too small for input_padding='
          f'{self.input_padding}: the output covers only '
          f'{score.shape[1]}x{score.shape[2]}.')
    return score.astype(jnp.float32)
