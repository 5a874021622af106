"""Evaluates the reference's released models and prints them beside the paper.

    python -m fcn_jax.reproduce --weights_dir=weights --data_dir=data \
        [--pascal_context_dir=context] [--nyud_dir=nyud] \
        [--siftflow_dir=SiftFlowDataset] [--output_dir=reproduce] \
        [--models=voc-fcn8s,siftflow-fcn16s]

For every released FCN (`caffe_models.REFERENCE_MODELS`) the weights are
looked up in --weights_dir under their official file names (the reference's
``.caffemodel``, or pytorch-fcn's ``.pth`` conversion for the four VOC VGG
models; directly in the folder or in a sub-folder named after the model,
e.g. voc-fcn8s/fcn8s-heavy-pascal.caffemodel). Each file found is converted
in memory and evaluated with the reference protocol: whole images at their
own size, batch 1, no padding beyond conv1's own (``pad_multiple=1``), one
confusion matrix over the split (score.py's four numbers). The splits:

* voc-*: VOC2011 seg11valid (736 images) under --data_dir;
* pascalcontext-*: PASCAL-Context val (VOC2010 ImageSets/Main/val.txt, the
  59 classes + background) under --pascal_context_dir;
* nyud-*: NYUDv2 test (654 images) under --nyud_dir, with each model's
  inputs (color, HHA, or both streams) and the reference's means;
* siftflow-*: SIFT Flow test (200 images) under --siftflow_dir, both heads
  (evaluate.evaluate_heads): semantic scores with mean acc / mean IU over
  the classes present in the ground truth, as the paper scores it, and the
  geometric head's pixel accuracy.

The table (Markdown, printed and written to <output_dir>/reproduce.md, and
<output_dir>/reproduce.json) has one row per model and file: pixel accuracy,
mean accuracy, mean IU, frequency-weighted IU, the published mean IU and the
difference, and for SIFT Flow the geometric pixel accuracy beside the
published one. A model without a file is a "missing" row, a model whose
dataset folder flag is not given a "needs dataset ..." row. A file that
fails to convert is an "error" row and makes the command exit with status 1
after writing the table.
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

from fcn_jax import architecture
from fcn_jax import caffe_models
from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import evaluate
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import pth
from fcn_jax import surgery
from fcn_jax import tasks
from fcn_jax import writers
from fcn_jax.configs import default as default_config
from fcn_jax.data import nyud
from fcn_jax.data import pascal_context
from fcn_jax.data import sbd
from fcn_jax.data import siftflow
from fcn_jax.data import voc

FLAGS = flags.FLAGS

# Mean IU on seg11valid published with the reference models
# (shelhamer/fcn.berkeleyvision.org README).
PUBLISHED_MEAN_IU = {
    'voc-fcn32s': 63.6, 'voc-fcn16s': 65.0, 'voc-fcn8s': 65.5,
    'voc-fcn8s-atonce': 65.4, 'voc-fcn-alexnet': 48.0,
    # The paper (CVPR 2015 v2): NYUDv2 test (Table 4), SIFT Flow test
    # (Table 5; FCN-16s only), PASCAL-Context val, 59-class task (Table 6).
    # siftflow-fcn32s / -fcn8s have no paper number.
    'nyud-fcn32s-color': 29.2, 'nyud-fcn32s-hha': 24.2,
    'nyud-fcn32s-color-hha': 32.8, 'siftflow-fcn16s': 39.5,
    'pascalcontext-fcn32s': 31.8, 'pascalcontext-fcn16s': 34.8,
    'pascalcontext-fcn8s': 35.1,
}
# Geometric pixel accuracy of SIFT Flow FCN-16s (CVPR 2015 v2, Table 5).
PUBLISHED_GEO_ACC = {'siftflow-fcn16s': 94.3}
# The NYUDv2 models' inputs (tasks.input_mode / config.nyud_input).
NYUD_INPUTS = {'nyud-fcn32s-color': 'color', 'nyud-fcn32s-hha': 'hha',
               'nyud-fcn32s-color-hha': 'color-hha'}
# pytorch-fcn's conversions of the same Caffe models (surgery.KNOWN_WEIGHTS).
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
  published_geo_acc: float | None = None  # SIFT Flow geometric pixel acc.
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
  known = surgery.verify_checksum(path)
  variant = (known or {}).get('variant') or caffe_models.REFERENCE_MODELS[
      model].arch
  state = pth.state_dict_from(pth.load_pth(path), path)
  params = surgery.from_torchfcn(state, variant)
  return params, {'variant': variant,
                  'num_classes': surgery.infer_num_classes(params),
                  'width': surgery.infer_width(params),
                  'learn_upsampling': surgery.has_learned_upsampling(params)}


def _class_names(row: 'Row') -> tuple[str, ...]:
  return tasks.shipped_class_names(row.dataset) or voc.VOC_CLASS_NAMES


def segmenter_for(params: dict, metadata: dict, source: str,
                  class_names: tuple[str, ...] = voc.VOC_CLASS_NAMES
                  ) -> inference.Segmenter:
  """A Segmenter at exact image sizes (no bucket padding: pad_multiple=1)."""
  model = models.get_model(metadata['variant'], metadata['num_classes'],
                           width=metadata['width'],
                           learn_upsampling=metadata['learn_upsampling'])
  architecture.check_params_fit(model, params, source)
  config = default_config.get_config()
  config.model = metadata['variant']
  config.num_classes = metadata['num_classes']
  config.width = metadata['width']
  config.learn_upsampling = metadata['learn_upsampling']
  config.pad_multiple = 1
  return inference.Segmenter(
      model=model, params=params, config=config,
      class_names=tuple(class_names)[:metadata['num_classes']],
      palette=input_pipeline.voc_palette(metadata['num_classes']),
      checkpoint=source, bucket=False)


def dataset_config(model: str, metadata: dict):
  """The config (dataset, model, nyud_input, ...) a released model of one
  of the other benchmarks is built and fed from (tasks.create_model)."""
  ref = caffe_models.REFERENCE_MODELS[model]
  config = default_config.get_config()
  config.dataset = ref.dataset
  # 'fcn32s-color-hha' / 'siftflow-fcn16s' -> the VGG FCN variant.
  config.model = metadata['variant'].replace('siftflow-', '').replace(
      '-color-hha', '')
  if ref.dataset == 'nyud':
    config.nyud_input = NYUD_INPUTS[model]
  config.num_classes = metadata['num_classes']
  config.width = metadata['width']
  config.learn_upsampling = metadata['learn_upsampling']
  config.pad_multiple = 1
  return config


def multi_segmenter_for(params: dict, metadata: dict, model_name: str,
                        source: str) -> inference.Segmenter:
  """A Segmenter of a NYUDv2 / SIFT Flow model (preprocessed inputs, one or
  two heads) at exact image sizes."""
  config = dataset_config(model_name, metadata)
  model = tasks.create_model(config, metadata['num_classes'],
                             width=metadata['width'],
                             learn_upsampling=metadata['learn_upsampling'])
  architecture.check_params_fit(model, params, source)
  names = tasks.shipped_class_names(config.dataset)
  return inference.Segmenter(
      model=model, params=params, config=config, class_names=names,
      palette=input_pipeline.voc_palette(len(names)), checkpoint=source,
      bucket=False)


def voc_source(data_dir: str, split: str = 'seg11valid'):
  """VOC2011 (else VOC2012) under data_dir; seg11valid = the packaged list,
  any other split = that folder's ImageSets/Segmentation/<split>.txt."""
  root = voc.find_voc_root(data_dir, ('2011', '2012'))
  ids = sbd.packaged_split('seg11valid') if split == 'seg11valid' else None
  return voc.VOCLayoutSource(root, split, len(voc.VOC_CLASS_NAMES), ids=ids)


def pascal_context_source(data_dir: str, split: str = 'val'):
  """VOC2010 images with PASCAL-Context's 59-class labels (plus 0 =
  background, the models' 60 outputs) under data_dir (docs/datasets.md)."""
  return pascal_context.PASCALContextSource(
      voc.find_voc_root(data_dir, ('2010',)),
      pascal_context.find_context_root(data_dir), split)


def nyud_source(data_dir: str, split: str = 'test', mode: str = 'color'):
  return nyud.NYUDSource(nyud.find_nyud_root(data_dir), split, mode)


def siftflow_source(data_dir: str, split: str = 'test'):
  return siftflow.SIFTFlowSource(siftflow.find_siftflow_root(data_dir), split)


# Benchmarks whose evaluation data can be read here: dataset -> source(data_dir,
# split[, NYUDv2 input mode]), and the flag that names each one's folder.
SOURCES: dict[str, Callable[..., Any]] = {
    'voc': voc_source, 'pascal_context': pascal_context_source,
    'nyud': nyud_source, 'siftflow': siftflow_source}
DATA_FLAGS = {'voc': 'data_dir', 'pascal_context': 'pascal_context_dir',
              'nyud': 'nyud_dir', 'siftflow': 'siftflow_dir'}
# Models fed preprocessed inputs through evaluate.evaluate_heads.
HEADS_DATASETS = ('nyud', 'siftflow')


def _percent(scores: dict) -> dict:
  return {k: round(100 * float(scores[k]), 2) for k in SCORE_KEYS}


def run(weights_dir: str, data_dir: str, output_dir: str,
        model_names: list[str] | None = None, split: str = '',
        max_images: int = 0, progress: bool = True,
        data_dirs: dict[str, str] | None = None) -> list[Row]:
  """Evaluates every model found; writes and prints the table; returns rows.

  `data_dir` holds VOC; `data_dirs` maps 'pascal_context' / 'nyud' /
  'siftflow' to their folders (a dataset without one: its models' rows say
  which flag they need). `split` applies to the VOC models only.
  """
  folders = dict(data_dirs or {}, voc=data_dir)
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
                split=(split if ref.dataset == 'voc' else '')
                or SPLITS[ref.dataset],
                published_mean_iu=PUBLISHED_MEAN_IU.get(name),
                published_geo_acc=PUBLISHED_GEO_ACC.get(name))
    files = find_files(weights_dir, name)
    if not files:
      rows.append(Row(file=' or '.join(candidate_files(name)), status='missing',
                      **base))
      continue
    if ref.dataset != 'voc' and not folders.get(ref.dataset):
      rows += [Row(file=os.path.basename(f), status=f'needs dataset '
                   f'{ref.dataset} (--{DATA_FLAGS[ref.dataset]})', **base)
               for f in files]
      continue
    key = (ref.dataset, NYUD_INPUTS.get(name, ''))
    if key not in sources:  # Data errors stop the command.
      extra = (key[1],) if key[1] else ()  # The NYUDv2 model's inputs.
      with errors.user_file(folders[ref.dataset]):  # Unreadable folders.
        sources[key] = SOURCES[ref.dataset](folders[ref.dataset],
                                            base['split'], *extra)
    for path in files:
      rows.append(_evaluate_file(path, name, sources[key], base, max_images,
                                 progress))
  with errors.user_file(output_dir):
    write_table(rows, output_dir)
  return rows


def _evaluate_file(path, name, source, base, max_images, progress) -> Row:
  row = Row(file=os.path.basename(path), **base)
  start = time.time()
  try:
    params, metadata = convert_weights(path, name)
    if row.dataset in HEADS_DATASETS:
      segmenter = multi_segmenter_for(params, metadata, name, path)
    else:
      segmenter = segmenter_for(params, metadata, path, _class_names(row))
  except (ValueError, OSError) as e:
    row.status = f'error: {str(e).splitlines()[0]}'
    return row
  logging.info('Evaluating %s (%s) on %d images.', name, path,
               min(max_images or len(source), len(source)))
  if row.dataset in HEADS_DATASETS:
    sizes = {'label': segmenter.num_classes}
    if row.dataset == 'siftflow':
      sizes['geo_label'] = siftflow.NUM_GEO_CLASSES
    # SIFT Flow: mean acc / mean IU over the classes present in the split's
    # ground truth, as the paper scores it.
    scores = evaluate.evaluate_heads(segmenter, source, sizes, max_images,
                                     progress,
                                     present_only=row.dataset == 'siftflow')
  else:
    scores = evaluate.evaluate_segmenter(segmenter, source, max_images,
                                         progress)
  row.scores = _percent(scores)
  if 'geo_overall_acc' in scores:
    row.scores.update({'geo_' + k: v for k, v in _percent(
        {k: scores['geo_' + k] for k in SCORE_KEYS}).items()})
  if 'num_classes_scored' in scores:
    row.scores['num_classes_scored'] = int(scores['num_classes_scored'])
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
            'mean IU', 'f.w. IU', 'published mean IU', 'difference',
            'geo pixel acc', 'published geo acc', 'status']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  for r in rows:
    scores = [_cell(r.scores.get(k)) for k in SCORE_KEYS]
    diff = '' if r.difference is None else f'{r.difference:+.2f}'
    cells = [r.model, r.file, r.split, str(r.num_images or '')] + scores + [
        _cell(r.published_mean_iu), diff,
        _cell(r.scores.get('geo_overall_acc')), _cell(r.published_geo_acc),
        r.status]
    lines.append('| ' + ' | '.join(cells) + ' |')
  scored = [r for r in rows if 'num_classes_scored' in r.scores]
  for r in scored:
    lines.append(f'\n{r.model}: mean acc and mean IU over the '
                 f'{r.scores["num_classes_scored"]} classes present in the '
                 f'{r.split} ground truth (as the paper scores SIFT Flow).')
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
  data_dirs = {dataset: getattr(FLAGS, flag) for dataset, flag in
               DATA_FLAGS.items() if dataset != 'voc'}
  rows = run(FLAGS.weights_dir, FLAGS.data_dir, FLAGS.output_dir, names,
             FLAGS.split, FLAGS.max_images, data_dirs=data_dirs)
  failed = [r.file for r in rows if r.status.startswith('error')]
  if failed:
    raise ReproduceError(f'{", ".join(failed)}: could not be evaluated (see '
                         'the status column).')


def _define_flags():
  flags.DEFINE_string('weights_dir', None, 'Folder with the downloaded '
                      '.caffemodel / .pth files under their official names.')
  flags.DEFINE_string('data_dir', '', 'Folder holding the benchmarks (for the '
                      'PASCAL models: VOCdevkit/VOC2011 or VOC2011 itself).')
  flags.DEFINE_string('pascal_context_dir', '', 'For the pascalcontext-* '
                      'models: the folder holding VOCdevkit/VOC2010 and '
                      "PASCAL-Context's trainval/ .mat files "
                      '(docs/datasets.md).')
  flags.DEFINE_string('nyud_dir', '', 'For the nyud-* models: the unpacked '
                      'nyud.tar.gz (nyud/ or the folder holding it).')
  flags.DEFINE_string('siftflow_dir', '', 'For the siftflow-* models: the '
                      'unpacked SiftFlowDataset (or the folder holding it).')
  flags.DEFINE_string('output_dir', 'reproduce', 'Where to write '
                      'reproduce.md and reproduce.json.')
  flags.DEFINE_string('models', '', 'Comma-separated reference model names '
                      '(default: all released FCNs).')
  flags.DEFINE_string('split', '', "VOC evaluation split ('' = the "
                      "reference's, seg11valid; another name reads that "
                      "folder's ImageSets/Segmentation/<split>.txt). The other "
                      "benchmarks use the reference's: NYUDv2 and SIFT Flow "
                      'test, PASCAL-Context val.')
  flags.DEFINE_integer('max_images', 0, 'Evaluate only the first N images '
                       '(0 = the whole split; the published numbers need all).')
  flags.mark_flags_as_required(['weights_dir'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
