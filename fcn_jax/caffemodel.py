"""Reads Caffe ``.caffemodel`` files without Caffe, protobuf or torch.

A ``.caffemodel`` is a binary protobuf ``NetParameter`` (BVLC/caffe,
src/caffe/proto/caffe.proto). Only the fields that carry weights are read:

  NetParameter      name = 1, layers = 2 (V1LayerParameter), layer = 100
  LayerParameter    name = 1, type = 2, blobs = 7, convolution_param = 106
  V1LayerParameter  layer = 1 (V0LayerParameter), name = 4, type = 5 (enum),
                    blobs = 6, convolution_param = 10
  V0LayerParameter  name = 1, type = 2, group = 9, blobs = 50
  ConvolutionParameter  group = 5
  BlobProto         num = 1, channels = 2, height = 3, width = 4,
                    data = 5 (float), shape = 7, double_data = 8
  BlobShape         dim = 1

Every other field is skipped by its wire type. The parser is written for
untrusted files: every length is checked against the bytes that remain, the
message nesting is fixed by the schema above (no recursion into unknown
messages), deprecated groups and unknown wire types are refused, and the
only allocations are the blobs' float arrays, each bounded by the file size.
Any problem is one `CaffeModelError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from fcn_jax import errors

# Wire types of the protobuf encoding.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

MAX_FILE_BYTES = 8 << 30  # The largest reference model is about 1 GB.
MAX_VARINT_BYTES = 10
MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes.
MAX_NAME_BYTES = 4096

# V1LayerParameter.LayerType values of the layers that can carry blobs, and a
# few common others (for messages), as Caffe's current type strings.
V1_LAYER_TYPES = {
    0: 'None', 3: 'Concat', 4: 'Convolution', 5: 'Data', 6: 'Dropout',
    14: 'InnerProduct', 15: 'LRN', 17: 'Pooling', 18: 'ReLU', 20: 'Softmax',
    21: 'SoftmaxWithLoss', 22: 'Split', 25: 'Eltwise', 39: 'Deconvolution',
}
# V0 (pre-2014) type strings -> current ones.
V0_LAYER_TYPES = {'conv': 'Convolution', 'innerproduct': 'InnerProduct',
                  'deconv': 'Deconvolution'}


class CaffeModelError(ValueError, errors.UserError):
  """A file that is not a readable .caffemodel (one line, names the file)."""


@dataclasses.dataclass
class CaffeLayer:
  """The weights of one layer.

  Attributes:
    name: the layer name (the reference's, e.g. 'conv1_1', 'score_fr').
    type: Caffe's type string ('Convolution', 'Deconvolution',
      'InnerProduct', 'Scale', ...); V1 enum values as 'V1Type<n>' when not
      in `V1_LAYER_TYPES`.
    blobs: the parameter arrays in Caffe's layout (float32), e.g. a
      convolution's (out, in / group, kh, kw) weight and (out,) bias.
    group: ConvolutionParameter.group when the file records it, else None.
  """
  name: str
  type: str
  blobs: list[np.ndarray]
  group: int | None = None


@dataclasses.dataclass
class CaffeNet:
  """The layers of a NetParameter that carry blobs, in file order."""
  name: str
  layers: list[CaffeLayer]
  format: str  # 'layer' (current) or 'layers' (V1, legacy).

  def by_name(self) -> dict[str, CaffeLayer]:
    return {layer.name: layer for layer in self.layers}


class _Reader:
  """Walks protobuf messages of one file, with bounds checks."""

  def __init__(self, data: bytes, source: str):
    self.data = memoryview(data)
    self.source = source

  def error(self, message: str) -> CaffeModelError:
    return CaffeModelError(f'{self.source}: not a valid .caffemodel '
                           f'({message}).')

  def varint(self, pos: int, end: int, what: str) -> tuple[int, int]:
    value, shift = 0, 0
    for i in range(MAX_VARINT_BYTES):
      if pos + i >= end:
        raise self.error(f'truncated varint in {what}')
      byte = self.data[pos + i]
      value |= (byte & 0x7F) << shift
      if byte < 0x80:
        return value, pos + i + 1
      shift += 7
    raise self.error(f'varint longer than {MAX_VARINT_BYTES} bytes in {what}')

  def fields(self, start: int, end: int, what: str
             ) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message in data[start:end].

    The value is an int for varints, a (start, end) span for
    length-delimited fields and for fixed-size ones.
    """
    pos = start
    while pos < end:
      key, pos = self.varint(pos, end, what)
      field, wire = key >> 3, key & 7
      if field == 0:
        raise self.error(f'field number 0 in {what}')
      if wire == VARINT:
        value, pos = self.varint(pos, end, what)
      elif wire in (FIXED64, FIXED32):
        size = 8 if wire == FIXED64 else 4
        if pos + size > end:
          raise self.error(f'truncated field {field} in {what}')
        value, pos = (pos, pos + size), pos + size
      elif wire == LENGTH:
        length, pos = self.varint(pos, end, what)
        if length > end - pos:
          raise self.error(
              f'field {field} of {what} claims {length} bytes, only '
              f'{end - pos} remain (truncated file?)')
        value, pos = (pos, pos + length), pos + length
      else:
        raise self.error(f'unsupported wire type {wire} (field {field} of '
                         f'{what})')
      yield field, wire, value

  def expect(self, wire: int, wanted: tuple[int, ...], field: int,
             what: str) -> None:
    if wire not in wanted:
      raise self.error(f'field {field} of {what} has wire type {wire}, '
                       f'expected {" or ".join(map(str, wanted))}')

  def string(self, span, what: str) -> str:
    start, end = span
    if end - start > MAX_NAME_BYTES:
      raise self.error(f'{what} is {end - start} bytes long')
    try:
      return bytes(self.data[start:end]).decode('utf-8')
    except UnicodeDecodeError as e:
      raise self.error(f'{what} is not UTF-8') from e

  def packed_varints(self, span, what: str, limit: int) -> list[int]:
    start, end = span
    values, pos = [], start
    while pos < end:
      value, pos = self.varint(pos, end, what)
      values.append(value)
      if len(values) > limit:
        raise self.error(f'{what} has more than {limit} values')
    return values

  def floats(self, span, dtype: str, what: str) -> np.ndarray:
    start, end = span
    size = np.dtype(dtype).itemsize
    if (end - start) % size:
      raise self.error(f'{what}: {end - start} bytes is not a whole number of '
                       f'{size}-byte values')
    return np.frombuffer(self.data[start:end], dtype)


def _int32(value: int) -> int:
  """A varint-encoded int32 (negative values are sign-extended to 64 bits)."""
  return value - (1 << 64) if value >= 1 << 63 else value


def _read_blob(reader: _Reader, span, what: str) -> np.ndarray:
  """One BlobProto as a float32 array of its shape."""
  legacy = {}
  shape = None
  # Packed data is one span per field; unpacked data (one value per field)
  # is gathered in a bytearray, 4 or 8 bytes per value, never one Python
  # object per value.
  chunks = {'<f4': [], '<f8': []}
  unpacked = {'<f4': bytearray(), '<f8': bytearray()}
  for field, wire, value in reader.fields(*span, what):
    if field in (1, 2, 3, 4):  # num, channels, height, width
      reader.expect(wire, (VARINT,), field, what)
      legacy[field] = _int32(value)
    elif field in (5, 8):  # data (float) / double_data
      dtype = '<f4' if field == 5 else '<f8'
      reader.expect(wire, (LENGTH, FIXED32 if field == 5 else FIXED64), field,
                    what)
      if wire == LENGTH:
        chunks[dtype].append(reader.floats(value, dtype, f'{what} data'))
      else:
        unpacked[dtype] += reader.data[value[0]:value[1]]
    elif field == 7:  # shape: BlobShape
      reader.expect(wire, (LENGTH,), field, what)
      dims = []
      for dim_field, dim_wire, dim in reader.fields(*value, f'{what} shape'):
        if dim_field != 1:
          continue
        reader.expect(dim_wire, (LENGTH, VARINT), dim_field, f'{what} shape')
        dims += (reader.packed_varints(dim, f'{what} shape', MAX_BLOB_AXES)
                 if dim_wire == LENGTH else [dim])
        if len(dims) > MAX_BLOB_AXES:
          raise reader.error(f'{what} has more than {MAX_BLOB_AXES} axes')
      shape = tuple(_int32(d) for d in dims)
  for dtype, raw in unpacked.items():
    if raw:
      chunks[dtype].append(np.frombuffer(raw, dtype))
  if chunks['<f4'] and chunks['<f8']:
    raise reader.error(f'{what} has both float and double data')
  parts = chunks['<f4'] or chunks['<f8']
  data = (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts else (
      np.zeros(0, np.float32))
  if shape is None:
    shape = tuple(legacy.get(f, 0) for f in (1, 2, 3, 4)) if legacy else (
        data.size,)
  if any(d < 0 or d >= 1 << 31 for d in shape):
    raise reader.error(f'{what} has an invalid shape {shape}')
  count = int(np.prod(shape, dtype=object)) if shape else 1
  if count != data.size:
    raise reader.error(f'{what}: shape {shape} needs {count} values, the '
                       f'blob holds {data.size}')
  return data.astype(np.float32).reshape(shape)


def _read_group(reader: _Reader, span, group_field: int,
                what: str) -> int | None:
  group = None
  for field, wire, value in reader.fields(*span, what):
    if field == group_field:
      reader.expect(wire, (VARINT,), field, what)
      group = value
  if group is not None and not 1 <= group < 1 << 31:
    raise reader.error(f'{what}: group {group}')
  return group


# Field numbers of the three layer messages: name, type, blobs,
# convolution_param (and the group inside it), V0 sub-layer.
_LAYER_FIELDS = {
    'layer': dict(name=1, type=2, blobs=7, conv=106, group=5, v0=None),
    'layers': dict(name=4, type=5, blobs=6, conv=10, group=5, v0=1),
    'v0': dict(name=1, type=2, blobs=50, conv=None, group=9, v0=None),
}


def _read_layer(reader: _Reader, span, kind: str, index: int) -> CaffeLayer:
  spec = _LAYER_FIELDS[kind]
  what = f'{kind} #{index}'
  name, type_, group, blobs, v0 = None, None, None, [], None
  for field, wire, value in reader.fields(*span, what):
    if field == spec['name']:
      reader.expect(wire, (LENGTH,), field, what)
      name = reader.string(value, f'{what} name')
      what = f'layer {name!r}'
    elif field == spec['type']:
      if kind == 'layers':
        reader.expect(wire, (VARINT,), field, what)
        type_ = V1_LAYER_TYPES.get(value, f'V1Type{value}')
      else:
        reader.expect(wire, (LENGTH,), field, what)
        type_ = reader.string(value, f'{what} type')
        type_ = V0_LAYER_TYPES.get(type_, type_) if kind == 'v0' else type_
    elif field == spec['blobs']:
      reader.expect(wire, (LENGTH,), field, what)
      blobs.append(_read_blob(reader, value, f'{what} blob {len(blobs)}'))
    elif field == spec['conv']:
      reader.expect(wire, (LENGTH,), field, what)
      group = _read_group(reader, value, spec['group'], f'{what} '
                          'convolution_param')
    elif kind == 'v0' and field == spec['group']:
      reader.expect(wire, (VARINT,), field, what)
      group = value
    elif field == spec['v0']:
      reader.expect(wire, (LENGTH,), field, what)
      v0 = _read_layer(reader, value, 'v0', index)
  if v0 is not None:  # A V1 message wrapping a V0 layer: the V0 fields count.
    name = name or v0.name
    type_ = type_ if type_ not in (None, 'None') else v0.type
    blobs = blobs or v0.blobs
    group = group or v0.group
  return CaffeLayer(name or f'<unnamed {index}>', type_ or '', blobs, group)


def parse_net(data: bytes, source: str = '<bytes>') -> CaffeNet:
  """Parses the bytes of a .caffemodel (a binary NetParameter)."""
  reader = _Reader(data, source)
  net_name, layers, kinds = '', [], set()
  for field, wire, value in reader.fields(0, len(data), 'NetParameter'):
    if field == 1:
      reader.expect(wire, (LENGTH,), field, 'NetParameter')
      net_name = reader.string(value, 'net name')
    elif field in (2, 100):
      reader.expect(wire, (LENGTH,), field, 'NetParameter')
      kind = 'layers' if field == 2 else 'layer'
      kinds.add(kind)
      layers.append(_read_layer(reader, value, kind, len(layers)))
  if not layers:
    raise reader.error('no layers')
  with_blobs = [layer for layer in layers if layer.blobs]
  if not with_blobs:
    raise reader.error('no layer carries weights')
  seen = set()
  for layer in with_blobs:
    if layer.name in seen:
      raise reader.error(f'two layers named {layer.name!r} carry weights')
    seen.add(layer.name)
  fmt = 'layer' if kinds == {'layer'} else (
      'layers' if kinds == {'layers'} else 'layer+layers')
  return CaffeNet(net_name, with_blobs, fmt)


def read_caffemodel(path: str) -> CaffeNet:
  """Reads the weight-carrying layers of a .caffemodel file.

  Raises:
    FileNotFoundError: no such file.
    CaffeModelError: not a (complete, well-formed) .caffemodel.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such weights file.')
  size = os.path.getsize(path)
  if size > MAX_FILE_BYTES:
    raise CaffeModelError(f'{path}: {size} bytes is larger than any Caffe '
                          f'model this reader accepts ({MAX_FILE_BYTES}).')
  with open(path, 'rb') as f:
    data = f.read()
  return parse_net(data, path)


def looks_like_caffemodel(path: str) -> bool:
  """Whether the file starts like a binary NetParameter (name, layers or layer
  field), as opposed to a pickle or zip (.pth) file."""
  with open(path, 'rb') as f:
    head = f.read(2)
  return head[:1] in (b'\x0a', b'\x12') or head == b'\xa2\x06'
