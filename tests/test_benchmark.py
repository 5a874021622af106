"""fcn_jax.benchmark in its tiny mode, so the benchmark cannot rot in CI."""

import os
import subprocess
import sys

import numpy as np
import pytest

from fcn_jax import benchmark
from fcn_jax import benchmark_runners

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_size_is_width_by_height():
  assert benchmark.parse_size('500x375') == (375, 500)
  with pytest.raises(ValueError, match='--sizes'):
    benchmark.parse_size('500by375')


def test_torch_model_gives_the_same_logits_as_fcn_jax():
  torch = pytest.importorskip('torch')
  jax_runner = benchmark_runners.JaxRunner(width=1 / 32, fast_ops='auto')
  torch_runner = benchmark_runners.TorchRunner(torch, 1 / 32,
                                               jax_runner.params)
  images, _ = benchmark_runners.random_batch(2, 37, 30)
  logits = torch_runner.run_forward(torch_runner.to_torch(images)).numpy()
  assert logits.shape == (2, benchmark_runners.NUM_CLASSES, 37, 30)
  assert np.std(logits) > 0  # Random score layers: not a trivial match.
  assert benchmark_runners.check_same_logits(
      jax_runner, torch_runner, images) < 1e-4
  # A different network is caught before anything is timed.
  with torch.no_grad():
    torch_runner.model.layers['score_pool3'].weight.mul_(2.0)
  with pytest.raises(AssertionError, match='logits differ'):
    benchmark_runners.check_same_logits(jax_runner, torch_runner, images)


def test_tiny_benchmark_measures_every_row(capsys):
  results = benchmark.run_benchmark(
      sizes=[(36, 40)], width=1 / 32, repeats=1, warmup=0, fast_ops='auto',
      train_batch=0, train_batch_size=(36, 40), compare_plain=False,
      memory=False, mixed_dir='none')
  out = capsys.readouterr().out
  rows = results['rows']
  assert [(r['kind'], r['batch'], r['size']) for r in rows] == [
      ('forward', 1, '40x36'), ('train', 1, '40x36')]
  for row in rows:
    assert row['jax_s'] > 0 and row['jax_compile_s'] > 0
    # A training step costs about three forward passes.
    assert row['flops'] > 0
  assert 2 * rows[0]['flops'] < rows[1]['flops'] < 5 * rows[0]['flops']
  if results['torch'] is None:
    assert benchmark_runners.TORCH_MISSING in out
  else:
    assert results['logit_error'] < 1e-4
    assert all(r['torch_s'] > 0 for r in rows)
  assert '| train step, batch 1, 40x36 |' in out


def test_empty_sizes_means_no_batch_1_rows(capsys, monkeypatch):
  monkeypatch.setattr(benchmark_runners, 'import_torch', lambda: None)
  results = benchmark.run_benchmark(
      sizes=[], width=1 / 32, repeats=1, warmup=0, fast_ops='auto',
      train_batch=1, train_batch_size=(36, 40), compare_plain=False,
      memory=True, mixed_dir='none')
  assert [(r['kind'], r['batch'], r['size']) for r in results['rows']] == [
      ('train', 1, '40x36')]
  assert 'memory' not in results
  assert 'peak memory: not measured' in capsys.readouterr().out
  # With no batched row either there is nothing to measure: one line.
  proc = subprocess.run(
      [sys.executable, '-m', 'fcn_jax.benchmark', '--sizes=',
       '--train_batch=0'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: --sizes is empty and --train_batch=0: nothing to measure; give '
      'a size, e.g. --sizes=500x375.')
