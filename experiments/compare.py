"""Is the difference between two runs real? A paired bootstrap over images.

    python -m experiments.compare RUN_A RUN_B [--checkpoint=best]
        [--split=val] [--resamples=2000] [--max_images=N] [--out=FILE.json]

RUN_A and RUN_B are training workdirs, or sweep settings written as
`<sweep dir>/<setting>` (e.g. runs/sweeps/skips/model=fcn8s: all seeds of
that setting). Both are evaluated on the same images (those of their configs'
split, which must agree), and the report gives the difference in mean IU,
B - A, with a 95% confidence interval, and the same per class.

Method (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13
percentile intervals; the design is paired because both sides are scored on
the same resampled images). Each image i contributes a confusion matrix
H_r[i] per run r. A resample draws N image indices with replacement (the
same draw for every run), sums each run's matrices over the drawn images and
recomputes the global-histogram mean IU from that sum (never an average of
per-image IoUs); a side's score is the mean over its seeds, and the
statistic is B's minus A's. The 2.5th and 97.5th percentiles of the
statistic over the resamples are the 95% interval. This interval covers the
variation due to which images were drawn; with several seeds per side, the
seed-to-seed spread (std over seeds, and the standard error of the
difference of the seed means, sqrt(s_A^2 / m + s_B^2 / n)) is reported
beside the image-resampling standard error, because a new training run
varies by that much too.

Per-image confusion matrices are cached in each workdir
(per_image_confusion_<split>_step<step>.npz), so comparing again or
reporting a sweep against a baseline evaluates each checkpoint once.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
from absl import app
from absl import flags

from experiments import sweep as sweep_lib
from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


class CompareError(ValueError, errors.UserError):
  """A run that cannot be found or compared (one line, exit status 1)."""


# ---------------------------------------------------------------------------
# The statistics (numpy only).


def per_class_iu(hists: np.ndarray) -> np.ndarray:
  """(..., C, C) confusion matrices -> (..., C) IU, NaN where 0/0."""
  hists = np.asarray(hists, np.float64)
  diag = np.diagonal(hists, axis1=-2, axis2=-1)
  union = hists.sum(-1) + hists.sum(-2) - diag
  with np.errstate(divide='ignore', invalid='ignore'):
    return diag / union


def mean_iu(hists: np.ndarray) -> np.ndarray:
  """(..., C, C) -> (...) mean IU over the classes that are not 0/0 (as
  fcn_jax.metrics.segmentation_scores)."""
  iu = per_class_iu(hists)
  present = ~np.isnan(iu)
  with np.errstate(invalid='ignore'):
    return np.where(present, iu, 0).sum(-1) / present.sum(-1)


def bootstrap_weights(num_images: int, num_resamples: int,
                      seed: int = 0) -> np.ndarray:
  """(resamples, images) counts: how often each image is drawn.

  Row k comes from `rng.integers(0, num_images, num_images)`, the k-th draw
  of numpy's default_rng(seed), so a loop over those indices gives the same
  resamples.
  """
  rng = np.random.default_rng(seed)
  indices = rng.integers(0, num_images, (num_resamples, num_images))
  weights = np.zeros((num_resamples, num_images), np.int64)
  np.add.at(weights, (np.arange(num_resamples)[:, None], indices), 1)
  return weights


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
  tail = 100 * (1 - confidence) / 2
  with warnings.catch_warnings():  # A class absent from every resample.
    warnings.simplefilter('ignore', RuntimeWarning)
    low, high = np.nanpercentile(values, [tail, 100 - tail], axis=0)
  return low, high


def _seed_std(values: np.ndarray) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def paired_bootstrap(hists_a: np.ndarray, hists_b: np.ndarray,
                     num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict[str, Any]:
  """Difference B - A in mean IU with a paired bootstrap interval over images.

  Args:
    hists_a: (seeds_a, N, C, C) per-image confusion matrices of side A (one
      row per seed), or (N, C, C) for one run.
    hists_b: the same for side B, on the same N images in the same order.
    num_resamples: bootstrap resamples.
    seed: of the resampling.
    confidence: of the percentile interval.

  Returns:
    A dict: 'mean_iu_a', 'mean_iu_b' (means over seeds on all images),
    'diff' (B - A), 'ci' ([low, high]), 'image_se' (bootstrap std of the
    difference), 'seed_std_a', 'seed_std_b', 'seed_se' (NaN with one seed
    on a side), 'per_class' (lists 'iu_a', 'iu_b', 'diff', 'ci_low',
    'ci_high'), 'num_images', 'seeds_a', 'seeds_b', 'num_resamples',
    'confidence'.
  """
  hists_a, hists_b = _with_seed_axis(hists_a), _with_seed_axis(hists_b)
  if hists_a.shape[1:] != hists_b.shape[1:]:
    raise CompareError(f'the two sides hold {hists_a.shape[1]} and '
                       f'{hists_b.shape[1]} images of {hists_a.shape[-1]} and '
                       f'{hists_b.shape[-1]} classes; they must be the same.')
  num_images, num_classes = hists_a.shape[1], hists_a.shape[-1]
  weights = bootstrap_weights(num_images, num_resamples, seed)

  def side(hists):
    """Seed-mean mean IU and per-class IU, on all images and per resample."""
    flat = hists.reshape(hists.shape[0], num_images, -1).astype(np.float64)
    full = flat.sum(1).reshape(-1, num_classes, num_classes)
    resampled = np.matmul(weights[None].astype(np.float64), flat)
    resampled = resampled.reshape(hists.shape[0], num_resamples, num_classes,
                                  num_classes)
    with np.errstate(invalid='ignore'):
      return (mean_iu(full), np.nanmean(per_class_iu(full), 0),
              mean_iu(resampled).mean(0),
              np.nanmean(per_class_iu(resampled), 0))

  with warnings.catch_warnings():  # nanmean over a class absent everywhere.
    warnings.simplefilter('ignore', RuntimeWarning)
    seeds_a, class_a, boot_a, boot_class_a = side(hists_a)
    seeds_b, class_b, boot_b, boot_class_b = side(hists_b)
  diffs = boot_b - boot_a
  low, high = _interval(diffs, confidence)
  class_low, class_high = _interval(boot_class_b - boot_class_a, confidence)
  std_a, std_b = _seed_std(seeds_a), _seed_std(seeds_b)
  seed_se = math.sqrt(std_a**2 / len(seeds_a) + std_b**2 / len(seeds_b))
  return {
      'mean_iu_a': float(seeds_a.mean()), 'mean_iu_b': float(seeds_b.mean()),
      'diff': float(seeds_b.mean() - seeds_a.mean()),
      'ci': [float(low), float(high)],
      'image_se': float(np.std(diffs, ddof=1)),
      'seed_mean_iu_a': seeds_a.tolist(), 'seed_mean_iu_b': seeds_b.tolist(),
      'seed_std_a': std_a, 'seed_std_b': std_b, 'seed_se': seed_se,
      'per_class': {'iu_a': class_a.tolist(), 'iu_b': class_b.tolist(),
                    'diff': (class_b - class_a).tolist(),
                    'ci_low': np.asarray(class_low).tolist(),
                    'ci_high': np.asarray(class_high).tolist()},
      'num_images': num_images, 'seeds_a': len(seeds_a),
      'seeds_b': len(seeds_b), 'num_resamples': num_resamples,
      'confidence': confidence,
  }


def _with_seed_axis(hists) -> np.ndarray:
  hists = np.asarray(hists)
  return hists[None] if hists.ndim == 3 else hists


# ---------------------------------------------------------------------------
# Runs: workdirs and sweep settings, evaluated once per checkpoint.


def resolve_run(spec: str) -> list[str]:
  """The workdirs named by a workdir or a `<sweep dir>/<setting>` path."""
  path = os.path.normpath(spec)
  if workdir_lib.is_workdir(path):
    return [path]
  if os.path.isfile(os.path.join(path, sweep_lib.SWEEP_FILE)):
    raise CompareError(f'{spec}: is a sweep; name one of its settings, '
                       f'{_settings_hint(path)}')
  parent, setting = os.path.split(path)
  sweep = sweep_lib.read_json(os.path.join(parent, sweep_lib.SWEEP_FILE))
  if sweep is None:
    raise CompareError(f'{spec}: neither a training workdir (config.json) '
                       'nor <sweep dir>/<setting>.')
  workdirs = [os.path.join(parent, e['name']) for e in sweep['runs']
              if e['setting'] == setting]
  workdirs = [w for w in workdirs if workdir_lib.is_workdir(w)]
  if not workdirs:
    raise CompareError(f'{spec}: no run of setting {setting!r} in the sweep; '
                       f'{_settings_hint(parent)}')
  return workdirs


def _settings_hint(sweep_dir: str) -> str:
  sweep = sweep_lib.read_json(os.path.join(sweep_dir, sweep_lib.SWEEP_FILE))
  settings = list(dict.fromkeys(e['setting'] for e in sweep['runs']))
  return 'e.g. ' + ', '.join(os.path.join(sweep_dir, s) for s in settings[:4])


def _cache_path(workdir: str, split: str, step: int | None) -> str:
  return os.path.join(workdir, f'per_image_confusion_{split}_step{step}.npz')


def per_image_confusions(workdir: str, checkpoint: str = 'best',
                         split: str = 'val', max_images: int = 0
                         ) -> tuple[np.ndarray, dict[str, Any]]:
  """(N, C, C) confusion matrices of a workdir's checkpoint, image by image.

  Read from the workdir's cache when an earlier call wrote it for the same
  checkpoint, split and number of images; else evaluated and cached.
  Returns the matrices and {'dataset', 'step', 'checkpoint', 'class_names'}.
  """
  from fcn_jax import evaluate  # pylint: disable=g-import-not-at-top
  from fcn_jax import inference  # pylint: disable=g-import-not-at-top
  from fcn_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  checkpoint_path = workdir_lib.resolve_checkpoint(workdir, checkpoint)
  step = workdir_lib.checkpoint_step(checkpoint_path)
  cache = _cache_path(workdir, split, step)
  if os.path.isfile(cache):
    with np.load(cache, allow_pickle=False) as data:
      if int(data['max_images']) == max_images:
        return data['hists'], {'dataset': str(data['dataset']), 'step': step,
                               'checkpoint': checkpoint_path,
                               'class_names': [str(n) for n in
                                               data['class_names']]}
  segmenter = inference.load(workdir, checkpoint_path)
  train_source, val_source, info = input_pipeline.create_datasets(
      segmenter.config)
  source = val_source if split == 'val' else train_source
  scores = evaluate.evaluate_segmenter(segmenter, source, max_images,
                                       progress=False, per_image=True)
  hists = scores['per_image_confusion']
  try:
    with open(cache + '.tmp', 'wb') as f:
      np.savez(f, hists=hists, max_images=max_images, dataset=info.name,
               class_names=np.array(info.class_names))
    os.replace(cache + '.tmp', cache)
  except OSError:  # A read-only workdir: evaluate again next time.
    pass
  return hists, {'dataset': info.name, 'step': step,
                 'checkpoint': checkpoint_path,
                 'class_names': list(info.class_names)}


def side_confusions(workdirs: Sequence[str], checkpoint: str, split: str,
                    max_images: int) -> tuple[np.ndarray, dict[str, Any]]:
  """(seeds, N, C, C) for the runs of one side; they must share the images."""
  hists, meta = [], None
  for workdir in workdirs:
    run_hists, run_meta = per_image_confusions(workdir, checkpoint, split,
                                               max_images)
    hists.append(run_hists)
    meta = meta or run_meta
  check_same_images(list(workdirs), hists)
  return np.stack(hists), meta


def check_same_images(names: Sequence[str], hists: Sequence[np.ndarray]
                      ) -> None:
  """Raises CompareError unless every run saw the same labels.

  A row of an image's confusion matrix sums to that image's pixel count of
  a class, whatever the prediction: equal row sums on every image mean the
  same labelled images in the same order (up to an exact permutation of
  pixels within an image).
  """
  reference = np.asarray(hists[0]).sum(-1)
  for name, h in zip(names[1:], hists[1:]):
    h = np.asarray(h)
    if h.shape != hists[0].shape or not np.array_equal(h.sum(-1), reference):
      raise CompareError(
          f'{name} and {names[0]} were not evaluated on the same labelled '
          f'images ({h.shape[0]} vs {hists[0].shape[0]} images, or other '
          'labels): compare runs of the same dataset and split.')


def compare(run_a: str, run_b: str, checkpoint: str = 'best',
            split: str = 'val', num_resamples: int = DEFAULT_RESAMPLES,
            max_images: int = 0, seed: int = 0) -> dict[str, Any]:
  """Evaluates both sides and returns `paired_bootstrap` plus their names."""
  workdirs_a, workdirs_b = resolve_run(run_a), resolve_run(run_b)
  hists_a, meta = side_confusions(workdirs_a, checkpoint, split, max_images)
  hists_b, _ = side_confusions(workdirs_b, checkpoint, split, max_images)
  check_same_images([workdirs_a[0], workdirs_b[0]], [hists_a[0], hists_b[0]])
  result = paired_bootstrap(hists_a, hists_b, num_resamples, seed)
  result.update(run_a=run_a, run_b=run_b, workdirs_a=workdirs_a,
                workdirs_b=workdirs_b, dataset=meta['dataset'], split=split,
                checkpoint=checkpoint, class_names=meta['class_names'])
  return result


# ---------------------------------------------------------------------------
# Output.


def _pct(x: float, sign: bool = False) -> str:
  if x is None or not np.isfinite(x):
    return 'n/a'
  return f'{100 * x:+.1f}' if sign else f'{100 * x:.1f}'


def format_interval(result: dict) -> str:
  """'+44.3 [+41.0, +47.5]' (percent), the report's cell."""
  low, high = result['ci']
  return (f'{_pct(result["diff"], True)} [{_pct(low, True)}, '
          f'{_pct(high, True)}]')


def format_result(result: dict) -> str:
  """The comparison as text: the summary lines and a per-class table."""
  def seeds(n, std):
    return f'{n} seed{"s" if n > 1 else ""}' + (
        f', seed std {_pct(std)}' if np.isfinite(std) else '')
  lines = [
      f'A = {result["run_a"]} ({seeds(result["seeds_a"], result["seed_std_a"])})',
      f'B = {result["run_b"]} ({seeds(result["seeds_b"], result["seed_std_b"])})',
      f'{result["dataset"]}/{result["split"]}, {result["num_images"]} images, '
      f'checkpoint {result["checkpoint"]}; {result["num_resamples"]} paired '
      'bootstrap resamples of the images.',
      f'mean IU: A {_pct(result["mean_iu_a"])}, B {_pct(result["mean_iu_b"])}'
      f'; B - A {format_interval(result)} '
      f'({100 * result["confidence"]:.0f}% CI over images).',
      f'spread of B - A: image resampling SE {_pct(result["image_se"])}, '
      f'seed-to-seed SE {_pct(result["seed_se"])}'
      + ('' if np.isfinite(result['seed_se']) else
         ' (needs 2+ seeds per side)') + '.',
      '',
      '| class | A IU | B IU | B - A | 95% CI |',
      '|---|---|---|---|---|',
  ]
  per_class = result['per_class']
  for c, name in enumerate(result['class_names']):
    lines.append(
        f'| {name} | {_pct(per_class["iu_a"][c])} | '
        f'{_pct(per_class["iu_b"][c])} | {_pct(per_class["diff"][c], True)} '
        f'| [{_pct(per_class["ci_low"][c], True)}, '
        f'{_pct(per_class["ci_high"][c], True)}] |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) != 3:
    raise app.UsageError('usage: python -m experiments.compare RUN_A RUN_B '
                         '[--checkpoint=best] [--resamples=2000] ...')
  from fcn_jax import writers  # pylint: disable=g-import-not-at-top
  writers.quiet_library_logs()
  if FLAGS.resamples < 100:
    raise errors.FlagError(f'--resamples={FLAGS.resamples}: use at least 100 '
                           'for a 95% interval.')
  result = compare(argv[1], argv[2], FLAGS.checkpoint, FLAGS.split,
                   FLAGS.resamples, FLAGS.max_images, FLAGS.seed)
  print(format_result(result))
  if FLAGS.out:
    from fcn_jax import evaluate  # pylint: disable=g-import-not-at-top
    with errors.user_file(f'--out={FLAGS.out}'):  # An unwritable path.
      with open(FLAGS.out + '.tmp', 'w') as f:
        json.dump(evaluate.json_safe(result), f, indent=2)
      os.replace(FLAGS.out + '.tmp', FLAGS.out)
    print(f'Wrote {FLAGS.out}')


def _define_flags():
  flags.DEFINE_string('checkpoint', 'best', "Checkpoint of every run: 'best' "
                      "(highest validation mean IU), 'latest' or a step.")
  flags.DEFINE_enum('split', 'val', ['val', 'train'], 'Split to evaluate.')
  flags.DEFINE_integer('resamples', DEFAULT_RESAMPLES,
                       'Bootstrap resamples of the images.')
  flags.DEFINE_integer('max_images', 0, 'Only the first N images (0 = all).')
  flags.DEFINE_integer('seed', 0, 'Seed of the resampling.')
  flags.DEFINE_string('out', None, 'Also write the result as JSON here.')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
