"""Tests of fcn_jax.evaluate against metrics computed independently."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fcn_jax import evaluate
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import predict
from fcn_jax import workdir as workdir_lib
from fcn_jax.data import decode
from inference_testutil import run_module
from inference_testutil import trained_workdir  # pylint: disable=unused-import


def test_evaluate_equals_metrics_of_saved_predictions(trained_workdir,
                                                      tmp_path):
  result = run_module('fcn_jax.evaluate', f'--workdir={trained_workdir}',
                      '--checkpoint=6', f'--output_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'mean IU' in result.stdout and 'rectangle' in result.stdout
  with open(tmp_path / 'eval_val_step6.json') as f:
    record = json.load(f)
  with Image.open(tmp_path / 'eval_val_step6_confusion.png') as plot:
    assert plot.size[0] > 7 * 36 and plot.size[1] > 7 * 36

  # Independently: save the val images, predict them to label PNGs, read
  # those back and score them with numpy against the labels.
  config = workdir_lib.load_config(trained_workdir)
  _, val, _ = input_pipeline.create_datasets(config)
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(len(val)):
    Image.fromarray(val[i]['image']).save(images / f'{i:03d}.png')
  segmenter = inference.load(trained_workdir, '6')
  report = predict.predict_files(segmenter,
                                 predict.list_images(str(images)),
                                 str(tmp_path / 'preds'))
  assert not report.failures
  hist = np.zeros((7, 7), np.int64)
  for i in range(len(val)):
    pred = decode.read_label_png(str(tmp_path / 'preds' / f'{i:03d}.png'))
    label = val[i]['label']
    for t, p in zip(label.ravel(), pred.ravel()):
      if t != 255:
        hist[t, p] += 1
  np.testing.assert_array_equal(np.asarray(record['confusion_matrix']), hist)
  n = hist.astype(float)
  tp, gt, pr = np.diag(n), n.sum(1), n.sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    iu = tp / (gt + pr - tp)
    expected = {'overall_acc': tp.sum() / n.sum(),
                'mean_acc': np.nanmean(tp / gt),
                'mean_iu': np.nanmean(iu),
                'fwavacc': np.nansum(gt / n.sum() * iu)}
  for key, value in expected.items():
    assert record[key] == pytest.approx(value, abs=1e-12), key
  assert record['num_images'] == len(val) == 8
  assert record['step'] == 6 and record['split'] == 'val'
  assert list(record['per_class_iu']) == list(segmenter.class_names)


def test_per_class_table_by_hand():
  # Class a: 3 of 4 right, 0 false positives: IoU 3/4; class b: IoU 2/3.
  scores = {'confusion_matrix': [[3, 1], [0, 2]],
            'per_class_iu': [0.75, 2 / 3]}
  table = evaluate.per_class_table(scores, ('a', 'b'))
  lines = table.splitlines()
  assert lines[1].split() == ['a', '75.00', '75.00', '4']
  assert lines[2].split() == ['b', '66.67', '100.00', '2']


def test_evaluate_rejects_mismatched_model(trained_workdir):
  with pytest.raises(workdir_lib.CheckpointError, match='does not fit'):
    evaluate.run(trained_workdir, '6', overrides={'model': 'fcn16s'})
  # A dataset with another class count than the checkpoint's.
  with pytest.raises(workdir_lib.CheckpointError, match='21 classes'):
    evaluate.run(trained_workdir, '6', overrides={'num_classes': 21})
