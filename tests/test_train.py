"""Training tests: the optimizer recipe, loss going down, end-to-end runs,
checkpoint round trip and resume."""

import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import checkpointing
from fcn_jax import config_checks
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import optimizer
from fcn_jax import sharding
from fcn_jax import train
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default
import inference_testutil

# train_and_evaluate compiles new jitted steps per call: the resume tests
# load the programs of the earlier runs instead of compiling them again.
pytestmark = pytest.mark.usefixtures('persistent_compile_cache')


def _tiny(**overrides):
  config = default.get_tiny_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _init_key(seed=0):
  return train.init_and_dropout_keys(seed)[0]


def test_sgd_recipe_decays_kernels_only_and_doubles_bias_rate():
  # One plain SGD step (no momentum) computed by hand: Caffe's update
  # w <- w - lr (g + wd w) for kernels, b <- b - 2 lr g for biases.
  config = _tiny(optimizer='sgd', momentum=0.0, learning_rate=0.1,
                 lr_schedule='constant', warmup_steps=0, weight_decay=0.5,
                 bias_lr_mult=2.0)
  params = {'conv1_1': {'kernel': jnp.full((1, 1, 1, 2), 2.0),
                        'bias': jnp.full((2,), 3.0)},
            'upscore2': {'kernel': jnp.full((4, 4, 1, 1), 1.0)}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optimizer.create_optimizer(config, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['conv1_1']['kernel'], -0.1 * (1 + 0.5 * 2))
  np.testing.assert_allclose(updates['conv1_1']['bias'], -0.2 * 1)
  # Upsampling filters (when learned) get no weight decay.
  np.testing.assert_allclose(updates['upscore2']['kernel'], -0.1 * 1)


def test_sgd_momentum_matches_caffe_recursion():
  # Caffe: v <- m v + lr g ; w <- w - v.  Two steps with g = 1, no decay.
  config = _tiny(optimizer='sgd', momentum=0.9, learning_rate=0.1,
                 lr_schedule='constant', warmup_steps=0, weight_decay=0.0)
  params = {'fc7': {'kernel': jnp.zeros((1, 1, 1, 1))}}
  tx = optimizer.create_optimizer(config, params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  u1, state = tx.update(grads, state, params)
  u2, state = tx.update(grads, state, params)
  assert float(u1['fc7']['kernel'].ravel()[0]) == pytest.approx(-0.1)
  assert float(u2['fc7']['kernel'].ravel()[0]) == pytest.approx(-(0.9 * 0.1 + 0.1))


def test_train_steps_lower_the_loss_on_a_fixed_batch():
  config = _tiny(learning_rate=3e-3, warmup_steps=0, lr_schedule='constant')
  mesh = sharding.create_mesh()
  train_source, _, info = input_pipeline.create_datasets(config)
  model = models.create_model(config, info.num_classes)
  state = train.create_train_state(config, model, _init_key(), mesh)
  p_train_step, _ = train.compile_steps(config, mesh)
  batch = input_pipeline.train_dataset(train_source, 4, seed=0)[0]
  batch = sharding.shard_batch({k: batch[k] for k in ('image', 'label')}, mesh)
  rng = jax.random.key(1)
  losses = []
  for _ in range(12):
    state, m = p_train_step(state, batch, rng)
    losses.append(float(m['loss']))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 12


def test_eval_step_counts_every_labelled_pixel_once():
  config = _tiny()
  mesh = sharding.create_mesh()
  _, val_source, info = input_pipeline.create_datasets(config)
  model = models.create_model(config, info.num_classes)
  state = train.create_train_state(config, model, _init_key(), mesh)
  _, p_eval_step = train.compile_steps(config, mesh)
  # 8 validation images in batches of 3: the last batch is padded.
  scores = train.evaluate(p_eval_step, state, val_source, 3, info.num_classes,
                          mesh)
  # Zero-initialized scores predict class 0 everywhere: the pixel accuracy
  # is exactly the background fraction of the split.
  labels = np.stack([val_source[i]['label'] for i in range(len(val_source))])
  assert scores['overall_acc'] == pytest.approx(np.mean(labels == 0))
  assert scores['per_class_iu'][0] == pytest.approx(np.mean(labels == 0))


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  # The session's one get_tiny_config run (the inference tests read it too).
  return inference_testutil.tiny_training_run(tmp_path_factory)


def test_end_to_end_writes_metrics_config_and_checkpoints(finished_run):
  workdir, result = finished_run
  config = _tiny()
  records = workdir_lib.read_metrics(workdir)
  train_records = [r for r in records if r['split'] == 'train']
  val_records = [r for r in records if r['split'] == 'val']
  assert [r['step'] for r in train_records] == [2, 4, 6]
  assert [r['step'] for r in val_records] == [3, 6]
  for r in train_records:
    assert np.isfinite(r['loss'])
  for key in ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc', 'per_class_iu'):
    assert key in val_records[-1]
  assert len(val_records[-1]['per_class_iu']) == 7
  assert result['mean_iu'] == pytest.approx(val_records[-1]['mean_iu'])
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['num_classes'] == 7  # -1 resolved from the dataset
  assert saved['model'] == config.model
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if d.isdigit())
  assert steps == [3, 6]
  assert os.path.isdir(result['best_checkpoint'])
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))


def test_checkpoint_round_trip_restores_identical_state(finished_run):
  workdir, _ = finished_run
  config = _tiny()
  mesh = sharding.create_mesh()
  model = models.create_model(config, 7)
  fresh = train.create_train_state(config, model, _init_key(42), mesh)
  manager = checkpointing.create_manager(workdir)
  restored = checkpointing.restore(manager, fresh, step=6)
  assert int(restored.step) == 6
  # Restoring twice gives the same bits; and differs from the fresh init.
  again = checkpointing.restore(manager, fresh, step=6)
  for a, b, c in zip(jax.tree.leaves(restored.params),
                     jax.tree.leaves(again.params),
                     jax.tree.leaves(fresh.params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, c) for a, c in zip(
      jax.tree.leaves(restored.params), jax.tree.leaves(fresh.params)))


def test_resume_continues_from_the_saved_step_to_the_same_result(
    finished_run, tmp_path):
  workdir, _ = finished_run
  # Run 3 steps, stop, then rerun to 6: identical to the uninterrupted run.
  split_dir = str(tmp_path / 'split')
  train.train_and_evaluate(_tiny(num_train_steps=3), split_dir)
  train.train_and_evaluate(_tiny(), split_dir)
  records = workdir_lib.read_metrics(split_dir)
  # The second invocation started at step 4: no step is trained twice.
  train_steps = [r['step'] for r in records if r['split'] == 'train']
  assert train_steps == [2, 3, 4, 6]
  config = _tiny()
  mesh = sharding.create_mesh()
  template = train.create_train_state(config, models.create_model(config, 7),
                                      _init_key(), mesh)
  full = checkpointing.restore(checkpointing.create_manager(workdir), template, 6)
  split = checkpointing.restore(checkpointing.create_manager(split_dir),
                                template, 6)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(split)):
    np.testing.assert_array_equal(a, b)


def test_resume_from_a_checkpoint_without_data_state(finished_run, tmp_path):
  # Checkpoints written before the iterator state was saved hold only the
  # train state; resuming reads batch s as ds[s], as the iterator would.
  workdir, _ = finished_run
  split_dir = str(tmp_path / 'split')
  train.train_and_evaluate(_tiny(num_train_steps=3), split_dir)
  data_dir = os.path.join(workdir_lib.checkpoint_dir(split_dir), '3',
                          checkpointing.DATA_ITEM)
  assert os.path.isdir(data_dir)
  shutil.rmtree(data_dir)
  train.train_and_evaluate(_tiny(), split_dir)
  config = _tiny()
  template = train.create_train_state(config, models.create_model(config, 7),
                                      _init_key(), sharding.create_mesh())
  full = checkpointing.restore(checkpointing.create_manager(workdir), template, 6)
  split = checkpointing.restore(checkpointing.create_manager(split_dir),
                                template, 6)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(split)):
    np.testing.assert_array_equal(a, b)


def test_num_classes_contradicting_the_dataset_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='num_classes=5 contradicts'):
    train.train_and_evaluate(_tiny(num_classes=5), str(tmp_path))


@pytest.mark.parametrize('key,value,message', [
    ('model', 'fcn4s', 'config.model'),
    ('optimizer', 'rmsprop', 'config.optimizer'),
    ('num_train_steps', -1, 'config.num_train_steps'),
    ('loss_normalization', 'max', 'config.loss_normalization'),
    ('data_workers', -2, r'config.data_workers=-2: must be >= 0, or -1'),
])
def test_bad_config_values_fail_before_any_work(key, value, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_tiny(**{key: value}), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


@pytest.mark.parametrize('recipe,model,lr,steps,init_from', [
    ('voc_fcn32s', 'fcn32s', 1e-10, 100_000, 'weights/vgg16_from_caffe'),
    ('voc_fcn16s', 'fcn16s', 1e-12, 100_000, 'runs/voc-fcn32s'),
    ('voc_fcn8s', 'fcn8s', 1e-14, 100_000, 'runs/voc-fcn16s'),
    ('voc_fcn8s_atonce', 'fcn8s-atonce', 1e-10, 300_000,
     'weights/vgg16_from_caffe'),
])
def test_paper_recipes_hold_the_reference_solver_settings(
    recipe, model, lr, steps, init_from):
  # The reference solvers (voc-fcn*/solver.prototxt): fixed rate for the
  # unnormalized loss, momentum 0.99, batch 1 (iter_size 1), weight decay
  # 5e-4; SBD train with seg11valid evaluation, whole images.
  config = importlib.import_module(f'fcn_jax.configs.{recipe}').get_config()
  assert (config.model, config.learning_rate, config.num_train_steps,
          config.init_from) == (model, lr, steps, init_from)
  assert (config.optimizer, config.momentum, config.lr_schedule,
          config.warmup_steps) == ('sgd', 0.99, 'constant', 0)
  assert (config.batch_size, config.loss_normalization,
          config.weight_decay) == (1, 'sum', 5e-4)
  assert (config.dataset, config.image_size, config.width,
          config.random_flip) == ('sbd', 0, 1.0, False)
  config_checks.validate_config(config, num_devices=1)


def test_run_describes_its_dataset_and_shows_predictions(finished_run):
  """dataset_info.json, learning_rate records, TensorBoard pictures."""
  from test_first_contact import read_events  # pylint: disable=g-import-not-at-top
  workdir, _ = finished_run
  config = _tiny()
  _, val_source, info = input_pipeline.create_datasets(config)
  with open(os.path.join(workdir, 'dataset_info.json')) as f:
    saved = json.load(f)
  assert saved['class_names'] == list(info.class_names)
  assert saved['num_classes'] == 7 and saved['ignore_label'] == 255
  train_records = [r for r in workdir_lib.read_metrics(workdir)
                   if r['split'] == 'train']
  assert [r['learning_rate'] for r in train_records] == [
      pytest.approx(config.learning_rate)] * 3  # The tiny config's constant.
  events = read_events(workdir)
  assert events['val/per_class_iu/background', 6] == pytest.approx(
      workdir_lib.read_metrics(workdir)[-1]['per_class_iu'][0])
  assert events['train/learning_rate', 2] == pytest.approx(config.learning_rate)
  assert ('val/confusion_matrix', 3) in events
  # The step-6 strips: input | truth | prediction of the final parameters,
  # recomputed here through the notebook API (which reads the class names
  # from dataset_info.json).
  segmenter = inference.load(workdir, 'latest', bucket=False)
  assert segmenter.class_names == info.class_names
  colours = input_pipeline.voc_palette(256)
  colours[:7] = info.palette
  for i in range(config.summary_images):
    example = val_source[i]
    strip = events[f'val/predictions/{i}', 6]
    height, width = example['label'].shape
    np.testing.assert_array_equal(strip[:, :width], example['image'])
    np.testing.assert_array_equal(strip[:, width + 4:2 * width + 4],
                                  colours[example['label']])
    np.testing.assert_array_equal(strip[:, 2 * width + 8:],
                                  colours[segmenter.segment(example['image'])])
