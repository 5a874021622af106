"""Evaluates a trained FCN on a whole split: the paper's four numbers.

    python -m fcn_jax.evaluate --workdir=runs/fcn8s [--checkpoint=best]
        [--split=val] [--config.dataset=voc --config.data_dir=...]

One confusion matrix is summed over every pixel of the split, and pixel
accuracy, mean accuracy, mean IU and frequency-weighted IU are computed from
it once (never averaged over images), as in the reference score.py. Prints
those and a per-class IoU table, and writes both as JSON plus a confusion
matrix picture into the workdir:

    <workdir>/eval_<split>_step<step>.json
    <workdir>/eval_<split>_step<step>_confusion.png
    <workdir>/eval_<split>_step<step>_reliability.png

It also reports the expected calibration error of the softmax (15 bins over
the max probability, labelled pixels only; fcn_jax.calibration) and draws
its reliability diagram.

The dataset is the one in the workdir's config.json; --config.KEY=VALUE
flags change it (e.g. evaluate a synthetic-trained model on more images).
Each image is segmented at its own size (padded to a bucket shape and cropped
back, see fcn_jax.inference), so datasets of mixed image sizes work.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
from absl import app
from absl import flags
from absl import logging

from fcn_jax import calibration
from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import metrics as metrics_lib
from fcn_jax import tasks
from fcn_jax import tiling
from fcn_jax import visualize
from fcn_jax import workdir as workdir_lib
from fcn_jax import writers
from fcn_jax.data import decode

FLAGS = flags.FLAGS



def _progress(done: int, total: int, start: float) -> None:
  """Progress with images done and ETA, on stderr (see cli.show_progress)."""
  cli.show_progress(done, total, start, 'images')


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int
              ) -> np.ndarray:
  """Host-side confusion matrix of one image (ignore label 255 skipped)."""
  labels = np.asarray(labels, np.int64).reshape(-1)
  preds = np.asarray(preds, np.int64).reshape(-1)
  valid = (labels >= 0) & (labels < num_classes)
  return np.bincount(num_classes * labels[valid] + preds[valid],
                     minlength=num_classes**2).reshape(num_classes,
                                                       num_classes)


def evaluate_segmenter(segmenter: inference.Segmenter, source,
                       max_images: int = 0, progress: bool = True,
                       per_image: bool = False,
                       **predict_kwargs) -> dict[str, Any]:
  """Scores `segmenter` on every example of `source` (one global histogram).

  Returns segmentation_scores plus 'confusion_matrix', 'num_images',
  'compilations', 'seconds' and 'calibration' (calibration_scores: 'ece'
  and the per-bin counts, accuracies and confidences). With `per_image`,
  also 'per_image_confusion': the (N, C, C) int64 matrices of the N images,
  which sum to 'confusion_matrix' (for paired statistics over images).
  """
  num_classes = segmenter.num_classes
  total, calibration_sums, compiled_before = _start(segmenter, source,
                                                    max_images)
  hist = np.zeros((num_classes, num_classes), np.int64)
  image_hists = []
  start = time.time()
  for index in range(total):
    example = source[index]
    labels = np.asarray(example['label'])
    probs = segmenter.probabilities(example['image'], **predict_kwargs)
    preds = np.argmax(probs, axis=-1)
    if preds.shape != labels.shape:
      raise ValueError(f'Example {index}: prediction {preds.shape} and label '
                       f'{labels.shape} differ in size.')
    image_hist = confusion(labels, preds, num_classes)
    hist += image_hist
    if per_image:
      image_hists.append(image_hist)
    calibration_sums.add(probs, labels)
    if progress:
      _progress(index + 1, total, start)
  scores = metrics_lib.segmentation_scores(hist)
  scores.update(confusion_matrix=hist.tolist(), num_images=total,
                compilations=segmenter.num_compilations - compiled_before,
                seconds=time.time() - start,
                calibration=calibration_sums.scores())
  scores['ece'] = scores['calibration']['ece']
  if per_image:
    scores['per_image_confusion'] = np.stack(image_hists)
  return scores


def _start(segmenter: inference.Segmenter, source, max_images: int):
  """(images to score, an empty calibration accumulator, compilations so far)."""
  total = len(source) if not max_images else min(max_images, len(source))
  if total == 0:
    raise decode.DataError('The split holds no images.')
  calibration_sums = calibration.Accumulator(
      bucket=tiling.bucket_size if segmenter.bucket else None)
  return total, calibration_sums, segmenter.num_compilations


def evaluate_heads(segmenter: inference.Segmenter, source,
                   head_sizes: dict[str, int], max_images: int = 0,
                   progress: bool = True,
                   present_only: bool = False) -> dict[str, Any]:
  """`evaluate_segmenter` for sources of preprocessed model inputs and
  models with several heads (NYUDv2, SIFT Flow): one histogram per head.

  Returns tasks.scores_of (the main head's scores, 'geo_'-prefixed ones of
  the geometric head) plus 'confusion_matrix' (and 'geo_confusion_matrix'),
  'num_images', 'compilations', 'seconds' and the main head's 'calibration'.
  """
  total, calibration_sums, compiled_before = _start(segmenter, source,
                                                    max_images)
  hists = {k: np.zeros((c, c), np.int64) for k, c in head_sizes.items()}
  start = time.time()
  for index in range(total):
    example = source[index]
    logits = segmenter.head_logits(example['image'])
    calibration_sums.add(tiling.softmax(logits['label']),
                         example['label'])
    for key, hist in hists.items():
      hist += confusion(example[key], np.argmax(logits[key], axis=-1),
                        hist.shape[0])
    if progress:
      _progress(index + 1, total, start)
  scores = tasks.scores_of(hists if len(hists) > 1 else hists['label'],
                           present_only)
  for key, hist in hists.items():
    scores[key[:-len('label')] + 'confusion_matrix'] = hist.tolist()
  scores.update(num_images=total,
                compilations=segmenter.num_compilations - compiled_before,
                seconds=time.time() - start,
                calibration=calibration_sums.scores())
  scores['ece'] = scores['calibration']['ece']
  return scores


def per_class_table(scores: dict, class_names) -> str:
  """Per-class IoU, accuracy and pixel count as an aligned text table."""
  hist = np.asarray(scores['confusion_matrix'], np.float64)
  gt = hist.sum(axis=1)
  with np.errstate(divide='ignore', invalid='ignore'):
    acc = np.diag(hist) / gt
  width = max(len('class'), *(len(n) for n in class_names))
  lines = [f'{"class":<{width}}  {"IoU":>7}  {"acc":>7}  {"pixels":>10}']
  for name, iu, a, n in zip(class_names, scores['per_class_iu'], acc, gt):
    lines.append(f'{name:<{width}}  {_pct(iu):>7}  {_pct(a):>7}  {int(n):>10}')
  return '\n'.join(lines)


def _pct(value: float) -> str:
  return 'n/a' if value is None or not np.isfinite(value) else f'{100 * value:.2f}'


def json_safe(value):
  """`value` with non-finite floats as None (JSON has no NaN), recursively."""
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def write_results(scores: dict, class_names, output_dir: str, split: str,
                  step: int | None, extra: dict) -> tuple[str, str]:
  """Writes the scores JSON, the confusion-matrix PNG and (with
  scores['calibration']) the reliability diagram; returns the first two
  paths."""
  os.makedirs(output_dir, exist_ok=True)
  tag = f'eval_{split}_step{step if step is not None else "unknown"}'
  record = dict(extra, split=split, step=step, class_names=list(class_names),
                **scores)
  record['per_class_iu'] = dict(zip(class_names, scores['per_class_iu']))
  json_path = os.path.join(output_dir, f'{tag}.json')
  with open(json_path + '.tmp', 'w') as f:
    json.dump(json_safe(record), f, indent=2)
  os.replace(json_path + '.tmp', json_path)
  png_path = os.path.join(output_dir, f'{tag}_confusion.png')
  visualize.confusion_matrix_image(np.asarray(scores['confusion_matrix']),
                                   class_names).save(png_path)
  if 'calibration' in scores:
    calibration.reliability_diagram_image(scores['calibration']).save(
        os.path.join(output_dir, f'{tag}_reliability.png'))
  return json_path, png_path


def run(workdir: str, checkpoint: str = 'best', split: str = 'val',
        overrides: dict | None = None, max_images: int = 0,
        output_dir: str | None = None, dtype: str = '', progress: bool = True,
        seed: int | None = None, **predict_kwargs) -> dict:
  """Loads, evaluates, prints and writes; returns the JSON record.

  `seed` picks one model of a run of several seeds (None: the best).
  """
  segmenter = inference.load(workdir, checkpoint,
                             config_overrides=overrides or {},
                             dtype=dtype or None, seed=seed)
  if segmenter.seed_note:
    print(segmenter.seed_note)
  config = segmenter.config
  train_source, val_source, info = input_pipeline.create_datasets(config)
  if info.num_classes != segmenter.num_classes:
    raise workdir_lib.CheckpointError(
        f'{segmenter.checkpoint}: the model has {segmenter.num_classes} '
        f'classes but dataset {info.name!r} has {info.num_classes}.')
  source = val_source if split == 'val' else train_source
  class_names = tuple(segmenter.class_names)  # From dataset_info.json.
  step = workdir_lib.checkpoint_step(segmenter.checkpoint)
  logging.info('Evaluating %s (step %s) on %s/%s: %d images.',
               segmenter.checkpoint, step, info.name, split, len(source))
  if tasks.uses_model_input(config):
    if predict_kwargs.get('tta') or predict_kwargs.get('window'):
      raise errors.FlagError(f'--tta and --window are not available for '
                       f'{info.name} models (other inputs or two heads).')
    sizes = dict({'label': info.num_classes},
                 **{k: len(n) for k, n in info.extra_heads})
    scores = evaluate_heads(segmenter, source, sizes, max_images, progress,
                            info.present_classes_only)
  else:
    scores = evaluate_segmenter(segmenter, source, max_images, progress,
                                **predict_kwargs)
  extra = dict(checkpoint=segmenter.checkpoint, dataset=info.name,
               model=config.model)
  json_path, png_path = write_results(scores, class_names,
                                      output_dir or workdir, split, step, extra)
  print(f'{info.name}/{split}, {scores["num_images"]} images, checkpoint '
        f'{segmenter.checkpoint}:')
  print(f'  pixel accuracy      {_pct(scores["overall_acc"])}')
  print(f'  mean accuracy       {_pct(scores["mean_acc"])}')
  print(f'  mean IU             {_pct(scores["mean_iu"])}')
  print(f'  frequency-weighted  {_pct(scores["fwavacc"])}')
  if 'num_classes_scored' in scores:
    print(f'  (mean accuracy and mean IU over the {scores["num_classes_scored"]}'
          f' of {len(class_names)} classes present in the ground truth)')
  print(f'  calibration error   {_pct(scores["calibration"]["ece"])} (ECE, '
        f'{len(scores["calibration"]["bin_count"])} bins)')
  print(per_class_table(scores, class_names))
  if 'geo_overall_acc' in scores:
    print('geometric:')
    for name, key in (('pixel accuracy', 'overall_acc'),
                      ('mean accuracy', 'mean_acc'), ('mean IU', 'mean_iu'),
                      ('frequency-weighted', 'fwavacc')):
      print(f'  {name:<19} {_pct(scores["geo_" + key])}')
  print(f'{scores["compilations"]} compilation(s), {scores["seconds"]:.1f}s. '
        f'Wrote {json_path}, {png_path} and the reliability diagram next to '
        'them.')
  with open(json_path) as f:
    return json.load(f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_library_logs()
  run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, cli.config_overrides(),
      FLAGS.max_images, FLAGS.output_dir, FLAGS.dtype,
      seed=None if FLAGS.seed < 0 else FLAGS.seed, tta=FLAGS.tta,
      window=FLAGS.window or None)


def _define_flags():
  """Flags of the command line (defined only when run as a program, so the
  module can be imported next to other fcn_jax programs)."""
  cli.define_checkpoint_flags(checkpoint_alone=False)
  flags.DEFINE_enum('split', 'val', ['val', 'train'], 'Split to evaluate.')
  flags.DEFINE_integer('max_images', 0, 'Evaluate only the first N images '
                       '(0 = the whole split).')
  flags.DEFINE_bool('tta', False, 'Test-time augmentation (flips and scales).')
  flags.DEFINE_integer('window', 0, 'Sliding-window size for large images '
                       '(0 = whole images).')
  flags.DEFINE_string('output_dir', None, 'Where to write the JSON and plot '
                      '(default: the workdir).')
  cli.define_config_flag(
      'Overrides of the workdir config.json, e.g. --config.dataset=voc.')


if __name__ == '__main__':
  _define_flags()
  cli.run(main, path_flags=('workdir', 'checkpoint', 'output_dir'))
