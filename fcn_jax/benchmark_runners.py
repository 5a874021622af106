"""The two networks `fcn_jax.benchmark` times, on identical random weights.

`JaxRunner` is fcn_jax's FCN-8s (jitted forward and SGD-momentum training
step, compile time, device memory, FLOPs from XLA's cost analysis);
`TorchRunner` an NCHW PyTorch FCN-8s of the same (reference) architecture.
`check_same_logits` shows they compute the same function before anything is
timed. experiments/gpu_benchmark.py uses the same pieces. JAX and torch are
imported only when used, so a memory probe counts its own framework only.
"""

from __future__ import annotations

import os
import time

NUM_CLASSES = 21
TORCH_MISSING = ('PyTorch is not installed, so only JAX is timed. It is a '
                 'benchmark-only extra: pip install torch==2.13.0')


def import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  return torch


def torch_device(torch, on_cpu: bool):
  """(torch or None, its device): CUDA when JAX runs on an accelerator.

  Without CUDA there, PyTorch is left out (None): a CPU would be timed
  against a GPU.
  """
  device = 'cpu'
  if not on_cpu and torch is not None:
    if torch.cuda.is_available():
      device = 'cuda'
      torch.backends.cudnn.benchmark = True
    else:
      print('JAX runs on an accelerator but PyTorch has no CUDA: PyTorch skipped.')
      torch = None
  return torch, device


# Dense tensor-core peaks of the data sheets (f32 matmuls run as TF32 under
# JAX's default precision on these GPUs).
GPU_PEAK_FLOPS = {'H100': {'float32': 494e12, 'bfloat16': 989e12},
                  'H200': {'float32': 494e12, 'bfloat16': 989e12}}


def machine_peak_flops(dtype: str = 'float32') -> tuple[float, str]:
  """Nominal peak FLOP/s of the default JAX device.

  CPU: cores x clock x f32 SIMD lanes x 2 (FMA) x 2 FMA units per core.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu':
    kind = jax.devices()[0].device_kind
    for name, peaks in GPU_PEAK_FLOPS.items():
      if name in kind:
        return peaks[dtype], f'{kind} data sheet, {dtype} dense tensor cores'
    return float('nan'), f'{kind}: peak unknown'
  flags_line, mhz, model = '', 0.0, 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key, value = key.strip(), value.strip()
        if key == 'flags' and not flags_line:
          flags_line = value
        elif key == 'cpu MHz' and not mhz:
          mhz = float(value)
        elif key == 'model name' and model == 'unknown CPU':
          model = value
  except OSError:
    pass
  lanes = 16 if 'avx512f' in flags_line.split() else (
      8 if 'avx2' in flags_line.split() else 4)
  cores = os.cpu_count() or 1
  peak = cores * mhz * 1e6 * lanes * 2 * 2
  how = (f'{cores} cores x {mhz / 1e3:.2f} GHz x {lanes} f32 lanes x 2 (FMA) '
         f'x 2 FMA units = {peak / 1e9:.0f} GFLOP/s ({model})')
  return peak, how


# ----------------------------------------------------------------------------
# Inputs and weights shared by both frameworks.


def random_params(shapes, seed: int = 0):
  """He-scaled random weights for every parameter (also the score layers, so
  the logits comparison is not between two all-zero maps)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if getattr(path[-1], 'key', '') == 'bias':
      return (0.01 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (np.sqrt(2.0 / fan_in) * rng.standard_normal(leaf.shape, np.float32))
  return jax.tree_util.tree_map_with_path(draw, shapes)


def random_batch(batch: int, height: int, width: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.uniform(-120, 130, (batch, height, width, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, (batch, height, width)).astype(np.int32)
  labels[:, :2] = 255  # A few ignored pixels, as in VOC's borders.
  return images, labels


# ----------------------------------------------------------------------------
# JAX side.


def _flops(fn, *args) -> float:
  """FLOPs of jitted `fn` on `args`, from XLA's cost analysis.

  Counted on the CPU lowering: the GPU backend has no pre-compilation count,
  and its compiled count leaves out the cuDNN convolutions.
  """
  cost = fn.trace(*args).lower(lowering_platforms=('cpu',)).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float((cost or {}).get('flops', float('nan')))


class JaxRunner:
  """fcn_jax FCN-8s: jitted forward and SGD-momentum training step."""

  def __init__(self, width: float, fast_ops: str, params=None,
               dtype: str = 'float32', model_kwargs: dict | None = None,
               donate: bool = True, remat_policy=None):
    """`model_kwargs` go to models.get_model; `donate`: the train step
    donates params and optimizer state; `remat_policy`: a
    jax.checkpoint_policies policy for the loss (None = no remat)."""
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from fcn_jax import losses  # pylint: disable=g-import-not-at-top
    from fcn_jax import models  # pylint: disable=g-import-not-at-top
    self.jax = jax
    model_kwargs = model_kwargs or {}
    self.model = models.get_model('fcn8s', NUM_CLASSES, width=width,
                                  dropout_rate=0.5, fast_ops=fast_ops,
                                  dtype=dtype, **model_kwargs)
    self.plain_model = models.get_model('fcn8s', NUM_CLASSES, width=width,
                                        dropout_rate=0.5, fast_ops='off',
                                        dtype=dtype, **model_kwargs)
    shapes = jax.eval_shape(
        lambda: models.init_params(self.model, jax.random.key(0)))
    self.params = params if params is not None else random_params(shapes)
    # The reference recipe: summed loss, SGD momentum 0.99, L2 on kernels.
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda p, _: p[-1].key == 'kernel', shapes)
    self.tx = optax.chain(optax.add_decayed_weights(5e-4, mask=decay_mask),
                          optax.sgd(1e-10, momentum=0.99))

    def forward(model, params, images):
      return model.apply({'params': params}, images, train=False)

    def train_step(model, params, opt_state, images, labels, rng):
      def loss_fn(params):
        logits = model.apply({'params': params}, images, train=True,
                             rngs={'dropout': rng})
        return losses.pixel_cross_entropy(logits, labels, 'sum')
      if remat_policy is not None:
        loss_fn = jax.checkpoint(loss_fn, policy=remat_policy)
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self._forward = forward
    self._train_step = train_step
    self.forward = jax.jit(lambda p, x: forward(self.model, p, x))
    self.train_step = jax.jit(
        lambda *a: train_step(self.model, *a),
        donate_argnums=(0, 1) if donate else ())
    self.params = jax.device_put(self.params)
    self.opt_state = jax.jit(self.tx.init)(self.params)
    self.rng = jax.random.key(0)

  def compile(self, kind: str, images, labels) -> float:
    """Seconds to trace and compile the forward or train step for these shapes.

    The compiled program is cached, so the first timed call does not compile.
    """
    start = time.perf_counter()
    if kind == 'forward':
      self.forward.lower(self.params, images).compile()
    else:
      self.train_step.lower(self.params, self.opt_state, images, labels,
                            self.rng).compile()
    return time.perf_counter() - start

  def memory_bytes(self, kind: str, images, labels) -> int | None:
    """Device bytes the compiled program needs (XLA's memory analysis):
    arguments + outputs - donated (aliased) + temporaries."""
    if kind == 'forward':
      lowered = self.forward.lower(self.params, images)
    else:
      lowered = self.train_step.lower(self.params, self.opt_state, images,
                                      labels, self.rng)
    stats = lowered.compile().memory_analysis()
    if stats is None:
      return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes -
               stats.alias_size_in_bytes + stats.temp_size_in_bytes)

  def plain_flops(self, kind: str, images, labels) -> float:
    """FLOPs of the plain-XLA forward or train step (XLA cost analysis).

    Counted on the plain program because the custom gradients loop over
    chunks, and cost analysis counts a loop body once.
    """
    jax = self.jax
    if kind == 'forward':
      fn = jax.jit(lambda p, x: self._forward(self.plain_model, p, x))
      return _flops(fn, self.params, images)
    fn = jax.jit(lambda *a: self._train_step(self.plain_model, *a))
    return _flops(fn, self.params, self.opt_state, images, labels, self.rng)


  def run_forward(self, images):
    return self.forward(self.params, images).block_until_ready()

  def run_train_step(self, images, labels):
    self.params, self.opt_state, loss = self.train_step(
        self.params, self.opt_state, images, labels, self.rng)
    return float(loss)


# ----------------------------------------------------------------------------
# PyTorch side: our own NCHW FCN-8s with the reference architecture.


def build_torch_fcn8s(torch, width: float, num_classes: int = NUM_CLASSES,
                      dropout: float = 0.5):
  """FCN-8s (Caffe voc-fcn8s geometry) as a torch.nn.Module, NCHW.

  Parameter names follow fcn_jax's (conv1_1 ... score_pool3); the frozen
  bilinear upsampling is a per-channel transposed convolution, as in fcn_jax.
  """
  from fcn_jax import layers  # pylint: disable=g-import-not-at-top
  from fcn_jax import models  # pylint: disable=g-import-not-at-top
  nn, F = torch.nn, torch.nn.functional
  ch = lambda c: models.scaled_channels(c, width)

  class FCN8s(nn.Module):

    def __init__(self):
      super().__init__()
      self.layers = nn.ModuleDict()
      in_ch = 3
      self.trunk = []
      for block, (num_convs, channels) in enumerate(models.VGG16_BLOCKS, 1):
        for i in range(1, num_convs + 1):
          pad = 100 if (block, i) == (1, 1) else 1
          name = f'conv{block}_{i}'
          self.layers[name] = nn.Conv2d(in_ch, ch(channels), 3, padding=pad)
          self.trunk.append(name)
          in_ch = ch(channels)
        self.trunk.append(f'pool{block}')
      fc = ch(models.FC_CHANNELS)
      self.layers['fc6'] = nn.Conv2d(in_ch, fc, 7)
      self.layers['fc7'] = nn.Conv2d(fc, fc, 1)
      self.layers['score_fr'] = nn.Conv2d(fc, num_classes, 1)
      self.layers['score_pool4'] = nn.Conv2d(ch(512), num_classes, 1)
      self.layers['score_pool3'] = nn.Conv2d(ch(256), num_classes, 1)
      self.drop = nn.Dropout(dropout)
      for factor in (2, 8):
        k1 = torch.tensor(layers.bilinear_kernel_1d(2 * factor),
                          dtype=torch.float32)
        kernel = torch.outer(k1, k1)[None, None].repeat(num_classes, 1, 1, 1)
        self.register_buffer(f'bilinear{factor}', kernel)

    def upsample(self, x, factor):
      return F.conv_transpose2d(x, getattr(self, f'bilinear{factor}'),
                                stride=factor, groups=x.shape[1])

    def forward(self, x):
      h, w = x.shape[2:]
      feats = {}
      for name in self.trunk:
        if name.startswith('pool'):
          x = F.max_pool2d(x, 2, 2, ceil_mode=True)
          feats[name] = x
        else:
          x = F.relu(self.layers[name](x))
      x = self.drop(F.relu(self.layers['fc6'](x)))
      x = self.drop(F.relu(self.layers['fc7'](x)))
      score = self.upsample(self.layers['score_fr'](x), 2)
      skip = self.layers['score_pool4'](feats['pool4'])
      score = score + skip[:, :, models.CROP_POOL4:models.CROP_POOL4 + score.shape[2],
                           models.CROP_POOL4:models.CROP_POOL4 + score.shape[3]]
      score = self.upsample(score, 2)
      skip = self.layers['score_pool3'](feats['pool3'])
      score = score + skip[:, :, models.CROP_POOL3:models.CROP_POOL3 + score.shape[2],
                           models.CROP_POOL3:models.CROP_POOL3 + score.shape[3]]
      score = self.upsample(score, 8)
      crop = models.FINAL_CROP['fcn8s']
      return score[:, :, crop:crop + h, crop:crop + w]

  return FCN8s()


def load_jax_params_into_torch(torch, module, params) -> None:
  """HWIO kernels -> OIHW weights, by layer name."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    for name, layer in module.layers.items():
      kernel = np.asarray(params[name]['kernel'])
      layer.weight.copy_(torch.from_numpy(
          np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
      layer.bias.copy_(torch.from_numpy(np.array(params[name]['bias'])))


class TorchRunner:
  """The PyTorch FCN-8s: eager forward and SGD-momentum training step."""

  def __init__(self, torch, width: float, params=None, device: str = 'cpu',
               dtype: str = 'float32'):
    self.torch = torch
    self.device = device
    self.bf16 = dtype == 'bfloat16'
    self.model = build_torch_fcn8s(torch, width)
    if params is not None:
      load_jax_params_into_torch(torch, self.model, params)
    weights = [p for n, p in self.model.named_parameters() if n.endswith('weight')]
    biases = [p for n, p in self.model.named_parameters() if n.endswith('bias')]
    self.opt = torch.optim.SGD([{'params': weights, 'weight_decay': 5e-4},
                                {'params': biases, 'weight_decay': 0.0}],
                               lr=1e-10, momentum=0.99)
    self.model.to(device)

  def to_torch(self, images, labels=None):
    x = self.torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(self.device)
    if labels is None:
      return x
    return x, self.torch.from_numpy(labels.astype('int64')).to(self.device)

  def _autocast(self):
    return self.torch.autocast(self.device.split(':')[0],
                               dtype=self.torch.bfloat16, enabled=self.bf16)

  def run_forward(self, x):
    self.model.eval()
    with self.torch.inference_mode(), self._autocast():
      out = self.model(x).float()
    if self.device != 'cpu':
      self.torch.cuda.synchronize()
    return out.cpu()

  def run_train_step(self, x, y):
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    with self._autocast():
      logits = self.model(x).float()
    loss = self.torch.nn.functional.cross_entropy(
        logits, y, ignore_index=255, reduction='sum') / x.shape[0]
    loss.backward()
    self.opt.step()
    return loss.item()  # Waits for the device.


# ----------------------------------------------------------------------------
# Both sides.


def check_same_logits(jax_runner, torch_runner, images,
                      tolerance: float = 1e-3, fatal: bool = True) -> float:
  """Max |JAX - torch| logit difference relative to the logits' scale."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  ours = np.asarray(jax_runner.run_forward(images))
  theirs = torch_runner.run_forward(torch_runner.to_torch(images)).numpy()
  theirs = theirs.transpose(0, 2, 3, 1)
  if ours.shape != theirs.shape:
    raise AssertionError(f'Logit shapes differ: JAX {ours.shape}, '
                         f'PyTorch {theirs.shape}.')
  scale = max(float(np.max(np.abs(theirs))), 1e-12)
  error = float(np.max(np.abs(ours - theirs))) / scale
  if not error < tolerance:
    if not fatal:
      print(f'warning: JAX and PyTorch logits differ by {error:.2e} (relative), '
            'more than expected from rounding.')
      return error
    raise AssertionError(f'JAX and PyTorch logits differ: max relative error '
                         f'{error:.2e}; the benchmark would compare different '
                         'networks.')
  return error
