r"""Speed and memory of fcn_jax against PyTorch on the same FCN-8s and machine.

    python -m fcn_jax.benchmark                     # the README table (slow)
    python -m fcn_jax.benchmark --quick             # 256x256 only, fewer repeats
    python -m fcn_jax.benchmark --tiny              # seconds; what CI runs

Both frameworks run in this process, interleaved, on identical weights (the
logits are checked to agree before anything is timed): forward at batch 1,
one SGD-momentum training step (forward, backward, update) at batch 1 and at
batch 8, JAX's first-call compile time, achieved FLOP/s (FLOPs counted by
XLA's cost analysis of the plain-XLA program, so custom gradients do not hide
work) against the machine's peak, and the number of compilations when
predicting a folder of mixed-size images. Peak memory (RSS on CPU) is
measured for each framework in a subprocess of its own, so neither counts
the other's allocations.

PyTorch is a benchmark-only extra (``pip install torch==2.13.0``); without
it only the JAX numbers are printed.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags

from fcn_jax import cli
from fcn_jax import errors

_SIZES = flags.DEFINE_list(
    'sizes', ['256x256', '500x375'],
    'Image sizes WxH for the batch-1 forward and training step.')
_TRAIN_BATCH = flags.DEFINE_integer(
    'train_batch', 8, 'Batch size of the extra training-step row (0 = skip).')
_TRAIN_BATCH_SIZE = flags.DEFINE_string(
    'train_batch_size', '256x256', 'Image size WxH of the batched row.')
_WIDTH = flags.DEFINE_float('width', 1.0, 'Channel multiplier (1.0 = VGG16).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed runs before timing.')
_FAST_OPS = flags.DEFINE_enum('fast_ops', 'auto', ['auto', 'on', 'off'],
                              'fcn_jax model fast_ops mode.')
_COMPARE_PLAIN = flags.DEFINE_bool(
    'compare_plain', False, 'Also time the plain XLA path (fast_ops=off).')
_MEMORY = flags.DEFINE_bool(
    'memory', True, 'Measure peak RSS of a training step in subprocesses.')
_MIXED_DIR = flags.DEFINE_string(
    'mixed_dir', '', 'Folder of images for the compilation count '
    '(default: tests/data/voc-real-mini/JPEGImages; "none" = skip).')
_QUICK = flags.DEFINE_bool('quick', False,
                           '256x256 only, 3 repeats, no plain path.')
_TINY = flags.DEFINE_bool(
    'tiny', False, 'CI smoke mode: width 1/16, small images, one repeat.')
_DTYPE = flags.DEFINE_enum(
    'dtype', 'float32', ['float32', 'bfloat16'],
    'Computation dtype (bfloat16: torch runs under autocast).')
_JSON = flags.DEFINE_string('json', '', 'Also write the results here.')
_PROBE = flags.DEFINE_string('memory_probe', '', 'Internal: jax|torch.')

NUM_CLASSES = 21
TORCH_MISSING = ('PyTorch is not installed, so only JAX is timed. It is a '
                 'benchmark-only extra: pip install torch==2.13.0')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_size(text: str) -> tuple[int, int]:
  """'WxH' -> (height, width)."""
  try:
    w, h = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise errors.FlagError(f'--sizes: {text!r} is not WIDTHxHEIGHT, e.g. 500x375.')
  if w < 1 or h < 1:
    raise errors.FlagError(f'--sizes: {text!r} must be positive.')
  return h, w


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_rss_bytes() -> int:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  return torch


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
# Measurements.


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


def time_interleaved(jax_fn, torch_fn, repeats: int, warmup: int):
  """Median seconds of JAX and torch, alternating which goes first."""
  for _ in range(warmup):
    jax_fn()
    if torch_fn:
      torch_fn()
  jax_times, torch_times = [], []
  for r in range(repeats):
    order = [('jax', jax_fn), ('torch', torch_fn)]
    if r % 2:
      order.reverse()
    for name, fn in order:
      if fn is None:
        continue
      start = time.perf_counter()
      fn()
      (jax_times if name == 'jax' else torch_times).append(
          time.perf_counter() - start)
  return (statistics.median(jax_times),
          statistics.median(torch_times) if torch_times else None)


def count_mixed_size_compilations(width: float, fast_ops: str, folder: str):
  """Predicts every image of `folder` with one jitted forward; counts compiles."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcn_jax import models  # pylint: disable=g-import-not-at-top
  from fcn_jax.data import decode  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(folder, '*.jpg')) +
                 glob.glob(os.path.join(folder, '*.png')))
  if not paths:
    raise FileNotFoundError(f'--mixed_dir: no .jpg/.png images in {folder!r}.')
  model = models.get_model('fcn8s', NUM_CLASSES, width=width, fast_ops=fast_ops)
  params = random_params(jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0))))
  predict = jax.jit(lambda p, x: jax.numpy.argmax(
      model.apply({'params': p}, x), axis=-1))
  sizes = set()
  start = time.perf_counter()
  for path in paths:
    image = decode.read_image(path).astype(np.float32)[..., ::-1]
    image = image - np.asarray(models.MEAN_BGR, np.float32)
    sizes.add(image.shape[:2])
    predict(params, image[None]).block_until_ready()
  return {'images': len(paths), 'distinct_sizes': len(sizes),
          'compilations': predict._cache_size(),  # pylint: disable=protected-access
          'seconds': time.perf_counter() - start}


def memory_probe(framework: str, width: float, fast_ops: str, size, batch: int):
  """Runs in a subprocess: two training steps, then prints peak RSS as JSON."""
  height, width_px = size
  images, labels = random_batch(batch, height, width_px)
  not_counted = 0
  if framework == 'jax':
    runner = JaxRunner(width, fast_ops)
    for _ in range(2):
      runner.run_train_step(images, labels)
    runner.run_forward(images)
  else:
    torch = import_torch()
    # The torch model reads its geometry from fcn_jax.models, which imports
    # JAX; that import is not PyTorch's memory, so it is subtracted.
    before = current_rss_bytes()
    from fcn_jax import models  # pylint: disable=g-import-not-at-top,unused-import
    not_counted = current_rss_bytes() - before
    runner = TorchRunner(torch, width)
    x, y = runner.to_torch(images, labels)
    for _ in range(2):
      runner.run_train_step(x, y)
    runner.run_forward(x)
  print(json.dumps({'peak_rss': peak_rss_bytes() - not_counted,
                    'not_counted': not_counted}))


def measure_peak_rss(framework: str, width: float, fast_ops: str, size_text: str,
                     batch: int) -> float | None:
  cmd = [sys.executable, '-m', 'fcn_jax.benchmark', f'--memory_probe={framework}',
         f'--width={width}', f'--fast_ops={fast_ops}', f'--sizes={size_text}',
         f'--train_batch={batch}']
  # From the directory holding the fcn_jax package, so `-m` finds it.
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                        check=False)
  if done.returncode != 0:
    print(f'memory probe {framework} failed:\n{done.stderr[-2000:]}')
    return None
  return json.loads(done.stdout.strip().splitlines()[-1])['peak_rss']


def _fmt_ratio(a, b):
  return f'{a / b:.2f}x' if a is not None and b else 'n/a'


def _fmt_s(t):
  return 'n/a' if t is None else f'{t:.3f} s'


def run_benchmark(sizes, width: float, repeats: int, warmup: int, fast_ops: str,
                  train_batch: int, train_batch_size, compare_plain: bool,
                  memory: bool, mixed_dir: str,
                  dtype: str = 'float32') -> dict[str, Any]:
  """All measurements; prints the table as it goes and returns the results."""
  import jax  # pylint: disable=g-import-not-at-top
  torch = import_torch()
  if torch is None:
    print(TORCH_MISSING)
  peak, peak_how = machine_peak_flops(dtype)
  results = {'jax': jax.__version__, 'torch': torch and torch.__version__,
             'device': str(jax.devices()[0]), 'cpu_count': os.cpu_count(),
             'width': width, 'repeats': repeats, 'peak_flops': peak,
             'peak_how': peak_how, 'rows': []}
  print(f'JAX {jax.__version__} ({jax.devices()[0].platform}), PyTorch '
        f'{results["torch"]} ({torch and torch.get_num_threads()} threads), '
        f'width {width}, median of {repeats}; peak {peak_how}')
  start_load = os.getloadavg()[0]

  on_cpu = jax.default_backend() == 'cpu'
  torch_device = 'cpu'
  if not on_cpu and torch is not None:
    if torch.cuda.is_available():
      torch_device = 'cuda'
      torch.backends.cudnn.benchmark = True
    else:
      print('JAX runs on an accelerator but PyTorch has no CUDA: PyTorch skipped.')
      torch = None
  results.update(dtype=dtype, torch_device=torch_device)
  jax_runner = JaxRunner(width, fast_ops, dtype=dtype)
  # Own copies of the weights: each runner's train step donates its buffers.
  plain_runner = (JaxRunner(width, 'off', dtype=dtype,
                            params=jax.device_get(jax_runner.params))
                  if compare_plain else None)
  torch_runner = (TorchRunner(torch, width, jax.device_get(jax_runner.params),
                              torch_device, dtype) if torch else None)

  cases = [('forward', 1, s) for s in sizes] + [('train', 1, s) for s in sizes]
  if train_batch:
    cases.append(('train', train_batch, train_batch_size))
  checked = False
  for kind, batch, (height, width_px) in cases:
    images, labels = random_batch(batch, height, width_px)
    row = {'kind': kind, 'batch': batch, 'size': f'{width_px}x{height}'}
    row['jax_compile_s'] = jax_runner.compile(kind, images, labels)
    flops = jax_runner.plain_flops(kind, images, labels)
    if torch_runner and not checked:
      row['logit_error'] = results['logit_error'] = check_same_logits(
          jax_runner, torch_runner, images,
          # bfloat16 rounds differently in each framework: warn only.
          1e-3 if dtype == 'float32' else 0.1, fatal=dtype == 'float32')
      checked = True
    if kind == 'forward':
      jax_fn = lambda: jax_runner.run_forward(images)
      plain_fn = plain_runner and (lambda: plain_runner.run_forward(images))
      if torch_runner:
        x = torch_runner.to_torch(images)
        torch_fn = lambda: torch_runner.run_forward(x)
    else:
      jax_fn = lambda: jax_runner.run_train_step(images, labels)
      plain_fn = plain_runner and (
          lambda: plain_runner.run_train_step(images, labels))
      if torch_runner:
        x, y = torch_runner.to_torch(images, labels)
        torch_fn = lambda: torch_runner.run_train_step(x, y)
    row['jax_s'], row['torch_s'] = time_interleaved(
        jax_fn, torch_runner and torch_fn, repeats, warmup)
    if plain_fn:
      plain_fn()  # Compiles.
      row['jax_plain_s'] = median_time(plain_fn, repeats)
    row['flops'] = flops
    row['jax_gflops_per_s'] = flops / row['jax_s'] / 1e9
    row['jax_images_per_s'] = batch / row['jax_s']
    row['load'] = os.getloadavg()[0]
    results['rows'].append(row)
    print(f'{kind:8s} batch {batch} {row["size"]:>8s}: JAX {_fmt_s(row["jax_s"])}'
          f'  torch {_fmt_s(row["torch_s"])}  ratio '
          f'{_fmt_ratio(row["jax_s"], row["torch_s"])}'
          + (f'  plain JAX {_fmt_s(row["jax_plain_s"])}' if plain_fn else '')
          + f'  compile {row["jax_compile_s"]:.1f} s'
          f'  {row["jax_gflops_per_s"]:.0f} GFLOP/s ({100 * flops / row["jax_s"] / peak:.0f}% of peak)'
          f'  load {row["load"]:.1f}', flush=True)

  if memory and not on_cpu:
    # Device memory: peak bytes the allocators handed out in this process.
    stats = jax.devices()[0].memory_stats() or {}
    results['memory'] = {'size': 'all rows (device memory)',
                         'jax': stats.get('peak_bytes_in_use')}
    if torch_runner:
      results['memory']['torch'] = torch.cuda.max_memory_allocated()
  elif memory:
    size_text = f'{sizes[-1][1]}x{sizes[-1][0]}'
    results['memory'] = {'size': size_text,
                         'jax': measure_peak_rss('jax', width, fast_ops, size_text, 1)}
    if torch:
      results['memory']['torch'] = measure_peak_rss('torch', width, fast_ops,
                                                    size_text, 1)
  if results.get('memory'):
    mem = results['memory']
    print(f'peak memory, {mem["size"]}: JAX '
          f'{(mem["jax"] or 0) / 2**30:.2f} GiB, torch '
          f'{(mem.get("torch") or 0) / 2**30:.2f} GiB, ratio '
          f'{_fmt_ratio(mem["jax"], mem.get("torch"))}', flush=True)

  if mixed_dir != 'none':
    folder = mixed_dir or os.path.join(ROOT, 'tests', 'data', 'voc-real-mini',
                                       'JPEGImages')
    results['mixed'] = count_mixed_size_compilations(width, fast_ops, folder)
    m = results['mixed']
    print(f'mixed sizes: {m["images"]} images, {m["distinct_sizes"]} sizes, '
          f'{m["compilations"]} compilations, {m["seconds"]:.1f} s', flush=True)
  results['load'] = [start_load, os.getloadavg()[0]]
  print(markdown_table(results))
  return results


def markdown_table(results: dict) -> str:
  lines = ['| measurement | fcn_jax | PyTorch | JAX / PyTorch | JAX compile | '
           'JAX GFLOP/s (% peak) | JAX images/s |',
           '|---|---|---|---|---|---|---|']
  for row in results['rows']:
    name = ('forward' if row['kind'] == 'forward' else 'train step') + (
        f', batch {row["batch"]}, {row["size"]}')
    lines.append(
        f'| {name} | {_fmt_s(row["jax_s"])} | {_fmt_s(row["torch_s"])} | '
        f'{_fmt_ratio(row["jax_s"], row["torch_s"])} | '
        f'{row["jax_compile_s"]:.1f} s | {row["jax_gflops_per_s"]:.0f} '
        f'({100 * row["jax_gflops_per_s"] * 1e9 / results["peak_flops"]:.0f}%) | '
        f'{row["jax_images_per_s"]:.2f} |')
  mem = results.get('memory')
  if mem:
    gib = lambda b: 'n/a' if not b else f'{b / 2**30:.2f} GiB'
    lines.append(f'| peak memory, train step, {mem["size"]} | {gib(mem["jax"])} | '
                 f'{gib(mem.get("torch"))} | '
                 f'{_fmt_ratio(mem["jax"], mem.get("torch"))} | | | |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if _PROBE.value:
    memory_probe(_PROBE.value, _WIDTH.value, _FAST_OPS.value,
                 parse_size(_SIZES.value[0]), _TRAIN_BATCH.value or 1)
    return
  sizes = [parse_size(s) for s in _SIZES.value]
  width, repeats, warmup = _WIDTH.value, _REPEATS.value, _WARMUP.value
  train_batch, compare_plain = _TRAIN_BATCH.value, _COMPARE_PLAIN.value
  train_batch_size = parse_size(_TRAIN_BATCH_SIZE.value)
  memory, mixed_dir = _MEMORY.value, _MIXED_DIR.value
  if _QUICK.value:
    sizes, repeats, compare_plain = [(256, 256)], min(repeats, 3), False
  if _TINY.value:
    width, sizes, repeats, warmup = 1 / 16, [(64, 64), (75, 100)], 1, 1
    train_batch_size, train_batch = (64, 64), min(train_batch, 2)
  results = run_benchmark(sizes, width, repeats, warmup, _FAST_OPS.value,
                          train_batch, train_batch_size, compare_plain, memory,
                          mixed_dir, _DTYPE.value)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  cli.run(main, path_flags=('mixed_dir', 'json'))
