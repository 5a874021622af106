"""Joins the processes of a multi-host run with `jax.distributed`.

One process per host (per GPU on GPU clusters, if preferred) runs the same
command; `initialize` connects them before JAX touches a device, after which
`jax.devices()` lists the devices of every process and the 'data' mesh spans
them all. A single-process run calls nothing and is unchanged.

Settings, each from a flag or else from the environment:

  coordinator address   --coordinator_address   JAX_COORDINATOR_ADDRESS
  number of processes   --num_processes         JAX_NUM_PROCESSES
  this process's index  --process_id            JAX_PROCESS_ID

With `--distributed` and none of them, JAX detects them from the cluster
(Cloud TPU pod slices, SLURM, Open MPI, Kubernetes).
"""

from __future__ import annotations

import os

import jax
from absl import logging

from fcn_jax import errors

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def _int_setting(value: int | None, env: str, flag: str) -> int | None:
  if value is not None:
    return value
  text = os.environ.get(env)
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise errors.FlagError(f'Environment variable {env}={text!r} (or '
                           f'--{flag}) must be an integer.') from None


def _uses_cpu() -> bool:
  platforms = os.environ.get('JAX_PLATFORMS', '') or str(
      jax.config.jax_platforms or '')
  return platforms.split(',')[0].strip().lower() == 'cpu'


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               auto_detect: bool = False,
               initialization_timeout: int = 300) -> bool:
  """Calls jax.distributed.initialize() if a multi-process run is configured.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator service.
    num_processes: number of processes in the run.
    process_id: index of this process, 0 .. num_processes - 1.
    auto_detect: initialize even without settings, letting JAX detect them
      from the cluster environment (TPU pod slice, SLURM, Open MPI).
    initialization_timeout: seconds to wait for all processes to connect
      before failing (a missing peer must not hang the job forever).

  Returns:
    Whether jax.distributed was initialized.

  Raises:
    ValueError: incomplete or inconsistent settings.
  """
  coordinator_address = (coordinator_address or
                         os.environ.get(ENV_COORDINATOR) or None)
  num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES,
                               'num_processes')
  process_id = _int_setting(process_id, ENV_PROCESS_ID, 'process_id')
  given = (coordinator_address, num_processes, process_id)
  if not auto_detect and all(v is None for v in given):
    return False
  if not auto_detect and None in given:
    raise errors.FlagError(
        '--coordinator_address, --num_processes and --process_id (or '
        f'{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}) must be '
        'given together, or use --distributed to detect them from the '
        f'cluster; got {coordinator_address=}, {num_processes=}, '
        f'{process_id=}.')
  if num_processes is not None and num_processes < 1:
    raise errors.FlagError(f'--num_processes={num_processes} must be positive.')
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise errors.FlagError(
        f'--process_id={process_id} must be in [0, {num_processes}) for '
        f'--num_processes={num_processes}.')
  if _uses_cpu():
    # CPU devices of different processes talk through gloo (TCP).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, initialization_timeout=initialization_timeout)
  logging.info('jax.distributed: process %d of %d, coordinator %s.',
               jax.process_index(), jax.process_count(),
               coordinator_address or '(detected)')
  return True
