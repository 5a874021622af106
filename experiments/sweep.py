"""Runs a sweep: one ordinary `fcn_jax.main` process per config override set.

    python -m experiments.sweep --sweep=experiments/sweeps/skips.py \
        --workdir=runs/sweeps/skips [--parallel=2] [--set=KEY=VALUE ...]

A sweep file is a Python module whose `get_sweep()` returns a list of dicts of
config overrides (keys as in `--config.KEY`, e.g. 'model', 'synthetic.seed',
'seed'). It may set `CONFIG` (a config file, default fcn_jax/configs/default.py).
Runs that differ only in 'seed' form one setting of the report.

Every run gets its own sub-workdir `<workdir>/<run name>` holding the usual
checkpoints, metrics.jsonl and config.json, plus `sweep_run.json` (its
overrides, command, status and wall time) and `log.txt`. Running the sweep
again skips finished runs (status 'done' or metrics.jsonl reaching the final
step) and resumes interrupted ones from their checkpoints. A failed run is
recorded as 'failed' and does not stop the others; it is retried next time.

`--set=KEY=VALUE` overrides a key in every run (e.g. a dataset for the same
sweep on VOC, or a smaller num_train_steps for a smoke run).
"""

from __future__ import annotations

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

# Inside the package, so that sweeps run from any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(cli.__file__)),
                              'configs', 'default.py')
RUN_FILE = 'sweep_run.json'
SWEEP_FILE = 'sweep.json'
LOG_FILE = 'log.txt'
METRICS_FILE = 'metrics.jsonl'
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
  config_record = read_json(os.path.join(run_dir, 'config.json'))
  return None if config_record is None else config_record.get('num_train_steps')


def last_val_step(run_dir: str) -> int | None:
  """The last step with a validation record in metrics.jsonl."""
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  step = None
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # A line cut short by a kill.
        continue
      if record.get('split') == 'val':
        step = record['step']
  return step


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


def run_sweep(runs: Sequence[dict[str, Any]], workdir: str,
              config_file: str = DEFAULT_CONFIG, parallel: int = 1,
              extra: dict[str, str] | None = None) -> dict[str, str]:
  """Runs every unfinished run; returns {run name: 'done'|'skipped'|'failed'}.

  Also writes `<workdir>/sweep.json`, the list of runs the report reads.
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
  todo = []
  for name, overrides in zip(names, runs):
    if is_finished(os.path.join(workdir, name), overrides, extra):
      logging.info('Skipping finished run %s.', name)
      results[name] = 'skipped'
    else:
      todo.append((name, overrides))

  def work(item):
    name, overrides = item
    logging.info('Starting run %s.', name)
    record = execute_run(os.path.join(workdir, name), overrides, config_file,
                         extra)
    logging.info('Run %s: %s (exit code %d, %.0fs in total); log: %s', name,
                 record['status'], record['returncode'], record['wall_s'],
                 os.path.join(workdir, name, LOG_FILE))
    return name, record['status']

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  try:
    for name, status in pool.map(work, todo):
      results[name] = status
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
  if flags.FLAGS.dry_run:
    for name, overrides in zip(run_names(runs), runs):
      run_dir = os.path.join(workdir, name)
      print(' '.join(run_command(run_dir, dict(overrides, **extra),
                                 config_file)))
    return
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  results = run_sweep(runs, workdir, config_file, flags.FLAGS.parallel, extra)
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
