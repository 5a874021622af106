"""Two-stream and two-headed FCNs, their losses, scores, configs and runs."""

import functools
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fcn_jax import config_checks
from fcn_jax import evaluate
from fcn_jax import fault_tolerance
from fcn_jax import inference
from fcn_jax import metrics
from fcn_jax import models
from fcn_jax import optimizer
from fcn_jax import tasks
from fcn_jax import predict
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default
from fcn_jax.data import nyud
from fcn_jax.data import siftflow

import beyond_voc_testutil as util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 1 / 16


def _config(dataset, **kwargs):
  config = default.get_config()
  config.dataset = dataset
  for key, value in kwargs.items():
    config[key] = value
  return config


def _init(model, seed=0):
  """Random parameters of `model` (everywhere: score layers start at zero
  otherwise), drawn in numpy: compiling the initializers costs more here."""
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: (0.1 * rng.normal(size=x.shape)).astype(np.float32), shapes)


def _apply(model, params, images):
  return jax.jit(model.apply)({'params': params}, images)


def test_late_fusion_is_the_mean_of_the_two_streams_upsampled():
  config = _config('nyud', nyud_input='color-hha', model='fcn16s')
  fused_model = tasks.create_model(config, 5, width=WIDTH, fast_ops='off')
  params = _init(fused_model, 1)
  images = jax.random.normal(jax.random.key(2), (1, 21, 27, 6)) * 50
  fused = _apply(fused_model, params, images)
  # Each stream as an ordinary FCN-16s with that stream's weights.
  single = models.get_model('fcn16s', 5, width=WIDTH, fast_ops='off')
  streams = []
  for index, suffix in enumerate(('color', 'hha')):
    stream_params = {k[:-len(suffix)]: v for k, v in params.items()
                     if k.endswith(suffix)}
    assert sorted(stream_params) == sorted(jax.eval_shape(
        lambda: models.init_params(single, jax.random.key(0))))
    streams.append(_apply(single, stream_params,
                          images[..., 3 * index:3 * index + 3]))
  assert float(jnp.abs(streams[0] - streams[1]).max()) > 1e-3
  np.testing.assert_allclose(fused, 0.5 * streams[0] + 0.5 * streams[1],
                             rtol=1e-4, atol=1e-4)
  assert {'conv1_1color', 'score_frhha', 'score_pool4color'} <= set(params)


def _numpy_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  valid = labels != 255
  picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None],
                              -1)[..., 0]
  return -(picked * valid).sum() / labels.shape[0]


def test_two_headed_loss_is_the_sum_of_the_head_losses():
  model = tasks.create_model(_config('siftflow', model='fcn8s'), 33,
                             width=WIDTH, dropout_rate=0.0,
                             fast_ops='off')
  params = _init(model, 3)
  assert {'score_fr_sem', 'score_pool3_geo', 'score_pool4_sem'} <= set(params)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32) * 50
  batch = {'image': images,
           'label': rng.integers(0, 34, (2, 32, 32)) % 256,
           'geo_label': rng.choice([0, 1, 2, 255], (2, 32, 32))}
  batch['label'][batch['label'] == 33] = 255
  logits = _apply(model, params, images)
  assert logits['label'].shape == (2, 32, 32, 33)
  assert logits['geo_label'].shape == (2, 32, 32, 3)
  expected = (_numpy_cross_entropy(logits['label'], batch['label']) +
              _numpy_cross_entropy(logits['geo_label'], batch['geo_label']))
  np.testing.assert_allclose(tasks.loss(logits, batch, 'sum'), expected,
                             rtol=1e-5)

  # The training step's loss (accumulated over two halves of the batch).
  config = _config('siftflow', model='fcn8s', optimizer='sgd',
                   learning_rate=0.0)
  state = train.TrainState.create(
      apply_fn=model.apply, params=params,
      tx=optimizer.create_optimizer(config, params))
  batch = jax.tree.map(jnp.asarray, batch)
  _, step_metrics = jax.jit(functools.partial(
      train.train_step, grad_accum_steps=2))(state, batch, jax.random.key(0))
  np.testing.assert_allclose(step_metrics['loss'], expected, rtol=1e-4)


def test_present_classes_mean_iu_by_hand():
  # Rows = ground truth. Class 2 never occurs in the labels but is predicted
  # twice; class 3 occurs nowhere.
  hist = np.array([[3, 1, 0, 0],
                   [0, 4, 2, 0],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0]])
  # IU0 = 3 / (4 + 3 - 3) = 3/4, IU1 = 4 / (6 + 5 - 4) = 4/7, IU2 = 0/2.
  standard = metrics.segmentation_scores(hist)
  assert standard['mean_iu'] == pytest.approx((3 / 4 + 4 / 7 + 0) / 3)
  present = metrics.segmentation_scores(hist, present_only=True)
  assert present['mean_iu'] == pytest.approx((3 / 4 + 4 / 7) / 2)
  assert present['mean_acc'] == pytest.approx((3 / 4 + 4 / 6) / 2)
  assert present['num_classes_scored'] == 2
  assert present['overall_acc'] == standard['overall_acc'] == 7 / 10


def test_scores_of_two_heads_prefix_the_geometric_ones():
  semantic = np.array([[2, 0], [1, 1]])
  geometric = np.array([[5, 1, 0], [0, 3, 0], [0, 0, 1]])
  scores = tasks.scores_of({'label': semantic, 'geo_label': geometric})
  assert scores['geo_overall_acc'] == pytest.approx(9 / 10)
  assert scores['geo_mean_iu'] == pytest.approx((5 / 6 + 3 / 4 + 1) / 3)
  assert scores['mean_iu'] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_color_d_init_copies_conv1_1_and_averages_it_for_depth(tmp_path):
  vgg = models.get_model('fcn32s', 40, width=WIDTH, fast_ops='off')
  source = _init(vgg, 4)
  workdir_lib.save_params(str(tmp_path / 'vgg'), jax.device_get(source),
                      {'format': 'test'})
  config = _config('nyud', nyud_input='color-d', model='fcn32s',
                   init_from=str(tmp_path / 'vgg'))
  model = tasks.create_model(config, 40, width=WIDTH, fast_ops='off')
  params = tasks.init_from(_init(model, 1), config)
  kernel, base = params['conv1_1_bgrd']['kernel'], source['conv1_1']['kernel']
  np.testing.assert_allclose(kernel[:, :, :3], base, rtol=1e-6)
  np.testing.assert_allclose(kernel[:, :, 3], np.mean(base, axis=2),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(params['fc7']['kernel'], source['fc7']['kernel'])


def test_color_hha_init_transplants_each_run_into_its_stream(tmp_path):
  single = models.get_model('fcn32s', 40, width=WIDTH, fast_ops='off')
  runs = {}
  for seed, suffix in ((5, 'color'), (6, 'hha')):
    runs[suffix] = _init(single, seed)
    workdir_lib.save_params(str(tmp_path / suffix), jax.device_get(runs[suffix]),
                        {'format': 'test'})
  config = _config('nyud', nyud_input='color-hha', model='fcn32s',
                   init_from=str(tmp_path / 'color'),
                   init_from_hha=str(tmp_path / 'hha'))
  model = tasks.create_model(config, 40, width=WIDTH, fast_ops='off')
  params = tasks.init_from(_init(model, 1), config)
  for suffix, run in runs.items():
    for layer in ('conv1_1', 'conv5_3', 'fc6', 'score_fr'):
      np.testing.assert_allclose(params[layer + suffix]['kernel'],
                                 run[layer]['kernel'])


# Each reference model folder's solver: (base_lr, iterations, init source).
REFERENCE_SOLVERS = {
    'nyud_fcn32s_color': ('nyud', 'color', 'fcn32s', 1e-10, 100_000),
    'nyud_fcn32s_hha': ('nyud', 'hha', 'fcn32s', 1e-10, 100_000),
    'nyud_fcn32s_color_d': ('nyud', 'color-d', 'fcn32s', 1e-10, 100_000),
    'nyud_fcn32s_color_hha': ('nyud', 'color-hha', 'fcn32s', 1e-12, 100_000),
    'nyud_fcn16s_color_hha': ('nyud', 'color-hha', 'fcn16s', 1e-14, 100_000),
    'siftflow_fcn32s': ('siftflow', 'color', 'fcn32s', 1e-10, 100_000),
    'siftflow_fcn16s': ('siftflow', 'color', 'fcn16s', 1e-12, 100_000),
    'siftflow_fcn8s': ('siftflow', 'color', 'fcn8s', 1e-12, 100_000),
    'pascalcontext_fcn32s': ('pascal_context', 'color', 'fcn32s', 1e-10,
                             400_000),
    'pascalcontext_fcn16s': ('pascal_context', 'color', 'fcn16s', 1e-12,
                             400_000),
    'pascalcontext_fcn8s': ('pascal_context', 'color', 'fcn8s', 1e-14,
                            400_000),
}


@pytest.mark.parametrize('name', sorted(REFERENCE_SOLVERS))
def test_configs_hold_the_reference_solver_settings(name):
  dataset, mode, variant, lr, steps = REFERENCE_SOLVERS[name]
  config = importlib.import_module(f'fcn_jax.configs.{name}').get_config()
  config_checks.validate_config(config, num_devices=1)
  assert (config.dataset, tasks.input_mode(config), config.model) == (
      dataset, mode, variant)
  assert (config.learning_rate, config.num_train_steps) == (lr, steps)
  assert (config.optimizer, config.momentum, config.weight_decay,
          config.batch_size, config.loss_normalization, config.width,
          config.learn_upsampling, config.dropout_rate) == (
              'sgd', 0.99, 5e-4, 1, 'sum', 1.0, False, 0.5)
  if name == 'nyud_fcn32s_color_hha':
    assert (config.init_from, config.init_from_hha) == (
        'runs/nyud-fcn32s-color', 'runs/nyud-fcn32s-hha')


def test_bad_nyud_input_and_two_stream_variant_are_config_errors():
  config = _config('nyud', nyud_input='rgbd')
  with pytest.raises(fault_tolerance.ConfigError,
                     match=r"config.nyud_input='rgbd'"):
    config_checks.validate_config(config, num_devices=1)
  config = _config('nyud', nyud_input='color-hha', model='fcn8s')
  with pytest.raises(fault_tolerance.ConfigError,
                     match=r"config.model='fcn8s': the "
                     'two-stream'):
    config_checks.validate_config(config, num_devices=1)


def _train_from_cli(workdir, config_file, data_dir, *flags):
  command = [
      sys.executable, '-m', 'fcn_jax.main', f'--workdir={workdir}',
      f'--config=fcn_jax/configs/{config_file}', f'--config.data_dir={data_dir}',
      f'--config.width={WIDTH}', '--config.init_from=',
      '--config.num_train_steps=2', '--config.eval_every_steps=2',
      '--config.checkpoint_every_steps=2', '--config.log_every_steps=1',
      '--config.learning_rate=1e-3', '--config.data_workers=0',
      '--config.fast_ops=off', '--config.boundary_radius=0'] + list(flags)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))
  return records, result.stderr


@pytest.fixture(scope='module')
def nyud_run(tmp_path_factory):
  """A two-step RGB-HHA run from the command line (fixture and log)."""
  tmp_path = tmp_path_factory.mktemp('nyud')
  base, _ = util.write_nyud(tmp_path, {'trainval': ['1', '2'], 'test': ['3']},
                            size=(32, 32))
  records, log = _train_from_cli(tmp_path / 'run', 'nyud_fcn32s_color_hha.py',
                                 base, '--config.init_from_hha=')
  return tmp_path / 'run', base, records, log


@pytest.fixture(scope='module')
def siftflow_run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('siftflow')
  base, _ = util.write_siftflow(tmp_path, {'trainval': ['a', 'b'],
                                           'test': ['c']})
  records, log = _train_from_cli(tmp_path / 'run', 'siftflow_fcn32s.py', base)
  return tmp_path / 'run', base, records, log


def _final_val(records):
  return [r for r in records if 'mean_iu' in json.dumps(r)][-1]


def _value(record, key):
  return next(v for k, v in record.items() if k.split('/')[-1] == key)


def test_nyud_two_stream_trains_from_the_cli(nyud_run):
  _, _, records, log = nyud_run
  assert 'Dataset nyud: 40 classes, 2 train / 1 val images.' in log
  assert 'geo_mean_iu' not in json.dumps(records)


def test_nyud_two_stream_evaluates_and_predicts_with_hha(nyud_run, tmp_path):
  workdir, base, records, _ = nyud_run
  record = evaluate.run(str(workdir), output_dir=str(tmp_path / 'eval'),
                        progress=False)
  # Per image (evaluate) and padded batches (training's evaluation) agree.
  assert record['mean_iu'] == pytest.approx(
      _value(_final_val(records), 'mean_iu'), abs=1e-6)
  segmenter = inference.load(str(workdir))
  photo = base / 'data' / 'images' / 'img_3.png'
  report = predict.predict_files(segmenter, [str(photo)], str(tmp_path / 'out'),
                                 modality_dirs={'hha': str(base / 'data/hha')})
  assert not report.failures, report.failures
  source = nyud.NYUDSource(str(base), 'test', 'color-hha')
  expected = np.argmax(segmenter.head_logits(source[0]['image'])['label'], -1)
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / 'out' / 'img_3.png')), expected)
  report = predict.predict_files(segmenter, [str(photo)], str(tmp_path / 'o2'))
  assert len(report.failures) == 1 and '--hha=FOLDER' in report.failures[0]


def test_siftflow_two_heads_train_evaluate_and_predict(siftflow_run, tmp_path):
  workdir, base, records, log = siftflow_run
  assert 'classes present in the ground truth' in log
  assert 'geometric: overall_acc=' in log
  final = _final_val(records)
  record = evaluate.run(str(workdir), output_dir=str(tmp_path / 'eval'),
                        progress=False)
  for key in ('mean_iu', 'geo_mean_iu', 'geo_overall_acc',
              'num_classes_scored'):
    assert record[key] == pytest.approx(_value(final, key), abs=1e-6), key
  segmenter = inference.load(str(workdir))
  photo = base / 'Images' / util.SIFTFLOW_SUBDIR / 'c.jpg'
  report = predict.predict_files(segmenter, [str(photo)], str(tmp_path / 'out'))
  assert not report.failures, report.failures
  source = siftflow.SIFTFlowSource(str(base), 'test')
  logits = segmenter.head_logits(source[0]['image'])
  for name, key in (('c.png', 'label'), ('c_geo.png', 'geo_label')):
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / 'out' / name)),
        np.argmax(logits[key], -1))


def test_pascal_context_trains_from_the_cli(tmp_path):
  root, _ = util.write_pascal_context(tmp_path, {'train': ['a', 'b'],
                                                 'val': ['c']})
  _, log = _train_from_cli(tmp_path / 'run', 'pascalcontext_fcn32s.py', root)
  assert 'Dataset pascal_context: 60 classes, 2 train / 1 val images.' in log
