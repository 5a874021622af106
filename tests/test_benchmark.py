"""fcn_jax.benchmark in its tiny mode, so the benchmark cannot rot in CI."""

import numpy as np
import pytest

from fcn_jax import benchmark


def test_parse_size_is_width_by_height():
  assert benchmark.parse_size('500x375') == (375, 500)
  with pytest.raises(ValueError, match='--sizes'):
    benchmark.parse_size('500by375')


def test_torch_model_gives_the_same_logits_as_fcn_jax():
  torch = pytest.importorskip('torch')
  jax_runner = benchmark.JaxRunner(width=1 / 32, fast_ops='auto')
  torch_runner = benchmark.TorchRunner(torch, 1 / 32, jax_runner.params)
  images, _ = benchmark.random_batch(2, 37, 30)
  logits = torch_runner.run_forward(torch_runner.to_torch(images)).numpy()
  assert logits.shape == (2, benchmark.NUM_CLASSES, 37, 30)
  assert np.std(logits) > 0  # Random score layers: not a trivial match.
  assert benchmark.check_same_logits(jax_runner, torch_runner, images) < 1e-4
  # A different network is caught before anything is timed.
  with torch.no_grad():
    torch_runner.model.layers['score_pool3'].weight.mul_(2.0)
  with pytest.raises(AssertionError, match='logits differ'):
    benchmark.check_same_logits(jax_runner, torch_runner, images)


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
    assert benchmark.TORCH_MISSING in out
  else:
    assert results['logit_error'] < 1e-4
    assert all(r['torch_s'] > 0 for r in rows)
  assert '| train step, batch 1, 40x36 |' in out
