"""Tests of fcn_jax.surgery and fcn_jax.convert: layouts, surgery, parity.

The torch tests compare against independent PyTorch computations (torch's own
Conv2d / ConvTranspose2d / Linear / MaxPool2d(ceil_mode) in small
re-implementations of VGG16 and pytorch-fcn's FCNs); they skip when torch is
not installed (.ci/run installs it: pip install torch==2.13.0).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import checkpointing
from fcn_jax import convert
from fcn_jax import heatmap
from fcn_jax import layers
from fcn_jax import models
from fcn_jax import surgery
from fcn_jax import workdir as workdir_lib

try:
  import torch
  from torch import nn as tnn
  import torch.nn.functional as F
except ImportError:  # The torch tests skip.
  torch = None

needs_torch = pytest.mark.skipif(torch is None, reason='needs torch (test extra)')

WIDTH = 1 / 16  # VGG16 channels 4, 8, 16, 32, 32; fc 256.
CHANNELS = [models.scaled_channels(c, WIDTH) for _, c in models.VGG16_BLOCKS]
FC = models.scaled_channels(models.FC_CHANNELS, WIDTH)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------
# Layouts, checked against the defining formulas in numpy.
# ---------------------------------------------------------------------------


def test_conv_transpose_kernel_is_a_transpose_not_a_flip():
  rng = np.random.default_rng(0)
  c_in, c_out, k, s = 3, 2, 4, 2
  w = rng.normal(size=(c_in, c_out, k, k))  # torch ConvTranspose2d layout.
  x = rng.normal(size=(5, 4, c_in))
  # torch's definition: out[o, i*s+a, j*s+b] += x[c, i, j] * w[c, o, a, b].
  expected = np.zeros(((5 - 1) * s + k, (4 - 1) * s + k, c_out))
  for i in range(5):
    for j in range(4):
      expected[i * s:i * s + k, j * s:j * s + k] += np.einsum(
          'c,coab->abo', x[i, j], w)
  got = layers.conv_transpose(jnp.asarray(x[None], jnp.float32),
                              jnp.asarray(surgery.conv_transpose_kernel(w)), s)
  np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)


@needs_torch
def test_conv_transpose_kernel_matches_torch():
  torch.manual_seed(0)
  layer = tnn.ConvTranspose2d(3, 5, 16, stride=8, bias=False)
  x = torch.randn(1, 3, 5, 7)
  expected = layer(x).detach().numpy().transpose(0, 2, 3, 1)
  got = layers.conv_transpose(
      jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
      jnp.asarray(surgery.conv_transpose_kernel(layer.weight)), 8)
  assert rel_err(got, expected) < 1e-5


def test_linear_to_conv_kernel_reads_torch_flatten_order():
  rng = np.random.default_rng(1)
  channels, spatial, out = 3, 7, 5
  weight = rng.normal(size=(out, channels * spatial * spatial))
  features = rng.normal(size=(channels, spatial, spatial))  # torch (C, H, W).
  dense = weight @ features.reshape(-1)  # torch's flatten is C-major.
  kernel = surgery.linear_to_conv_kernel(weight, spatial)
  assert kernel.shape == (spatial, spatial, channels, out)
  conv = np.einsum('hwco,chw->o', kernel, features)  # The 1x1 conv output.
  np.testing.assert_allclose(conv, dense, rtol=1e-5)
  with pytest.raises(ValueError, match='7x7'):
    surgery.linear_to_conv_kernel(weight[:, :-1], spatial)


def test_fold_torchvision_normalization_is_exact_away_from_padding():
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)  # RGB inputs.
  bias = rng.normal(size=4).astype(np.float32)
  rgb = rng.integers(0, 256, size=(1, 9, 11, 3)).astype(np.float64)
  ours = rgb[..., ::-1] - np.asarray(models.MEAN_BGR)  # fcn_jax convention.
  tv = (rgb / 255 - surgery.TORCHVISION_MEAN_RGB) / surgery.TORCHVISION_STD_RGB

  def conv(x, k, b):
    return jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32), jnp.asarray(k), (1, 1), 'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b

  folded = surgery.fold_torchvision_normalization(kernel, bias)
  np.testing.assert_allclose(conv(ours, *folded), conv(tv, kernel, bias),
                             rtol=1e-4, atol=1e-4)
  # Our zero input is the Caffe mean colour; in torchvision units that is
  # `delta`, which torchvision_padding_value inverts: padding our input with
  # it means torchvision's zero padding.
  pad = surgery.torchvision_padding_value()
  as_tv = ((pad[::-1] + np.asarray(models.MEAN_BGR)[::-1]) / 255
           - surgery.TORCHVISION_MEAN_RGB) / surgery.TORCHVISION_STD_RGB
  np.testing.assert_allclose(as_tv, 0, atol=1e-6)
  assert np.abs(pad).max() < 1.3  # Under 1.3 grey levels.


# ---------------------------------------------------------------------------
# VGG16 surgery, against torch's dense classifier.
# ---------------------------------------------------------------------------


def torch_vgg16(num_classes=1000):
  """torchvision's VGG16 layout (same module indices), width-reduced."""
  layers, in_ch = [], 3
  for (num_convs, _), ch in zip(models.VGG16_BLOCKS, CHANNELS):
    for _ in range(num_convs):
      layers += [tnn.Conv2d(in_ch, ch, 3, padding=1), tnn.ReLU()]
      in_ch = ch
    layers.append(tnn.MaxPool2d(2, 2))
  model = tnn.Module()
  model.features = tnn.Sequential(*layers)
  model.classifier = tnn.Sequential(
      tnn.Linear(in_ch * 49, FC), tnn.ReLU(), tnn.Dropout(),
      tnn.Linear(FC, FC), tnn.ReLU(), tnn.Dropout(),
      tnn.Linear(FC, num_classes))
  model.eval()
  return model


def vgg16_state(seed=0):
  torch.manual_seed(seed)
  model = torch_vgg16()
  with torch.no_grad():  # Larger weights keep activations away from zero.
    for p in model.parameters():
      p.mul_(2.0)
  return model


def classifier_logits(params, images):
  model = heatmap.VGG16Classifier(width=WIDTH)
  return np.asarray(model.apply({'params': params}, jnp.asarray(images)))


@needs_torch
def test_surgery_224_equals_dense_classifier():
  vgg = vgg16_state()
  params = surgery.from_vgg16(vgg.state_dict(), 'caffe')
  assert params['fc6']['kernel'].shape == (7, 7, CHANNELS[-1], FC)
  assert params['fc8']['kernel'].shape == (1, 1, FC, 1000)
  x = np.random.default_rng(0).normal(0, 60, (2, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    dense = vgg.classifier(torch.flatten(
        vgg.features(torch.from_numpy(x.transpose(0, 3, 1, 2))), 1)).numpy()
  conv = classifier_logits(params, x)
  assert conv.shape == (2, 1, 1, 1000)
  assert rel_err(conv[:, 0, 0], dense) < 1e-5


@needs_torch
def test_heatmap_cells_equal_dense_classifier_on_windows():
  vgg = vgg16_state(1)
  params = surgery.from_vgg16(vgg.state_dict(), 'caffe')
  x = np.random.default_rng(1).normal(0, 60, (1, 288, 320, 3)).astype(np.float32)
  conv = classifier_logits(params, x)
  assert conv.shape == (1, 3, 4, 1000)  # (288/32 - 6, 320/32 - 6).
  with torch.no_grad():
    pool5 = vgg.features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    for i in range(3):
      for j in range(4):
        window = pool5[:, :, i:i + 7, j:j + 7]  # A 224x224 window's pool5.
        dense = vgg.classifier(torch.flatten(window, 1)).numpy()
        assert rel_err(conv[:, i, j], dense) < 1e-5, (i, j)


@needs_torch
def test_torchvision_input_convention_is_folded():
  vgg = vgg16_state(2)
  params = surgery.from_vgg16(vgg.state_dict(), 'torchvision')
  rgb = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3))
  ours = (rgb[..., ::-1] - np.asarray(models.MEAN_BGR)).astype(np.float32)
  tv = ((rgb / 255 - surgery.TORCHVISION_MEAN_RGB)
        / surgery.TORCHVISION_STD_RGB).astype(np.float32)
  # torchvision pads conv1_1 with its zero; ours pads with the Caffe mean.
  # Pad our input with the value meaning torchvision's zero and drop our
  # conv1_1 padding: then the two must agree exactly.
  padded = np.pad(ours - surgery.torchvision_padding_value(),
                  ((0, 0), (1, 1), (1, 1), (0, 0))) + surgery.torchvision_padding_value()
  exact = heatmap.VGG16Classifier(width=WIDTH, input_padding=0).apply(
      {'params': params}, jnp.asarray(padded))
  with torch.no_grad():
    dense = vgg.classifier(torch.flatten(
        vgg.features(torch.from_numpy(tv.transpose(0, 3, 1, 2))), 1)).numpy()
  assert rel_err(exact[:, 0, 0], dense) < 1e-5
  # With plain zero padding only the 1-pixel border differs, slightly.
  approx = classifier_logits(params, ours)
  assert rel_err(approx[:, 0, 0], dense) < 1e-3


def test_from_vgg16_rejects_other_state_dicts():
  with pytest.raises(ValueError, match='VGG16 state dict: missing'):
    surgery.from_vgg16({'conv1_1.weight': np.zeros((64, 3, 3, 3))})
  with pytest.raises(ValueError, match='input_format'):
    surgery.from_vgg16({}, 'bgr')


# ---------------------------------------------------------------------------
# pytorch-fcn parity.
# ---------------------------------------------------------------------------


class TorchFCN(tnn.Module if torch is not None else object):
  """pytorch-fcn's FCN32s/16s/8s/8sAtOnce forward, written for this test.

  Same parameter names and computation (Conv2d padding 100 on conv1_1,
  ceil-mode pooling, 7x7 fc6, ConvTranspose2d upsampling, fixed crops),
  reduced width.
  """

  def __init__(self, variant, n_class):
    super().__init__()
    self.variant = variant
    in_ch = 3
    for block, ((num_convs, _), ch) in enumerate(
        zip(models.VGG16_BLOCKS, CHANNELS), start=1):
      for i in range(1, num_convs + 1):
        pad = 100 if (block, i) == (1, 1) else 1
        setattr(self, f'conv{block}_{i}', tnn.Conv2d(in_ch, ch, 3, padding=pad))
        in_ch = ch
    self.fc6 = tnn.Conv2d(in_ch, FC, 7)
    self.fc7 = tnn.Conv2d(FC, FC, 1)
    self.score_fr = tnn.Conv2d(FC, n_class, 1)
    if variant == 'fcn32s':
      self.upscore = tnn.ConvTranspose2d(n_class, n_class, 64, 32, bias=False)
      return
    self.score_pool4 = tnn.Conv2d(CHANNELS[3], n_class, 1)
    self.upscore2 = tnn.ConvTranspose2d(n_class, n_class, 4, 2, bias=False)
    if variant == 'fcn16s':
      self.upscore16 = tnn.ConvTranspose2d(n_class, n_class, 32, 16, bias=False)
      return
    self.score_pool3 = tnn.Conv2d(CHANNELS[2], n_class, 1)
    self.upscore_pool4 = tnn.ConvTranspose2d(n_class, n_class, 4, 2, bias=False)
    self.upscore8 = tnn.ConvTranspose2d(n_class, n_class, 16, 8, bias=False)

  def forward(self, x):
    h, pools = x, {}
    for block, (num_convs, _) in enumerate(models.VGG16_BLOCKS, start=1):
      for i in range(1, num_convs + 1):
        h = F.relu(getattr(self, f'conv{block}_{i}')(h))
      h = F.max_pool2d(h, 2, 2, ceil_mode=True)
      pools[block] = h
    h = F.relu(self.fc7(F.relu(self.fc6(h))))
    h = self.score_fr(h)
    if self.variant == 'fcn32s':
      offset = 19
      h = self.upscore(h)
    else:
      scale4, scale3 = (0.01, 0.0001) if self.variant == 'fcn8s-atonce' else (1, 1)
      h = self.upscore2(h)
      s4 = self.score_pool4(pools[4] * scale4)
      h = h + s4[:, :, 5:5 + h.shape[2], 5:5 + h.shape[3]]
      if self.variant == 'fcn16s':
        offset = 27
        h = self.upscore16(h)
      else:
        offset = 31
        h = self.upscore_pool4(h)
        s3 = self.score_pool3(pools[3] * scale3)
        h = h + s3[:, :, 9:9 + h.shape[2], 9:9 + h.shape[3]]
        h = self.upscore8(h)
    return h[:, :, offset:offset + x.shape[2], offset:offset + x.shape[3]]


def torch_fcn(variant, n_class=5, seed=0, bilinear=False):
  torch.manual_seed(seed)
  net = TorchFCN(variant, n_class).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.startswith('upscore'):
        if bilinear:
          k = layers.bilinear_kernel(p.shape[-1], n_class)
          p.copy_(torch.from_numpy(k.transpose(2, 3, 0, 1)))
        else:  # Random, non-symmetric: a flip or transpose would show.
          p.copy_(torch.rand_like(p))
      else:
        p.mul_(2.0)
  return net


def fcn_logits(net, variant, params, x, learn_upsampling):
  model = models.get_model(variant, net.score_fr.out_channels, width=WIDTH,
                           learn_upsampling=learn_upsampling)
  ours = model.apply({'params': params}, jnp.asarray(x))
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  return np.asarray(ours), ref.transpose(0, 2, 3, 1)


@needs_torch
@pytest.mark.parametrize('variant', models.VARIANTS)
def test_torchfcn_parity_random_upsampling(variant):
  net = torch_fcn(variant)
  params = surgery.from_torchfcn(net.state_dict(), variant)
  assert surgery.has_learned_upsampling(params)
  x = np.random.default_rng(3).normal(0, 60, (1, 37, 45, 3)).astype(np.float32)
  ours, ref = fcn_logits(net, variant, params, x, learn_upsampling=True)
  assert ours.shape == ref.shape == (1, 37, 45, 5)
  assert rel_err(ours, ref) < 1e-4


@needs_torch
@pytest.mark.parametrize('variant', ['fcn32s', 'fcn8s'])
def test_torchfcn_bilinear_upsampling_uses_frozen_model(variant):
  net = torch_fcn(variant, seed=1, bilinear=True)
  params = surgery.from_torchfcn(net.state_dict(), variant)
  assert not surgery.has_learned_upsampling(params)
  x = np.random.default_rng(4).normal(0, 60, (1, 33, 29, 3)).astype(np.float32)
  ours, ref = fcn_logits(net, variant, params, x, learn_upsampling=False)
  assert rel_err(ours, ref) < 1e-4


def test_from_torchfcn_errors():
  state = {f'{n}.{p}': np.zeros((2, 2, 1, 1)) for n in surgery.CONV_NAMES
           for p in ('weight', 'bias')}
  with pytest.raises(ValueError, match='pytorch-fcn fcn32s state dict'):
    surgery.from_torchfcn(state, 'fcn32s')
  with pytest.raises(ValueError, match='Unknown FCN variant'):
    surgery.from_torchfcn(state, 'fcn4s')


@needs_torch
def test_from_torchfcn_refuses_frozen_for_learned_kernels():
  net = torch_fcn('fcn16s')
  with pytest.raises(ValueError, match='learn_upsampling=True'):
    surgery.from_torchfcn(net.state_dict(), 'fcn16s', learn_upsampling=False)
  # An 8s file read as 16s names its extra layers.
  with pytest.raises(ValueError, match='unexpected'):
    surgery.from_torchfcn(torch_fcn('fcn8s').state_dict(), 'fcn16s')


# ---------------------------------------------------------------------------
# Command line, checkpoints, checksums.
# ---------------------------------------------------------------------------


@needs_torch
def test_convert_file_round_trip(tmp_path):
  net = torch_fcn('fcn8s-atonce', seed=2, bilinear=True)
  pth = str(tmp_path / 'atonce.pth')
  torch.save({'epoch': 3, 'model_state_dict': net.state_dict()}, pth,
             _use_new_zipfile_serialization=False)
  out = str(tmp_path / 'converted')
  metadata = convert.convert_file(pth, out, variant='fcn8s-atonce')
  assert metadata['variant'] == 'fcn8s-atonce'
  assert metadata['num_classes'] == 5 and metadata['width'] == WIDTH
  assert metadata['learn_upsampling'] is False
  params, loaded_meta = workdir_lib.load_params(out)
  assert loaded_meta == metadata
  x = np.random.default_rng(5).normal(0, 60, (1, 31, 34, 3)).astype(np.float32)
  ours, ref = fcn_logits(net, 'fcn8s-atonce', params, x, False)
  assert rel_err(ours, ref) < 1e-4
  with pytest.raises(FileExistsError, match='converted'):
    convert.convert_file(pth, out, variant='fcn8s-atonce')


def test_known_file_with_wrong_checksum_is_refused(tmp_path):
  path = tmp_path / 'vgg16_from_caffe.pth'
  path.write_bytes(b'not the real weights')
  with pytest.raises(ValueError, match='md5 .* does not match .*aa75b158'):
    convert.convert_file(str(path), str(tmp_path / 'out'))
  assert surgery.verify_checksum(str(tmp_path / 'other.pth')) is None


@needs_torch
def test_vgg16_file_needs_a_format(tmp_path):
  path = str(tmp_path / 'my_vgg.pth')
  torch.save(vgg16_state().state_dict(), path)
  with pytest.raises(ValueError, match='--format=vgg16-caffe'):
    convert.convert_file(path, str(tmp_path / 'out'))
  metadata = convert.convert_file(path, str(tmp_path / 'out'), 'vgg16-caffe')
  assert metadata['variant'] == 'vgg16' and metadata['width'] == WIDTH


# ---------------------------------------------------------------------------
# Staged training: init_from.
# ---------------------------------------------------------------------------


def numpy_upsample(score, factor):
  """Bilinear transposed convolution, written out per output pixel block."""
  k = layers.bilinear_kernel_1d(2 * factor)
  kernel = np.outer(k, k)
  n, h, w, c = score.shape
  out = np.zeros((n, (h - 1) * factor + 2 * factor, (w - 1) * factor + 2 * factor, c))
  for i in range(h):
    for j in range(w):
      out[:, i * factor:i * factor + 2 * factor, j * factor:j * factor + 2 * factor] += (
          score[:, i, j, None, None, :] * kernel[None, :, :, None])
  return out


def random_params(model, seed, scale=0.05):
  """Random parameters of `model`'s structure (no XLA init to compile)."""
  shapes = jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.normal(0, scale, s.shape).astype(np.float32), shapes)


def _save_train_checkpoint(workdir, model, params):
  """A training-format checkpoint (TrainState, as train.py writes it)."""
  from fcn_jax import train  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  state = train.TrainState.create(apply_fn=model.apply, params=params,
                                  tx=optax.sgd(1e-3, momentum=0.9))
  manager = checkpointing.create_manager(str(workdir))
  checkpointing.save(manager, 10, state, {'mean_iu': 0.5})
  manager.wait_until_finished()
  manager.close()


def test_init_from_32s_checkpoint_seeds_16s(tmp_path):
  m32 = models.get_model('fcn32s', 5, width=1 / 32)
  m16 = models.get_model('fcn16s', 5, width=1 / 32)
  p32 = random_params(m32, 0)  # "Trained": every parameter non-zero.
  _save_train_checkpoint(tmp_path / 'w32', m32, p32)

  fresh16 = random_params(m16, 1)
  fresh16['score_pool4'] = jax.tree.map(np.zeros_like, fresh16['score_pool4'])
  p16 = surgery.init_from(fresh16, str(tmp_path / 'w32'))
  assert set(p16) == set(fresh16)
  for name in p32:
    for leaf in p32[name]:
      np.testing.assert_array_equal(p16[name][leaf], p32[name][leaf])
  # The new skip scorer keeps its (zero) initialization.
  np.testing.assert_array_equal(p16['score_pool4']['kernel'], 0)
  np.testing.assert_array_equal(p16['score_pool4']['bias'], 0)

  # The 16s output is the 32s coarse score taken through the 16s path:
  # bilinear x2, + score_pool4 (zero), bilinear x16, crop 27. (Not the 32s
  # output itself: x2 then x16 bilinear is a different interpolation than
  # one x32 step.)
  x = np.random.default_rng(6).normal(0, 60, (1, 40, 52, 3)).astype(np.float32)
  _, inter = m32.apply({'params': p32}, jnp.asarray(x),
                       capture_intermediates=True, mutable=['intermediates'])
  coarse = np.asarray(inter['intermediates']['score_fr']['__call__'][0])
  expected = numpy_upsample(numpy_upsample(coarse, 2), 16)[:, 27:27 + 40, 27:27 + 52]
  got = m16.apply({'params': p16}, jnp.asarray(x))
  assert rel_err(got, expected) < 1e-5


def test_init_from_reports_and_refuses_misfits(tmp_path):
  m32 = models.get_model('fcn32s', 5, width=1 / 32)
  _save_train_checkpoint(tmp_path / 'w32', m32, random_params(m32, 0))
  wider = random_params(models.get_model('fcn16s', 5, width=1 / 16), 1)
  with pytest.raises(ValueError, match='does not fit the model.*conv1_1'):
    surgery.init_from(wider, str(tmp_path / 'w32'))
  other_classes = random_params(models.get_model('fcn16s', 3, width=1 / 32), 2)
  with pytest.raises(ValueError, match='score_fr'):
    surgery.init_from(other_classes, str(tmp_path / 'w32'))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    surgery.init_from(wider, str(tmp_path / 'nowhere'))

  target = {'a': {'kernel': np.zeros(2)}, 'b': {'kernel': np.ones(3)}}
  merged, report = surgery.merge_params(
      target, {'a': {'kernel': np.full(2, 7.0)}, 'c': {'bias': np.ones(1)}})
  np.testing.assert_array_equal(merged['a']['kernel'], [7, 7])
  np.testing.assert_array_equal(merged['b']['kernel'], [1, 1, 1])
  assert report == {'copied': ['a'], 'initialized': ['b'], 'ignored': ['c']}
  learned = {'a': {'kernel': np.zeros(2)},
             'upscore': {'kernel': np.ones((4, 4, 2, 2))}}
  with pytest.raises(ValueError, match='learn_upsampling=True'):
    surgery.merge_params(target, learned)


def test_train_init_from_workdir(tmp_path, monkeypatch):
  """train_and_evaluate seeds a fresh run's state from config.init_from.

  Stops right after the state is set up (compiling the steps would only
  repeat tests/test_train.py).
  """
  from fcn_jax import train  # pylint: disable=g-import-not-at-top
  from fcn_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_tiny_config()
  m32 = models.get_model('fcn32s', 7, width=config.width)
  p32 = random_params(m32, 0)
  _save_train_checkpoint(tmp_path / 'w32', m32, p32)
  config.model = 'fcn16s'
  config.init_from = str(tmp_path / 'w32')

  seeded = []
  real_init_from = surgery.init_from

  def spy(params, path):
    seeded.append(real_init_from(params, path))
    return seeded[-1]

  class Stop(Exception):
    pass

  def stop(*unused_args):
    raise Stop

  def zero_init(model, unused_rng, image_size=32):
    # XLA on CPU takes ~20 s to compile the random initializers; the wiring
    # under test does not need them.
    shapes = jax.eval_shape(
        lambda: real_init_params(model, jax.random.key(0), image_size))
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  real_init_params = models.init_params
  monkeypatch.setattr(models, 'init_params', zero_init)
  monkeypatch.setattr(surgery, 'init_from', spy)
  monkeypatch.setattr(train, 'compile_steps', stop)
  with pytest.raises(Stop):
    train.train_and_evaluate(config, str(tmp_path / 'w16'))
  assert len(seeded) == 1
  params = jax.device_get(seeded[0])
  np.testing.assert_array_equal(params['fc7']['kernel'], p32['fc7']['kernel'])
  np.testing.assert_array_equal(params['score_fr']['bias'],
                                p32['score_fr']['bias'])
  np.testing.assert_array_equal(params['score_pool4']['kernel'], 0)
