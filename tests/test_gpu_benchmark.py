"""experiments/gpu_benchmark.py on the CPU at tiny width: its variants are
the same network, its rows and profile summary are computed right."""

import gzip
import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import gpu_benchmark
from fcn_jax import layers

TINY = gpu_benchmark.geometry(tiny=True)


def test_transposed_convolution_variants_equal_the_sub_pixel_one():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  for depthwise, shape, stride in ((True, (4, 4, 1, 1), 2),
                                   (False, (4, 4, 3, 3), 2),
                                   (False, (16, 16, 3, 2), 8)):
    kernel = rng.standard_normal(shape).astype(np.float32)
    want = np.asarray(layers.conv_transpose(x, kernel, stride, depthwise))
    # (in - 1) * s + k, the Caffe/PyTorch output size.
    assert want.shape[1:3] == (4 * stride + shape[0], 5 * stride + shape[0])
    for impl in (gpu_benchmark.conv_transpose_lhs_dilated,
                 gpu_benchmark.conv_transpose_lax):
      got = np.asarray(impl(x, kernel, stride, depthwise))
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _off_by_one(x, kernel, stride, depthwise=False):
  # A plausible bug: the output one pixel off (padding (k-2, k) for (k-1, k-1)).
  out = gpu_benchmark.conv_transpose_lhs_dilated(x, kernel, stride, depthwise)
  return jnp.roll(out, 1, axis=1)


def test_variants_report_whether_they_compute_the_same_logits(monkeypatch):
  specs = gpu_benchmark.variant_specs()
  specs['broken_upsample'] = dict(patch={'conv_transpose': _off_by_one},
                                  same_function=True)
  monkeypatch.setattr(gpu_benchmark, 'variant_specs', lambda: specs)
  names = ['upsample_lhs_dilated', 'upsample_lax_conv_transpose',
           'pool_mask_gradient', 'geometry_same_padding', 'broken_upsample']
  results = {'variants': []}
  # No timed rows: only the logits check.
  geo = dict(TINY, variant_cases=[])
  gpu_benchmark.measure_variants(geo, names, 1, 0, float('inf'),
                                 lambda: None, results)
  errors = {v['variant']: v['logit_error'] for v in results['variants']}
  assert errors['upsample_lhs_dilated'] < 1e-5
  assert errors['upsample_lax_conv_transpose'] < 1e-5
  assert errors['pool_mask_gradient'] < 1e-5
  assert errors['broken_upsample'] > 1e-2  # The check catches it.
  assert errors['geometry_same_padding'] > 1e-2  # Another network.
  report = gpu_benchmark.markdown_report(results)
  assert '| broken_upsample | True |' in report


def test_rows_hold_consistent_ratios_throughput_and_flops():
  pytest.importorskip('torch')
  geo = dict(TINY, cases=TINY['cases'][:2])  # forward and train, batch 1.
  results = {'rows': []}
  gpu_benchmark.measure_rows(geo, ['float32'], 1, 0, float('inf'),
                             lambda: None, results)
  forward, train = results['rows']
  assert results['logit_error']['float32'] < 1e-4
  for row in (forward, train):
    assert row['ratio'] == pytest.approx(row['jax_s'] / row['torch_s'])
    assert row['jax_images_per_s'] == pytest.approx(1 / row['jax_s'])
    assert row['jax_device_bytes'] > 0
    assert 0 < row['jax_peak_fraction'] < 1
  # A training step does about three forward passes of arithmetic.
  assert 2 * forward['flops'] < train['flops'] < 5 * forward['flops']
  report = gpu_benchmark.markdown_report(dict(results, device={}))
  assert '| float32 | train step, batch 1, 32x32 |' in report


def test_op_time_summary_sums_device_events_per_op(tmp_path):
  events = [
      {'ph': 'M', 'name': 'process_name', 'pid': 1,
       'args': {'name': '/device:GPU:0'}},
      {'ph': 'M', 'name': 'process_name', 'pid': 2,
       'args': {'name': '/host:CPU'}},
      {'ph': 'X', 'pid': 1, 'name': 'convolution.3', 'dur': 3000.0},
      {'ph': 'X', 'pid': 1, 'name': 'convolution.3', 'dur': 1000.0},
      {'ph': 'X', 'pid': 1, 'name': 'loop_fusion', 'dur': 4000.0},
      {'ph': 'X', 'pid': 2, 'name': 'PjitFunction', 'dur': 9e6},  # Host.
  ]
  folder = tmp_path / 'plugins' / 'profile' / 'run'
  folder.mkdir(parents=True)
  with gzip.open(folder / 'perfetto_trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)
  summary = gpu_benchmark.op_time_summary(str(tmp_path), steps=2)
  assert summary['source'] == 'device streams'
  # 8 ms of device time over 2 steps; host events are left out.
  assert summary['total_ms_per_step'] == pytest.approx(4.0)
  ops = {o['op']: o for o in summary['ops']}
  assert set(ops) == {'convolution.3', 'loop_fusion'}
  assert ops['convolution.3']['ms_per_step'] == pytest.approx(2.0)
  assert ops['loop_fusion']['share'] == pytest.approx(0.5)
