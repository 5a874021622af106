"""Tests of FCN-AlexNet (fcn_jax/alexnet.py) against the reference net.

The PyTorch network below is written from the reference voc-fcn-alexnet
net.py / val.prototxt with torch's own layers (grouped Conv2d, MaxPool2d with
ceil_mode, LocalResponseNorm, ConvTranspose2d, the prototxt's crop offset
18); weights are random and travel through a .caffemodel written with
protobuf (caffe_testutil).
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from caffe_testutil import torch_layers
from caffe_testutil import write_caffemodel
from fcn_jax import alexnet
from fcn_jax import caffe_models
from fcn_jax import config_checks
from fcn_jax import convert
from fcn_jax import inference
from fcn_jax import layers
from fcn_jax import models
from fcn_jax import surgery
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import voc_fcn_alexnet

try:
  import torch
  from torch import nn as tnn
  import torch.nn.functional as F
except ImportError:
  torch = None

needs_torch = pytest.mark.skipif(torch is None, reason='needs torch (test extra)')

WIDTH = 1 / 4  # conv 24, 64, 96, 96, 64; fc 1024.
N_CLASS = 5


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def test_final_crop_follows_from_the_reference_geometry():
  # The reference layers, written out from net.py: (kernel, stride, pad).
  layers = [(11, 4, 100), (3, 2, 0),  # conv1, pool1 (norm1 keeps the grid)
            (5, 1, 2), (3, 2, 0),  # conv2, pool2
            (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 0),  # conv3-5, pool5
            (6, 1, 0), (1, 1, 0)]  # fc6, fc7
  # Input coordinate of map index j: a*j + b; Caffe's coord_map composes
  # x_in = s*x_out + (k-1)/2 - p layer by layer.
  a, b = Fraction(1), Fraction(0)
  for k, s, p in layers:
    a, b = a * s, b + a * (Fraction(k - 1, 2) - p)
  assert (a, b) == (32, 13)
  # upscore (63 taps, stride 32): score index j -> upscore index 32j + 31,
  # so input coordinate u sits at upscore index u + 31 - 13.
  assert 31 - b == 18 == alexnet.final_crop()
  # The crop moves with the padding one for one (conv1 is the first layer).
  assert alexnet.final_crop(input_padding=99) == 17


def test_odd_bilinear_kernel_is_caffes_filler():
  k = layers.bilinear_kernel_1d(63)
  # surgery.upsample_filt: factor 32, centre 31 for an odd size.
  want = 1 - np.abs(np.arange(63) - 31) / 32
  np.testing.assert_allclose(k, want)
  assert k[31] == 1 and np.allclose(k, k[::-1])


def test_lrn_is_caffes_across_channel_formula():
  x = np.random.default_rng(0).normal(0, 80, (1, 2, 3, 7)).astype(np.float32)
  want = np.empty_like(x)
  for c in range(7):
    window = x[..., max(0, c - 2):c + 3]
    want[..., c] = x[..., c] / (1 + 1e-4 / 5 * (window ** 2).sum(-1)) ** 0.75
  got = np.asarray(alexnet.local_response_norm(jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-5)


@needs_torch
def test_lrn_and_pool_gradients_match_torch():
  """Training needs the backward pass: LRN + ceil pooling vs torch autograd."""
  x = np.random.default_rng(1).normal(0, 80, (1, 7, 8, 6)).astype(np.float32)
  w = np.random.default_rng(2).normal(size=(1, 3, 4, 6)).astype(np.float32)
  f = lambda v: jnp.sum(alexnet.max_pool_ceil(  # pylint: disable=unnecessary-lambda-assignment
      alexnet.local_response_norm(v)) * w)
  ours = np.asarray(jax.grad(f)(jnp.asarray(x)))
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  y = F.max_pool2d(tnn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(xt), 3, 2,
                   ceil_mode=True)
  (y * torch.from_numpy(w.transpose(0, 3, 1, 2).copy())).sum().backward()
  np.testing.assert_allclose(ours, xt.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-6)


def test_logits_have_the_input_size_for_many_sizes():
  model = models.get_model('fcn-alexnet', 3, width=1 / 16)
  sizes = [(1, 1), (1, 2), (2, 1)] + [(h, w) for h in (3, 31, 32, 33, 64, 97)
                                      for w in (17, 65)] + [(375, 500)]
  params = jax.eval_shape(lambda: models.init_params(
      model, jax.random.key(0)))
  for h, w in sizes:
    out = jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params,
                         jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
    assert out.shape == (1, h, w, 3), (h, w)


def test_full_width_parameter_count_matches_the_reference_net():
  # net.py at full width: (out, in / group, k, k) weights plus biases.
  convs = [(96, 3, 11), (256, 48, 5), (384, 256, 3), (384, 192, 3),
           (256, 192, 3), (4096, 256, 6), (4096, 4096, 1), (21, 4096, 1)]
  want = sum(o * i * k * k + o for o, i, k in convs)
  model = models.get_model('fcn-alexnet', 21)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == want
  assert shapes['conv2']['kernel'].shape == (5, 5, 48, 256)  # group 2


class TorchFCNAlexNet(tnn.Module if torch is not None else object):
  """voc-fcn-alexnet's forward in PyTorch, reduced width."""

  def __init__(self, n_class):
    super().__init__()
    c = [alexnet.even_channels(n, WIDTH) for n in (96, 256, 384, 384, 256)]
    fc = models.scaled_channels(4096, WIDTH)
    self.conv1 = tnn.Conv2d(3, c[0], 11, stride=4, padding=100)
    self.conv2 = tnn.Conv2d(c[0], c[1], 5, padding=2, groups=2)
    self.conv3 = tnn.Conv2d(c[1], c[2], 3, padding=1)
    self.conv4 = tnn.Conv2d(c[2], c[3], 3, padding=1, groups=2)
    self.conv5 = tnn.Conv2d(c[3], c[4], 3, padding=1, groups=2)
    self.fc6 = tnn.Conv2d(c[4], fc, 6)
    self.fc7 = tnn.Conv2d(fc, fc, 1)
    self.score_fr = tnn.Conv2d(fc, n_class, 1)
    self.upscore = tnn.ConvTranspose2d(n_class, n_class, 63, 32, bias=False)
    self.norm = tnn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

  def forward(self, x):
    pool = lambda h: F.max_pool2d(h, 3, 2, ceil_mode=True)  # pylint: disable=unnecessary-lambda-assignment
    h = self.norm(pool(F.relu(self.conv1(x))))
    h = self.norm(pool(F.relu(self.conv2(h))))
    h = F.relu(self.conv4(F.relu(self.conv3(h))))
    h = pool(F.relu(self.conv5(h)))
    h = F.relu(self.fc7(F.relu(self.fc6(h))))
    h = self.upscore(self.score_fr(h))
    return h[:, :, 18:18 + x.shape[2], 18:18 + x.shape[3]]


def torch_alexnet(seed, bilinear):
  torch.manual_seed(seed)
  net = TorchFCNAlexNet(N_CLASS).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.startswith('upscore'):
        if bilinear:
          k = layers.bilinear_kernel(63, N_CLASS).transpose(2, 3, 0, 1)
          p.copy_(torch.from_numpy(k))
        else:
          p.copy_(torch.rand_like(p))
      elif p.dim() == 4:  # He-scaled, so the LRN sees large activations.
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
        p.normal_(0, float(np.sqrt(2 / fan_in)))
      else:
        p.uniform_(-0.5, 0.5)
  return net


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """{bilinear: (torch net, converted params, metadata)} via .caffemodel files."""
  out = {}
  for bilinear in (False, True):
    net = torch_alexnet(seed=int(bilinear), bilinear=bilinear)
    tmp = tmp_path_factory.mktemp(f'alexnet{int(bilinear)}')
    groups = {'conv2': 2, 'conv4': 2, 'conv5': 2}
    path = write_caffemodel(tmp / 'fcn-alexnet-pascal.caffemodel',
                            torch_layers(net, groups=groups))
    metadata = convert.convert_file(path, str(tmp / 'converted'))
    params, _ = workdir_lib.load_params(str(tmp / 'converted'))
    metadata['path'] = str(tmp / 'converted')
    out[bilinear] = (net, params, metadata)
  return out


@needs_torch
@pytest.mark.parametrize('bilinear,size', [(False, (1, 1)),
                                           (False, (375, 500)),
                                           (True, (37, 50))])
def test_logits_match_pytorch(converted, bilinear, size):
  net, params, metadata = converted[bilinear]
  assert metadata['variant'] == 'fcn-alexnet'
  assert metadata['width'] == WIDTH and metadata['num_classes'] == N_CLASS
  assert metadata['learn_upsampling'] is not bilinear
  model = models.get_model('fcn-alexnet', N_CLASS, width=WIDTH,
                           learn_upsampling=not bilinear)
  x = np.random.default_rng(7).normal(0, 60, (1,) + size + (3,)).astype(
      np.float32)
  ours = np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(x)))
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ref = ref.transpose(0, 2, 3, 1)
  assert ours.shape == ref.shape == (1,) + size + (N_CLASS,)
  assert rel_err(ours, ref) < 1e-4


@needs_torch
def test_converted_checkpoint_loads_for_inference(converted):
  net, params, metadata = converted[True]
  segmenter = inference.load(metadata['path'])
  assert isinstance(segmenter.model, alexnet.FCNAlexNet)
  assert (segmenter.model.width, segmenter.num_classes) == (WIDTH, N_CLASS)
  assert not segmenter.model.learn_upsampling
  image = np.random.default_rng(1).integers(0, 256, (21, 30, 3), np.uint8)
  x = image[None, ..., ::-1].astype(np.float32) - np.float32(models.MEAN_BGR)
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  labels = segmenter.segment(image)
  assert labels.shape == (21, 30)
  # Float rounding may flip a near-tie; anything else is a real difference.
  assert np.mean(labels == ref[0].argmax(0)) > 0.99
  del params


def test_surgery_from_bvlc_alexnet_and_config(tmp_path):
  """bvlc_alexnet (V1 form, InnerProduct fc6/fc7/fc8) seeds FCN-AlexNet."""
  rng = np.random.default_rng(3)
  c = [alexnet.even_channels(n, 1 / 16) for n in (96, 256, 384, 384, 256)]
  fc = models.scaled_channels(4096, 1 / 16)
  shapes = {'conv1': (c[0], 3, 11, 11), 'conv2': (c[1], c[0] // 2, 5, 5),
            'conv3': (c[2], c[1], 3, 3), 'conv4': (c[3], c[2] // 2, 3, 3),
            'conv5': (c[4], c[3] // 2, 3, 3), 'fc6': (fc, c[4] * 36),
            'fc7': (fc, fc), 'fc8': (1000, fc)}
  layers = [(n, 'InnerProduct' if n.startswith('fc') else 'Convolution',
             [rng.normal(size=s).astype(np.float32),
              rng.normal(size=s[0]).astype(np.float32)], None)
            for n, s in shapes.items()]
  path = write_caffemodel(tmp_path / 'bvlc_alexnet.caffemodel', layers,
                          legacy=True)
  out = str(tmp_path / 'bvlc_alexnet')
  metadata = convert.convert_file(path, out)
  assert metadata['variant'] == 'alexnet' and metadata['num_classes'] == 1000
  source, _ = workdir_lib.load_params(out)
  model = models.get_model('fcn-alexnet', 21, width=1 / 16)
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0))))
  merged, report = surgery.merge_params(target, source)
  assert report['ignored'] == ['fc8'] and report['initialized'] == ['score_fr']
  # fc6 reads pool5 (C x 6 x 6) in Caffe's channel-major flatten order.
  fc6 = layers[5][2][0]
  assert merged['fc6']['kernel'].shape == (6, 6, c[4], fc)
  np.testing.assert_array_equal(merged['fc6']['kernel'][1, 4, 3, 2],
                                fc6[2, 3 * 36 + 1 * 6 + 4])
  np.testing.assert_array_equal(merged['conv2']['kernel'],
                                layers[1][2][0].transpose(2, 3, 1, 0))

  config = voc_fcn_alexnet.get_config()
  config_checks.validate_config(config, num_devices=1)
  assert (config.model, config.learning_rate, config.momentum,
          config.grad_accum_steps, config.batch_size, config.weight_decay,
          config.loss_normalization, config.num_train_steps) == (
              'fcn-alexnet', 1e-4, 0.9, 20, 20, 5e-4, 'mean', 100_000)
  assert config.init_from == 'weights/bvlc_alexnet'
  built = models.create_model(config, 21)
  assert isinstance(built, alexnet.FCNAlexNet) and not built.learn_upsampling
  assert caffe_models.REFERENCE_MODELS['voc-fcn-alexnet'].arch == config.model
