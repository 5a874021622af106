"""Data parallelism over a 1-D device mesh with jax.sharding.

Parameters and optimizer state are replicated; batches are split along the
leading axis over a 'data' mesh axis that spans every device of every process.
One CPU device is the same code path with a mesh of size one.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
  """A mesh with one 'data' axis over all (global) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = 'batch_size'):
  """Raises a one-line error if the global batch does not split evenly."""
  if batch_size <= 0 or batch_size % mesh.size:
    raise ValueError(f'config.{flag}={batch_size} must be a positive multiple '
                     f'of the number of devices ({mesh.size}).')


def shard_batch(batch, mesh: Mesh):
  """This process's slice of a global batch -> global jax.Arrays."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)
