"""Reads one numeric field of a struct from a MATLAB v5 .mat file, safely.

SBD's labels are `GTcls.Segmentation` in MATLAB v5 files. scipy's reader
crashes the process (segmentation fault) on some damaged files, and a data
loader must not, so this reads exactly what is needed and checks every tag
against the bytes it has: elements it does not need (other variables,
fields such as the sparse `Boundaries`) are skipped by their declared size,
compressed elements are inflated with a bound, and the matrix read must have
exactly the bytes its dimensions declare. Anything else is `MatError`.

Format (MATLAB "MAT-File Format", level 5): a 128-byte header (text, then
version 0x0100 and the endian indicator 'IM'/'MI'), then data elements, each
an 8-byte tag (type, byte count; or a 4-byte "small element" tag with its
data in the next 4 bytes), padded to 8 bytes. miMATRIX elements hold array
flags, dimensions, a name and then the data (numeric: the real part;
struct: field-name length, field names, one miMATRIX per field).
"""

from __future__ import annotations

import zlib

import numpy as np

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MX_STRUCT_CLASS = 2
# miINT8 .. miUINT64 data types and their numpy types.
_NUMERIC = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4',
            9: 'f8', 12: 'i8', 13: 'u8'}
# A compressed element may inflate to at most this (a label map is a few
# hundred kB; real SBD files are far below).
MAX_INFLATED_BYTES = 256 << 20


class MatError(ValueError):
  """The .mat file is not a well-formed MATLAB v5 file."""


class MissingFieldError(MatError):
  """A well-formed file without the variable or field asked for."""


class _Reader:
  """Tags of a byte buffer, every size checked against what is left."""

  def __init__(self, data: bytes, order: str):
    self.data, self.order = data, order

  def uint32(self, pos: int) -> int:
    if pos + 4 > len(self.data):
      raise MatError('truncated tag')
    return int(np.frombuffer(self.data, self.order + 'u4', 1, pos)[0])

  def element(self, pos: int, end: int) -> tuple[int, int, int, int]:
    """(type, data start, data size, next element) of the element at pos."""
    if pos + 8 > end:
      raise MatError('truncated element tag')
    first = self.uint32(pos)
    if first >> 16:  # Small data element: 2-byte size, 2-byte type.
      size, kind = first >> 16, first & 0xffff
      if size > 4:
        raise MatError('bad small element')
      return kind, pos + 4, size, pos + 8
    kind, size = first, self.uint32(pos + 4)
    start = pos + 8
    if size > end - start:
      raise MatError(f'element of {size} bytes at {pos} exceeds the file')
    padded = size if kind == MI_COMPRESSED else -(-size // 8) * 8
    return kind, start, size, min(start + padded, end)

  def array(self, start: int, size: int, kind: int) -> np.ndarray:
    if kind not in _NUMERIC:
      raise MatError(f'element type {kind} where numbers were expected')
    dtype = np.dtype(self.order + _NUMERIC[kind])
    if size % dtype.itemsize:
      raise MatError('element size is not a multiple of its type')
    return np.frombuffer(self.data, dtype, size // dtype.itemsize, start)


def _inflate(data: bytes) -> bytes:
  inflater = zlib.decompressobj()
  try:
    out = inflater.decompress(data, MAX_INFLATED_BYTES)
  except zlib.error as e:
    raise MatError(f'corrupt compressed element ({e})') from None
  if inflater.unconsumed_tail:
    raise MatError('compressed element inflates beyond '
                   f'{MAX_INFLATED_BYTES} bytes')
  return out


def _matrix_header(reader: _Reader, start: int, end: int):
  """(class, dims, name, position after the name) of a miMATRIX body."""
  kind, pos, size, after = reader.element(start, end)
  if kind != MI_UINT32 or size != 8:
    raise MatError('bad array flags')
  mx_class = reader.uint32(pos) & 0xff
  kind, pos, size, after = reader.element(after, end)
  if kind != MI_INT32:
    raise MatError('bad dimensions')
  dims = [int(d) for d in reader.array(pos, size, kind)]
  if len(dims) < 2 or any(d < 0 for d in dims):
    raise MatError(f'bad dimensions {dims}')
  kind, pos, size, after = reader.element(after, end)
  if kind != MI_INT8:
    raise MatError('bad array name')
  name = reader.data[pos:pos + size].decode('latin-1')
  return mx_class, dims, name, after


def _numeric(reader: _Reader, start: int, end: int, dims) -> np.ndarray:
  kind, pos, size, _ = reader.element(start, end)
  values = reader.array(pos, size, kind)
  if values.size != int(np.prod(dims, dtype=object)):
    raise MatError(f'{values.size} values for dimensions {dims}')
  return values.reshape(dims, order='F')


def _struct_field(reader: _Reader, start: int, end: int, field: str):
  """The numeric array in `field` of the 1x1 struct whose body starts at
  `start` (after its name)."""
  kind, pos, size, after = reader.element(start, end)
  if kind != MI_INT32 or size != 4:
    raise MatError('bad struct field-name length')
  name_len = int(reader.array(pos, size, kind)[0])
  kind, pos, size, after = reader.element(after, end)
  if kind != MI_INT8 or name_len <= 0 or size % name_len:
    raise MatError('bad struct field names')
  names = [reader.data[p:p + name_len].split(b'\0')[0].decode('latin-1')
           for p in range(pos, pos + size, name_len)]
  for name in names:
    kind, field_start, field_size, after = reader.element(after, end)
    if kind != MI_MATRIX:
      raise MatError('struct field is not an array')
    if name == field:
      field_end = field_start + field_size
      _, dims, _, body = _matrix_header(reader, field_start, field_end)
      return _numeric(reader, body, field_end, dims)
  raise MissingFieldError(f'no field {field!r}')


def read_variable(data: bytes, variable: str) -> np.ndarray:
  """The numeric matrix `variable` from the bytes of a v5 .mat file.

  Raises:
    MissingFieldError: no such variable.
    MatError: anything else wrong, named.
  """
  return read_struct_field(data, variable, None)


def read_struct_field(data: bytes, variable: str,
                      field: str | None) -> np.ndarray:
  """`variable.field` (a numeric matrix) from the bytes of a v5 .mat file;
  with `field=None`, `variable` itself.

  Raises:
    MissingFieldError: no such variable or field.
    MatError: anything else wrong, named.
  """
  if len(data) < 128:
    raise MatError('shorter than a MAT-file header')
  order = {b'IM': '<', b'MI': '>'}.get(bytes(data[126:128]))
  if order is None:
    raise MatError('not a MATLAB v5 file (v4 and v7.3/HDF5 files are not '
                   'supported)')
  reader = _Reader(data, order)
  pos = 128
  while pos < len(data):
    kind, start, size, pos = reader.element(pos, len(data))
    element = _Reader(data, order)
    begin, end = start, start + size
    if kind == MI_COMPRESSED:
      inner = _inflate(data[start:start + size])
      element = _Reader(inner, order)
      kind, begin, size, _ = element.element(0, len(inner))
      end = begin + size
    if kind != MI_MATRIX:
      continue
    mx_class, dims, name, body = _matrix_header(element, begin, end)
    if name != variable:
      continue
    if field is None:
      if mx_class == MX_STRUCT_CLASS:
        raise MatError(f'{variable} is a struct, not a numeric matrix')
      return _numeric(element, body, end, dims)
    if mx_class != MX_STRUCT_CLASS or int(np.prod(dims)) != 1:
      raise MatError(f'{variable} is not a 1x1 struct')
    return _struct_field(element, body, end, field)
  raise MissingFieldError(f'no variable {variable!r}')
