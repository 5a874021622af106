"""Runs a sweep: one `fcn_jax.main` process per setting (all its seeds).

    python -m experiments.sweep --sweep=experiments/sweeps/skips.py \
        --workdir=runs/sweeps/skips [--parallel=2] [--set=KEY=VALUE ...] \
        [--one_process_per_seed]

A sweep file is a Python module whose `get_sweep()` returns a list of dicts of
config overrides (keys as in `--config.KEY`, e.g. 'model', 'synthetic.seed',
'seed'). It may set `CONFIG` (a config file, default fcn_jax/configs/default.py).
Runs that differ only in 'seed' form one setting of the report, and they
share one program: one process trains them all with `--config.seeds=...`
(fcn_jax/seeds.py) in the group workdir `<workdir>/<setting>,seeds=0+1+2`,
and then every seed gets the sub-workdir a run of its own would have (below),
so the report reads the same files either way. `--one_process_per_seed`
starts one process per seed instead.

Every run gets its own sub-workdir `<workdir>/<run name>` holding the usual
checkpoints, metrics.jsonl and config.json, plus `sweep_run.json` (its
overrides, command, status and wall time) and `log.txt`. Running the sweep
again skips finished runs (status 'done' or metrics.jsonl reaching the final
step) and resumes interrupted ones from their checkpoints. A failed run is
recorded as 'failed' and does not stop the others; it is retried next time.

A seed's sub-workdir of a shared program holds the group's config.json and
dataset_info.json, that seed's records of the group's metrics.jsonl, a
`checkpoints` link to the group's checkpoints (evaluate, predict and compare
then pick that seed: its metrics are the only ones there) and a
sweep_run.json whose wall_s is the group's wall time divided by its seeds.

`--set=KEY=VALUE` overrides a key in every run (e.g. a dataset for the same
sweep on VOC, or a smaller num_train_steps for a smoke run).
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags
from absl import logging

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import workdir as workdir_lib

# Inside the package, so that sweeps run from any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(cli.__file__)),
                              'configs', 'default.py')
RUN_FILE = 'sweep_run.json'
SWEEP_FILE = 'sweep.json'
LOG_FILE = 'log.txt'
SEED_KEY = 'seed'


def define_flags() -> None:
  """The CLI flags (defined only when run as a program, so that sweep files
  can import this module for its helpers)."""
  flags.DEFINE_string('sweep', None, 'Sweep file: a module with get_sweep().')
  flags.DEFINE_string('workdir', None,
                      'Sweep directory (one sub-workdir per run).')
  flags.DEFINE_integer('parallel', 1, 'Runs executed at the same time.')
  flags.DEFINE_multi_string('set', [],
                            'KEY=VALUE config override for every run.')
  flags.DEFINE_string('config', None, "Config file (default: the sweep file's "
                      f'CONFIG, else {DEFAULT_CONFIG}).')
  flags.DEFINE_boolean('dry_run', False,
                       'Print the runs and their commands only.')
  flags.DEFINE_boolean('one_process_per_seed', False,
                       "Train each seed in a process of its own instead of a "
                       "setting's seeds in one program (config.seeds).")
  flags.mark_flags_as_required(['sweep', 'workdir'])


# ---------------------------------------------------------------------------
# Building sweeps.


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
  """Cartesian product: grid(model=['a', 'b'], seed=[0, 1]) -> 4 dicts.

  Keys with dots ('synthetic.seed') are passed as keyword arguments with
  `grid(**{'synthetic.seed': [0, 1]})`.
  """
  keys = list(axes)
  return [dict(zip(keys, values))
          for values in itertools.product(*(list(axes[k]) for k in keys))]


def with_seeds(settings: Iterable[dict[str, Any]],
               seeds: Sequence[int]) -> list[dict[str, Any]]:
  """Every setting once per seed ({'seed': s} added last).

  Seed-major order (all settings with the first seed, then the next seed):
  runs execute in this order, so a sweep cut short still covers every setting.
  """
  settings = list(settings)
  return [dict(setting, **{SEED_KEY: seed})
          for seed in seeds for setting in settings]


def format_value(value: Any) -> str:
  """A value as `--config.KEY=` expects it (and as run names show it)."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


def setting_of(overrides: dict[str, Any]) -> dict[str, Any]:
  """The overrides without the seed: what a report row stands for."""
  return {k: v for k, v in overrides.items() if k != SEED_KEY}


def varying_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
  """Keys (not the seed) whose value differs between runs, in first-seen order.

  Keys with one value in every run are the sweep's common settings; names
  leave them out.
  """
  keys = []
  for overrides in runs:
    keys += [k for k in overrides if k not in keys and k != SEED_KEY]
  missing = object()
  return [k for k in keys
          if len({json.dumps(r.get(k, missing), default=repr)
                  for r in runs}) > 1]


def setting_name(overrides: dict[str, Any],
                 keys: Sequence[str] | None = None) -> str:
  """'key=value,key=value' of the setting (only `keys` when given)."""
  setting = setting_of(overrides)
  if keys is not None:
    setting = {k: setting[k] for k in keys if k in setting}
  if not setting:
    return 'default'
  return ','.join(f'{k}={format_value(v)}' for k, v in setting.items())


def run_name(overrides: dict[str, Any],
             keys: Sequence[str] | None = None) -> str:
  """A file-name-safe name of one run (its setting and seed)."""
  name = setting_name(overrides, keys)
  if SEED_KEY in overrides:
    name += f',{SEED_KEY}={overrides[SEED_KEY]}'
  return _file_safe(name)


def _file_safe(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name)


def run_names(runs: Sequence[dict[str, Any]]) -> list[str]:
  """Unique names of a sweep's runs, built from the keys that vary."""
  keys = varying_keys(runs)
  return [run_name(r, keys) for r in runs]


def load_sweep(path: str) -> tuple[list[dict[str, Any]], str | None]:
  """Imports a sweep file; returns (its runs' overrides, its CONFIG or None)."""
  if not os.path.isfile(path):
    raise errors.MissingFileError(f'--sweep={path}: no such file.')
  spec = importlib.util.spec_from_file_location('_fcn_sweep', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise errors.FlagError(f'--sweep={path}: the file defines no get_sweep().')
  runs = [dict(r) for r in module.get_sweep()]
  if not runs:
    raise errors.FlagError(f'--sweep={path}: get_sweep() returned no runs.')
  names = run_names(runs)
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise errors.FlagError(f'--sweep={path}: duplicate runs {duplicates}.')
  return runs, getattr(module, 'CONFIG', None)


def parse_sets(sets: Sequence[str]) -> dict[str, str]:
  """['a=1', 'b.c=x'] -> {'a': '1', 'b.c': 'x'} (values as text)."""
  result = {}
  for item in sets:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise errors.FlagError(f'--set={item!r}: expected KEY=VALUE.')
    result[key] = value
  return result


# ---------------------------------------------------------------------------
# Running.

# Live child processes, so that stopping the sweep stops its runs too.
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def run_command(workdir: str, overrides: dict[str, Any], config_file: str,
                python: str = sys.executable) -> list[str]:
  """The `fcn_jax.main` command line of one run."""
  return ([python, '-m', 'fcn_jax.main', f'--workdir={workdir}',
           f'--config={config_file}']
          + [f'--config.{k}={format_value(v)}' for k, v in overrides.items()])


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None if it is missing or half-written."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, data: dict) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def final_step(run_dir: str) -> int | None:
  """num_train_steps from the run's resolved config.json (None if absent)."""
  config_record = workdir_lib.read_config(run_dir, strict=False)
  return None if config_record is None else config_record.get(
      'num_train_steps')


def last_val_step(run_dir: str) -> int | None:
  """The last step with a validation record in metrics.jsonl."""
  records = workdir_lib.val_records(run_dir)
  return records[-1]['step'] if records else None


def is_finished(run_dir: str, overrides: dict[str, Any] | None = None,
                extra: dict[str, str] | None = None) -> bool:
  """Whether a run needs no more work, judged from its files only.

  Finished: sweep_run.json says 'done' for the same overrides (and --set
  values), or metrics.jsonl holds a validation record at config.json's final
  step.
  """
  record = read_json(os.path.join(run_dir, RUN_FILE))
  if record is not None and overrides is not None and (
      record.get('overrides') != json.loads(json.dumps(overrides))
      or record.get('extra', {}) != (extra or {})):
    return False  # The sweep changed this run: train it again.
  if record is not None and record.get('status') == 'done':
    return True
  steps = final_step(run_dir)
  return steps is not None and last_val_step(run_dir) == steps


def execute_run(run_dir: str, overrides: dict[str, Any], config_file: str,
                extra: dict[str, str] | None = None) -> dict:
  """Runs (or resumes) one run in `run_dir`; returns its sweep_run.json."""
  os.makedirs(run_dir, exist_ok=True)
  record_path = os.path.join(run_dir, RUN_FILE)
  previous = read_json(record_path) or {}
  all_overrides = dict(overrides, **(extra or {}))
  command = run_command(run_dir, all_overrides, config_file)
  record = {
      'overrides': overrides, 'extra': extra or {}, 'command': command,
      'status': 'running', 'attempts': previous.get('attempts', 0) + 1,
      'wall_s': previous.get('wall_s', 0.0),
  }
  _write_json(record_path, record)
  start = time.time()
  with open(os.path.join(run_dir, LOG_FILE), 'a') as log:
    log.write(f'$ {" ".join(command)}\n')
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    with _children_lock:
      _children.add(process)
    try:
      returncode = process.wait()
    finally:
      with _children_lock:
        _children.discard(process)
  # Wall time over all attempts: resumed runs add up their pieces.
  record['wall_s'] += time.time() - start
  record['returncode'] = returncode
  record['status'] = 'done' if returncode == 0 else 'failed'
  _write_json(record_path, record)
  return record


GROUP_LINK = 'checkpoints'


def seed_groups(runs: Sequence[dict[str, Any]],
                alone: Sequence[int] = ()) -> list[list[int]]:
  """Indices of the runs that can share one program, one list per work item.

  Runs of one setting (equal overrides apart from an integer 'seed') form a
  group in first-seen order; a setting with one seed, runs that set 'seeds'
  themselves and the runs in `alone` stay alone.
  """
  groups = collections.OrderedDict()
  for index, overrides in enumerate(runs):
    seed = overrides.get(SEED_KEY)
    if (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
        and 'seeds' not in overrides and index not in alone):
      key = json.dumps(setting_of(overrides), sort_keys=True, default=repr)
    else:
      key = ('alone', index)
    groups.setdefault(key, []).append(index)
  return list(groups.values())


def group_name(runs: Sequence[dict[str, Any]], members: Sequence[int]) -> str:
  """The group workdir's name: '<setting>,seeds=0+1+2'."""
  setting = setting_name(runs[members[0]], varying_keys(runs))
  seeds = '+'.join(str(runs[i][SEED_KEY]) for i in members)
  return _file_safe(f'{setting},seeds={seeds}')


def group_overrides(runs: Sequence[dict[str, Any]],
                    members: Sequence[int]) -> dict[str, Any]:
  """The group's overrides: the setting's, with config.seeds for the seed."""
  return dict(setting_of(runs[members[0]]), seeds=','.join(
      str(runs[i][SEED_KEY]) for i in members))


def write_seed_views(group_dir: str, seed_dirs: Sequence[str],
                     seeds: Sequence[int], overrides: Sequence[dict],
                     extra: dict[str, str], group_record: dict) -> None:
  """Gives every seed of a finished (or stopped) group the files of a run of
  its own: config.json, dataset_info.json, its metrics, a link to the
  checkpoints, sweep_run.json."""
  records = collections.defaultdict(list)
  group_metrics = workdir_lib.metrics_path(group_dir)
  for line, record in workdir_lib.metrics_records(group_metrics):
    records[record.get(SEED_KEY)].append(line.rstrip('\n') + '\n')
  for seed_dir, seed, run_overrides in zip(seed_dirs, seeds, overrides):
    os.makedirs(seed_dir, exist_ok=True)
    for name in (workdir_lib.CONFIG_FILE, workdir_lib.DATASET_INFO_FILE):
      source = os.path.join(group_dir, name)
      if os.path.exists(source):
        with open(source) as f:
          text = f.read()
        with open(os.path.join(seed_dir, name) + '.tmp', 'w') as f:
          f.write(text)
        os.replace(os.path.join(seed_dir, name) + '.tmp',
                   os.path.join(seed_dir, name))
    with open(workdir_lib.metrics_path(seed_dir) + '.tmp', 'w') as f:
      f.writelines(records.get(seed, []))
    os.replace(workdir_lib.metrics_path(seed_dir) + '.tmp',
               workdir_lib.metrics_path(seed_dir))
    link = os.path.join(seed_dir, GROUP_LINK)
    target = os.path.join(os.path.relpath(group_dir, seed_dir), GROUP_LINK)
    if not os.path.islink(link) or os.readlink(link) != target:
      if os.path.islink(link):
        os.remove(link)
      os.symlink(target, link)
    _write_json(os.path.join(seed_dir, RUN_FILE), {
        'overrides': run_overrides, 'extra': extra or {},
        'command': group_record['command'],
        'status': group_record['status'],
        'attempts': group_record['attempts'],
        'returncode': group_record.get('returncode'),
        'group': os.path.basename(os.path.normpath(group_dir)),
        # This seed's share of the one program that trained them all.
        'wall_s': group_record['wall_s'] / len(seeds),
        'group_wall_s': group_record['wall_s']})


def run_sweep(runs: Sequence[dict[str, Any]], workdir: str,
              config_file: str = DEFAULT_CONFIG, parallel: int = 1,
              extra: dict[str, str] | None = None,
              one_process_per_seed: bool = False) -> dict[str, str]:
  """Runs every unfinished run; returns {run name: 'done'|'skipped'|'failed'}.

  A setting's seeds share one program (config.seeds) unless
  `one_process_per_seed`. Also writes `<workdir>/sweep.json`, the list of
  runs the report reads.
  """
  if parallel < 1:
    raise errors.FlagError(f'--parallel={parallel}: must be >= 1.')
  os.makedirs(workdir, exist_ok=True)
  names = run_names(runs)
  keys = varying_keys(runs)
  _write_json(os.path.join(workdir, SWEEP_FILE), {
      'config': config_file, 'extra': extra or {}, 'varying_keys': keys,
      'runs': [{'name': n, 'setting': setting_name(r, keys), 'overrides': r}
               for n, r in zip(names, runs)]})

  results = {}
  unfinished = []
  for index, name in enumerate(names):
    if is_finished(os.path.join(workdir, name), runs[index], extra):
      logging.info('Skipping finished run %s.', name)
      results[name] = 'skipped'
    else:
      unfinished.append(index)
  if one_process_per_seed:
    todo = [[i] for i in unfinished]
  else:
    # The unfinished seeds of a setting share a program; a seed with
    # checkpoints of its own (an earlier process of its own) resumes alone.
    pending = [runs[i] for i in unfinished]
    alone = [k for k, i in enumerate(unfinished) if os.path.isdir(
        os.path.join(workdir, names[i], GROUP_LINK)) and not os.path.islink(
            os.path.join(workdir, names[i], GROUP_LINK))]
    todo = [[unfinished[k] for k in members]
            for members in seed_groups(pending, alone)]

  def work(members):
    if len(members) == 1:
      name = names[members[0]]
      label, run_dir, overrides = name, os.path.join(workdir, name), runs[
          members[0]]
    else:
      label = group_name(runs, members)
      run_dir = os.path.join(workdir, label)
      overrides = group_overrides(runs, members)
    logging.info('Starting run %s.', label)
    record = execute_run(run_dir, overrides, config_file, extra)
    if len(members) > 1:
      write_seed_views(run_dir, [os.path.join(workdir, names[i])
                                 for i in members],
                       [runs[i][SEED_KEY] for i in members],
                       [runs[i] for i in members], extra or {}, record)
    logging.info('Run %s: %s (exit code %d, %.0fs in total); log: %s', label,
                 record['status'], record['returncode'], record['wall_s'],
                 os.path.join(run_dir, LOG_FILE))
    return [(names[i], record['status']) for i in members]

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  try:
    for statuses in pool.map(work, todo):
      results.update(statuses)
  except BaseException:
    # Interrupted: SIGTERM the runs (fcn_jax.main checkpoints and exits) so
    # that the next invocation resumes them.
    pool.shutdown(wait=False, cancel_futures=True)
    _terminate_children()
    raise
  pool.shutdown()
  return results


def _terminate_children(timeout: float = 60.0) -> None:
  with _children_lock:
    children = list(_children)
  for process in children:
    process.terminate()
  for process in children:
    try:
      process.wait(timeout)
    except subprocess.TimeoutExpired:
      process.kill()


def _raise_keyboard_interrupt(signum, frame):
  del frame
  raise KeyboardInterrupt(f'signal {signum}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  runs, sweep_config = load_sweep(flags.FLAGS.sweep)
  config_file = flags.FLAGS.config or sweep_config or DEFAULT_CONFIG
  extra = parse_sets(flags.FLAGS.set)
  workdir = flags.FLAGS.workdir
  per_seed = flags.FLAGS.one_process_per_seed
  if flags.FLAGS.dry_run:
    names = run_names(runs)
    for members in ([[i] for i in range(len(runs))] if per_seed
                    else seed_groups(runs)):
      if len(members) == 1:
        run_dir, overrides = (os.path.join(workdir, names[members[0]]),
                              runs[members[0]])
      else:
        run_dir = os.path.join(workdir, group_name(runs, members))
        overrides = group_overrides(runs, members)
      print(' '.join(run_command(run_dir, dict(overrides, **extra),
                                 config_file)))
    return
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  results = run_sweep(runs, workdir, config_file, flags.FLAGS.parallel, extra,
                      per_seed)
  failed = sorted(n for n, s in results.items() if s == 'failed')
  logging.info('Sweep %s: %d runs, %d failed. Report: python -m '
               'experiments.report %s', workdir, len(results), len(failed),
               workdir)
  if failed:
    print('Failed runs (see their log.txt):\n  ' + '\n  '.join(failed))
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  cli.run(main, path_flags=('sweep', 'workdir', 'config'))
