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
  assert rows['siftflow-fcn16s']['status'] == 'needs dataset siftflow'
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
