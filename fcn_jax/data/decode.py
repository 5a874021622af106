"""Reading images, label maps and split lists, with one-line errors.

The one place image files are opened (`_open_image`): dataset images and
labels (`read_image`, `read_label_png`, a `DataError` on failure) and the
images a user asks to segment (`read_input_image`, `to_rgb`, an
`ImageError`). Every failure names the file and what is wrong, instead of a
traceback from deep inside PIL or scipy.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Sequence

import numpy as np
from absl import logging
from PIL import Image
from PIL import ImageOps

from fcn_jax import errors
from fcn_jax.data import mat5

IGNORE_LABEL = 255
# Largest image (width x height) decoded: PIL's own default. A file can
# declare any size in a few bytes (a "decompression bomb"); above this it is
# refused before decoding. Raise it for real gigapixel images with
# `set_max_image_pixels` (config.max_image_pixels, predict
# --max_image_pixels). The environment variable carries it into data worker
# processes.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = 'FCN_JAX_MAX_IMAGE_PIXELS'


def max_image_pixels() -> int:
  text = os.environ.get(MAX_PIXELS_ENV, '')
  return int(text) if text.isdigit() else DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(pixels: int) -> None:
  """Sets the decoded-image size limit (this process and its workers)."""
  if pixels <= 0:
    raise DataError(f'max_image_pixels={pixels}: must be positive.')
  os.environ[MAX_PIXELS_ENV] = str(int(pixels))
  Image.MAX_IMAGE_PIXELS = int(pixels)


def _check_image_size(image: Image.Image, name: str, error) -> None:
  """Raises `error` if `image` declares more pixels than
  `max_image_pixels()`; call before decoding its data."""
  width, height = image.size
  limit = max_image_pixels()
  if width * height > limit:
    raise error(
        f'{name}: image declares {width}x{height} = {width * height:,} '
        f'pixels, above the limit of {limit:,} (a decompression bomb?); for '
        'real images that large raise config.max_image_pixels '
        '(--max_image_pixels in predict).')


def _bomb_error(error: Exception, name: str, cls) -> Exception:
  """PIL's DecompressionBombError (raised at twice PIL's limit, before
  `_check_image_size` can look) as our one-line error."""
  found = re.search(r'\((\d+) pixels\)', str(error))
  pixels = f'{int(found.group(1)):,} pixels' if found else 'too many pixels'
  return cls(
      f'{name}: image declares {pixels}, above the limit of '
      f'{max_image_pixels():,} (a decompression bomb?); for real images that '
      'large raise config.max_image_pixels (--max_image_pixels in predict).')


# PIL's modes of one-channel 16-bit (and 32-bit integer) images.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
# PIL's own check (a warning above its limit, an error at twice it) uses
# the same limit.
Image.MAX_IMAGE_PIXELS = max_image_pixels()


class DataError(ValueError, errors.UserError):
  """A dataset file is missing, unreadable or inconsistent."""


class ImageError(ValueError, errors.UserError):
  """An input image cannot be read or is in an unusable format."""


def read_image(path: str) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB (grayscale is replicated)."""
  with _open_image(path) as image:
    return np.asarray(image.convert('RGB'))


def read_input_image(path: str) -> tuple[np.ndarray, list[str]]:
  """Reads an image to segment as (H, W, 3) uint8 RGB.

  Returns the image and notes on conversions made (grayscale, alpha, 16-bit),
  which callers should show the user. Raises ImageError naming the file.
  """
  with _open_image(path, error=ImageError,
                   unreadable='cannot read image') as image:
    try:
      # Photos from phones and cameras are often stored sideways with an
      # EXIF orientation tag; viewers rotate them, so must we.
      return to_rgb(ImageOps.exif_transpose(image), name=path)
    except ImageError:
      raise
    except (OSError, SyntaxError, ValueError) as e:
      raise ImageError(f'{path}: cannot read image ({e}).') from e


def to_rgb(image: Any, name: str = 'image') -> tuple[np.ndarray, list[str]]:
  """A PIL image or numpy array -> ((H, W, 3) uint8 RGB, conversion notes).

  Accepted: RGB; grayscale (replicated to three channels); RGBA/LA (alpha
  ignored); palette and CMYK images (converted); 16-bit grayscale or RGB
  (scaled to 8 bits by /257). Floating-point data is refused, since its
  range (0-1 or 0-255) cannot be told reliably.
  """
  notes = []
  if isinstance(image, Image.Image):
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
      array = np.asarray(image).astype(np.int64)
    elif mode == 'F':
      raise ImageError(f'{name}: floating-point image (mode F) is not '
                       'supported; save it as 8-bit RGB.')
    elif mode in ('RGB', 'L', 'RGBA', 'LA'):
      array = np.asarray(image)
    elif mode == 'P':
      has_alpha = 'transparency' in image.info
      array = np.asarray(image.convert('RGBA' if has_alpha else 'RGB'))
    elif mode == '1':
      array = np.asarray(image.convert('L'))
    else:
      notes.append(f'{mode} image converted to RGB')
      try:
        array = np.asarray(image.convert('RGB'))
      except (ValueError, OSError) as e:
        raise ImageError(f'{name}: cannot convert mode {mode} to RGB ({e}).')
  else:
    array = np.asarray(image)
  return _array_to_rgb(array, name, notes)


def _array_to_rgb(array: np.ndarray, name: str,
                  notes: list[str]) -> tuple[np.ndarray, list[str]]:
  if array.dtype.kind == 'f':
    raise ImageError(f'{name}: {array.dtype} pixels are ambiguous (0-1 or '
                     '0-255?); pass uint8 RGB, e.g. (x * 255).astype(np.uint8).')
  if array.dtype.kind not in 'uib':
    raise ImageError(f'{name}: unsupported pixel type {array.dtype}.')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    notes.append('grayscale image: grey copied to R, G and B')
    array = np.stack([array] * 3, axis=-1)
  elif array.ndim == 3 and array.shape[-1] in (2, 4):
    notes.append('alpha channel ignored')
    array = array[..., :-1]
    if array.shape[-1] == 1:
      array = np.repeat(array, 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ImageError(f'{name}: expected an (H, W, 3) RGB image, got shape '
                     f'{array.shape}.')
  if array.shape[0] < 1 or array.shape[1] < 1:
    raise ImageError(f'{name}: empty image of shape {array.shape}.')
  if array.dtype != np.uint8:
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
      raise ImageError(f'{name}: pixel values {low}..{high} fit neither 8 '
                       'nor 16 bits.')
    if array.dtype.itemsize > 1 and high > 255:
      notes.append('16-bit image scaled to 8 bits')
      array = np.round(array.astype(np.float64) / 257.0)
    array = array.astype(np.uint8)
  return np.ascontiguousarray(array), notes


def read_label_png(path: str) -> np.ndarray:
  """Reads a label PNG as (H, W) uint8 class indices.

  Palette ('P') PNGs, as in VOC's SegmentationClass, store the class index
  per pixel and the colours only in the palette, so the indices are read
  directly, never through the colours. Grayscale ('L') PNGs store the index
  as the grey value; 16-bit grayscale ones too, if every value fits 0..255
  (larger values are refused, never wrapped).
  """
  with _open_image(path) as image:
    if image.mode in ('P', 'L'):
      return np.array(image)
    if image.mode in _SIXTEEN_BIT_MODES:
      label = np.asarray(image)
      if label.min() < 0 or label.max() > 255:
        raise DataError(f'{path}: label values {label.min()}..{label.max()} do '
                        'not fit 0..255.')
      return label.astype(np.uint8)
  raise DataError(f'{path}: label PNG has mode {image.mode!r}; expected a '
                  "palette ('P') or grayscale ('L') PNG of class indices.")


def mat_label_map(path: str, key: str, low: int, high: int) -> np.ndarray:
  """The 2-D integer map `key` of a .mat file, values checked in [low, high].

  Read with the bounded MATLAB v5 reader (`mat5`): scipy's reader can crash
  the process on a damaged file. Returned as int32, unchanged, for the
  caller's own label mapping.
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found.')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    label = mat5.read_variable(data, key)
  except mat5.MissingFieldError:
    raise DataError(f'{path}: no variable {key!r} in the .mat file.') from None
  except mat5.MatError as e:
    raise DataError(f'{path}: unreadable .mat file ({e}).') from None
  label = np.squeeze(label)
  if label.ndim != 2 or label.size == 0 or label.dtype.kind not in 'uif':
    raise DataError(f'{path}: {key!r} has shape {label.shape} and type '
                    f'{label.dtype}; expected a 2-D label map.')
  if label.dtype.kind == 'f' and not np.all(label == np.round(label)):
    raise DataError(f'{path}: {key!r} holds non-integer values.')
  if label.min() < low or label.max() > high:
    raise DataError(f'{path}: {key!r} values {int(label.min())}..'
                    f'{int(label.max())} are outside {low}..{high}.')
  return label.astype(np.int32)


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
  """Like `read_image`, for encoded bytes; `name` is used in errors."""
  with _open_image(io.BytesIO(data), name) as image:
    return np.asarray(image.convert('RGB'))


def image_bytes_mode(data: bytes, name: str) -> str:
  """PIL's mode ('RGB', 'L', 'P', ...) of an encoded image."""
  with _open_image(io.BytesIO(data), name) as image:
    return image.mode


def encode_png(array: np.ndarray) -> bytes:
  """Lossless grayscale PNG of a (H, W) uint8 array."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8), mode='L').save(buffer, 'PNG')
  return buffer.getvalue()


def _open_image(path_or_file, name: str | None = None, error=DataError,
                unreadable: str = 'unreadable or truncated image'
                ) -> Image.Image:
  """Opens and decodes an image, size-checked first; failures are `error`."""
  name = name or path_or_file
  if isinstance(path_or_file, str) and not os.path.isfile(path_or_file):
    raise error(f'{name}: file not found.')
  try:
    image = Image.open(path_or_file)
    _check_image_size(image, name, error)
    image.load()  # Decode now, so truncated files fail here.
  except error:
    raise
  except Image.DecompressionBombError as e:
    raise _bomb_error(e, name, error) from None
  except (OSError, SyntaxError, ValueError) as e:
    raise error(f'{name}: {unreadable} ({e}).') from None
  return image


def check_example(image: np.ndarray, label: np.ndarray, num_classes: int,
                  image_path: str, label_path: str) -> None:
  """Raises DataError on a size mismatch or out-of-range label values."""
  if image.shape[:2] != label.shape[:2]:
    raise DataError(
        f'{label_path}: label is {label.shape[1]}x{label.shape[0]} (WxH) but '
        f'its image {image_path} is {image.shape[1]}x{image.shape[0]}.')
  values = np.unique(label)
  bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
  if bad.size:
    raise DataError(
        f'{label_path}: label values {bad.tolist()} are outside '
        f'[0, {num_classes}) and not the ignore label {IGNORE_LABEL}.')


def read_split(path: str) -> list[str]:
  """Reads a split list: one image id per line (first column), no blanks."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: split list not found.')
  try:
    with open(path, encoding='utf-8') as f:
      ids = [line.split()[0] for line in f if line.strip()]
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: split list is not UTF-8 text ({e}).') from None
  if not ids:
    raise DataError(f'{path}: split list is empty.')
  return ids


def missing_files(paths: Sequence[str]) -> list[str]:
  return [p for p in paths if not os.path.isfile(p)]


def placeholder_example(index: int) -> dict:
  """A small all-ignore example that stands in for a skipped bad file.

  Its labels are all 255, so it adds nothing to the loss, its gradient, or
  the confusion matrix; the batch keeps its size and the step its meaning.
  """
  return {'image': np.zeros((32, 32, 3), np.uint8),
          'label': np.full((32, 32), IGNORE_LABEL, np.uint8),
          'id': np.int32(index)}


class SkipCounter:
  """Counts (and logs) examples skipped because their files are bad."""

  def __init__(self):
    self.count = 0

  def skip(self, error: Exception) -> None:
    self.count += 1
    logging.warning('Skipping bad example (%d skipped so far): %s', self.count,
                    error)
