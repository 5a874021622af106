"""The training loop's input and synchronization: device prefetch, no
device-to-host transfer on steps that do not log, evaluation in workers."""

import time

import grain
import jax
import numpy as np
import pytest
from jax._src import array as jax_array

from fcn_jax import input_pipeline
from fcn_jax import prefetch
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default


def _grain_iterator(n=12):
  ds = grain.MapDataset.range(n).map(lambda i: {'x': np.full((2,), i),
                                                'id': np.int32(i)})
  return iter(ds.to_iter_dataset())


def test_prefetcher_position_is_that_of_the_batches_handed_out():
  iterator = _grain_iterator()
  batches = prefetch.DevicePrefetcher(iterator, lambda b: b['x'] * 10, 12,
                                      depth=4, track_position=True)
  try:
    first = [next(batches) for _ in range(3)]
    time.sleep(0.3)  # Let the thread read ahead (up to 4 more batches).
    saved = batches.position().get_state()
  finally:
    batches.close()
  assert [int(ids) for _, ids in first] == [0, 1, 2]
  np.testing.assert_array_equal(first[2][0], [20, 20])
  # A fresh iterator set to the saved position continues with batch 3.
  resumed = _grain_iterator()
  resumed.set_state(saved)
  assert int(next(resumed)['id']) == 3


def test_prefetcher_raises_a_read_error_after_the_batches_before_it():
  def source():
    yield {'x': 1}
    yield {'x': 2}
    raise ValueError('bad file 3.jpg')
  batches = prefetch.DevicePrefetcher(source(), lambda b: b['x'], 5)
  try:
    assert [next(batches)[0] for _ in range(2)] == [1, 2]
    with pytest.raises(ValueError, match='bad file 3.jpg'):
      next(batches)
  finally:
    batches.close()


def test_prefetcher_counts_the_time_spent_waiting_for_input():
  def slow(n, seconds):
    for i in range(n):
      time.sleep(seconds)
      yield {'x': i}
  # Input slower than the consumer: nearly all of the time is waiting.
  batches = prefetch.DevicePrefetcher(slow(8, 0.05), lambda b: b['x'], 8)
  start = time.perf_counter()
  assert [b for b, _ in batches] == list(range(8))
  total = time.perf_counter() - start
  waited = batches.take_wait_seconds()
  batches.close()
  assert 0.3 <= waited <= total
  assert batches.take_wait_seconds() == 0.0  # Reset by taking.
  # Input read ahead of a slower consumer: hardly any waiting.
  batches = prefetch.DevicePrefetcher(slow(4, 0.0), lambda b: b['x'], 4,
                                      depth=4)
  time.sleep(0.2)
  for _ in batches:
    time.sleep(0.05)
  assert batches.take_wait_seconds() < 0.05
  batches.close()


def test_eval_reader_workers_give_the_same_batches_pass_after_pass():
  config = default.get_tiny_config()
  _, val_source, _ = input_pipeline.create_datasets(config)
  expected = list(input_pipeline.eval_batches(val_source, 3))
  assert len(expected) == 3  # 8 images: 3 + 3 + 2 and a filler.
  reader = input_pipeline.EvalReader(val_source, 3, num_workers=1)
  try:
    half = iter(reader)
    next(half)  # An abandoned pass; the next one still starts at batch 0.
    half.close()
    for _ in range(2):
      got = list(reader)
      assert len(got) == len(expected)
      for a, b in zip(got, expected):
        for key in ('image', 'label', 'id'):
          np.testing.assert_array_equal(a[key], b[key])
  finally:
    reader.close()


def test_training_steps_that_do_not_log_fetch_nothing_from_the_device(
    tmp_path, monkeypatch):
  """Counts device-to-host fetches (every one goes through jax.Array._value)
  by the number of training steps dispatched when they happen."""
  config = default.get_tiny_config()
  config.num_train_steps = 6
  config.log_every_steps = 3
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 6
  dispatched = [0]
  fetched_at = []

  compile_steps = train.compile_steps

  def counting_compile_steps(*args):
    p_train_step, p_eval_step = compile_steps(*args)

    def counted(*step_args):
      out = p_train_step(*step_args)
      dispatched[0] += 1
      return out
    return counted, p_eval_step
  monkeypatch.setattr(train, 'compile_steps', counting_compile_steps)

  value = jax_array.ArrayImpl._value

  def recorded(self):
    fetched_at.append(dispatched[0])
    return value.fget(self)
  monkeypatch.setattr(jax_array.ArrayImpl, '_value', property(recorded))

  train.train_and_evaluate(config, str(tmp_path))
  assert dispatched[0] == 6
  # Steps 3 and 6 log (and 6 evaluates and saves); 1, 2, 4 and 5 do not.
  assert set(fetched_at) - {0, 3, 6} == set(), fetched_at
  assert 3 in fetched_at and 6 in fetched_at
  records = [r for r in workdir_lib.read_metrics(str(tmp_path))
             if r['split'] == 'train']
  assert [r['step'] for r in records] == [3, 6]
  for r in records:
    assert 0.0 <= r['data_wait_frac'] <= 1.0
    assert np.isfinite(r['loss'])


def test_step_window_fetches_every_step_in_order():
  window = prefetch.StepWindow(max_in_flight=1)
  for step in range(1, 4):
    window.add(step, {'loss': jax.numpy.float32(step) * 2}, f'ids{step}')
  assert len(window) == 3
  fetched = window.fetch()
  assert [(s, float(m['loss']), i) for s, m, i in fetched] == [
      (1, 2.0, 'ids1'), (2, 4.0, 'ids2'), (3, 6.0, 'ids3')]
  assert window.fetch() == []
