"""Tests of the .caffemodel reader and the reference-model conversion.

Files are written with the protobuf package from caffe.proto's field numbers
(caffe_testutil), never with fcn_jax's code. The FCN parity tests compare
with the PyTorch re-implementation of pytorch-fcn's FCNs in test_convert.
"""

import os

import jax
import numpy as np
import pytest

from caffe_testutil import net_bytes
from caffe_testutil import torch_layers
from caffe_testutil import write_caffemodel
from fcn_jax import caffe_models
from fcn_jax import caffemodel
from fcn_jax import convert
from fcn_jax import layers as layers_lib
from fcn_jax import models
from fcn_jax import workdir as workdir_lib
from inference_testutil import run_module

try:
  import torch
except ImportError:
  torch = None

needs_torch = pytest.mark.skipif(torch is None, reason='needs torch (test extra)')


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'conv': rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
      'bias': rng.normal(size=(4,)).astype(np.float32),
      'ip': rng.normal(size=(5, 36)).astype(np.float32),
      'deconv': rng.normal(size=(2, 2, 4, 4)).astype(np.float32),
      'scale': np.array([0.25, -1e-30, 3e38], np.float32),
  }


def _layers(a):
  return [('data', 'Data', [], None),
          ('conv1', 'Convolution', [a['conv'], a['bias']], 2),
          ('relu1', 'ReLU', [], None),
          ('fc6', 'InnerProduct', [a['ip']], None),
          ('upscore', 'Deconvolution', [a['deconv']], None)]


@pytest.mark.parametrize('packed', [True, False], ids=['packed', 'unpacked'])
def test_reads_the_layer_form_exactly(tmp_path, packed):
  a = _arrays()
  path = write_caffemodel(tmp_path / 'net.caffemodel', _layers(a),
                          packed=packed)
  net = caffemodel.read_caffemodel(path)
  assert net.format == 'layer' and net.name == 'test_net'
  # Layers without blobs (Data, ReLU) are left out; order is kept.
  assert [(l.name, l.type) for l in net.layers] == [
      ('conv1', 'Convolution'), ('fc6', 'InnerProduct'),
      ('upscore', 'Deconvolution')]
  conv, fc6, upscore = net.layers
  assert conv.group == 2 and fc6.group is None
  for got, want in ((conv.blobs[0], a['conv']), (conv.blobs[1], a['bias']),
                    (fc6.blobs[0], a['ip']), (upscore.blobs[0], a['deconv'])):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_reads_the_v1_layers_form_with_legacy_shapes_and_doubles(tmp_path):
  a = _arrays(1)
  path = write_caffemodel(tmp_path / 'v1.caffemodel', _layers(a), legacy=True,
                          double=True)
  net = caffemodel.read_caffemodel(path)
  assert net.format == 'layers'
  assert [(l.name, l.type) for l in net.layers] == [
      ('conv1', 'Convolution'), ('fc6', 'InnerProduct'),
      ('upscore', 'Deconvolution')]
  conv, fc6, _ = net.layers
  # Legacy blobs are 4-D (num, channels, height, width), as Caffe reads them.
  assert conv.blobs[1].shape == (1, 1, 1, 4)
  assert fc6.blobs[0].shape == (1, 1, 5, 36)
  np.testing.assert_array_equal(conv.blobs[0], a['conv'])
  np.testing.assert_array_equal(conv.blobs[1].reshape(-1), a['bias'])
  np.testing.assert_array_equal(fc6.blobs[0][0, 0], a['ip'])


def test_reads_a_v0_layer_inside_v1(tmp_path):
  from caffe_testutil import messages  # pylint: disable=g-import-not-at-top
  m = messages()
  net = m['NetParameter'](name='old')
  v1 = net.layers.add()
  v1.layer.name, v1.layer.type, v1.layer.group = 'conv1', 'conv', 2
  weight = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
  v1.layer.blobs.add(num=2, channels=1, height=2, width=2).data.extend(
      weight.reshape(-1).tolist())
  parsed = caffemodel.parse_net(net.SerializeToString(), 'old.caffemodel')
  (layer,) = parsed.layers
  assert (layer.name, layer.type, layer.group) == ('conv1', 'Convolution', 2)
  np.testing.assert_array_equal(layer.blobs[0], weight)


# ---------------------------------------------------------------------------
# Malformed files: one CaffeModelError naming the file.
# ---------------------------------------------------------------------------


def _varint(value):
  out = bytearray()
  while True:
    out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
    value >>= 7
    if not value:
      return bytes(out)


def _expect_error(tmp_path, data, match):
  path = tmp_path / 'bad.caffemodel'
  path.write_bytes(data)
  with pytest.raises(caffemodel.CaffeModelError, match=match) as info:
    caffemodel.read_caffemodel(str(path))
  assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_truncated_files_are_one_clear_error(tmp_path):
  data = net_bytes(_layers(_arrays()))
  # Cut inside the last layer (the upscore blob): every cut is detected.
  last = data.rindex(b'upscore')
  for cut in range(last - 3, len(data), max(1, (len(data) - last) // 7)):
    _expect_error(tmp_path, data[:cut], 'truncated|remain|varint|shape')
  _expect_error(tmp_path, b'', 'no layers')


def test_malformed_fields_are_one_clear_error(tmp_path):
  name = b'\x0a\x03net'
  layer = lambda body: b'\xa2\x06' + _varint(len(body)) + body  # field 100
  # An absurd length is refused before anything is allocated.
  _expect_error(tmp_path, name + b'\xa2\x06' + _varint(1 << 40) + b'xx',
                'claims 1099511627776 bytes')
  _expect_error(tmp_path, name + b'\xa2\x06' + b'\xff' * 11, 'varint longer')
  # Wrong wire type: a layer name given as a varint.
  _expect_error(tmp_path, name + layer(b'\x08\x05'), 'wire type 0, expected 2')
  # Deprecated groups (wire type 3) are refused.
  _expect_error(tmp_path, name + b'\x1b\x1c', 'unsupported wire type 3')
  # A blob whose shape and data disagree.
  blob = b'\x3a\x02\x08\x03' + b'\x2a\x08' + b'\x00' * 8  # shape (3,), 2 floats
  _expect_error(tmp_path, name + layer(b'\x0a\x01c' + b'\x3a' + _varint(
      len(blob)) + blob), r'shape \(3,\) needs 3 values, the blob holds 2')
  # More axes than Caffe allows (32), as one packed list.
  shape = b'\x0a\x28' + b'\x01' * 40
  blob = b'\x3a' + _varint(len(shape)) + shape
  _expect_error(tmp_path, name + layer(b'\x3a' + _varint(len(blob)) + blob),
                'more than 32 values')
  # Packed floats whose byte count is not a multiple of 4.
  blob = b'\x2a\x03abc'
  _expect_error(tmp_path, name + layer(b'\x3a' + _varint(len(blob)) + blob),
                'whole number')
  # No weights at all (e.g. a .prototxt-derived net without blobs).
  _expect_error(tmp_path, name + layer(b'\x0a\x04relu'), 'no layer carries')


def test_random_bytes_are_refused_quickly(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(20):
    data = rng.integers(0, 256, int(rng.integers(1, 300)), np.uint8).tobytes()
    path = tmp_path / f'random{i}.caffemodel'
    path.write_bytes(data)
    try:
      net = caffemodel.read_caffemodel(str(path))
    except caffemodel.CaffeModelError as e:
      assert str(path) in str(e)
    else:  # Random bytes may parse; then they hold consistent blobs.
      assert all(b.size >= 0 for l in net.layers for b in l.blobs)


def test_convert_cli_reports_a_bad_file_in_one_line(tmp_path):
  data = net_bytes(_layers(_arrays()))
  path = tmp_path / 'fcn8s-heavy-pascal.caffemodel'
  path.write_bytes(data[:-5])
  out = tmp_path / 'out'
  result = run_module('fcn_jax.convert', f'--input={path}', f'--output={out}')
  assert result.returncode == 1
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith('error: ') and str(path) in lines[-1]
  assert 'Traceback' not in result.stderr and not out.exists()


# ---------------------------------------------------------------------------
# Mapping tables.
# ---------------------------------------------------------------------------


def _reference_net_py_names(model):
  """The weight-carrying layer names of each reference net.py, written out
  here from shelhamer/fcn.berkeleyvision.org (<model>/net.py)."""
  vgg = [f'conv{b}_{i}' for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
         for i in range(1, n + 1)] + ['fc6', 'fc7']
  heads = {
      '32s': ['score_fr', 'upscore'],
      '16s': ['score_fr', 'upscore2', 'score_pool4', 'upscore16'],
      '8s': ['score_fr', 'upscore2', 'score_pool4', 'upscore_pool4',
             'score_pool3', 'upscore8'],
  }
  if model == 'voc-fcn-alexnet':
    return ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
            'score_fr', 'upscore']
  if model == 'nyud-fcn32s-color-hha':
    return [n + m for m in ('color', 'hha') for n in vgg + ['score_fr']] + [
        'upscore']
  if model.startswith('siftflow'):
    stride = model.split('fcn')[1]
    return vgg + [f'{h}_{t}' for t in ('sem', 'geo') for h in heads[stride]]
  if model == 'vgg16':
    return vgg + ['fc8']
  if model.startswith('bvlc'):
    return ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8']
  stride = model.split('fcn')[1].split('-')[0]  # 8s-atonce, 32s-color, ...
  return vgg + heads[stride]


def test_mapping_tables_cover_the_reference_nets():
  assert len(caffe_models.REFERENCE_MODELS) == 17  # 14 FCNs + 3 base nets.
  for name, ref in caffe_models.REFERENCE_MODELS.items():
    table = caffe_models.layer_table(name)
    assert sorted(table) == sorted(_reference_net_py_names(name)), name
    assert caffe_models.guess_arch(
        list(table) + (['scale_pool4'] if 'atonce' in name else [])) == ref.arch
    assert ref.url.endswith('/' + ref.file)
  assert caffe_models.layer_table('nyud-fcn32s-color-hha')['fc6hha'] == (
      'fc6hha',)
  assert caffe_models.layer_table('siftflow-fcn16s')['upscore16_geo'] == (
      'upscore16_geo',)
  assert caffe_models.layer_table('voc-fcn8s')['score_pool3'] == (
      'score_pool3',)


def test_table_entries_are_filled_by_shape_and_layout(tmp_path):
  # Two-stream NYUD layout at reduced size: every table entry gets its arrays.
  rng = np.random.default_rng(2)
  table = caffe_models.layer_table('nyud-fcn32s-color-hha')
  layers = []
  for name in table:
    if name == 'upscore':
      k = layers_lib.bilinear_kernel(64, 3).transpose(2, 3, 0, 1)
      layers.append((name, 'Deconvolution', [k], None))
    else:
      layers.append((name, 'Convolution', [
          rng.normal(size=(3, 2, 1, 1)).astype(np.float32),
          rng.normal(size=(3,)).astype(np.float32)], None))
  net = caffemodel.parse_net(net_bytes(layers))
  params, report = caffe_models.params_from_net(net, 'fcn32s-color-hha')
  assert report == {'ignored': [], 'dropped': ['upscore']}
  w = dict((n, b) for n, _, b, _ in layers)['score_frhha'][0]
  np.testing.assert_array_equal(params['score_frhha']['kernel'],
                                w.transpose(2, 3, 1, 0))
  assert sorted(params) == sorted(n for n in table if n != 'upscore')


# ---------------------------------------------------------------------------
# Whole VGG FCN path against PyTorch.
# ---------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize('variant,legacy', [('fcn8s-atonce', False),
                                            ('fcn32s', True)])
def test_caffemodel_fcn_logits_match_pytorch(tmp_path, variant, legacy):
  """At-once: bilinear upsampling (dropped, frozen model), layer form; 32s:
  learned random upsampling (kept), V1 form under an unofficial name."""
  from test_convert import rel_err, torch_fcn, WIDTH  # pylint: disable=g-import-not-at-top
  bilinear = variant == 'fcn8s-atonce'
  net = torch_fcn(variant, seed=3, bilinear=bilinear)
  layers = torch_layers(net)
  if variant == 'fcn8s-atonce':
    layers += [('scale_pool4', 'Scale', [np.full(32, 0.01, np.float32)], None),
               ('scale_pool3', 'Scale', [np.full(16, 1e-4, np.float32)], None)]
  name = {'fcn8s-atonce': 'fcn8s-atonce-pascal.caffemodel',
          'fcn32s': 'my-fcn32s.caffemodel'}[variant]
  path = write_caffemodel(tmp_path / name, layers, legacy=legacy)
  out = str(tmp_path / 'converted')
  metadata = convert.convert_file(path, out)
  assert metadata['variant'] == variant and metadata['num_classes'] == 5
  assert metadata['width'] == WIDTH
  assert metadata['learn_upsampling'] is not bilinear
  assert metadata['caffe_format'] == ('layers' if legacy else 'layer')
  params, _ = workdir_lib.load_params(out)
  x = np.random.default_rng(5).normal(0, 60, (1, 35, 27, 3)).astype(np.float32)
  model = models.get_model(variant, 5, width=WIDTH,
                           learn_upsampling=not bilinear)
  # Jitted: one compilation instead of one per primitive.
  ours = np.asarray(jax.jit(model.apply)({'params': params}, x))
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ref = ref.transpose(0, 2, 3, 1)
  assert ours.shape == ref.shape == (1, 35, 27, 5)
  assert rel_err(ours, ref) < 1e-4


def test_atonce_scales_must_be_the_reference_constants(tmp_path):
  layers = [(n, 'Convolution', [np.zeros((2, 2, 1, 1), np.float32)], None)
            for n in caffe_models.layer_table('voc-fcn8s-atonce')]
  layers += [('scale_pool4', 'Scale', [np.full(3, 0.5, np.float32)], None),
             ('scale_pool3', 'Scale', [np.full(3, 1e-4, np.float32)], None)]
  path = write_caffemodel(tmp_path / 'atonce.caffemodel', layers)
  with pytest.raises(caffemodel.CaffeModelError,
                     match="'scale_pool4' scales by 0.5"):
    caffe_models.convert_caffemodel(path)


def test_vgg16_inner_products_become_convolutions(tmp_path):
  """VGG_ILSVRC_16_layers: V1 form, fc6/fc7/fc8 InnerProduct (1, 1, out, in)."""
  rng = np.random.default_rng(7)
  ch = [2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6]
  layers, cin = [], 3
  for name, c in zip(caffe_models.VGG16_CONVS, ch):
    layers.append((name, 'Convolution', [
        rng.normal(size=(c, cin, 3, 3)).astype(np.float32),
        rng.normal(size=(c,)).astype(np.float32)], None))
    cin = c
  fc6 = rng.normal(size=(8, 6 * 7 * 7)).astype(np.float32)
  layers += [('fc6', 'InnerProduct', [fc6, np.zeros(8, np.float32)], None),
             ('fc7', 'InnerProduct', [np.eye(8, dtype=np.float32),
                                      np.zeros(8, np.float32)], None),
             ('fc8', 'InnerProduct', [np.ones((10, 8), np.float32),
                                      np.zeros(10, np.float32)], None),
             ('prob', 'Softmax', [], None)]
  path = write_caffemodel(tmp_path / 'VGG_ILSVRC_16_layers.caffemodel', layers,
                          legacy=True)
  params, metadata = caffe_models.convert_caffemodel(path)
  assert metadata['variant'] == 'vgg16' and metadata['num_classes'] == 10
  assert metadata['reference_model'] == 'vgg16'
  # fc6 reads pool5 (C=6, 7x7) in Caffe's C-major flatten order.
  kernel = params['fc6']['kernel']
  assert kernel.shape == (7, 7, 6, 8)
  np.testing.assert_array_equal(kernel[2, 5, 4, 1], fc6[1, 4 * 49 + 2 * 7 + 5])
  np.testing.assert_array_equal(params['conv2_1']['kernel'],
                                layers[2][2][0].transpose(2, 3, 1, 0))


def test_files_of_another_architecture_are_named(tmp_path):
  layers = [(n, 'Convolution', [np.zeros((2, 2, 1, 1), np.float32)], None)
            for n in caffe_models.layer_table('voc-fcn32s')]
  path = write_caffemodel(tmp_path / 'x.caffemodel', layers)
  with pytest.raises(caffemodel.CaffeModelError,
                     match=r"not a fcn8s model: missing layers \['upscore2'"):
    caffe_models.convert_caffemodel(path, 'fcn8s')
  assert os.path.basename(path) in caffe_models.guess_model(
      path, caffemodel.read_caffemodel(path)).name
