"""Data parallelism over a 1-D device mesh with jax.sharding.

Parameters and optimizer state are replicated; batches are split along the
leading axis over a 'data' mesh axis that spans every device of every process.
One CPU device is the same code path with a mesh of size one.

Every step is jit-compiled on global arrays, so cross-device reductions are
XLA's: the mean gradient is an all-reduce over the 'data' axis, and an
evaluation histogram with a replicated output sharding is summed over all
devices of all hosts. Each process only supplies its own slice of a global
batch (`shard_batch`); `input_pipeline` reads that slice.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fcn_jax import fault_tolerance

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


def replicate(tree, mesh: Mesh):
  """Host values, the same on every process -> replicated global arrays."""
  return put(tree, replicated(mesh))


def put(tree, target: NamedSharding):
  """Host values -> global arrays with sharding `target`, where every process
  holds what its own devices need of them (all of it, for a replicated
  sharding).

  jax.device_put cannot place data on another process's devices; here each
  process contributes its own copy. Works for PRNG keys too.
  """
  def put_leaf(x):
    if jax.dtypes.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put_leaf(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(target, np.asarray(x))
  return jax.tree.map(put_leaf, tree)


def micro_batch_sharded(mesh: Mesh) -> NamedSharding:
  """(micro-batch, batch, ...) arrays: the second axis split over 'data'."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = 'batch_size',
                     micro_batches: int = 1):
  """Raises a one-line error if the global batch does not split evenly.

  Args:
    batch_size: the global batch size.
    mesh: the device mesh; the batch is split over its 'data' axis.
    flag: the config key named in the error.
    micro_batches: gradient accumulation steps; each device's share must
      split into this many equal micro-batches.
  """
  shards = mesh.shape[DATA_AXIS]
  devices = (f'{shards}' if shards == mesh.size
             else f"{shards} on the mesh's 'data' axis")
  if batch_size <= 0 or batch_size % shards:
    raise fault_tolerance.ConfigError(
        f'config.{flag}={batch_size} must be a positive multiple of the '
        f'number of devices ({devices}).')
  if batch_size % (shards * micro_batches):
    raise fault_tolerance.ConfigError(
        f'config.{flag}={batch_size} must be a multiple of '
        f'config.grad_accum_steps x devices ({micro_batches} x {devices} = '
        f'{micro_batches * shards}).')


def shard_batch(batch, mesh: Mesh):
  """This process's slice of a global batch -> global jax.Arrays."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)
