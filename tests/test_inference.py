"""Tests of fcn_jax.inference: loading, bucketing, TTA, sliding window, dtype."""

import json
import os
import shutil

import jax
import numpy as np
from jax._src import monitoring as jax_monitoring
import pytest
from PIL import Image

from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import models
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default
from fcn_jax.data import decode
from inference_testutil import compile_listener
from inference_testutil import random_image
from inference_testutil import random_params
from inference_testutil import trained_workdir  # pylint: disable=unused-import

WIDTH = 1 / 32


def _segmenter(variant='fcn8s', num_classes=5, bucket=True, seed=0,
               params=None, dtype='float32'):
  model = models.get_model(variant, num_classes, width=WIDTH, dtype=dtype)
  if params is None:
    params = random_params(model, seed)
  return inference.Segmenter(
      model=model, params=params, config=default.get_tiny_config(),
      class_names=tuple(f'c{i}' for i in range(num_classes)),
      palette=input_pipeline.voc_palette(num_classes), bucket=bucket)


def _exact_logits(segmenter, image):
  """The model run on exactly the image's size, without inference.py."""
  if not hasattr(segmenter, 'test_apply'):
    model = segmenter.model
    segmenter.test_apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  x = input_pipeline.preprocess(image)[None]
  return np.asarray(segmenter.test_apply(segmenter.params, x))[0]


@pytest.fixture(scope='module')
def shared():
  """One random-weight FCN-8s (exact shapes) for the tests below, so that
  tests using the same image sizes share compilations."""
  return _segmenter(bucket=False)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_bucket_size_ladder():
  # Multiples of 32 to 256, of 64 to 512, of 128 to 1024, then of 256.
  cases = {1: 32, 32: 32, 33: 64, 255: 256, 256: 256, 257: 320, 375: 384,
           500: 512, 513: 640, 1000: 1024, 1025: 1280}
  assert {n: inference.bucket_size(n) for n in cases} == cases
  sides = [inference.bucket_size(n) for n in range(1, 513)]
  assert all(b >= n for n, b in zip(range(1, 513), sides))
  assert len(set(sides)) == 12  # 8 below 256 + 4 up to 512.


def test_load_restores_checkpoint_params(trained_workdir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  segmenter = inference.load(trained_workdir, 'latest')
  assert segmenter.checkpoint.endswith(os.path.join('checkpoints', '6'))
  assert segmenter.class_names[:2] == ('background', 'rectangle')
  # Independent path: Orbax's plain restore of the whole saved train state.
  saved = ocp.StandardCheckpointer().restore(
      os.path.join(trained_workdir, 'checkpoints', '6', 'default'))
  expected = jax.tree_util.tree_leaves_with_path(saved['params'])
  got = dict(jax.tree_util.tree_leaves_with_path(
      jax.device_get(segmenter.params)))
  assert len(expected) == len(got) > 10
  for path, value in expected:
    np.testing.assert_array_equal(got[path], value)


def test_best_checkpoint_has_highest_val_mean_iu(trained_workdir):
  records = [json.loads(line) for line in
             open(os.path.join(trained_workdir, 'metrics.jsonl'))]
  val = {r['step']: r['mean_iu'] for r in records if 'mean_iu' in r}
  best = inference.load(trained_workdir, 'best')
  step = workdir_lib.checkpoint_step(best.checkpoint)
  assert val[step] == max(val[s] for s in (3, 6))
  assert workdir_lib.checkpoint_step(
      inference.load(trained_workdir, '3').checkpoint) == 3


@pytest.mark.parametrize('height,width', [(1, 1), (45, 31)])
def test_output_has_input_size_and_matches_exact_run(shared, height, width):
  segmenter = shared
  image = random_image(np.random.default_rng(height), height, width)
  labels = segmenter.segment(image)
  assert labels.shape == (height, width)
  np.testing.assert_array_equal(
      labels, _exact_logits(segmenter, image).argmax(-1))


@pytest.mark.parametrize('variant,sizes', [
    ('fcn8s', [(45, 70), (130, 257)]),
    ('fcn32s', [(56, 111)]),
])
def test_bucket_padding_changes_only_a_border_band(variant, sizes):
  """Bucketed (padded) predictions equal exact-size ones except near the
  bottom/right edges.

  Zero padding of the mean-subtracted input is what conv1_1's own padding
  feeds the net, and every feature map of the exact-size net is a top-left
  sub-array of the padded net's. They differ only where the exact-size net
  runs out of map: its last fc7/pool cells see conv zero padding or the -inf
  of ceil-mode pooling where the padded net sees activations. Those cells are
  interpolated into at most one stride (32 px) at the bottom/right edges;
  everything else must be equal to float rounding.
  """
  exact = _segmenter(variant, bucket=False)
  padded = _segmenter(variant, bucket=True)
  rng = np.random.default_rng(0)
  worst_band, any_difference = 0, False
  for height, width in sizes:
    image = random_image(rng, height, width)
    a = _exact_logits(exact, image)
    b = padded.logits(image)
    assert b.shape == a.shape
    differs = np.abs(a - b).max(-1) > 1e-5 * np.abs(a).max()
    rows, cols = np.nonzero(differs)
    # Distance of each differing pixel from the bottom or right edge.
    band = int(np.max(np.minimum(height - rows, width - cols), initial=0))
    worst_band = max(worst_band, band)
    any_difference |= differs.any()
    agreement = (a.argmax(-1) == b.argmax(-1)).mean()
    assert agreement > 0.95, (height, width, agreement)
  assert worst_band <= 32
  # The test can see a difference: the padding is not a no-op.
  assert any_difference


def test_mixed_sizes_compile_once_per_bucket():
  segmenter = _segmenter()
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)
  rng = np.random.default_rng(1)
  sizes = [(40, 50), (50, 40), (60, 61), (33, 60), (64, 64), (40, 50), (95, 70)]
  with compile_listener(listener):
    for height, width in sizes:
      assert segmenter.segment(random_image(rng, height, width)).shape == (
          height, width)
  buckets = {(inference.bucket_size(h), inference.bucket_size(w))
             for h, w in sizes}
  assert buckets == {(64, 64), (96, 96)}
  assert segmenter.num_compilations == len(buckets)
  # JAX's own count of backend compilations agrees with ours.
  assert len(compiles) == segmenter.num_compilations


def test_compile_listener_is_removed_after_use():
  before = list(jax_monitoring.get_event_duration_listeners())
  calls = []
  with compile_listener(lambda *args, **kwargs: calls.append(args)):
    assert len(jax_monitoring.get_event_duration_listeners()) == len(before) + 1
    jax.monitoring.record_event_duration_secs('/test/event', 1.0)
  jax.monitoring.record_event_duration_secs('/test/event', 1.0)
  assert calls == [('/test/event', 1.0)]
  assert jax_monitoring.get_event_duration_listeners() == before


def _symmetric_params(model):
  params = random_params(model)
  # A horizontally symmetric kernel makes a convolution flip-equivariant.
  return jax.tree.map(lambda x: (x + x[:, ::-1]) / 2 if x.ndim == 4 else x,
                      params)


def test_tta_of_flip_symmetric_image_equals_plain(shared):
  # The net is flip-equivariant when its pooling grids are: with conv1_1's
  # 100-pixel padding the conv1 map is W + 198 wide, so W + 198 must be a
  # multiple of 32 (W = 58), and no bucket padding on the right.
  model = models.get_model('fcn8s', 5, width=WIDTH)
  segmenter = _segmenter(params=_symmetric_params(model), bucket=False)
  half = random_image(np.random.default_rng(2), 37, 29)
  image = np.concatenate([half, half[:, ::-1]], axis=1)  # 37 x 58.
  plain = segmenter.probabilities(image)
  tta = segmenter.probabilities(image, tta=True, scales=(1.0,))
  np.testing.assert_allclose(tta, plain, atol=1e-6)
  # The same image through an asymmetric model: flipping does change it.
  asymmetric = shared
  assert np.abs(asymmetric.probabilities(image, tta=True, scales=(1.0,))
                - asymmetric.probabilities(image)).max() > 1e-3


def test_flip_tta_is_the_mean_of_both_views(shared):
  segmenter = shared
  image = random_image(np.random.default_rng(3), 45, 31)
  expected = (_softmax(_exact_logits(segmenter, image))
              + _softmax(_exact_logits(segmenter, image[:, ::-1].copy()))[:, ::-1]
              ) / 2
  np.testing.assert_allclose(
      segmenter.probabilities(image, tta=True, scales=(1.0,)), expected,
      atol=1e-5)


def test_multiscale_tta_averages_rescaled_probabilities(shared):
  segmenter = shared
  image = random_image(np.random.default_rng(4), 45, 31)
  full = _softmax(_exact_logits(segmenter, image))
  # Scale 0.5: 45 x 31 -> round(22.5) x round(15.5) = 22 x 16.
  small_image = np.asarray(Image.fromarray(image).resize((16, 22),
                                                         Image.BILINEAR))
  small = _softmax(_exact_logits(segmenter, small_image))
  # Bilinear upsampling back to 40 x 30 (half-pixel centres), by hand.
  def axis_weights(n_out, n_in):
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), low] += 1 - (pos - low)
    w[np.arange(n_out), high] += pos - low
    return w
  up = np.einsum('ab,bcd,ec->aed', axis_weights(45, 22), small,
                 axis_weights(31, 16))
  got = segmenter.probabilities(image, scales=(1.0, 0.5), flip=False)
  np.testing.assert_allclose(got, (full + up) / 2, atol=1e-4)


def test_sliding_window_single_window_equals_plain(shared):
  segmenter = shared
  image = random_image(np.random.default_rng(5), 45, 31)
  np.testing.assert_array_equal(segmenter.probabilities(image, window=64),
                                segmenter.probabilities(image))


def test_sliding_window_averages_overlapping_tiles(shared):
  segmenter = shared
  image = random_image(np.random.default_rng(6), 40, 70)
  # window 32, overlap round(32 / 3) = 11, stride 21: rows [0, 8], columns
  # [0, 19, 38] (evenly spread, the last tile ending at the border).
  total = np.zeros((40, 70, 5))
  count = np.zeros((40, 70, 1))
  for top in (0, 8):
    for left in (0, 19, 38):
      crop = image[top:top + 32, left:left + 32]
      total[top:top + 32, left:left + 32] += _softmax(
          _exact_logits(segmenter, crop))
      count[top:top + 32, left:left + 32] += 1
  compiled_before = segmenter.num_compilations
  got = segmenter.probabilities(image, window=32)
  np.testing.assert_allclose(got, total / count, atol=1e-5)
  # All six tiles have one shape: at most one new compilation.
  assert segmenter.num_compilations - compiled_before <= 1


def test_bfloat16_close_to_float32(shared):
  f32 = shared
  bf16 = _segmenter(bucket=False, params=f32.params, dtype='bfloat16')
  image = random_image(np.random.default_rng(7), 45, 31)
  a, b = f32.logits(image), bf16.logits(image)
  assert b.dtype == np.float32
  # bfloat16 keeps 8 mantissa bits: about 1% relative error per op.
  assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
  assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


def test_image_conversions(tmp_path):
  rgb = random_image(np.random.default_rng(8), 6, 5)
  gray = rgb[..., 0]
  out, notes = decode.to_rgb(Image.fromarray(gray))
  np.testing.assert_array_equal(out, np.stack([gray] * 3, -1))
  assert 'grayscale' in notes[0]
  rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], -1)
  path = str(tmp_path / 'rgba.png')
  Image.fromarray(rgba).save(path)
  out, notes = decode.read_input_image(path)
  np.testing.assert_array_equal(out, rgb)
  assert 'alpha' in notes[0]
  deep = (gray.astype(np.uint16) * 257)  # 16-bit: 0..65535.
  path = str(tmp_path / 'deep.png')
  Image.fromarray(deep).save(path)
  out, notes = decode.read_input_image(path)
  np.testing.assert_array_equal(out, np.stack([gray] * 3, -1))
  assert any('16-bit' in n for n in notes)
  with pytest.raises(decode.ImageError, match='ambiguous'):
    decode.to_rgb(rgb.astype(np.float32) / 255)
  broken = tmp_path / 'broken.jpg'
  with open(os.path.join(os.path.dirname(__file__), 'data', 'voc-real-mini',
                         'JPEGImages', '2007_000129.jpg'), 'rb') as f:
    broken.write_bytes(f.read()[:3000])  # Truncated JPEG.
  with pytest.raises(decode.ImageError, match='broken.jpg'):
    decode.read_input_image(str(broken))
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  with pytest.raises(decode.ImageError, match='notes.png'):
    decode.read_input_image(str(text))


def test_load_errors(trained_workdir, tmp_path):
  with pytest.raises(workdir_lib.CheckpointError, match='no such workdir'):
    inference.load(str(tmp_path / 'missing'))
  with pytest.raises(workdir_lib.CheckpointError, match=r'available steps: \[3, 6\]'):
    inference.load(trained_workdir, '99')
  # Another architecture or class count than the checkpoint holds.
  with pytest.raises(workdir_lib.CheckpointError,
                     match=r'does not fit model fcn32s.*fcn8s'):
    inference.load(trained_workdir, config_overrides={'model': 'fcn32s'})
  with pytest.raises(workdir_lib.CheckpointError,
                     match=r'21 classes.*score_fr/bias is \(7,\)'):
    inference.load(trained_workdir, config_overrides={'num_classes': 21})
  # A corrupt checkpoint: its array data truncated.
  broken = tmp_path / 'broken'
  shutil.copytree(trained_workdir, broken)
  step_dir = broken / 'checkpoints' / '6'
  for root, _, files in os.walk(step_dir):
    for name in files:
      if os.path.basename(root) == 'd':
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(10)
  with pytest.raises(workdir_lib.CheckpointError,
                     match=r'checkpoints/6/default: cannot read'):
    inference.load(str(broken), '6')
  # A folder that is no checkpoint at all.
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(workdir_lib.CheckpointError, match='not a readable'):
    inference.load(str(empty))


def test_checkpoint_without_config_reads_architecture(trained_workdir,
                                                      tmp_path):
  # E.g. converted weights: an Orbax checkpoint with no config.json nearby.
  lone = tmp_path / 'lone_checkpoint'
  shutil.copytree(os.path.join(trained_workdir, 'checkpoints', '6'), lone)
  segmenter = inference.load(str(lone))
  reference = inference.load(trained_workdir, '6')
  assert segmenter.config.model == reference.config.model
  assert segmenter.num_classes == 7
  assert segmenter.model.width == pytest.approx(reference.model.width)
  image = random_image(np.random.default_rng(9), 20, 30)
  np.testing.assert_array_equal(segmenter.logits(image),
                                reference.logits(image))
