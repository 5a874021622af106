"""Tests of python -m fcn_jax.reproduce on real VOC-layout samples.

Random-weight models are written as .caffemodel files (protobuf,
caffe_testutil) under their official names; the scores the command reports
are recomputed here from the model's logits with numpy (the reference's
score.py formulas), reading the images and labels with PIL.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from caffe_testutil import write_caffemodel
from fcn_jax import alexnet
from fcn_jax import models
from fcn_jax import reproduce
from inference_testutil import run_module
from inference_testutil import VOC_MINI

WIDTH = 1 / 16
IDS = ('2007_000129', '2011_000006')  # voc-real-mini's val.txt


def _alexnet_layers(rng):
  """(Caffe layers, the same weights in flax layout) of an FCN-AlexNet."""
  c = [alexnet.even_channels(n, WIDTH) for n in (96, 256, 384, 384, 256)]
  fc = models.scaled_channels(4096, WIDTH)
  shapes = {'conv1': (c[0], 3, 11, 11), 'conv2': (c[1], c[0] // 2, 5, 5),
            'conv3': (c[2], c[1], 3, 3), 'conv4': (c[3], c[2] // 2, 3, 3),
            'conv5': (c[4], c[3] // 2, 3, 3), 'fc6': (fc, c[4], 6, 6),
            'fc7': (fc, fc, 1, 1), 'score_fr': (21, fc, 1, 1)}
  layers, params = [], {}
  for name, shape in shapes.items():
    fan_in = int(np.prod(shape[1:]))
    w = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, shape[0]).astype(np.float32)
    group = 2 if name in ('conv2', 'conv4', 'conv5') else None
    layers.append((name, 'Convolution', [w, b], group))
    params[name] = {'kernel': jnp.asarray(w.transpose(2, 3, 1, 0)),
                    'bias': jnp.asarray(b)}
  up = np.zeros((21, 21, 63, 63), np.float32)
  f = 1 - np.abs(np.arange(63) - 31) / 32  # surgery.upsample_filt(63)
  up[np.arange(21), np.arange(21)] = np.outer(f, f)
  layers.append(('upscore', 'Deconvolution', [up], None))
  return layers, params


def _scores_by_hand(params):
  model = models.get_model('fcn-alexnet', 21, width=WIDTH)
  apply = jax.jit(model.apply)
  hist = np.zeros((21, 21), np.int64)
  for image_id in IDS:
    rgb = np.asarray(Image.open(os.path.join(VOC_MINI, 'JPEGImages',
                                             image_id + '.jpg')).convert('RGB'))
    label = np.asarray(Image.open(os.path.join(VOC_MINI, 'SegmentationClass',
                                               image_id + '.png')))
    x = rgb[..., ::-1].astype(np.float32) - np.float32(models.MEAN_BGR)
    logits = apply({'params': params}, jnp.asarray(x[None]))
    pred = np.asarray(logits)[0].argmax(-1)
    keep = label != 255
    hist += np.bincount(21 * label[keep].astype(int) + pred[keep],
                        minlength=441).reshape(21, 21)
  with np.errstate(divide='ignore', invalid='ignore'):
    iu = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    freq = hist.sum(1) / hist.sum()
    return {'overall_acc': 100 * np.diag(hist).sum() / hist.sum(),
            'mean_acc': 100 * np.nanmean(np.diag(hist) / hist.sum(1)),
            'mean_iu': 100 * np.nanmean(iu),
            'fwavacc': 100 * (freq[freq > 0] * iu[freq > 0]).sum()}


def test_reproduce_cli_table(tmp_path):
  weights = tmp_path / 'weights'
  (weights / 'voc-fcn-alexnet').mkdir(parents=True)
  layers, params = _alexnet_layers(np.random.default_rng(0))
  # In the model's own sub-folder, as in the reference repository.
  write_caffemodel(weights / 'voc-fcn-alexnet' /
                   'fcn-alexnet-pascal.caffemodel', layers)
  (weights / 'fcn8s-heavy-pascal.caffemodel').write_bytes(b'\x0a\x03ab')
  (weights / 'siftflow-fcn16s-heavy.caffemodel').write_bytes(b'unused')
  # pytorch-fcn's name for FCN-32s, but not its bytes: the checksum refuses it.
  (weights / 'fcn32s_from_caffe.pth').write_bytes(b'not the official file')
  out = tmp_path / 'out'
  result = run_module('fcn_jax.reproduce', f'--weights_dir={weights}',
                      f'--data_dir={VOC_MINI}', '--split=val',
                      f'--output_dir={out}')
  # The broken file is an error row, so the command fails, after the table.
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last == ('error: fcn32s_from_caffe.pth, fcn8s-heavy-pascal.caffemodel: '
                  'could not be evaluated (see the status column).')
  rows = {r['model']: r for r in json.loads(
      (out / 'reproduce.json').read_text())['rows']}
  assert list(rows) == reproduce.reproducible_models()
  assert rows['voc-fcn16s']['status'] == 'missing'
  assert rows['voc-fcn16s']['file'] == ('fcn16s-heavy-pascal.caffemodel or '
                                        'fcn16s_from_caffe.pth')
  assert rows['voc-fcn32s']['file'] == 'fcn32s_from_caffe.pth'
  assert 'does not match the official' in rows['voc-fcn32s']['status']
  assert rows['voc-fcn8s']['status'].startswith('error: ')
  assert 'fcn8s-heavy-pascal.caffemodel' in rows['voc-fcn8s']['status']
  assert rows['siftflow-fcn16s']['status'] == ('needs dataset siftflow '
                                             '(--siftflow_dir)')
  assert rows['nyud-fcn32s-color-hha']['status'] == 'missing'

  row = rows['voc-fcn-alexnet']
  assert row['status'] == 'ok' and row['num_images'] == 2
  want = _scores_by_hand(params)
  for key, value in want.items():
    assert abs(row['scores'][key] - value) < 0.006, (key, row['scores'], want)
  assert row['published_mean_iu'] == 48.0
  assert abs(row['difference'] - (want['mean_iu'] - 48.0)) < 0.011
  # The printed table is the Markdown file.
  table = (out / 'reproduce.md').read_text()
  assert table.strip() in result.stdout
  line = next(l for l in table.splitlines() if '| voc-fcn-alexnet |' in l)
  assert f'| {want["mean_iu"]:.2f} |' in line and '| 48.00 |' in line
  assert '| voc-fcn16s | fcn16s-heavy-pascal.caffemodel or ' in table


# ---------------------------------------------------------------------------
# The other benchmarks: PASCAL-Context, NYUDv2 (two streams), SIFT Flow
# (two heads), evaluated in-process on tiny folders in their real formats.

# The reference data layers' means (BGR; HHA in file order), typed here.
NYUD_MEAN_BGR = np.array([116.190, 97.203, 92.318], np.float32)
NYUD_MEAN_HHA = np.array([132.431, 94.076, 118.477], np.float32)
SIFTFLOW_MEAN_BGR = np.array([114.578, 115.294, 108.353], np.float32)


def _caffe_bilinear(size, channels):
  """Caffe's bilinear filler / surgery.upsample_filt, (in, out, k, k)."""
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 else factor - 0.5
  f = 1 - np.abs(np.arange(size) - center) / factor
  w = np.zeros((channels, channels, size, size), np.float32)
  w[np.arange(channels), np.arange(channels)] = np.outer(f, f)
  return w


def _random_vgg_file(path, model_name, model, rng):
  """Writes a random-weight .caffemodel with the reference's layer names for
  `model` (a reduced-width flax module, used for the shapes only); returns the
  same weights as flax params, transposed here."""
  from fcn_jax import caffe_models
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  layers, params = [], {}
  for name in caffe_models.layer_table(model_name):
    if name.startswith('upscore'):  # Frozen bilinear (the model's own).
      base = name[:-4] if name.endswith(('_sem', '_geo')) else name
      size = {'upscore': 64, 'upscore2': 4, 'upscore_pool4': 4,
              'upscore16': 32, 'upscore8': 16}[base]
      channels = 3 if name.endswith('_geo') else model.num_classes
      layers.append((name, 'Deconvolution', [_caffe_bilinear(size, channels)],
                     None))
      continue
    kh, kw, cin, cout = shapes[name]['kernel'].shape
    w = rng.normal(0, np.sqrt(2 / (kh * kw * cin)),
                   (cout, cin, kh, kw)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, cout).astype(np.float32)
    layers.append((name, 'Convolution', [w, b], None))
    params[name] = {'kernel': jnp.asarray(w.transpose(2, 3, 1, 0)),
                    'bias': jnp.asarray(b)}
  write_caffemodel(path, layers)
  return params


def _hist_scores(hist, present_only=False):
  with np.errstate(divide='ignore', invalid='ignore'):
    iu = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    acc = np.diag(hist) / hist.sum(1)
  keep = hist.sum(1) > 0 if present_only else np.ones(len(hist), bool)
  freq = hist.sum(1) / hist.sum()
  return {'overall_acc': 100 * np.diag(hist).sum() / hist.sum(),
          'mean_acc': 100 * np.nanmean(acc[keep]),
          'mean_iu': 100 * np.nanmean(iu[keep]),
          'fwavacc': 100 * (freq[freq > 0] * iu[freq > 0]).sum()}


def _add(hist, label, logits):
  n = len(hist)
  keep = label < n
  hist += np.bincount(n * label[keep].astype(int) + logits.argmax(-1)[keep],
                      minlength=n * n).reshape(n, n)


def test_reproduce_other_benchmarks(tmp_path):
  from beyond_voc_testutil import write_nyud, write_pascal_context
  from beyond_voc_testutil import SIFTFLOW_SUBDIR, write_siftflow
  import scipy.io
  from fcn_jax import multi_models
  from fcn_jax.data import pascal_context
  rng = np.random.default_rng(1)
  weights = tmp_path / 'weights'
  weights.mkdir()
  # Tiny datasets; PASCAL-Context labels drawn from the raw values of a few
  # 59-class names and some that map to background.
  table = pascal_context.raw_to_task_table()
  raw_values = list(np.flatnonzero(table)[:6]) + [0, 1]
  ctx_root, ctx_raw = write_pascal_context(
      tmp_path / 'ctx', {'val': ['2008_000002', '2008_000003']},
      values=raw_values)
  nyud_base, nyud_raw = write_nyud(tmp_path / 'nyud', {'test': ['0001']})
  sift_base, sift_raw = write_siftflow(tmp_path / 'sift', {'test': ['a1']})
  # Only a few semantic classes present (0 = void): the others must not
  # count in the mean IU.
  semantic = rng.integers(0, 6, (32, 32)).astype(np.float64)
  scipy.io.savemat(sift_base / 'SemanticLabels' / SIFTFLOW_SUBDIR / 'a1.mat',
                   {'S': semantic})
  sift_raw['a1']['semantic'] = semantic

  ctx_model = models.get_model('fcn32s', 60, width=WIDTH)
  nyud_model = multi_models.LateFusionFCN(
      variant='fcn32s', num_classes=40, width=WIDTH, input_channels=6,
      streams=('color', 'hha'))
  sift_model = multi_models.TwoHeadFCN(
      variant='fcn16s', num_classes=33, width=WIDTH,
      heads=(('label', 33, '_sem'), ('geo_label', 3, '_geo')))
  ctx_params = _random_vgg_file(
      weights / 'pascalcontext-fcn32s-heavy.caffemodel',
      'pascalcontext-fcn32s', ctx_model, np.random.default_rng(2))
  nyud_params = _random_vgg_file(
      weights / 'nyud-fcn32s-color-hha-heavy.caffemodel',
      'nyud-fcn32s-color-hha', nyud_model, np.random.default_rng(1))
  sift_params = _random_vgg_file(weights / 'siftflow-fcn16s-heavy.caffemodel',
                                 'siftflow-fcn16s', sift_model,
                                 np.random.default_rng(3))
  rows = {r.model: r for r in reproduce.run(
      str(weights), '', str(tmp_path / 'out'), progress=False,
      data_dirs={'pascal_context': str(ctx_root), 'nyud': str(nyud_base),
                 'siftflow': str(sift_base)})}
  for name in ('nyud-fcn32s-color', 'siftflow-fcn8s', 'pascalcontext-fcn8s',
               'voc-fcn8s'):
    assert rows[name].status == 'missing', name

  def check(row, want, published):
    assert row.status == 'ok', row.status
    for key, value in want.items():
      assert abs(row.scores[key] - value) < 0.006, (key, row.scores, want)
    assert row.published_mean_iu == published
    assert abs(row.difference - (want['mean_iu'] - published)) < 0.011

  # PASCAL-Context: RGB with the ImageNet mean, labels by the 400 -> 59 table.
  hist = np.zeros((60, 60), np.int64)
  ctx_apply = jax.jit(ctx_model.apply)
  for image_id, label_map in ctx_raw.items():
    rgb = np.asarray(Image.open(ctx_root / 'VOCdevkit' / 'VOC2010' /
                                'JPEGImages' / f'{image_id}.jpg'))
    x = rgb[..., ::-1].astype(np.float32) - np.float32(models.MEAN_BGR)
    logits = np.asarray(ctx_apply({'params': ctx_params}, x[None]))[0]
    _add(hist, table[label_map], logits)
  check(rows['pascalcontext-fcn32s'], _hist_scores(hist), 31.8)
  assert rows['pascalcontext-fcn32s'].split == 'val'

  # NYUDv2 RGB-HHA: BGR - mean and HHA - mean, two streams; labels - 1.
  raw = nyud_raw['0001']
  label = raw['label'].astype(int) - 1 + 256 * (raw['label'] == 0)
  nyud_scores = []
  for hha in (raw['hha'], raw['hha'][..., ::-1]):  # As released; reversed.
    x = np.concatenate([raw['color'][..., ::-1] - NYUD_MEAN_BGR,
                        hha - NYUD_MEAN_HHA], -1).astype(np.float32)
    logits = np.asarray(nyud_model.apply({'params': nyud_params}, x[None]))[0]
    hist = np.zeros((40, 40), np.int64)
    _add(hist, label, logits)
    nyud_scores.append(_hist_scores(hist))
  check(rows['nyud-fcn32s-color-hha'], nyud_scores[0], 32.8)
  # The fixture tells the HHA stream's channel order apart.
  assert abs(nyud_scores[0]['overall_acc'] - nyud_scores[1]['overall_acc']) > .1

  # SIFT Flow: semantic over present classes, geometric pixel accuracy.
  rgb = np.asarray(Image.open(sift_base / 'Images' / SIFTFLOW_SUBDIR /
                              'a1.jpg'))
  x = (rgb[..., ::-1] - SIFTFLOW_MEAN_BGR).astype(np.float32)
  out = sift_model.apply({'params': sift_params}, x[None])
  sem = sift_raw['a1']['semantic'].astype(int) - 1
  geo = np.maximum(sift_raw['a1']['geometric'].astype(int), 0) - 1
  hists = {'label': np.zeros((33, 33), np.int64),
           'geo_label': np.zeros((3, 3), np.int64)}
  for key, label in (('label', sem), ('geo_label', geo)):
    _add(hists[key], np.where(label < 0, 255, label), np.asarray(out[key])[0])
  row = rows['siftflow-fcn16s']
  check(row, _hist_scores(hists['label'], present_only=True), 39.5)
  assert row.scores['num_classes_scored'] == int(
      (hists['label'].sum(1) > 0).sum()) == 5
  geo_acc = _hist_scores(hists['geo_label'])['overall_acc']
  assert abs(row.scores['geo_overall_acc'] - geo_acc) < 0.006
  assert row.published_geo_acc == 94.3
  table_md = (tmp_path / 'out' / 'reproduce.md').read_text()
  line = next(l for l in table_md.splitlines() if '| siftflow-fcn16s |' in l)
  assert f'| {geo_acc:.2f} | 94.30 | ok |' in line
  assert 'classes present in the test ground truth' in table_md
