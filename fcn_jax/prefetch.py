"""Input that stays ahead of the device: batches placed on the devices early.

`DevicePrefetcher` reads host batches from an iterator in a background thread,
turns each into global jax.Arrays (`sharding.shard_batch`) and keeps `depth`
of them on the devices ahead of the step that uses them, so reading, decoding
and host-to-device copies overlap the step running on the device. It also
keeps, for every batch, the iterator position right after it, so that a
checkpoint stores the position of the batches actually used, not of those
read ahead (`position`).

`StepWindow` keeps the training loop from synchronizing with the device on
every step: each step's metrics stay on the device until the loop needs them
(`fetch`, one transfer for the whole window), and the host waits for a step
`max_in_flight` steps back, never for the one just dispatched, so the device
always has the next step queued while the host's lead (and the memory of the
batches it has placed) stays bounded.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Any, Callable, Iterator

import grain
import jax

_POLL_SECONDS = 0.1


class IteratorPosition(grain.DatasetIterator):
  """A saved grain iterator state, in the form checkpoints save iterators in.

  `checkpointing.save` stores a grain iterator's `get_state()`; this stands in
  for the iterator with the state it had after the last batch the loop used.
  """

  def __init__(self, state: dict[str, Any]):
    super().__init__()
    self._state = state

  def __next__(self):
    raise TypeError('IteratorPosition holds a position; it yields nothing.')

  def get_state(self) -> dict[str, Any]:
    return self._state

  def set_state(self, state: dict[str, Any]) -> None:
    self._state = state


class DevicePrefetcher:
  """`num_batches` batches of `iterator`, placed on the devices `depth` ahead.

  Args:
    iterator: host batches (dicts of numpy arrays, with an optional 'id').
    place: host batch -> device batch (e.g. sharding.shard_batch of its
      arrays on a mesh).
    num_batches: how many batches to read; reading stops there.
    depth: device batches held ready ahead of the consumer.
    prepare: optional (index, host batch) -> host batch, applied before
      placing (index counts from 0 in this prefetcher).
    track_position: keep `iterator.get_state()` after every batch (a grain
      iterator), for `position`.

  The iterator belongs to the reading thread from construction to `close`.
  An exception while reading or placing is raised by `next` in order, after
  the batches read before it.
  """

  def __init__(self, iterator: Iterator[dict], place: Callable[[dict], Any],
               num_batches: int, depth: int = 2,
               prepare: Callable[[int, dict], dict] | None = None,
               track_position: bool = False):
    self._iterator = iterator
    self._place = place
    self._prepare = prepare
    self._track = track_position
    self._position = iterator.get_state() if track_position else None
    self._remaining = num_batches
    self._queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._wait_seconds = 0.0
    self._thread = threading.Thread(target=self._read, args=(num_batches,),
                                    name='device-prefetch', daemon=True)
    self._thread.start()

  def _read(self, num_batches: int) -> None:
    for index in range(num_batches):
      try:
        host = next(self._iterator)
        position = self._iterator.get_state() if self._track else None
        if self._prepare is not None:
          host = self._prepare(index, host)
        ids = host.get('id')
        placed = self._place(host)
        item = (placed, ids, position, None)
      except Exception as e:  # pylint: disable=broad-except
        item = (None, None, None, e)  # Raised by next(), in order.
      if not self._put(item) or item[3] is not None:
        return

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        pass
    return False

  def __iter__(self):
    return self

  def __next__(self) -> tuple[Any, Any]:
    """(device batch, host 'id' array or None) of the next batch."""
    if self._remaining <= 0:
      raise StopIteration
    start = time.perf_counter()
    while True:
      try:
        placed, ids, position, error = self._queue.get(timeout=_POLL_SECONDS)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError('The input thread stopped without a batch.')
    self._wait_seconds += time.perf_counter() - start
    if error is not None:
      self._remaining = 0
      raise error
    self._remaining -= 1
    if self._track:
      self._position = position
    return placed, ids

  def position(self) -> IteratorPosition:
    """The iterator's state after the last batch handed out by `next`."""
    if not self._track:
      raise ValueError('DevicePrefetcher(track_position=False) keeps no '
                       'position.')
    return IteratorPosition(self._position)

  def take_wait_seconds(self) -> float:
    """Seconds `next` spent waiting for input since the last call."""
    seconds, self._wait_seconds = self._wait_seconds, 0.0
    return seconds

  def close(self) -> None:
    """Stops the reading thread (the iterator is the caller's to close)."""
    self._stop.set()
    while True:  # Unblock a put in progress.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)


class StepWindow:
  """Per-step device values held until the loop fetches them in one transfer.

  Args:
    max_in_flight: after a step is added, the host waits (without any
      transfer) until the step that many steps back has finished. The steps
      after it stay queued on the device.
  """

  def __init__(self, max_in_flight: int = 2):
    self._max_in_flight = max(1, max_in_flight)
    self._pending = []
    self._in_flight = collections.deque()

  def add(self, step: int, device_values: Any, host_info: Any = None) -> None:
    self._pending.append((step, device_values, host_info))
    self._in_flight.append(device_values)
    while len(self._in_flight) > self._max_in_flight:
      jax.block_until_ready(self._in_flight.popleft())

  def __len__(self) -> int:
    return len(self._pending)

  def fetch(self) -> list[tuple[int, Any, Any]]:
    """[(step, host values, host_info)] of every step since the last fetch."""
    pending, self._pending = self._pending, []
    self._in_flight.clear()
    values = jax.device_get([values for _, values, _ in pending])
    return [(step, host_values, info)
            for (step, _, info), host_values in zip(pending, values)]
