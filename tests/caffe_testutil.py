"""Writes .caffemodel files for the tests, independently of fcn_jax's reader.

The messages are built with the `protobuf` package from a schema written
here with caffe.proto's field numbers (BVLC/caffe src/caffe/proto/
caffe.proto), so the bytes come from Google's encoder, not from the code
under test.
"""

import functools

import numpy as np
import pytest

pb = pytest.importorskip('google.protobuf')
from google.protobuf import descriptor_pb2  # pylint: disable=g-import-not-at-top
from google.protobuf import descriptor_pool  # pylint: disable=g-import-not-at-top
from google.protobuf import message_factory  # pylint: disable=g-import-not-at-top

_F = descriptor_pb2.FieldDescriptorProto

# caffe.proto, reduced to the fields the tests write:
# (message, [(name, number, type, label, type_name, packed)]).
_SCHEMA = [
    ('BlobShape', [('dim', 1, _F.TYPE_INT64, 'rep', None, True)]),
    ('BlobProto', [
        ('shape', 7, _F.TYPE_MESSAGE, 'opt', 'BlobShape', None),
        ('data', 5, _F.TYPE_FLOAT, 'rep', None, 'PACKED'),
        ('double_data', 8, _F.TYPE_DOUBLE, 'rep', None, 'PACKED'),
        ('num', 1, _F.TYPE_INT32, 'opt', None, None),
        ('channels', 2, _F.TYPE_INT32, 'opt', None, None),
        ('height', 3, _F.TYPE_INT32, 'opt', None, None),
        ('width', 4, _F.TYPE_INT32, 'opt', None, None)]),
    ('ConvolutionParameter', [
        ('num_output', 1, _F.TYPE_UINT32, 'opt', None, None),
        ('group', 5, _F.TYPE_UINT32, 'opt', None, None)]),
    ('LayerParameter', [
        ('name', 1, _F.TYPE_STRING, 'opt', None, None),
        ('type', 2, _F.TYPE_STRING, 'opt', None, None),
        ('bottom', 3, _F.TYPE_STRING, 'rep', None, None),
        ('top', 4, _F.TYPE_STRING, 'rep', None, None),
        ('blobs', 7, _F.TYPE_MESSAGE, 'rep', 'BlobProto', None),
        ('convolution_param', 106, _F.TYPE_MESSAGE, 'opt',
         'ConvolutionParameter', None)]),
    ('V0LayerParameter', [
        ('name', 1, _F.TYPE_STRING, 'opt', None, None),
        ('type', 2, _F.TYPE_STRING, 'opt', None, None),
        ('group', 9, _F.TYPE_UINT32, 'opt', None, None),
        ('blobs', 50, _F.TYPE_MESSAGE, 'rep', 'BlobProto', None)]),
    ('V1LayerParameter', [
        ('layer', 1, _F.TYPE_MESSAGE, 'opt', 'V0LayerParameter', None),
        ('bottom', 2, _F.TYPE_STRING, 'rep', None, None),
        ('name', 4, _F.TYPE_STRING, 'opt', None, None),
        ('type', 5, _F.TYPE_INT32, 'opt', None, None),  # enum LayerType
        ('blobs', 6, _F.TYPE_MESSAGE, 'rep', 'BlobProto', None),
        ('convolution_param', 10, _F.TYPE_MESSAGE, 'opt',
         'ConvolutionParameter', None)]),
    ('NetParameter', [
        ('name', 1, _F.TYPE_STRING, 'opt', None, None),
        ('layers', 2, _F.TYPE_MESSAGE, 'rep', 'V1LayerParameter', None),
        ('layer', 100, _F.TYPE_MESSAGE, 'rep', 'LayerParameter', None)]),
]

# V1LayerParameter.LayerType values (caffe.proto).
V1_TYPES = {'Convolution': 4, 'Deconvolution': 39, 'InnerProduct': 14,
            'ReLU': 18, 'Pooling': 17, 'Data': 5, 'LRN': 15, 'Dropout': 6,
            'Softmax': 20}


@functools.lru_cache(maxsize=None)
def messages(packed: bool = True):
  """Message classes of the schema; `packed`: caffe.proto's [packed = true]
  on BlobProto.data / double_data (False writes one field per float, as
  proto2 does without the option)."""
  file = descriptor_pb2.FileDescriptorProto(
      name=f'caffe_test_{packed}.proto', package=f'caffetest{int(packed)}',
      syntax='proto2')
  for message_name, fields in _SCHEMA:
    message = file.message_type.add(name=message_name)
    for name, number, type_, label, type_name, pack in fields:
      field = message.field.add(
          name=name, number=number, type=type_,
          label=_F.LABEL_REPEATED if label == 'rep' else _F.LABEL_OPTIONAL)
      if type_name:
        field.type_name = f'.{file.package}.{type_name}'
      if pack is True or (pack == 'PACKED' and packed):
        field.options.packed = True
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return {name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f'{file.package}.{name}'))
          for name, _ in _SCHEMA}


def _fill_blob(blob, array, legacy_shape: bool, double: bool):
  array = np.asarray(array)
  if legacy_shape:
    dims = (1,) * (4 - array.ndim) + array.shape
    blob.num, blob.channels, blob.height, blob.width = dims
  else:
    blob.shape.dim.extend(array.shape)
  if double:
    blob.double_data.extend(array.astype(np.float64).reshape(-1).tolist())
  else:
    blob.data.extend(array.astype(np.float32).reshape(-1).tolist())


def net_bytes(layers, legacy: bool = False, packed: bool = True,
              double: bool = False, name: str = 'test_net') -> bytes:
  """A serialized NetParameter.

  Args:
    layers: (name, type, [arrays], group or None) tuples; layers with no
      arrays stand for ReLU, Pooling, ... (no blobs).
    legacy: the V1 form: the `layers` field (2), enum types, blobs with
      num/channels/height/width (the VGG16 and AlexNet files' format);
      otherwise `layer` (100) with string types and BlobShape.
    packed: packed float data (caffe.proto's) or one field per value.
    double: write double_data instead of data.
  """
  m = messages(packed)
  net = m['NetParameter'](name=name)
  for layer_name, type_, arrays, group in layers:
    if legacy:
      layer = net.layers.add(name=layer_name, type=V1_TYPES[type_])
    else:
      layer = net.layer.add(name=layer_name, type=type_)
    layer.bottom.append('data')
    for array in arrays:
      _fill_blob(layer.blobs.add(), array, legacy, double)
    if group is not None:
      layer.convolution_param.group = group
  return net.SerializeToString()


def write_caffemodel(path, layers, **kwargs) -> str:
  with open(path, 'wb') as f:
    f.write(net_bytes(layers, **kwargs))
  return str(path)


def torch_layers(net, types=None, groups=None):
  """(name, type, [weight, bias]) layers of a torch module's named children
  (Conv2d -> Convolution, ConvTranspose2d -> Deconvolution; Caffe's blob
  layouts equal torch's)."""
  types, groups = types or {}, groups or {}
  layers = []
  for name, module in net.named_children():
    params = [p.detach().numpy() for p in module.parameters()]
    if not params:
      continue
    kind = type(module).__name__
    default = {'Conv2d': 'Convolution', 'ConvTranspose2d': 'Deconvolution',
               'Linear': 'InnerProduct'}[kind]
    layers.append((name, types.get(name, default), params,
                   groups.get(name)))
  return layers
