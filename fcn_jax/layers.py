"""Layers of the Caffe FCNs that are not in flax.linen.

Bilinear kernels and the frozen or learned `Upsample` (a transposed
convolution computed sub-pixel, as Caffe's Deconvolution), 2x2 max pooling
that rounds up (Caffe's ceil mode), and the Crop layer with the skip fusion
built on it. models.py and alexnet.py assemble the networks from these.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Initializations of a learned Upsample kernel (Upsample.kernel_init).
UPSAMPLING_INITS = ('bilinear', 'random')


def bilinear_kernel_1d(size: int) -> np.ndarray:
  """1-D bilinear interpolation weights of a `size`-tap upsampling filter.

  For the stride-s filters of the FCNs (size = 2s) this is the tent
  ``1 - |x - center| / factor`` with factor = ceil(size / 2), the standard
  kernel of Caffe's bilinear filler and of the FCN surgery code.
  """
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  return 1.0 - np.abs(np.arange(size) - center) / factor


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
  """Channel-diagonal bilinear kernel, shape (size, size, channels, channels).

  Layout (kh, kw, in, out); class c only feeds class c, as in the paper.
  """
  k1 = bilinear_kernel_1d(size)
  k2 = np.outer(k1, k1).astype(np.float32)
  kernel = np.zeros((size, size, channels, channels), np.float32)
  kernel[:, :, np.arange(channels), np.arange(channels)] = k2[..., None]
  return kernel


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int,
                   depthwise: bool = False) -> jax.Array:
  """Caffe/PyTorch transposed convolution (no padding), computed sub-pixel.

  Semantics: ``out[i*s + a, j*s + b, o] += x[i, j, c] * kernel[a, b, c, o]``,
  output size ``(in - 1) * s + k``. This is the adjoint of a stride-s
  convolution, which is exactly what Caffe's Deconvolution and torch's
  ConvTranspose2d compute.

  Instead of convolving a zero-dilated input (s^2 times the work, mostly on
  zeros) we split the kernel into s x s phases: output block q receives
  ``x[q - t] * kernel[t*s:(t+1)*s]`` for t = 0..m-1 (m = ceil(k / s)). That is
  an ordinary m x m convolution to s*s*out channels followed by a
  depth-to-space shuffle.

  Args:
    x: (N, H, W, C) input.
    kernel: (k, k, C, O) kernel; with ``depthwise=True`` shape (k, k, 1, C)
      and each channel is upsampled on its own (O = C).
    stride: the upsampling factor s.
    depthwise: use a per-channel kernel (the frozen bilinear case), which costs
      C times less than a full channel-diagonal kernel.

  Returns:
    (N, (H-1)*s + k, (W-1)*s + k, O).
  """
  n, h, w, c = x.shape
  k = kernel.shape[0]
  s = stride
  m = -(-k // s)
  out_ch = c if depthwise else kernel.shape[3]
  kin = kernel.shape[2]
  # Pad the kernel to m*s taps, then (m, s, m, s, in, out) -> phases.
  kernel = jnp.pad(kernel, ((0, m * s - k), (0, m * s - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(m, s, m, s, kin, out_ch if not depthwise else 1)
  # Tap t of the m x m convolution reads x[q - t]: a convolution with the taps
  # flipped. Output channels ordered (a, b, o) so depth-to-space is a reshape.
  kernel = kernel[::-1, :, ::-1]
  if depthwise:
    # (m, m, 1, C * s * s) with channel-major groups: group c -> (c, a, b).
    kernel = kernel.transpose(0, 2, 4, 1, 3, 5).reshape(m, m, 1, s * s)
    kernel = jnp.tile(kernel, (1, 1, 1, c))
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), [(m - 1, m - 1)] * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    y = y.reshape(n, h + m - 1, w + m - 1, c, s, s).transpose(0, 1, 4, 2, 5, 3)
  else:
    kernel = kernel.transpose(0, 2, 4, 1, 3, 5).reshape(m, m, kin, s * s * out_ch)
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (1, 1), [(m - 1, m - 1)] * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y.reshape(n, h + m - 1, w + m - 1, s, s, out_ch).transpose(0, 1, 3, 2, 4, 5)
  y = y.reshape(n, (h + m - 1) * s, (w + m - 1) * s, out_ch)
  return y[:, :(h - 1) * s + k, :(w - 1) * s + k]


def max_pool_ceil(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max pooling that rounds the output size up (Caffe's mode).

  An odd trailing row/column forms a window of its own, padded with -inf.
  """
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  return nn.max_pool(x, (2, 2), strides=(2, 2),
                     padding=((0, pad_h), (0, pad_w)))


def crop_like(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
  """Caffe's Crop layer on NHWC: x[:, offset:offset+height, offset:offset+width]."""
  return x[:, offset:offset + height, offset:offset + width]


def fuse_skip(coarse: jax.Array, skip: jax.Array, offset: int) -> jax.Array:
  """Adds an upsampled `coarse` score and a `skip` score on a common grid.

  offset >= 0: the skip is cropped to the coarse score (Caffe's Crop layer);
  offset < 0: the coarse score is cropped to the skip instead.
  """
  if offset >= 0:
    return coarse + crop_like(skip, offset, *coarse.shape[1:3])
  return crop_like(coarse, -offset, *skip.shape[1:3]) + skip


def random_upsampling_init(key: jax.Array, shape, dtype=jnp.float32):
  """Gaussian (k, k, C, C) upsampling kernel with unit gain.

  A 2s-tap stride-s transposed convolution sums 2 x 2 input positions of all
  C channels into each output pixel, so the fan-in is 4C (He/LeCun scaling).
  """
  return jax.random.normal(key, shape, dtype) * np.sqrt(1.0 / (4 * shape[2]))


class Upsample(nn.Module):
  """Transposed convolution with a bilinear kernel (paper Sec. 3.3).

  Frozen (the reference recipe): the kernel is a constant and, being
  channel-diagonal, runs as a cheap per-channel transposed convolution.
  Learnable: a full (k, k, C, C) parameter named `kernel`, bilinear-initialized
  (or random with kernel_init='random'), matching the reference layer's
  weight shape.
  """
  channels: int
  factor: int
  learnable: bool = False
  dtype: Any = jnp.float32
  # Not named `init`: that would shadow Module.init.
  kernel_init: str = 'bilinear'
  # Taps of the kernel; 0 = 2 * factor (the VGG FCNs; FCN-AlexNet uses 63).
  kernel_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    size = self.kernel_size or 2 * self.factor
    if self.learnable:
      if self.kernel_init == 'random':
        kernel = self.param('kernel', random_upsampling_init,
                            (size, size, self.channels, self.channels))
      else:
        kernel = self.param(
            'kernel',
            lambda *_: jnp.asarray(bilinear_kernel(size, self.channels)))
      return conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype),
                            self.factor)
    k1 = bilinear_kernel_1d(size)
    kernel = np.outer(k1, k1).astype(np.float32)[:, :, None, None]
    return conv_transpose(x.astype(self.dtype), jnp.asarray(kernel, self.dtype),
                          self.factor, depthwise=True)
