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
it only the JAX numbers are printed. The two networks and their shared
random inputs are in `fcn_jax.benchmark_runners`.
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

from fcn_jax import benchmark_runners as runners
from fcn_jax import cli
from fcn_jax import errors

_SIZES = flags.DEFINE_list(
    'sizes', ['256x256', '500x375'],
    'Image sizes WxH for the batch-1 forward and training step (empty: no '
    'batch-1 rows, only the --train_batch row).')
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


# ----------------------------------------------------------------------------
# Measurements.


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
  model = models.get_model('fcn8s', runners.NUM_CLASSES, width=width, fast_ops=fast_ops)
  params = runners.random_params(jax.eval_shape(
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
  images, labels = runners.random_batch(batch, height, width_px)
  not_counted = 0
  if framework == 'jax':
    runner = runners.JaxRunner(width, fast_ops)
    for _ in range(2):
      runner.run_train_step(images, labels)
    runner.run_forward(images)
  else:
    torch = runners.import_torch()
    # The torch model reads its geometry from fcn_jax.models, which imports
    # JAX; that import is not PyTorch's memory, so it is subtracted.
    before = current_rss_bytes()
    from fcn_jax import models  # pylint: disable=g-import-not-at-top,unused-import
    not_counted = current_rss_bytes() - before
    runner = runners.TorchRunner(torch, width)
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
  torch = runners.import_torch()
  if torch is None:
    print(runners.TORCH_MISSING)
  peak, peak_how = runners.machine_peak_flops(dtype)
  results = {'jax': jax.__version__, 'torch': torch and torch.__version__,
             'device': str(jax.devices()[0]), 'cpu_count': os.cpu_count(),
             'width': width, 'repeats': repeats, 'peak_flops': peak,
             'peak_how': peak_how, 'rows': []}
  print(f'JAX {jax.__version__} ({jax.devices()[0].platform}), PyTorch '
        f'{results["torch"]} ({torch and torch.get_num_threads()} threads), '
        f'width {width}, median of {repeats}; peak {peak_how}')
  start_load = os.getloadavg()[0]

  on_cpu = jax.default_backend() == 'cpu'
  torch, torch_device = runners.torch_device(torch, on_cpu)
  results.update(dtype=dtype, torch_device=torch_device)
  jax_runner = runners.JaxRunner(width, fast_ops, dtype=dtype)
  # Own copies of the weights: each runner's train step donates its buffers.
  plain_runner = (runners.JaxRunner(width, 'off', dtype=dtype,
                            params=jax.device_get(jax_runner.params))
                  if compare_plain else None)
  torch_runner = (runners.TorchRunner(torch, width, jax.device_get(jax_runner.params),
                              torch_device, dtype) if torch else None)

  cases = [('forward', 1, s) for s in sizes] + [('train', 1, s) for s in sizes]
  if train_batch:
    cases.append(('train', train_batch, train_batch_size))
  checked = False
  for kind, batch, (height, width_px) in cases:
    images, labels = runners.random_batch(batch, height, width_px)
    row = {'kind': kind, 'batch': batch, 'size': f'{width_px}x{height}'}
    row['jax_compile_s'] = jax_runner.compile(kind, images, labels)
    flops = jax_runner.plain_flops(kind, images, labels)
    if torch_runner and not checked:
      row['logit_error'] = results['logit_error'] = runners.check_same_logits(
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
  elif memory and not sizes:
    print('peak memory: not measured (it runs at the last of --sizes, and '
          '--sizes is empty).', flush=True)
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
  if not sizes and not train_batch:  # An empty --sizes: no batch-1 rows.
    raise errors.FlagError('--sizes is empty and --train_batch=0: nothing to '
                           'measure; give a size, e.g. --sizes=500x375.')
  results = run_benchmark(sizes, width, repeats, warmup, _FAST_OPS.value,
                          train_batch, train_batch_size, compare_plain, memory,
                          mixed_dir, _DTYPE.value)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  cli.run(main, path_flags=('mixed_dir', 'json'))
