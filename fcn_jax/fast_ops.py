"""Custom-gradient versions of FCN's slowest ops on XLA:CPU.

On a CPU, XLA's automatic gradients of three FCN ops cost far more than the
arithmetic they do (see docs/performance.md):

* the weight gradient of a convolution at batch 1 runs as a convolution whose
  feature dimension is the batch, which parallelizes badly; on the large
  early feature maps (conv1_x to conv3_x) it dominates the training step.
  `conv_chunked_weight_grad` keeps XLA's forward and input gradient and
  computes the weight gradient chunk by chunk: an im2col of a band of rows
  followed by one matmul, accumulated with `lax.scan`;
* fc6 (a 7x7 VALID convolution from 512 to 4096 channels on a small map) is
  faster as an explicit im2col matmul, forward and backward (`conv_im2col`);
* 2x2 max pooling backward (select-and-scatter) is slow; `max_pool_2x2_ceil`
  routes the gradient through an argmax mask instead, with the same
  first-in-window tie-break as XLA and PyTorch, so gradients are identical.

All three compute exactly the same function as the plain ops and match their
`jax.grad` to float rounding (tests/test_fast_ops.py). `conv_*` take the
signature of `lax.conv_general_dilated`, so they plug into `flax.linen.Conv`
through its `conv_general_dilated` attribute without changing parameters.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Output pixels per weight-gradient chunk: big enough for an efficient matmul,
# small enough that the im2col band (9 * C floats per pixel) stays in cache.
DEFAULT_CHUNK_PIXELS = 2048

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# The layers of FCN (models.FCN.backbone names) whose fast op beat XLA's own
# on CPU, per batch size: forward + backward of each layer alone at full
# width on a 256x256 input, the two interleaved, medians of 3
# (`python -m experiments.fast_ops_layers`; the table is in
# docs/performance.md). Other batch sizes take the nearest measured one.
CPU_FAST_LAYERS = {
    1: frozenset({
        'conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2',
        'conv3_3', 'pool1', 'pool2', 'pool3', 'pool4', 'pool5', 'fc6'}),
    8: frozenset({
        'conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2',
        'conv3_3', 'conv4_1', 'conv4_2', 'conv4_3', 'conv5_2', 'conv5_3',
        'pool1', 'pool2', 'pool3', 'pool4', 'pool5', 'fc6'}),
}


def cpu_fast_layer(name: str, batch_size: int) -> bool:
  """Whether layer `name` (e.g. 'conv4_2', 'pool3', 'fc6') uses its fast op
  on CPU at `batch_size`, from CPU_FAST_LAYERS (the nearest measured batch
  size on a log scale)."""
  log_batch = math.log(max(1, batch_size))
  measured = min(CPU_FAST_LAYERS, key=lambda b: abs(math.log(b) - log_batch))
  return name in CPU_FAST_LAYERS[measured]

Padding = Sequence[tuple[int, int]]


def _plain_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=_NHWC)


def _normalize_padding(padding, kernel_shape) -> tuple[tuple[int, int], ...]:
  """Explicit ((top, bottom), (left, right)) padding of a stride-1 conv."""
  if isinstance(padding, str):
    if padding == 'VALID':
      return ((0, 0), (0, 0))
    if padding == 'SAME':
      return tuple(((k - 1) // 2, k // 2) for k in kernel_shape[:2])
    raise ValueError(f'Unsupported padding {padding!r}.')
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _check_plain_conv_args(lhs, rhs, window_strides, lhs_dilation,
                           rhs_dilation, dimension_numbers, groups):
  """The fast convolutions cover stride-1, undilated, ungrouped NHWC convs."""
  def trivial(v):
    return v is None or all(s == 1 for s in v)
  if not (trivial(window_strides) and trivial(lhs_dilation)
          and trivial(rhs_dilation) and groups == 1):
    raise NotImplementedError(
        'fast_ops convolutions support stride 1, no dilation, no groups only.')
  if dimension_numbers is not None:
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if given != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
      raise NotImplementedError(
          f'fast_ops convolutions need NHWC/HWIO layout, got {dimension_numbers}.')


# --------------------------------------------------------------------------
# Convolution with a chunked im2col weight gradient.


def _taps(x: jax.Array, kh: int, kw: int, rows: int, cols: int) -> jax.Array:
  """im2col: (N, rows+kh-1, cols+kw-1, C) -> (N, rows, cols, kh*kw*C).

  Tap order (a, b, c) matches an HWIO kernel reshaped to (kh*kw*C, O).
  """
  return jnp.concatenate([x[:, a:a + rows, b:b + cols, :]
                          for a in range(kh) for b in range(kw)], axis=-1)


def chunked_weight_grad(x: jax.Array, g: jax.Array, kernel_shape,
                        padding: Padding,
                        chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> jax.Array:
  """dL/dkernel of a stride-1 NHWC conv, one band of output rows at a time.

  Args:
    x: (N, H, W, C) convolution input.
    g: (N, Ho, Wo, O) gradient of the convolution output.
    kernel_shape: (kh, kw, C, O).
    padding: ((top, bottom), (left, right)) zero padding of the convolution.
    chunk_pixels: target number of output pixels (batch included) per chunk.

  Returns:
    (kh, kw, C, O) weight gradient, accumulated in float32 and cast to
    x's dtype.
  """
  kh, kw, c, o = kernel_shape
  n, ho, wo, _ = g.shape
  rows = max(1, min(ho, chunk_pixels // max(1, n * wo)))
  num_chunks = -(-ho // rows)
  extra = num_chunks * rows - ho
  # Zero rows appended to g (and matching input rows) add nothing to dW.
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb + extra), (pl, pr), (0, 0)))
  gp = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0)))

  def body(acc, i):
    start = i * rows
    xs = lax.dynamic_slice_in_dim(xp, start, rows + kh - 1, axis=1)
    gs = lax.dynamic_slice_in_dim(gp, start, rows, axis=1)
    cols = _taps(xs, kh, kw, rows, wo).reshape(-1, kh * kw * c)
    acc = acc + lax.dot_general(cols, gs.reshape(-1, o), (((0,), (0,)), ((), ())),
                                preferred_element_type=jnp.float32)
    return acc, None

  acc = jnp.zeros((kh * kw * c, o), jnp.float32)
  if num_chunks == 1:
    acc, _ = body(acc, 0)
  else:
    acc, _ = lax.scan(body, acc, jnp.arange(num_chunks))
  return acc.reshape(kernel_shape).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cwg(x, kernel, padding, chunk_pixels):
  return _plain_conv(x, kernel, padding)


def _conv_cwg_fwd(x, kernel, padding, chunk_pixels):
  return _plain_conv(x, kernel, padding), (x, kernel)


def _conv_cwg_bwd(padding, chunk_pixels, res, g):
  x, kernel = res
  # XLA's own input gradient is fast; only the weight gradient is replaced.
  # (When x is the image, nothing uses dx and XLA removes it.)
  _, vjp_x = jax.vjp(lambda x_: _plain_conv(x_, kernel, padding), x)
  (dx,) = vjp_x(g)
  dw = chunked_weight_grad(x, g, kernel.shape, padding, chunk_pixels)
  return dx, dw.astype(kernel.dtype)


_conv_cwg.defvjp(_conv_cwg_fwd, _conv_cwg_bwd)


def conv_chunked_weight_grad(lhs, rhs, window_strides=None, padding='VALID',
                             lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1,
                             batch_group_count=1, precision=None,
                             preferred_element_type=None, *,
                             chunk_pixels: int = DEFAULT_CHUNK_PIXELS):
  """`lax.conv_general_dilated` (NHWC, stride 1) with a chunked weight gradient.

  Same value and gradients as the plain convolution; only the computation of
  the kernel's gradient differs (see `chunked_weight_grad`).
  """
  del precision, preferred_element_type
  _check_plain_conv_args(lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count * batch_group_count)
  pad = _normalize_padding(padding, rhs.shape)
  return _conv_cwg(lhs, rhs, pad, chunk_pixels)


# --------------------------------------------------------------------------
# Convolution as an explicit im2col matmul (fc6).


def _im2col_conv(x: jax.Array, kernel: jax.Array, padding: Padding):
  kh, kw, c, o = kernel.shape
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  n, h, w, _ = x.shape
  ho, wo = h - kh + 1, w - kw + 1
  cols = _taps(x, kh, kw, ho, wo).reshape(n * ho * wo, kh * kw * c)
  y = cols @ kernel.reshape(kh * kw * c, o)
  return y.reshape(n, ho, wo, o), cols


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_i2c(x, kernel, padding):
  return _im2col_conv(x, kernel, padding)[0]


def _conv_i2c_fwd(x, kernel, padding):
  y, cols = _im2col_conv(x, kernel, padding)
  return y, (cols, kernel, x.shape)


def _conv_i2c_bwd(padding, res, g):
  cols, kernel, x_shape = res
  kh, kw, c, o = kernel.shape
  g2 = g.reshape(-1, o)
  # Both backward products are plain matmuls on the saved columns.
  dw = (cols.T @ g2).reshape(kernel.shape)
  dcols = (g2 @ kernel.reshape(-1, o).T).reshape(*g.shape[:3], kh * kw, c)
  # col2im: every tap adds its column block back at its offset.
  n, ho, wo = g.shape[:3]
  (pt, pb), (pl, pr) = padding
  h, w = x_shape[1] + pt + pb, x_shape[2] + pl + pr
  dx = jnp.zeros((n, h, w, c), g.dtype)
  for t in range(kh * kw):
    a, b = divmod(t, kw)
    dx = dx.at[:, a:a + ho, b:b + wo, :].add(dcols[:, :, :, t, :])
  dx = dx[:, pt:h - pb, pl:w - pr, :]
  return dx, dw


_conv_i2c.defvjp(_conv_i2c_fwd, _conv_i2c_bwd)


def conv_im2col(lhs, rhs, window_strides=None, padding='VALID',
                lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, batch_group_count=1, precision=None,
                preferred_element_type=None):
  """`lax.conv_general_dilated` (NHWC, stride 1) as one im2col matmul.

  Worth it for big kernels on small maps (fc6: 7x7x512 -> 4096), where the
  column matrix is small and one large matmul beats XLA's convolution.
  """
  del precision, preferred_element_type
  _check_plain_conv_args(lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count * batch_group_count)
  return _conv_i2c(lhs, rhs, _normalize_padding(padding, rhs.shape))


# --------------------------------------------------------------------------
# 2x2 stride-2 max pooling, ceil mode, with a mask-based gradient.


def _pool_windows(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, H', 2, W', 2, C), odd edges padded with -inf."""
  n, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)),
              constant_values=-jnp.inf)
  return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2_ceil(x: jax.Array) -> jax.Array:
  """2x2/2 max pooling, output size rounded up (Caffe's ceil mode).

  Same values as `nn.max_pool(x, (2, 2), (2, 2), padding=((0, H%2), (0, W%2)))`.
  The gradient goes to the first maximum of each window in row-major order,
  which is the tie-break of XLA's select-and-scatter and of PyTorch (ties are
  common: after a ReLU whole windows are often zero).
  """
  return jnp.max(_pool_windows(x), axis=(2, 4))


def _max_pool_fwd(x):
  y = max_pool_2x2_ceil(x)
  return y, (x, y)


def _max_pool_bwd(res, g):
  x, y = res
  n, h, w, c = x.shape
  win = _pool_windows(x)
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for a in range(2):
    row = []
    for b in range(2):
      hit = (win[:, :, a, :, b, :] == y) & ~taken
      taken = taken | hit
      row.append(jnp.where(hit, g, jnp.zeros_like(g)))
    parts.append(jnp.stack(row, axis=3))  # (N, H', W', 2, C)
  dx = jnp.stack(parts, axis=2)  # (N, H', 2, W', 2, C)
  dx = dx.reshape(n, 2 * y.shape[1], 2 * y.shape[2], c)
  return (dx[:, :h, :w, :],)


max_pool_2x2_ceil.defvjp(_max_pool_fwd, _max_pool_bwd)
