"""Evaluates the reference's released models and prints them beside the paper.

    python -m fcn_jax.reproduce --weights_dir=weights --data_dir=data \
        [--output_dir=reproduce] [--models=voc-fcn8s,voc-fcn-alexnet]

For every released FCN (`caffe_models.REFERENCE_MODELS`) the weights are
looked up in --weights_dir under their official file names (the reference's
``.caffemodel``, or pytorch-fcn's ``.pth`` conversion for the four VOC VGG
models; directly in the folder or in a sub-folder named after the model,
e.g. voc-fcn8s/fcn8s-heavy-pascal.caffemodel). Each file found is converted
in memory and evaluated with the reference protocol: whole images at their
own size, batch 1, no padding beyond conv1's own (``pad_multiple=1``), one
confusion matrix over the split (score.py's four numbers). The PASCAL models
are scored on VOC2011 seg11valid (736 images) under --data_dir.

The table (Markdown, printed and written to <output_dir>/reproduce.md, and
<output_dir>/reproduce.json) has one row per model and file: pixel accuracy,
mean accuracy, mean IU, frequency-weighted IU, the published mean IU and the
difference. A model without a file is a "missing" row, a model whose
dataset has no loader here a "needs dataset ..." row. A file that fails to
convert is an "error" row and makes the command exit with status 1 after
writing the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import numpy as np
from absl import app
from absl import flags
from absl import logging

from fcn_jax import caffe_models
from fcn_jax import cli
from fcn_jax import convert
from fcn_jax import errors
from fcn_jax import evaluate
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import writers
from fcn_jax.configs import default as default_config
from fcn_jax.data import sbd
from fcn_jax.data import voc

FLAGS = flags.FLAGS

# Mean IU on seg11valid published with the reference models
# (shelhamer/fcn.berkeleyvision.org README).
PUBLISHED_MEAN_IU = {
    'voc-fcn32s': 63.6, 'voc-fcn16s': 65.0, 'voc-fcn8s': 65.5,
    'voc-fcn8s-atonce': 65.4, 'voc-fcn-alexnet': 48.0,
}
# pytorch-fcn's conversions of the same Caffe models (convert.KNOWN_WEIGHTS).
PTH_FILES = {
    'voc-fcn32s': 'fcn32s_from_caffe.pth', 'voc-fcn16s': 'fcn16s_from_caffe.pth',
    'voc-fcn8s': 'fcn8s_from_caffe.pth',
    'voc-fcn8s-atonce': 'fcn8s-atonce_from_caffe.pth',
}
# The split each benchmark's models are scored on.
SPLITS = {'voc': 'seg11valid', 'nyud': 'test', 'siftflow': 'test',
          'pascal_context': 'val'}
SCORE_KEYS = ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc')


class ReproduceError(ValueError, errors.UserError):
  """Bad flags, or a weight file that could not be evaluated."""


@dataclasses.dataclass
class Row:
  """One line of the table."""
  model: str
  file: str = ''
  status: str = 'ok'
  dataset: str = ''
  split: str = ''
  num_images: int = 0
  scores: dict = dataclasses.field(default_factory=dict)  # percent
  published_mean_iu: float | None = None
  difference: float | None = None  # ours - published, mean IU points
  seconds: float = 0.0


def reproducible_models() -> list[str]:
  """The released FCNs (not the ImageNet base nets), in the reference's order."""
  return [name for name, ref in caffe_models.REFERENCE_MODELS.items()
          if ref.dataset != 'imagenet']


def candidate_files(model: str) -> list[str]:
  ref = caffe_models.REFERENCE_MODELS[model]
  return [ref.file] + ([PTH_FILES[model]] if model in PTH_FILES else [])


def find_files(weights_dir: str, model: str) -> list[str]:
  """The model's weight files present in weights_dir (or weights_dir/model)."""
  found = []
  for name in candidate_files(model):
    for folder in (weights_dir, os.path.join(weights_dir, model)):
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        found.append(path)
        break
  return found


def convert_weights(path: str, model: str) -> tuple[dict, dict]:
  """(params, metadata) of a .caffemodel or pytorch-fcn .pth, in memory."""
  if path.endswith('.caffemodel'):
    return caffe_models.convert_caffemodel(path, model)
  known = convert.verify_checksum(path)
  variant = (known or {}).get('variant') or caffe_models.REFERENCE_MODELS[
      model].arch
  state = convert.state_dict_from(convert.load_pth(path), path)
  params = convert.from_torchfcn(state, variant)
  return params, {'variant': variant,
                  'num_classes': convert.infer_num_classes(params),
                  'width': convert.infer_width(params),
                  'learn_upsampling': convert.has_learned_upsampling(params)}


def segmenter_for(params: dict, metadata: dict, source: str
                  ) -> inference.Segmenter:
  """A Segmenter at exact image sizes (no bucket padding: pad_multiple=1)."""
  model = models.get_model(metadata['variant'], metadata['num_classes'],
                           width=metadata['width'],
                           learn_upsampling=metadata['learn_upsampling'])
  inference.check_params_fit(model, params, source)
  config = default_config.get_config()
  config.model = metadata['variant']
  config.num_classes = metadata['num_classes']
  config.width = metadata['width']
  config.learn_upsampling = metadata['learn_upsampling']
  config.pad_multiple = 1
  return inference.Segmenter(
      model=model, params=params, config=config,
      class_names=voc.VOC_CLASS_NAMES[:metadata['num_classes']],
      palette=input_pipeline.voc_palette(metadata['num_classes']),
      checkpoint=source, bucket=False)


def voc_source(data_dir: str, split: str = 'seg11valid'):
  """VOC2011 (else VOC2012) under data_dir; seg11valid = the packaged list,
  any other split = that folder's ImageSets/Segmentation/<split>.txt."""
  root = voc.find_voc_root(data_dir, ('2011', '2012'))
  ids = sbd.packaged_split('seg11valid') if split == 'seg11valid' else None
  return voc.VOCLayoutSource(root, split, len(voc.VOC_CLASS_NAMES), ids=ids)


# Benchmarks whose evaluation data can be read here: dataset -> source(data_dir,
# split). The other benchmarks' rows say which dataset they need.
SOURCES: dict[str, Callable[..., Any]] = {'voc': voc_source}


def _percent(scores: dict) -> dict:
  return {k: round(100 * float(scores[k]), 2) for k in SCORE_KEYS}


def run(weights_dir: str, data_dir: str, output_dir: str,
        model_names: list[str] | None = None, split: str = '',
        max_images: int = 0, progress: bool = True) -> list[Row]:
  """Evaluates every model found; writes and prints the table; returns rows."""
  if not weights_dir or not os.path.isdir(weights_dir):
    raise ReproduceError(f'--weights_dir={weights_dir}: no such folder.')
  names = model_names or reproducible_models()
  unknown = [n for n in names if n not in reproducible_models()]
  if unknown:
    raise ReproduceError(f'--models: unknown {unknown}; expected some of '
                     f'{reproducible_models()}.')
  sources, rows = {}, []
  for name in names:
    ref = caffe_models.REFERENCE_MODELS[name]
    base = dict(model=name, dataset=ref.dataset,
                split=split or SPLITS[ref.dataset],
                published_mean_iu=PUBLISHED_MEAN_IU.get(name))
    files = find_files(weights_dir, name)
    if not files:
      rows.append(Row(file=' or '.join(candidate_files(name)), status='missing',
                      **base))
      continue
    if ref.dataset not in SOURCES:
      rows += [Row(file=os.path.basename(f), status=f'needs dataset '
                   f'{ref.dataset}', **base) for f in files]
      continue
    if ref.dataset not in sources:  # Data errors stop the command.
      sources[ref.dataset] = SOURCES[ref.dataset](data_dir, base['split'])
    for path in files:
      rows.append(_evaluate_file(path, name, sources[ref.dataset], base,
                                 max_images, progress))
  write_table(rows, output_dir)
  return rows


def _evaluate_file(path, name, source, base, max_images, progress) -> Row:
  row = Row(file=os.path.basename(path), **base)
  start = time.time()
  try:
    params, metadata = convert_weights(path, name)
    segmenter = segmenter_for(params, metadata, path)
  except (ValueError, OSError) as e:
    row.status = f'error: {str(e).splitlines()[0]}'
    return row
  logging.info('Evaluating %s (%s) on %d images.', name, path,
               min(max_images or len(source), len(source)))
  scores = evaluate.evaluate_segmenter(segmenter, source, max_images, progress)
  row.scores = _percent(scores)
  row.num_images = scores['num_images']
  if row.published_mean_iu is not None:
    row.difference = round(row.scores['mean_iu'] - row.published_mean_iu, 2)
  row.seconds = round(time.time() - start, 1)
  return row


def _cell(value) -> str:
  return '' if value is None else f'{value:.2f}'


def markdown(rows: list[Row]) -> str:
  """The table as Markdown."""
  header = ['model', 'file', 'split', 'images', 'pixel acc', 'mean acc',
            'mean IU', 'f.w. IU', 'published mean IU', 'difference', 'status']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  for r in rows:
    scores = [_cell(r.scores.get(k)) for k in SCORE_KEYS]
    diff = '' if r.difference is None else f'{r.difference:+.2f}'
    cells = [r.model, r.file, r.split, str(r.num_images or '')] + scores + [
        _cell(r.published_mean_iu), diff, r.status]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_table(rows: list[Row], output_dir: str) -> tuple[str, str]:
  """Writes reproduce.md and reproduce.json (atomically) and prints the table."""
  os.makedirs(output_dir, exist_ok=True)
  table = markdown(rows)
  md_path = os.path.join(output_dir, 'reproduce.md')
  json_path = os.path.join(output_dir, 'reproduce.json')
  record = {'scores_in': 'percent', 'rows': [dataclasses.asdict(r)
                                             for r in rows]}
  for path, text in ((md_path, table + '\n'),
                     (json_path, json.dumps(record, indent=2) + '\n')):
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)
  print(table)
  print(f'Wrote {md_path} and {json_path}.')
  return md_path, json_path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_library_logs()
  names = [n.strip() for n in FLAGS.models.split(',') if n.strip()]
  rows = run(FLAGS.weights_dir, FLAGS.data_dir, FLAGS.output_dir, names,
             FLAGS.split, FLAGS.max_images)
  failed = [r.file for r in rows if r.status.startswith('error')]
  if failed:
    raise ReproduceError(f'{", ".join(failed)}: could not be evaluated (see '
                         'the status column).')


def _define_flags():
  flags.DEFINE_string('weights_dir', None, 'Folder with the downloaded '
                      '.caffemodel / .pth files under their official names.')
  flags.DEFINE_string('data_dir', '', 'Folder holding the benchmarks (for the '
                      'PASCAL models: VOCdevkit/VOC2011 or VOC2011 itself).')
  flags.DEFINE_string('output_dir', 'reproduce', 'Where to write '
                      'reproduce.md and reproduce.json.')
  flags.DEFINE_string('models', '', 'Comma-separated reference model names '
                      '(default: all released FCNs).')
  flags.DEFINE_string('split', '', "Evaluation split ('' = the reference's, "
                      'seg11valid for PASCAL; another name reads that '
                      "folder's ImageSets/Segmentation/<split>.txt).")
  flags.DEFINE_integer('max_images', 0, 'Evaluate only the first N images '
                       '(0 = the whole split; the published numbers need all).')
  flags.mark_flags_as_required(['weights_dir'])


if __name__ == '__main__':
  _define_flags()
  # Data errors (DataError) are UserErrors; OSError: unreadable folders.
  cli.run(main, user_errors=(OSError,))
