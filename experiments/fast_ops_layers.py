"""Per-layer timing of fcn_jax's CPU fast ops against XLA's own, per batch.

    python -m experiments.fast_ops_layers --batches=1,8 --size=256 \
        --json=/tmp/layers.json

For every full-width FCN-8s layer whose implementation `fast_ops` can swap
(the 13 VGG 3x3 convolutions, fc6, the five 2x2 max pools) it times one
forward + backward (the layer's gradient with respect to its input and
kernel, as in a training step; conv1_1's input is the image, whose gradient
nobody needs) with the fast op and with the plain XLA op, interleaved,
median of `--repeats`. The table `fast_ops.CPU_FAST_LAYERS` is written from
its output: a layer gets the fast op at a batch size where it was faster.
"""

from __future__ import annotations

import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from jax import lax

from fcn_jax import fast_ops
from fcn_jax import layers
from fcn_jax import models

_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes.')
_SIZE = flags.DEFINE_integer('size', 256, 'Square input image size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per variant.')
_WIDTH = flags.DEFINE_float('width', 1.0, 'Channel multiplier.')
_ONLY = flags.DEFINE_list('only', [], 'Time only these layers.')
_JSON = flags.DEFINE_string('json', '', 'Also write the results here.')

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def layer_geometry(size: int, width: float = 1.0,
                   input_padding: int = 100) -> list[dict]:
  """Each swappable layer of FCN-8s: name, kind, input shape (batch 1), ...

  Follows models.FCN.backbone: 3x3 'SAME'-style convs (conv1_1 padded by
  `input_padding`), ceil-mode 2x2 pools, fc6 a 7x7 VALID conv.
  """
  layers = []
  h = w = size
  c = 3
  for block, (num_convs, channels) in enumerate(models.VGG16_BLOCKS, start=1):
    out = models.scaled_channels(channels, width)
    for i in range(1, num_convs + 1):
      pad = input_padding if (block, i) == (1, 1) else 1
      layers.append(dict(name=f'conv{block}_{i}', kind='conv', shape=(h, w, c),
                         kernel=(3, 3, c, out), padding=((pad, pad),) * 2,
                         needs_dx=(block, i) != (1, 1)))
      h, w, c = h + 2 * pad - 2, w + 2 * pad - 2, out
    layers.append(dict(name=f'pool{block}', kind='pool', shape=(h, w, c)))
    h, w = math.ceil(h / 2), math.ceil(w / 2)
  fc = models.scaled_channels(models.FC_CHANNELS, width)
  layers.append(dict(name='fc6', kind='conv', shape=(h, w, c),
                     kernel=(7, 7, c, fc), padding=((0, 0),) * 2,
                     needs_dx=True))
  return layers


def _plain_conv(x, k, padding):
  return lax.conv_general_dilated(x, k, (1, 1), padding,
                                  dimension_numbers=_NHWC)


def layer_functions(layer: dict):
  """(fast, plain) jitted functions: inputs -> gradients of a fixed loss."""
  if layer['kind'] == 'pool':
    fast_fn, plain_fn = fast_ops.max_pool_2x2_ceil, layers.max_pool_ceil

    def make(op):
      return jax.jit(jax.grad(lambda x, g: jnp.vdot(op(x), g)))
    return make(fast_fn), make(plain_fn)
  padding = layer['padding']
  fast_conv = (fast_ops.conv_im2col if layer['name'] == 'fc6'
               else fast_ops.conv_chunked_weight_grad)
  argnums = (0, 1) if layer['needs_dx'] else 1

  def make(conv):
    return jax.jit(jax.grad(lambda x, k, g: jnp.vdot(conv(x, k), g),
                            argnums=argnums))
  return (make(lambda x, k: fast_conv(x, k, (1, 1), padding,
                                      dimension_numbers=_NHWC)),
          make(lambda x, k: _plain_conv(x, k, padding)))


def layer_inputs(layer: dict, batch: int, key):
  kx, kk, kg = jax.random.split(key, 3)
  x = jax.random.normal(kx, (batch,) + layer['shape'], jnp.float32)
  if layer['kind'] == 'pool':
    y = jax.eval_shape(layers.max_pool_ceil, x)
    return x, jax.random.normal(kg, y.shape, jnp.float32)
  k = jax.random.normal(kk, layer['kernel'], jnp.float32) * 0.05
  y = jax.eval_shape(lambda a, b: _plain_conv(a, b, layer['padding']), x, k)
  return x, k, jax.random.normal(kg, y.shape, jnp.float32)


def time_layer(layer: dict, batch: int, repeats: int) -> dict:
  """Median seconds of the fast and the plain version, interleaved."""
  args = layer_inputs(layer, batch, jax.random.key(0))
  fast_fn, plain_fn = layer_functions(layer)
  for fn in (fast_fn, plain_fn):  # Compile and warm up.
    jax.block_until_ready(fn(*args))
  times = {'fast': [], 'plain': []}
  for r in range(repeats):
    order = [('fast', fast_fn), ('plain', plain_fn)]
    for name, fn in (order if r % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  fast, plain = (statistics.median(times[k]) for k in ('fast', 'plain'))
  return dict(layer=layer['name'], batch=batch, fast_s=fast, plain_s=plain,
              fast_over_plain=fast / plain)


def main(argv):
  del argv
  results = []
  for batch in (int(b) for b in _BATCHES.value):
    for layer in layer_geometry(_SIZE.value, _WIDTH.value):
      if _ONLY.value and layer['name'] not in _ONLY.value:
        continue
      row = time_layer(layer, batch, _REPEATS.value)
      results.append(row)
      print(f"{row['layer']:8s} batch {batch}: fast {row['fast_s']:.3f} s, "
            f"XLA {row['plain_s']:.3f} s, fast/XLA "
            f"{row['fast_over_plain']:.2f}", flush=True)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(dict(size=_SIZE.value, width=_WIDTH.value,
                     jax=jax.__version__, results=results), f, indent=1)


if __name__ == '__main__':
  app.run(main)
