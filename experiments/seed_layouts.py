"""Which way the seeds of one program combine with data parallelism is faster.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m experiments.seed_layouts --config.seeds=4 --json=out.json

Times one train step of all seeds of the config (the synthetic default,
FCN-8s, batch 8, with `--config.KEY=VALUE` overrides; `--tiny`: the tiny
test config) in each program of `--programs`, on all devices:

- `batch`: the vmapped step, seeds folded into the batch sharding (every
  device runs every seed on its slice of the batch;
  `seed_sharding.seed_layout`);
- `mesh`: the vmapped step on a ('data', 'seed') mesh (every device runs its
  seeds on a larger slice);
- `loop`: the ordinary data-parallel step applied to each seed in turn (what
  config.seed_program='auto' runs on CPU), for reference.

Each program is compiled, run once, and timed over `--steps` steps (median).
The steps feed the same batches as a run of those seeds would, and the fast
CPU ops are off in all three (they hang vmapped on several CPU devices), so
only the layout differs.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
from absl import flags

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import seed_sharding
from fcn_jax import seeds as seeds_lib
from fcn_jax import sharding
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default

PROGRAMS = ('batch', 'mesh', 'loop')
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs, so that tests can import
  `time_program` beside other commands' flags)."""
  flags.DEFINE_list('programs', list(PROGRAMS),
                    f'Programs to time, of {PROGRAMS}.')
  flags.DEFINE_integer('steps', 5, 'Timed steps per program.')
  flags.DEFINE_string('json', '', 'Also write the results here.')
  flags.DEFINE_bool('tiny', False, 'Start from the tiny test config '
                    '(configs/default.get_tiny_config) instead.')
  cli.define_config_flag('Training config (default: the synthetic default).')


def _vmap_program(config, model, seeds, datasets, layout_kind):
  """(mesh, step(t): train step t of all seeds, waited for)."""
  layout = seed_sharding.seed_layout(layout_kind, len(seeds))
  state = seeds_lib.create_seed_states(config, model, seeds, layout.mesh,
                                       layout.state)
  p_step, _ = seed_sharding.compile_seed_steps(config, layout)
  rngs = sharding.put(seeds_lib.dropout_keys(seeds), layout.per_seed)
  holder = [state]

  def step(t):
    batch = seeds_lib.seed_batch(datasets, t, layout)
    holder[0], metrics = p_step(holder[0], batch, rngs)
    jax.block_until_ready(metrics)
  return layout.mesh, step


def _loop_program(config, model, seeds, datasets):
  mesh = sharding.create_mesh()
  p_step, _ = train.compile_steps(config, mesh)
  states, rngs = [], []
  for seed in seeds:
    init_rng, rng = train.init_and_dropout_keys(seed)
    states.append(train.create_train_state(config, model, init_rng, mesh))
    rngs.append(sharding.replicate(rng, mesh))

  def step(t):
    outputs = []
    for k, dataset in enumerate(datasets):
      batch = sharding.shard_batch(
          input_pipeline.model_arrays(dataset[t]), mesh)
      states[k], metrics = p_step(states[k], batch, rngs[k])
      outputs.append(metrics)
    jax.block_until_ready(outputs)
  return mesh, step


def time_program(kind, config, model, seeds, datasets, steps):
  start = time.perf_counter()
  if kind == 'loop':
    mesh, step = _loop_program(config, model, seeds, datasets)
  else:
    mesh, step = _vmap_program(config, model, seeds, datasets, kind)
  step(0)
  first = time.perf_counter() - start
  times = []
  for t in range(1, steps + 1):
    start = time.perf_counter()
    step(t)
    times.append(time.perf_counter() - start)
  return dict(program=kind, mesh=dict(mesh.shape), first_step_s=first,
              step_s=statistics.median(times), step_times_s=times)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.tiny:
    config = workdir_lib.apply_overrides(default.get_tiny_config(),
                                         cli.config_overrides())
  config.fast_ops = 'off'
  seeds = seeds_lib.seed_list(config) or [0, 1, 2, 3]
  unknown = set(FLAGS.programs) - set(PROGRAMS)
  if unknown:
    raise errors.FlagError(f'--programs: unknown {sorted(unknown)}; expected '
                         f'some of {PROGRAMS}.')
  train_source, _, info = input_pipeline.create_datasets(config)
  model = models.create_model(config, info.num_classes)
  datasets = [input_pipeline.train_dataset_from_config(
      train_source, seeds_lib.seed_config(config, s), info) for s in seeds]
  print(f'{len(seeds)} seeds, {config.model} width {config.width:g}, batch '
        f'{config.batch_size}, {jax.device_count()} '
        f'{jax.devices()[0].platform} devices; jax {jax.__version__}')
  rows = []
  for kind in FLAGS.programs:
    row = time_program(kind, config, model, seeds, datasets, FLAGS.steps)
    rows.append(row)
    print(f'{kind:5s} mesh {row["mesh"]}: {row["step_s"]:.3f} s per step of '
          f'all seeds (compile + first step {row["first_step_s"]:.1f} s)')
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(dict(seeds=seeds, devices=jax.device_count(),
                     platform=jax.devices()[0].platform,
                     jax=jax.__version__, model=config.model,
                     width=config.width, batch_size=config.batch_size,
                     rows=rows), f, indent=1)


if __name__ == '__main__':
  define_flags()
  cli.run(main, path_flags=('json',))
