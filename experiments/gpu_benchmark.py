"""Everything the GPU rows of the benchmark need, in one go.

    bash experiments/gpu_benchmark.sh OUT_DIR        # a GPU machine, ~8 min
    python -m experiments.gpu_benchmark --tiny --out=/tmp/gpu_bench  # CPU smoke

Writes OUT_DIR/gpu_benchmark.json (appending when run again with another
--part) and OUT_DIR/gpu_benchmark.md:

1. `profile`: where the time of the full-width training step (batch 8,
   256x256, float32) goes per XLA op, from a jax.profiler trace of a few
   steps (device streams; on a CPU, the host's).
2. `rows`: the benchmark rows, float32 and bfloat16: forward and training
   step at batch 1 on 256x256 and 500x375 and at batch 8 on 256x256; fcn_jax
   and PyTorch interleaved in this process (logits checked first, as in
   fcn_jax.benchmark), with images/s, device memory (XLA's memory analysis of
   the compiled program; PyTorch's allocator peak of the row) and achieved
   FLOP/s as a fraction of the device's peak (XLA cost analysis / time).
3. `variants`: the candidate optimizations, each a switchable option timed
   against the default on the same rows, interleaved, with the variant's
   logits compared to the default's (`same_function` variants must agree).
4. `xla_flags` (--part=flags, run by the .sh under other XLA_FLAGS): the
   default program's time under those flags.

A time budget (--budget_s) skips what would not fit and says so in the
output rather than running past the device's lease.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable
from unittest import mock

from absl import app
from absl import flags

# --tiny, --repeats and --warmup are fcn_jax.benchmark's flags.
from fcn_jax import benchmark as benchmark_flags
from fcn_jax import benchmark_runners as runners

_OUT = flags.DEFINE_string('out', 'gpu_benchmark_out', 'Output folder.')
_PART = flags.DEFINE_enum('part', 'main', ['main', 'flags', 'report'],
                          'main: profile, rows, variants; flags: the default '
                          'program under $XLA_FLAGS; report: Markdown only.')
_TAG = flags.DEFINE_string('tag', '', 'Name of this --part=flags run.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Row dtypes.')
_VARIANTS = flags.DEFINE_list('variants', [], 'Variants to time (default all).')
_BUDGET = flags.DEFINE_float('budget_s', 0, 'Stop starting new work after '
                             'this many seconds of this process (0 = never).')

RESULTS_FILE = 'gpu_benchmark.json'
REPORT_FILE = 'gpu_benchmark.md'


def geometry(tiny: bool) -> dict:
  """Width, the row cases and the variant rows (full size or --tiny)."""
  if tiny:
    return dict(width=1 / 32, cases=[('forward', 1, (32, 32)),
                                     ('train', 1, (32, 32)),
                                     ('train', 2, (40, 30))],
                variant_cases=[('train', 2, (40, 30))], profile=(2, (32, 32)),
                check_size=(1, (40, 36)))
  return dict(width=1.0,
              cases=[('forward', 1, (256, 256)), ('forward', 1, (375, 500)),
                     ('forward', 8, (256, 256)), ('train', 1, (256, 256)),
                     ('train', 1, (375, 500)), ('train', 8, (256, 256))],
              variant_cases=[('train', 8, (256, 256)), ('train', 1, (375, 500))],
              profile=(8, (256, 256)), check_size=(1, (256, 256)))


# ----------------------------------------------------------------------------
# Transposed-convolution implementations (layers.conv_transpose's contract).


def conv_transpose_lhs_dilated(x, kernel, stride: int, depthwise: bool = False):
  """The textbook transposed convolution: a stride-1 convolution of the
  zero-dilated input with the spatially flipped kernel (what cuDNN's
  backward-data convolution computes)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  k = kernel.shape[0]
  flipped = kernel[::-1, ::-1]
  groups = 1
  if depthwise:  # (k, k, 1, 1 or C): one filter per channel.
    groups = x.shape[-1]
    flipped = jnp.broadcast_to(flipped, (k, k, 1, groups))
  return lax.conv_general_dilated(
      x, flipped.astype(x.dtype), (1, 1), [(k - 1, k - 1)] * 2,
      lhs_dilation=(stride, stride),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def conv_transpose_lax(x, kernel, stride: int, depthwise: bool = False):
  """jax.lax.conv_transpose; a per-channel (depthwise) kernel becomes a dense
  channel-diagonal one, since lax.conv_transpose has no groups."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  if depthwise:
    k, c = kernel.shape[0], x.shape[-1]
    per_channel = jnp.broadcast_to(kernel[:, :, 0, :], (k, k, c))
    kernel = per_channel[..., None] * jnp.eye(c, dtype=kernel.dtype)
  # transpose_kernel: `kernel` read as the (k, k, out, in) kernel of the
  # strided convolution this transposes.
  return lax.conv_transpose(x, kernel.transpose(0, 1, 3, 2).astype(x.dtype),
                            (stride, stride), 'VALID',
                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                            transpose_kernel=True)


def variant_specs() -> dict[str, dict]:
  """Every candidate: how to build it and whether it is the same function.

  Keys of a spec: patch (module attribute -> replacement while tracing),
  runner (JaxRunner keyword arguments), precision (jax matmul precision),
  same_function (its logits must equal the default's).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from fcn_jax import fast_ops  # pylint: disable=g-import-not-at-top
  return {
      'upsample_lhs_dilated': dict(
          patch={'conv_transpose': conv_transpose_lhs_dilated},
          same_function=True),
      'upsample_lax_conv_transpose': dict(
          patch={'conv_transpose': conv_transpose_lax}, same_function=True),
      'pool_mask_gradient': dict(
          patch={'max_pool_ceil': fast_ops.max_pool_2x2_ceil},
          same_function=True),
      'fast_ops_on': dict(runner={'fast_ops': 'on'}, same_function=True),
      'precision_highest': dict(precision='highest', same_function=True),
      'no_donation': dict(runner={'donate': False}, same_function=True),
      'remat_dots_saveable': dict(
          runner={'remat_policy': jax.checkpoint_policies.dots_saveable},
          same_function=True),
      # Another network (no 100-pixel padding, 'SAME' fc6): what the pad-100
      # input and its crops cost. Not the same logits by design.
      'geometry_same_padding': dict(
          runner={'model_kwargs': {'input_padding': 1, 'fc6_padding': 3}},
          same_function=False),
  }


@contextlib.contextmanager
def variant_context(spec: dict):
  """Patches the layers' ops and sets the matmul precision while inside."""
  import jax  # pylint: disable=g-import-not-at-top
  from fcn_jax import layers  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    for name, replacement in spec.get('patch', {}).items():
      stack.enter_context(mock.patch.object(layers, name, replacement))
    if spec.get('precision'):
      stack.enter_context(jax.default_matmul_precision(spec['precision']))
    yield


# ----------------------------------------------------------------------------
# Profile.


def op_time_summary(trace_dir: str, steps: int, top: int = 25) -> dict:
  """Total time per op name over the device streams of a perfetto trace.

  Falls back to the host's events (CPU backend) without Python frames.
  """
  paths = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'),
                    recursive=True)
  if not paths:
    return {'error': f'no perfetto trace under {trace_dir}'}
  with gzip.open(sorted(paths)[-1]) as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  device = {pid for pid, name in names.items()
            if '/device:' in name and 'CPU' not in name}
  totals = collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or str(e.get('name', '')).startswith('$'):
      continue
    if device and e['pid'] not in device:
      continue
    totals[e['name']] += float(e.get('dur', 0.0))  # microseconds
  total = sum(totals.values())
  ops = [{'op': name, 'ms_per_step': us / 1e3 / steps,
          'share': us / total if total else 0.0}
         for name, us in totals.most_common(top)]
  return {'source': 'device streams' if device else 'host threads',
          'total_ms_per_step': total / 1e3 / steps, 'ops': ops}


def profile_train_step(width: float, batch: int, size, steps: int = 3) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  runner = runners.JaxRunner(width, 'auto')
  images, labels = runners.random_batch(batch, *size)
  for _ in range(2):
    runner.run_train_step(images, labels)
  trace_dir = tempfile.mkdtemp(prefix='fcn_jax_profile_')
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      runner.run_train_step(images, labels)
  summary = op_time_summary(trace_dir, steps)
  summary.update(batch=batch, size=f'{size[1]}x{size[0]}', trace_dir=trace_dir)
  return summary


# ----------------------------------------------------------------------------
# Rows and variants.


def time_alternating(fns: list[tuple[Callable[[], Any], Any]], repeats: int,
                     warmup: int) -> list[float]:
  """Median seconds of each (fn, context factory), alternating the order."""
  def run(fn, ctx):
    with (ctx() if ctx else contextlib.nullcontext()):
      start = time.perf_counter()
      fn()
      return time.perf_counter() - start
  for _ in range(warmup):
    for fn, ctx in fns:
      run(fn, ctx)
  times = [[] for _ in fns]
  for r in range(repeats):
    order = list(range(len(fns)))
    if r % 2:
      order.reverse()
    for i in order:
      times[i].append(run(*fns[i]))
  return [statistics.median(t) for t in times]


def _out_of_time(deadline: float, results: dict, what: str) -> bool:
  """Whether the time budget is spent; if so `what` is listed as skipped."""
  if time.time() <= deadline:
    return False
  results.setdefault('skipped', []).append(f'{what}: time budget')
  return True


def _device_info():
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'jax': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', '')}


def measure_rows(geo: dict, dtypes, repeats: int, warmup: int, deadline: float,
                 save: Callable[[], None], results: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  torch, torch_device = runners.torch_device(
      runners.import_torch(), jax.default_backend() == 'cpu')
  results['torch'] = torch and torch.__version__
  results['torch_device'] = torch_device
  for dtype in dtypes:
    peak, peak_how = runners.machine_peak_flops(dtype)
    runner = runners.JaxRunner(geo['width'], 'auto', dtype=dtype)
    torch_runner = (runners.TorchRunner(
        torch, geo['width'], jax.device_get(runner.params), torch_device,
        dtype) if torch else None)
    if torch_runner:
      images, _ = runners.random_batch(geo['check_size'][0],
                                         *geo['check_size'][1])
      results.setdefault('logit_error', {})[dtype] = (
          runners.check_same_logits(
              runner, torch_runner, images,
              1e-3 if dtype == 'float32' else 0.1, fatal=dtype == 'float32'))
    for kind, batch, size in geo['cases']:
      if _out_of_time(deadline, results,
                      f'row {kind} batch {batch} {size[1]}x{size[0]} {dtype}'):
        continue
      images, labels = runners.random_batch(batch, *size)
      row = {'kind': kind, 'batch': batch, 'size': f'{size[1]}x{size[0]}',
             'dtype': dtype, 'peak_flops': peak, 'peak_how': peak_how}
      row['jax_compile_s'] = runner.compile(kind, images, labels)
      row['jax_device_bytes'] = runner.memory_bytes(kind, images, labels)
      row['flops'] = runner.plain_flops(kind, images, labels)
      fns = [((lambda: runner.run_forward(images)) if kind == 'forward'
              else (lambda: runner.run_train_step(images, labels)), None)]
      if torch_runner:
        if torch_device == 'cuda':
          torch.cuda.reset_peak_memory_stats()
        if kind == 'forward':
          x = torch_runner.to_torch(images)
          fns.append((lambda: torch_runner.run_forward(x), None))
        else:
          x, y = torch_runner.to_torch(images, labels)
          fns.append((lambda: torch_runner.run_train_step(x, y), None))
      times = time_alternating(fns, repeats, warmup)
      row['jax_s'] = times[0]
      row['torch_s'] = times[1] if torch_runner else None
      if torch_runner and torch_device == 'cuda':
        row['torch_device_bytes'] = torch.cuda.max_memory_allocated()
      row['ratio'] = (row['jax_s'] / row['torch_s']) if row['torch_s'] else None
      row['jax_images_per_s'] = batch / row['jax_s']
      row['torch_images_per_s'] = (batch / row['torch_s'] if row['torch_s']
                                   else None)
      row['jax_flops_per_s'] = row['flops'] / row['jax_s']
      row['jax_peak_fraction'] = row['jax_flops_per_s'] / peak
      results['rows'].append(row)
      print(f"{dtype} {kind} batch {batch} {row['size']}: JAX "
            f"{row['jax_s'] * 1e3:.2f} ms, torch "
            f"{(row['torch_s'] or float('nan')) * 1e3:.2f} ms, ratio "
            f"{row['ratio'] or float('nan'):.2f}", flush=True)
      save()
    stats = jax.devices()[0].memory_stats() or {}
    results.setdefault('jax_allocator_peak_bytes', {})[dtype] = stats.get(
        'peak_bytes_in_use')
    del runner, torch_runner


def measure_variants(geo: dict, names, repeats: int, warmup: int,
                     deadline: float, save: Callable[[], None],
                     results: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  specs = variant_specs()
  base = runners.JaxRunner(geo['width'], 'auto')
  params = jax.device_get(base.params)
  check_images, _ = runners.random_batch(geo['check_size'][0],
                                           *geo['check_size'][1], seed=1)
  base_logits = np.asarray(base.run_forward(check_images))
  scale = max(float(np.max(np.abs(base_logits))), 1e-12)
  for name in names:
    spec = specs[name]
    if _out_of_time(deadline, results, f'variant {name}'):
      continue
    ctx = lambda spec=spec: variant_context(spec)
    runner_kwargs = dict(spec.get('runner', {}))
    fast_ops = runner_kwargs.pop('fast_ops', 'auto')
    with ctx():
      runner = runners.JaxRunner(geo['width'], fast_ops, params=params,
                                   **runner_kwargs)
      logits = np.asarray(runner.run_forward(check_images))
    entry = {'variant': name, 'same_function': spec['same_function'],
             'logit_error': (float(np.max(np.abs(logits - base_logits))) / scale
                             if logits.shape == base_logits.shape else None),
             'rows': []}
    for kind, batch, size in geo['variant_cases']:
      if _out_of_time(deadline, results,
                      f'variant {name} {kind} batch {batch}'):
        continue
      images, labels = runners.random_batch(batch, *size)
      with ctx():
        compile_s = runner.compile(kind, images, labels)
        device_bytes = runner.memory_bytes(kind, images, labels)
      base.compile(kind, images, labels)
      variant_s, base_s = time_alternating(
          [(lambda: runner.run_train_step(images, labels), ctx),
           (lambda: base.run_train_step(images, labels), None)],
          repeats, warmup)
      entry['rows'].append({
          'kind': kind, 'batch': batch, 'size': f'{size[1]}x{size[0]}',
          'variant_s': variant_s, 'default_s': base_s,
          'variant_over_default': variant_s / base_s, 'compile_s': compile_s,
          'device_bytes': device_bytes})
      print(f'variant {name} {kind} batch {batch} {size[1]}x{size[0]}: '
            f'{variant_s * 1e3:.2f} ms vs default {base_s * 1e3:.2f} ms '
            f'({variant_s / base_s:.2f}x), logit error {entry["logit_error"]}',
            flush=True)
    results['variants'].append(entry)
    save()
    del runner


def measure_flags(geo: dict, tag: str, repeats: int, warmup: int,
                  results: dict) -> None:
  runner = runners.JaxRunner(geo['width'], 'auto')
  entry = {'tag': tag, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
           'rows': []}
  for kind, batch, size in geo['variant_cases'][:1]:  # Seconds matter here.
    images, labels = runners.random_batch(batch, *size)
    compile_s = runner.compile(kind, images, labels)
    (seconds,) = time_alternating(
        [(lambda: runner.run_train_step(images, labels), None)], repeats,
        warmup)
    entry['rows'].append({'kind': kind, 'batch': batch,
                          'size': f'{size[1]}x{size[0]}', 'jax_s': seconds,
                          'compile_s': compile_s})
    print(f'flags {tag}: {kind} batch {batch} {size[1]}x{size[0]} '
          f'{seconds * 1e3:.2f} ms', flush=True)
  results.setdefault('xla_flags', []).append(entry)


# ----------------------------------------------------------------------------
# Report.


def _gib(b):
  return 'n/a' if not b else f'{b / 2**30:.2f} GiB'


def markdown_report(results: dict) -> str:
  """The JSON as tables: rows, profile, variants, flags."""
  info = results.get('device', {})
  lines = [f"# fcn_jax GPU benchmark: {info.get('device_kind', '?')}",
           '', f"JAX {info.get('jax')}, PyTorch {results.get('torch')} on "
           f"{results.get('torch_device')}; logits JAX vs PyTorch (max "
           f"relative error): {results.get('logit_error')}", '',
           '| dtype | measurement | JAX | PyTorch | JAX / PyTorch | JAX images/s '
           '| PyTorch images/s | JAX device memory | PyTorch peak memory | '
           'JAX FLOP/s (fraction of peak) |', '|' + '---|' * 10]
  for r in results.get('rows', []):
    name = ('forward' if r['kind'] == 'forward' else 'train step') + (
        f", batch {r['batch']}, {r['size']}")
    ratio = f"{r['ratio']:.2f}x" if r.get('ratio') else 'n/a'
    torch_ms = f"{r['torch_s'] * 1e3:.2f} ms" if r.get('torch_s') else 'n/a'
    torch_ips = (f"{r['torch_images_per_s']:.1f}"
                 if r.get('torch_images_per_s') else 'n/a')
    lines.append(
        f"| {r['dtype']} | {name} | {r['jax_s'] * 1e3:.2f} ms | {torch_ms} | "
        f"{ratio} | {r['jax_images_per_s']:.1f} | {torch_ips} | "
        f"{_gib(r.get('jax_device_bytes'))} | "
        f"{_gib(r.get('torch_device_bytes'))} | "
        f"{r['jax_flops_per_s'] / 1e12:.2f} T ({r['jax_peak_fraction']:.1%}) |")
  prof = results.get('profile')
  if prof and prof.get('ops'):
    lines += ['', f"## Profile: train step, batch {prof['batch']}, "
              f"{prof['size']}, float32 ({prof['source']}, "
              f"{prof['total_ms_per_step']:.2f} ms of op time per step)", '',
              '| op | ms per step | share |', '|---|---|---|']
    lines += [f"| `{o['op'][:80]}` | {o['ms_per_step']:.3f} | "
              f"{o['share']:.1%} |" for o in prof['ops']]
  if results.get('variants'):
    lines += ['', '## Variants (float32; time relative to the default program,'
              ' interleaved)', '',
              '| variant | same function | logit error | measurement | variant '
              '| default | variant / default | device memory |',
              '|' + '---|' * 8]
    for v in results['variants']:
      err = 'n/a' if v['logit_error'] is None else f"{v['logit_error']:.1e}"
      for r in v['rows'] or [{}]:
        if not r:
          lines.append(f"| {v['variant']} | {v['same_function']} | {err} | "
                       'not timed | | | | |')
          continue
        lines.append(
            f"| {v['variant']} | {v['same_function']} | {err} | "
            f"{r['kind']} batch {r['batch']} {r['size']} | "
            f"{r['variant_s'] * 1e3:.2f} ms | {r['default_s'] * 1e3:.2f} ms | "
            f"{r['variant_over_default']:.2f}x | {_gib(r['device_bytes'])} |")
  if results.get('xla_flags'):
    lines += ['', '## XLA flags (default program, separate processes)', '',
              '| run | XLA_FLAGS | measurement | JAX |', '|---|---|---|---|']
    for f in results['xla_flags']:
      for r in f['rows']:
        lines.append(f"| {f['tag']} | `{f['xla_flags'] or '(none)'}` | "
                     f"{r['kind']} batch {r['batch']} {r['size']} | "
                     f"{r['jax_s'] * 1e3:.2f} ms |")
  if results.get('skipped'):
    lines += ['', 'Skipped (time budget): ' + '; '.join(results['skipped'])]
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  start = time.time()
  deadline = start + _BUDGET.value if _BUDGET.value > 0 else float('inf')
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, RESULTS_FILE)
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)

  def save():
    with open(path + '.tmp', 'w') as f:
      json.dump(results, f, indent=1)
    os.replace(path + '.tmp', path)
    with open(os.path.join(_OUT.value, REPORT_FILE), 'w') as f:
      f.write(markdown_report(results))

  if _PART.value == 'report':
    save()
    return
  tiny = benchmark_flags._TINY.value  # pylint: disable=protected-access
  geo = geometry(tiny)
  repeats = 1 if tiny else benchmark_flags._REPEATS.value  # pylint: disable=protected-access
  warmup = 1 if tiny else benchmark_flags._WARMUP.value  # pylint: disable=protected-access
  if _PART.value == 'flags':
    measure_flags(geo, _TAG.value or os.environ.get('XLA_FLAGS', 'default'),
                  repeats, warmup, results)
    save()
    return
  results.update(device=_device_info(), tiny=tiny, rows=[],
                 variants=[], command=' '.join(sys.argv))
  batch, size = geo['profile']
  results['profile'] = profile_train_step(geo['width'], batch, size)
  save()
  measure_rows(geo, _DTYPES.value, repeats, warmup, deadline, save, results)
  names = _VARIANTS.value or list(variant_specs())
  measure_variants(geo, names, repeats, warmup, deadline, save, results)
  results['seconds'] = time.time() - start
  save()
  print(markdown_report(results))


if __name__ == '__main__':
  app.run(main)
