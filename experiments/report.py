"""Tables and plots of a sweep: one row per setting, mean +- std over seeds.

    python -m experiments.report runs/sweeps/<name> [--out=DIR]
        [--baseline=SETTING]
    python -m experiments.report runs/fcn8s          # one training workdir

Reads `<sweep>/sweep.json` and every run's sweep_run.json, metrics.jsonl and
config.json (written by experiments.sweep and fcn_jax.main) and writes to the
sweep directory (or --out):

  report.md    Markdown table: the paper's four scores, boundary mean IU,
               per-class IU and wall time, each as mean +- std over the
               setting's finished seeds (std with ddof=1; '-' for one seed),
               plus the runs that failed or have not finished;
  report.csv   the same numbers, one column per statistic;
  curves.png   validation mean IU (and boundary mean IU) and training loss
               against the step, mean over seeds with a +-std band;
  bars.png     final mean IU (and boundary mean IU) per setting with std
               error bars.

Given a single training workdir (metrics.jsonl, no sweep.json), it reports
that run as a sweep of one: its scores and its learning curves (curves.png).

With --baseline=SETTING (a setting name as the table shows it, e.g.
model=fcn32s) the table gains a column: each setting's mean IU minus the
baseline's, with its 95% paired bootstrap interval over the validation
images (experiments.compare; the final checkpoint of every run is
evaluated once and cached in its workdir).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from experiments import sweep as sweep_lib
from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import workdir as workdir_lib

SCORES = ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc', 'boundary_mean_iu')
SCORE_TITLES = {'overall_acc': 'pixel acc.', 'mean_acc': 'mean acc.',
                'mean_iu': 'mean IU', 'fwavacc': 'f.w. IU',
                'boundary_mean_iu': 'boundary mean IU'}


@dataclasses.dataclass
class Run:
  """One run of a sweep, as read from its files."""
  name: str
  setting: str
  seed: Any
  status: str  # 'done', 'failed', 'running' or 'not started'.
  wall_s: float = math.nan
  final_step: int | None = None
  val: list[dict] = dataclasses.field(default_factory=list)
  train: list[dict] = dataclasses.field(default_factory=list)
  log: str = ''
  dir: str = ''  # The run's workdir.

  @property
  def finished(self) -> bool:
    return (self.status != 'failed' and bool(self.val)
            and self.val[-1]['step'] == self.final_step)

  @property
  def final(self) -> dict:
    return self.val[-1]


def read_records(path: str) -> dict[str, list[dict]]:
  """metrics.jsonl -> {split: records sorted by step}, one record per step.

  A resumed run repeats the steps after its last checkpoint; the later
  record of a step wins. Lines cut short by a kill are skipped.
  """
  by_split = collections.defaultdict(dict)
  for _, record in workdir_lib.metrics_records(path):
    by_split[record.get('split')][record['step']] = record
  return {split: [steps[s] for s in sorted(steps)]
          for split, steps in by_split.items()}


def load_runs(sweep_dir: str) -> list[Run]:
  """All runs of a sweep directory, in the sweep file's order."""
  sweep = sweep_lib.read_json(os.path.join(sweep_dir, 'sweep.json'))
  if sweep is None and os.path.isfile(workdir_lib.metrics_path(sweep_dir)):
    return [load_workdir(sweep_dir)]
  if sweep is None:
    raise errors.MissingFileError(
        f'{sweep_dir}: neither a sweep (no sweep.json, as written by python -m '
        'experiments.sweep) nor a training workdir (no metrics.jsonl).')
  runs = []
  for entry in sweep['runs']:
    run_dir = os.path.join(sweep_dir, entry['name'])
    record = sweep_lib.read_json(os.path.join(run_dir, 'sweep_run.json')) or {}
    config_record = workdir_lib.read_config(run_dir, strict=False) or {}
    records = read_records(workdir_lib.metrics_path(run_dir))
    runs.append(Run(
        name=entry['name'], setting=entry['setting'],
        seed=entry['overrides'].get('seed'),
        status=record.get('status', 'not started'),
        wall_s=record.get('wall_s', math.nan),
        final_step=config_record.get('num_train_steps'),
        val=records.get('val', []), train=records.get('train', []),
        log=os.path.join(run_dir, 'log.txt'), dir=run_dir))
  return runs


def load_workdir(workdir: str) -> Run:
  """One training workdir of `python -m fcn_jax.main` as a run."""
  config_record = workdir_lib.read_config(workdir, strict=False) or {}
  records = read_records(workdir_lib.metrics_path(workdir))
  name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  val, final_step = records.get('val', []), config_record.get('num_train_steps')
  finished = bool(val) and val[-1]['step'] == final_step
  return Run(name=name, setting=name, seed=config_record.get('seed'),
             status='done' if finished else 'running', final_step=final_step,
             val=val, train=records.get('train', []), dir=workdir)


def class_names(sweep_dir: str, runs: Sequence[Run],
                num_classes: int) -> list[str]:
  """Class names of the sweep's dataset where cheaply known, else indices."""
  for run in runs:
    run_dir = run.dir or os.path.join(sweep_dir, run.name)
    info = sweep_lib.read_json(os.path.join(run_dir, workdir_lib.DATASET_INFO_FILE))
    if info and len(info.get('class_names', ())) == num_classes:
      return list(info['class_names'])
    config_record = workdir_lib.read_config(run_dir, strict=False)
    if config_record and config_record.get('dataset') == 'synthetic':
      from fcn_jax.data import synthetic  # numpy only: cheap to import.
      if len(synthetic.CLASS_NAMES) == num_classes:
        return list(synthetic.CLASS_NAMES)
  return [f'class {i}' for i in range(num_classes)]


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
  """(mean, sample std with ddof=1, count) over the non-missing values.

  None/NaN (e.g. a class absent from both labels and predictions) are left
  out; the std of a single value is NaN.
  """
  x = np.array([math.nan if v is None else v for v in values], np.float64)
  x = x[~np.isnan(x)]
  if x.size == 0:
    return math.nan, math.nan, 0
  std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
  return float(np.mean(x)), std, int(x.size)


def summarize(runs: Sequence[Run]) -> list[dict]:
  """One row per setting (first-seen order): statistics over finished seeds."""
  groups = collections.OrderedDict()
  for run in runs:
    groups.setdefault(run.setting, []).append(run)
  rows = []
  for setting, members in groups.items():
    done = [r for r in members if r.finished]
    row = {'setting': setting, 'seeds': len(done),
           'failed': sum(r.status == 'failed' for r in members),
           'unfinished': sum(not r.finished and r.status != 'failed'
                             for r in members)}
    for key in SCORES:
      row[key] = mean_std([r.final.get(key) for r in done])
    num_classes = max((len(r.final.get('per_class_iu') or []) for r in done),
                      default=0)
    row['per_class_iu'] = [
        mean_std([(r.final.get('per_class_iu') or [None] * num_classes)[c]
                  for r in done]) for c in range(num_classes)]
    row['wall_s'] = mean_std([r.wall_s for r in done])
    row['steps_per_sec'] = mean_std(
        [_mean_rate(r) for r in done])
    row['step'] = max((r.final['step'] for r in done), default=None)
    rows.append(row)
  return rows


def _mean_rate(run: Run) -> float | None:
  """Mean training steps/s over the run's logged intervals (compile excluded
  by fcn_jax's own timer)."""
  rates = [r['steps_per_sec'] for r in run.train
           if r.get('steps_per_sec') is not None]
  return float(np.mean(rates)) if rates else None


def _pct(stat: tuple[float, float, int]) -> str:
  mean, std, n = stat
  return _plain((100 * mean, 100 * std, n), 1)


def _plain(stat: tuple[float, float, int], digits: int = 0) -> str:
  mean, std, n = stat
  if n == 0:
    return 'n/a'
  if n == 1 or math.isnan(std):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def markdown_table(rows: Sequence[dict], names: Sequence[str],
                   runs: Sequence[Run], baseline: str | None = None,
                   comparisons: dict | None = None) -> str:
  """The Markdown report: scores table, per-class table, problem runs.

  With `comparisons` ({setting: experiments.compare.paired_bootstrap result
  against the `baseline` setting}), a column with the mean IU difference and
  its interval.
  """
  scores = [k for k in SCORES
            if any(row[k][2] for row in rows) or k != 'boundary_mean_iu']
  lines = ['Scores in percent, mean ± std over seeds (sample std, ddof=1).', '']
  header = (['setting', 'seeds'] + [SCORE_TITLES[k] for k in scores]
            + ['wall time (s)', 'steps/s'])
  if comparisons is not None:
    header.append(f'mean IU - `{baseline}` (95% CI)')
  lines += ['| ' + ' | '.join(header) + ' |',
            '|' + '---|' * len(header)]
  for row in rows:
    cells = ([f'`{row["setting"]}`', _seeds_cell(row)]
             + [_pct(row[k]) for k in scores]
             + [_plain(row['wall_s']), _plain(row['steps_per_sec'], 2)])
    if comparisons is not None:
      cells.append(_comparison_cell(row['setting'], baseline, comparisons))
    lines.append('| ' + ' | '.join(cells) + ' |')
  if names:
    lines += ['', 'Per-class IU (percent, mean ± std over seeds).', '']
    lines += ['| setting | ' + ' | '.join(names) + ' |',
              '|' + '---|' * (len(names) + 1)]
    for row in rows:
      cells = [_pct(s) for s in row['per_class_iu']]
      cells += ['n/a'] * (len(names) - len(cells))
      lines.append(f'| `{row["setting"]}` | ' + ' | '.join(cells) + ' |')
  if comparisons is not None:
    lines += ['', f'Differences to `{baseline}`: paired bootstrap over the '
              'validation images (experiments.compare), final checkpoints.']
  problems = [r for r in runs if not r.finished]
  if problems:
    lines += ['', 'Runs not in the table:', '']
    for run in problems:
      status = {'done': 'incomplete metrics',
                'running': 'running or interrupted'}.get(run.status, run.status)
      lines.append(f'- `{run.name}`: {status} (log: `{run.log}`)')
  return '\n'.join(lines) + '\n'


def _comparison_cell(setting: str, baseline: str, comparisons: dict) -> str:
  if setting == baseline:
    return 'baseline'
  result = comparisons.get(setting)
  if result is None:
    return 'n/a'
  from experiments import compare  # pylint: disable=g-import-not-at-top
  return compare.format_interval(result)


def compare_to_baseline(sweep_dir: str, runs: Sequence[Run], baseline: str,
                        num_resamples: int = 2000) -> dict[str, dict]:
  """{setting: paired bootstrap of its finished seeds against the baseline
  setting's}, on the final checkpoints."""
  from experiments import compare  # pylint: disable=g-import-not-at-top
  by_setting = collections.OrderedDict()
  for run in runs:
    if run.finished:
      by_setting.setdefault(run.setting, []).append(
          os.path.join(sweep_dir, run.name))
  if baseline not in by_setting:
    raise errors.FlagError(f'--baseline={baseline!r}: no finished runs of '
                           f'that setting; settings: {list(by_setting)}.')
  base, _ = compare.side_confusions(by_setting[baseline], 'latest', 'val', 0)
  results = {}
  for setting, workdirs in by_setting.items():
    if setting == baseline:
      continue
    hists, _ = compare.side_confusions(workdirs, 'latest', 'val', 0)
    compare.check_same_images([by_setting[baseline][0], workdirs[0]],
                              [base[0], hists[0]])
    results[setting] = compare.paired_bootstrap(base, hists, num_resamples)
  return results


def _seeds_cell(row: dict) -> str:
  cell = str(row['seeds'])
  if row['failed']:
    cell += f' ({row["failed"]} failed)'
  if row['unfinished']:
    cell += f' ({row["unfinished"]} unfinished)'
  return cell


def write_csv(path: str, rows: Sequence[dict], names: Sequence[str]) -> None:
  """One line per setting; each statistic as its own _mean/_std column."""
  stats = list(SCORES) + ['wall_s', 'steps_per_sec']
  header = ['setting', 'seeds', 'failed', 'unfinished', 'step']
  for key in stats + [f'iu_{n}' for n in names]:
    header += [f'{key}_mean', f'{key}_std']
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for row in rows:
      values = [row['setting'], row['seeds'], row['failed'], row['unfinished'],
                row['step']]
      per_class = list(row['per_class_iu'])
      per_class += [(math.nan, math.nan, 0)] * (len(names) - len(per_class))
      for mean, std, _ in [row[k] for k in stats] + per_class:
        values += [_csv_number(mean), _csv_number(std)]
      writer.writerow(values)


def _csv_number(x: float) -> str:
  return '' if math.isnan(x) else repr(float(x))


def _curve(runs: Sequence[Run], split: str, key: str):
  """(steps, mean, std) over seeds, at the steps every run logged."""
  series = [{r['step']: r[key] for r in getattr(run, split)
             if r.get(key) is not None} for run in runs]
  series = [s for s in series if s]
  if not series:
    return None
  steps = sorted(set.intersection(*(set(s) for s in series)))
  values = np.array([[s[t] for t in steps] for s in series], np.float64)
  return np.array(steps), values.mean(0), values.std(0)


def plot(runs: Sequence[Run], rows: Sequence[dict], out_dir: str) -> list[str]:
  """Writes curves.png and bars.png; returns their paths."""
  import matplotlib
  matplotlib.use('Agg')  # No display needed.
  import matplotlib.pyplot as plt

  done = [r for r in runs if r.finished]
  settings = [row['setting'] for row in rows]
  panels = [('val', 'mean_iu', 'val mean IU'),
            ('val', 'boundary_mean_iu', 'val boundary mean IU'),
            ('train', 'loss', 'train loss')]
  panels = [p for p in panels
            if any(_curve([r], p[0], p[1]) for r in done)] or panels[:1]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4),
                           squeeze=False)
  for ax, (split, key, title) in zip(axes[0], panels):
    for setting in settings:
      curve = _curve([r for r in done if r.setting == setting], split, key)
      if curve is None:
        continue
      steps, mean, std = curve
      line, = ax.plot(steps, mean, label=setting, marker='.')
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2,
                      color=line.get_color())
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  curves = os.path.join(out_dir, 'curves.png')
  fig.savefig(curves, dpi=100)
  plt.close(fig)

  keys = [k for k in ('mean_iu', 'boundary_mean_iu')
          if any(row[k][2] for row in rows)] or ['mean_iu']
  fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(rows) * len(keys)), 4))
  x = np.arange(len(rows))
  width = 0.8 / len(keys)
  for i, key in enumerate(keys):
    means = [100 * row[key][0] if row[key][2] else 0 for row in rows]
    stds = [100 * row[key][1] if row[key][2] > 1 else 0 for row in rows]
    ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=stds,
           capsize=4, label=SCORE_TITLES[key])
  ax.set_xticks(x)
  ax.set_xticklabels(settings, rotation=20, ha='right', fontsize=7)
  ax.set_ylabel('percent (mean ± std over seeds)')
  ax.legend()
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  bars = os.path.join(out_dir, 'bars.png')
  fig.savefig(bars, dpi=100)
  plt.close(fig)
  return [curves, bars]


def write_report(sweep_dir: str, out_dir: str | None = None,
                 baseline: str | None = None) -> dict[str, str]:
  """Writes report.md, report.csv and the plots; returns their paths.

  With `baseline` (a setting), report.md gains the column of
  `compare_to_baseline`.
  """
  out_dir = out_dir or sweep_dir
  with errors.user_file(out_dir):  # An unwritable folder.
    os.makedirs(out_dir, exist_ok=True)
  runs = load_runs(sweep_dir)
  rows = summarize(runs)
  num_classes = max((len(r['per_class_iu']) for r in rows), default=0)
  names = class_names(sweep_dir, runs, num_classes) if num_classes else []
  paths = {'md': os.path.join(out_dir, 'report.md'),
           'csv': os.path.join(out_dir, 'report.csv')}
  with open(paths['md'], 'w') as f:
    kind = 'Run' if len(runs) == 1 and runs[0].dir == sweep_dir else 'Sweep'
    f.write(f'# {kind} `{os.path.basename(os.path.normpath(sweep_dir))}`\n\n')
    comparisons = (compare_to_baseline(sweep_dir, runs, baseline)
                   if baseline else None)
    f.write(markdown_table(rows, names, runs, baseline, comparisons))
    f.write('\n![learning curves](curves.png)\n\n![final scores](bars.png)\n')
  write_csv(paths['csv'], rows, names)
  paths['curves'], paths['bars'] = plot(runs, rows, out_dir)
  return paths


def main(argv: Sequence[str]) -> int:
  if any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv[1:]):
    print(__doc__)
    return 0
  options = {'--out': None, '--baseline': None}
  args = []
  for arg in argv[1:]:
    name, sep, value = arg.partition('=')
    if sep and name in options:
      options[name] = value
    else:
      args.append(arg)
  if len(args) != 1:
    print('usage: python -m experiments.report SWEEP_DIR|WORKDIR [--out=DIR] '
          '[--baseline=SETTING]', file=sys.stderr)
    return 2
  paths = write_report(args[0], options['--out'], options['--baseline'])
  with open(paths['md']) as f:
    print(f.read())
  print('Wrote ' + ', '.join(paths.values()))
  return 0


if __name__ == '__main__':
  sys.exit(cli.catch_user_errors(main)(sys.argv))
