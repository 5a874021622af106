"""Crops, padding buckets, determinism, host slices and mixed-size evaluation."""

import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcn_jax import checkpointing
from fcn_jax import input_pipeline
from fcn_jax import losses
from fcn_jax import metrics
from fcn_jax import sharding
from fcn_jax import train
from fcn_jax.configs import default
from fcn_jax.data import transforms
from fcn_jax.data import voc

MINI = os.path.join(os.path.dirname(__file__), 'data', 'voc-real-mini')


class TinySource:
  """Small examples of mixed sizes; pixel values encode (index, row, col)."""

  def __init__(self, shapes, num_classes=3):
    self.shapes = shapes
    self.num_classes = num_classes

  def __len__(self):
    return len(self.shapes)

  def __getitem__(self, index):
    h, w = self.shapes[index]
    rng = np.random.default_rng(index)
    label = rng.integers(0, self.num_classes, (h, w)).astype(np.uint8)
    label[0, 0] = 255
    return {'image': rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
            'label': label, 'id': np.int32(index)}


def test_random_crop_or_pad_geometry():
  image = np.arange(3 * 5, dtype=np.float32).reshape(3, 5, 1)
  label = np.arange(3 * 5, dtype=np.int32).reshape(3, 5)
  # Height 3 < 4 is padded to 4 (bottom), width 5 gives left offsets 0..1.
  rng_seed = 7
  expected_left = np.random.default_rng(rng_seed)
  expected_left.integers(0, 1)  # The top offset: 4 - 4 + 1 = one choice.
  left = int(expected_left.integers(0, 2))
  out_image, out_label = transforms.random_crop_or_pad(
      image, label, 4, np.random.default_rng(rng_seed))
  assert out_image.shape == (4, 4, 1) and out_label.shape == (4, 4)
  np.testing.assert_array_equal(out_label[:3], label[:, left:left + 4])
  np.testing.assert_array_equal(out_label[3], [255] * 4)
  np.testing.assert_array_equal(out_image[3], 0)  # The mean after subtraction.
  np.testing.assert_array_equal(out_image[:3, :, 0], image[:, left:left + 4, 0])


def test_bucket_shapes():
  # VOC's sizes: landscape 500x375 and portrait 334x500 (WxH) in one batch.
  assert transforms.bucket_shape([(375, 500), (500, 334)], 32) == (512, 512)
  assert transforms.bucket_shape([(338, 500)], 32) == (352, 512)
  assert transforms.bucket_shape([(338, 500)], 1) == (338, 500)
  assert transforms.bucket_shape([(338, 500)], 32, 512) == (512, 512)


def test_padded_batch_summed_loss_equals_sum_of_per_image_losses():
  source = voc.VOCLayoutSource(MINI, 'trainval', 21)
  examples = []
  for i, (h, w) in zip((0, 1, 2), ((60, 80), (90, 50), (45, 100))):
    example = input_pipeline._preprocess_example(source[i])
    examples.append(dict(example, image=example['image'][:h, :w],
                         label=example['label'][:h, :w]))
  batch = input_pipeline.pad_and_stack(examples, pad_multiple=32)
  assert batch['image'].shape == (3, 96, 128, 3)
  logits = jax.random.normal(jax.random.key(0), (3, 96, 128, 21))
  padded = losses.pixel_cross_entropy(logits, batch['label'], 'sum') * 3
  separate = 0.0
  for i, example in enumerate(examples):
    h, w = example['label'].shape
    np.testing.assert_array_equal(batch['image'][i, :h, :w], example['image'])
    assert (batch['image'][i, h:] == 0).all() and (batch['label'][i, h:] ==
                                                   255).all()
    assert (batch['label'][i, :, w:] == 255).all()
    separate += losses.pixel_cross_entropy(logits[i:i + 1, :h, :w],
                                           example['label'][None], 'sum')
  np.testing.assert_allclose(padded, separate, rtol=1e-5)


def _dataset(seed, **kwargs):
  source = TinySource([(10, 12), (14, 9), (8, 8), (12, 16), (9, 11)])
  return input_pipeline.train_dataset(source, 2, seed, **kwargs)


def test_training_batches_are_deterministic_and_resumable():
  kwargs = dict(crop_size=8, scale_range=(0.8, 1.25), pad_multiple=32)
  first = _dataset(3, **kwargs)
  run = [first[step] for step in range(6)]
  resumed = _dataset(3, **kwargs)  # A fresh pipeline, as after a restart.
  for step in (4, 5):
    for key in ('image', 'label', 'id'):
      np.testing.assert_array_equal(resumed[step][key], run[step][key])
  other = _dataset(4, **kwargs)
  assert any(not np.array_equal(other[s]['image'], run[s]['image'])
             for s in range(6))
  # Five examples, batch 2: every epoch of the shuffled repeat visits all.
  ids = np.concatenate([b['id'] for b in run[:5]])
  assert sorted(ids[:5].tolist()) == [0, 1, 2, 3, 4]


def _assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    for key in ('image', 'label', 'id'):
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize('num_workers', [0, 2])
def test_iterator_resumes_from_the_state_in_the_checkpoint(num_workers,
                                                           tmp_path):
  kwargs = dict(crop_size=8, scale_range=(0.8, 1.25), pad_multiple=32)
  ds = _dataset(3, **kwargs)
  expected = [ds[step] for step in range(6)]  # Independent: random access.
  state = {'w': jnp.arange(3.0)}
  manager = checkpointing.create_manager(str(tmp_path))
  iterator = input_pipeline.train_iterator(ds, num_workers)
  try:
    # Worker processes (or threads) give the batches in order.
    _assert_same_batches([next(iterator) for _ in range(3)], expected[:3])
    checkpointing.save(manager, 3, state, data_iterator=iterator)
    manager.wait_until_finished()
    # Iterating on after the save must not move the saved position.
    _assert_same_batches([next(iterator), next(iterator)], expected[3:5])
  finally:
    iterator.close()
  assert checkpointing.has_data_state(manager, 3)

  resumed = input_pipeline.train_iterator(_dataset(3, **kwargs), num_workers)
  try:
    restored = checkpointing.restore(
        manager, jax.eval_shape(lambda: state), 3, resumed)
    np.testing.assert_array_equal(restored['w'], state['w'])
    _assert_same_batches([next(resumed) for _ in range(3)], expected[3:6])
  finally:
    resumed.close()
  manager.close()


def test_whole_image_batches_pad_to_a_bucket():
  batch = _dataset(0, augment=False, pad_multiple=8)[0]
  shapes = [TinySource([(10, 12), (14, 9), (8, 8), (12, 16), (9, 11)])
            .shapes[i] for i in batch['id']]
  expected = transforms.bucket_shape(shapes, 8)
  assert batch['image'].shape == (2,) + expected + (3,)
  for i, (h, w) in enumerate(shapes):
    assert (batch['label'][i, h:] == 255).all()
    assert (batch['label'][i, :, w:] == 255).all()
    assert (batch['label'][i, :h, :w] != 255).sum() == h * w - 1


def test_random_scale_uses_nearest_labels():
  source = voc.VOCLayoutSource(MINI, 'train', 21)
  ds = input_pipeline.train_dataset(source, 1, 0, augment=False,
                                    scale_range=(0.5, 0.5))
  batch = ds[0]
  original = source[int(batch['id'][0])]['label']
  h, w = original.shape
  label = batch['label'][0]
  assert label.shape == (round(h / 2), round(w / 2))
  assert set(np.unique(label)) <= set(np.unique(original))


def test_host_slices_form_the_single_host_batch():
  source = TinySource([(6, 6)] * 7)
  single = input_pipeline.train_dataset(source, 4, 1)[3]
  single_eval = list(input_pipeline.eval_batches(source, 4))
  parts, eval_parts = [], []
  for index in (0, 1):
    with mock.patch.object(jax, 'process_count', return_value=2), \
         mock.patch.object(jax, 'process_index', return_value=index):
      parts.append(input_pipeline.train_dataset(source, 4, 1)[3])
      eval_parts.append(list(input_pipeline.eval_batches(source, 4)))
  for key in ('image', 'label', 'id'):
    np.testing.assert_array_equal(
        np.concatenate([p[key] for p in parts]), single[key])
    for b in range(2):
      np.testing.assert_array_equal(
          np.concatenate([e[b][key] for e in eval_parts]), single_eval[b][key])


def _pixelwise_apply(variables, images, train=False):  # pylint: disable=unused-argument
  """A per-pixel linear classifier: padding cannot change its predictions."""
  return jnp.einsum('nhwc,ck->nhwk', images, variables['params']['w'])


def test_mixed_size_evaluation_equals_per_image_numpy_confusion():
  config = default.get_tiny_config()
  config.dataset = 'voc_dir'
  config.data_dir = MINI
  _, _, info = input_pipeline.create_datasets(config)
  source = voc.VOCLayoutSource(MINI, 'trainval', 21)  # Both orientations.
  w = np.random.default_rng(0).normal(size=(3, 21)).astype(np.float32)
  expected = np.zeros((21, 21), np.int64)
  for i in range(len(source)):
    example = source[i]
    preds = (input_pipeline.preprocess(example['image']) @ w).argmax(-1)
    valid = example['label'] != 255
    expected += np.bincount(21 * example['label'][valid].astype(np.int64)
                            + preds[valid], minlength=21 * 21).reshape(21, 21)
  assert expected.sum() == sum(np.sum(source[i]['label'] != 255)
                               for i in range(len(source)))

  mesh = sharding.create_mesh()
  state = train.TrainState.create(apply_fn=_pixelwise_apply,
                                  params={'w': jnp.asarray(w)},
                                  tx=optax.sgd(0.1))
  _, p_eval_step = train.compile_steps(config, mesh)
  options = input_pipeline.batching_options(config, info)
  assert options == {'pad_multiple': 32, 'pad_size': 0}
  hist = jnp.zeros((21, 21), jnp.int32)
  shapes = set()
  for batch in input_pipeline.eval_batches(source, 2, **options):
    shapes.add(batch['image'].shape)
    hist = p_eval_step(state, hist, {k: batch[k] for k in ('image', 'label')})
  np.testing.assert_array_equal(np.asarray(hist), expected)
  # Portrait + landscape share 512x512; landscape pairs 384x512 (H x W).
  assert shapes == {(2, 512, 512, 3), (2, 384, 512, 3)}
  scores = train.evaluate(p_eval_step, state, source, 2, 21, mesh, **options)
  want = metrics.segmentation_scores(expected)
  for key in ('overall_acc', 'mean_acc', 'mean_iu', 'fwavacc'):
    np.testing.assert_allclose(scores[key], want[key], rtol=1e-6)


def test_multi_host_whole_images_need_a_fixed_pad_size():
  with mock.patch.object(jax, 'process_count', return_value=2):
    with pytest.raises(ValueError, match='config.pad_size > 0'):
      input_pipeline.train_dataset(TinySource([(6, 6)] * 4), 2, 0,
                                   pad_multiple=32)


def test_unknown_dataset_names():
  assert input_pipeline.is_known_dataset('tfds:oxford_iiit_pet')
  assert not input_pipeline.is_known_dataset('tfds:')
  assert input_pipeline.is_known_dataset('voc_dir')
  config = default.get_tiny_config()
  config.dataset = 'imagenet'
  with pytest.raises(ValueError, match="config.dataset='imagenet'"):
    input_pipeline.create_datasets(config)
