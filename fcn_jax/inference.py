"""Segmenting images with a trained FCN: the notebook API behind predict/evaluate.

    from fcn_jax import inference
    segmenter = inference.load('runs/fcn8s')        # workdir or checkpoint
    labels = segmenter.segment(image)                # numpy/PIL -> (H, W)

`load` reads `<workdir>/config.json` and restores only the parameters from
`<workdir>/checkpoints/<step>` (no optimizer state), both through
`fcn_jax.workdir`. A checkpoint without a config beside it (e.g. converted
reference weights) works too: the architecture is read off the parameter
shapes (`fcn_jax.architecture`).

Any image size works (the FCN is fully convolutional), but each new input
shape costs a compilation. So images are padded at the bottom and right to
one of a few bucket shapes (`tiling.bucket_size`), run, and the prediction is
cropped back. Padding is done after mean subtraction with zeros, which is
what the network's own conv1_1 padding feeds it; predictions are identical to
the exact-size ones except where the receptive field reaches the extra
padding (measured in tests/test_inference.py and docs/inference.md).

Options: horizontal-flip and multi-scale test-time augmentation (averaged
softmax probabilities), sliding-window inference for large images, and a
bfloat16 computation dtype (parameters stay float32).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fcn_jax import architecture
from fcn_jax import dataset_info
from fcn_jax import models
from fcn_jax import tiling
from fcn_jax import workdir as workdir_lib
from fcn_jax.configs import default as default_config
from fcn_jax.data import decode

DEFAULT_TTA_SCALES = (0.75, 1.0, 1.25)
# Images with more pixels are segmented in AUTO_WINDOW tiles, a band of tile
# rows at a time, even when no window is asked for: the forward pass and the
# probability buffer then stay bounded instead of growing with the image.
DEFAULT_MAX_PIXELS = 2048 * 2048
AUTO_WINDOW = 1024


# ---------------------------------------------------------------------------
# The segmenter.


@dataclasses.dataclass
class Segmenter:
  """A loaded FCN that segments images of any size.

  Attributes:
    model: the flax FCN module.
    params: its parameters.
    config: the (training) config the model was built from.
    class_names: one name per class.
    palette: (num_classes, 3) uint8 RGB colours.
    checkpoint: where the parameters came from.
    bucket: pad inputs to `tiling.bucket_size` shapes (False: compile every
      shape).
    compiled_shapes: input shapes the forward pass was compiled for, in
      order (one entry per compilation; its length is the compile count).
    max_pixels: `segment` tiles larger images automatically, in
      `auto_window` tiles.
  """
  model: models.FCN
  params: Any
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  palette: np.ndarray
  checkpoint: str = ''
  bucket: bool = True
  compiled_shapes: list = dataclasses.field(default_factory=list)
  max_pixels: int = DEFAULT_MAX_PIXELS
  auto_window: int = AUTO_WINDOW
  # Which seed of a config.seeds checkpoint this is ('' for ordinary runs).
  seed_note: str = ''

  def __post_init__(self):
    self.params = jax.device_put(self.params)
    self._forward = jax.jit(self._forward_fn)
    self._forward_inputs = jax.jit(self._forward_inputs_fn)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def num_compilations(self) -> int:
    return len(self.compiled_shapes)

  def _forward_fn(self, params, images: jax.Array, sizes: jax.Array):
    """uint8 RGB (N, Hb, Wb, 3) + valid (N, 2) sizes -> float32 logits."""
    # Runs once per compilation (tracing), never per call.
    self.compiled_shapes.append(tuple(images.shape))
    return forward(self.model, params, images, sizes)

  def _forward_inputs_fn(self, params, inputs: jax.Array):
    self.compiled_shapes.append(tuple(inputs.shape))
    return self.model.apply({'params': params}, inputs, train=False)

  def _padded_size(self, height: int, width: int) -> tuple[int, int]:
    """The input's size padded to its bucket (one program per bucket)."""
    if not self.bucket:
      return height, width
    return tiling.bucket_size(height), tiling.bucket_size(width)

  def head_logits(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """{label key: (H, W, classes) logits} of one preprocessed input.

    For models whose input is not one RGB photo or that have several heads
    (NYUDv2 HHA / RGB-D / RGB-HHA, SIFT Flow): `inputs` is the (H, W, C)
    float32 array of `fcn_jax.tasks.model_input`. Padded with zeros (the
    mean) to a bucket shape and cropped back, like `logits`.
    """
    inputs = np.asarray(inputs, np.float32)
    height, width = inputs.shape[:2]
    padded_h, padded_w = self._padded_size(height, width)
    batch = np.zeros((1, padded_h, padded_w, inputs.shape[-1]), np.float32)
    batch[0, :height, :width] = inputs
    out = jax.device_get(self._forward_inputs(self.params, batch))
    if not isinstance(out, dict):
      out = {'label': out}
    return {k: np.asarray(v)[0, :height, :width] for k, v in out.items()}

  def logits(self, image: Any) -> np.ndarray:
    """(H, W, C) float32 logits of one RGB image, exactly its size."""
    rgb, _ = decode.to_rgb(image)
    height, width = rgb.shape[:2]
    padded_h, padded_w = self._padded_size(height, width)
    batch = np.zeros((1, padded_h, padded_w, 3), np.uint8)
    batch[0, :height, :width] = rgb
    sizes = np.array([[height, width]], np.int32)
    out = self._forward(self.params, batch, sizes)
    return np.asarray(jax.device_get(out))[0, :height, :width]

  def _probabilities_one_scale(self, rgb: np.ndarray, window: int | None,
                               overlap: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    if not window or (height <= window and width <= window):
      return tiling.softmax(self.logits(rgb))
    # Sliding window: same-size tiles (one compilation), probabilities
    # averaged where tiles overlap.
    tile_h, tile_w = min(window, height), min(window, width)
    margin = int(round(overlap * window))
    total = np.zeros((height, width, self.num_classes), np.float32)
    count = np.zeros((height, width, 1), np.float32)
    for top in tiling.tile_starts(height, tile_h, margin):
      for left in tiling.tile_starts(width, tile_w, margin):
        crop = rgb[top:top + tile_h, left:left + tile_w]
        total[top:top + tile_h, left:left + tile_w] += tiling.softmax(
            self.logits(crop))
        count[top:top + tile_h, left:left + tile_w] += 1
    return total / count

  def probabilities(self, image: Any, tta: bool = False,
                    scales: Sequence[float] | None = None,
                    flip: bool | None = None, window: int | None = None,
                    overlap: float = 1 / 3) -> np.ndarray:
    """(H, W, C) float32 class probabilities for one image of any size.

    Args:
      image: (H, W, 3) uint8 RGB array or PIL image (grayscale, RGBA and
        16-bit are converted).
      tta: test-time augmentation: average the softmax over `scales` and
        horizontal flips.
      scales: image scales of the augmentation (default DEFAULT_TTA_SCALES
        with tta, else (1.0,)).
      flip: add horizontally flipped copies (default: tta).
      window: if set, images with a side larger than this are processed in
        overlapping window x window tiles whose probabilities are averaged.
      overlap: tile overlap as a fraction of `window`.
    """
    rgb, _ = decode.to_rgb(image)
    height, width = rgb.shape[:2]
    if scales is None:
      scales = DEFAULT_TTA_SCALES if tta else (1.0,)
    flip = tta if flip is None else flip
    total = np.zeros((height, width, self.num_classes), np.float32)
    for scale in scales:
      size_h = max(1, int(round(height * scale)))
      size_w = max(1, int(round(width * scale)))
      scaled = (rgb if (size_h, size_w) == (height, width)
                else tiling.resize_image(rgb, size_h, size_w))
      views = [self._probabilities_one_scale(scaled, window, overlap)]
      if flip:
        flipped = self._probabilities_one_scale(
            np.ascontiguousarray(scaled[:, ::-1]), window, overlap)
        views.append(flipped[:, ::-1])
      for probs in views:
        if probs.shape[:2] != (height, width):
          probs = tiling.resize_maps(probs, height, width)
        total += probs
    return total / (len(scales) * (2 if flip else 1))

  def segment(self, image: Any, **kwargs) -> np.ndarray:
    """(H, W) class indices (uint8 if they fit, else int32); `kwargs` as in
    `probabilities`.

    Above `max_pixels` pixels and without a window, AUTO_WINDOW tiles are
    used. Without augmentation, tiled images are done a band of tile rows
    at a time (same result as `probabilities`' argmax, without holding the
    whole image's probabilities).
    """
    rgb, _ = decode.to_rgb(image)
    height, width = rgb.shape[:2]
    window = kwargs.get('window')
    if not window and height * width > self.max_pixels:
      window = self.auto_window
      logging.info('%dx%d image above %d pixels: segmented in %d-pixel tiles.',
                   width, height, self.max_pixels, window)
    plain = (not kwargs.get('tta') and not kwargs.get('flip') and
             tuple(kwargs.get('scales') or (1.0,)) == (1.0,))
    dtype = np.uint8 if self.num_classes <= 256 else np.int32
    if plain and window and (height > window or width > window):
      return self._segment_in_bands(rgb, window, kwargs.get('overlap', 1 / 3),
                                    dtype)
    probs = self.probabilities(rgb, **dict(kwargs, window=window))
    return np.argmax(probs, axis=-1).astype(dtype)

  def _segment_in_bands(self, rgb: np.ndarray, window: int, overlap: float,
                        dtype) -> np.ndarray:
    """`_probabilities_one_scale`'s tiling, argmax taken per finished band:
    only the rows that later tiles still overlap are kept."""
    height, width = rgb.shape[:2]
    tile_h, tile_w = min(window, height), min(window, width)
    margin = int(round(overlap * window))
    tops = tiling.tile_starts(height, tile_h, margin)
    lefts = tiling.tile_starts(width, tile_w, margin)
    labels = np.empty((height, width), dtype)
    start = 0  # First row still held in `total`.
    total = np.zeros((0, width, self.num_classes), np.float32)
    count = np.zeros((0, width, 1), np.float32)
    for i, top in enumerate(tops):
      grow = top + tile_h - start - total.shape[0]
      if grow > 0:
        total = np.concatenate(
            [total, np.zeros((grow, width, self.num_classes), np.float32)])
        count = np.concatenate([count, np.zeros((grow, width, 1), np.float32)])
      rows = slice(top - start, top - start + tile_h)
      for left in lefts:
        crop = rgb[top:top + tile_h, left:left + tile_w]
        total[rows, left:left + tile_w] += tiling.softmax(self.logits(crop))
        count[rows, left:left + tile_w] += 1
      done = tops[i + 1] if i + 1 < len(tops) else height
      labels[start:done] = np.argmax(
          total[:done - start] / count[:done - start], axis=-1)
      total, count = total[done - start:].copy(), count[done - start:].copy()
      start = done
    return labels


def forward(model: models.FCN, params, images: jax.Array,
            sizes: jax.Array) -> jax.Array:
  """Logits of bottom/right-padded uint8 RGB images.

  The reference preprocessing (RGB -> BGR, minus the mean) happens here; then
  every pixel outside an image's valid (height, width) is set to zero, i.e.
  the padding is exactly what conv1_1's own zero padding feeds the network.
  """
  x = images[..., ::-1].astype(jnp.float32) - jnp.asarray(models.MEAN_BGR,
                                                          jnp.float32)
  rows = jnp.arange(images.shape[1])[None, :, None]
  cols = jnp.arange(images.shape[2])[None, None, :]
  valid = (rows < sizes[:, 0, None, None]) & (cols < sizes[:, 1, None, None])
  x = jnp.where(valid[..., None], x, 0.0)
  return model.apply({'params': params}, x, train=False)


# ---------------------------------------------------------------------------
# Loading.


def load(path: str, checkpoint: str | int = 'best', *,
         config_overrides: dict[str, Any] | None = None,
         dtype: str | None = None, bucket: bool = True,
         seed: int | None = None) -> Segmenter:
  """Loads a trained FCN for inference in one call.

  Args:
    path: a training workdir (config.json + checkpoints/), or a checkpoint
      directory (a step directory `<workdir>/checkpoints/<step>`, or any Orbax
      PyTree checkpoint holding the parameters, e.g. converted weights).
    checkpoint: for a workdir: 'best', 'latest', a step, or a path.
    config_overrides: dotted config keys to change (e.g. {'model':
      'fcn8s-atonce'} for converted at-once weights without a config).
    dtype: computation dtype, 'float32' or 'bfloat16' (default: the config's).
    bucket: pad inputs to a few bucket shapes (see `tiling.bucket_size`).
    seed: for a checkpoint of several seeds (config.seeds), the seed to
      load; None = the best by validation mean IU (fcn_jax.seeds).

  Raises:
    workdir_lib.CheckpointError: missing/corrupt checkpoint, or one that does
      not fit the configured architecture or class count.
  """
  if not os.path.exists(path):
    raise workdir_lib.CheckpointError(f'{path}: no such workdir or checkpoint.')
  if os.path.isdir(os.path.join(path, workdir_lib.CHECKPOINTS)):
    checkpoint_path = workdir_lib.resolve_checkpoint(path, checkpoint)
  elif str(checkpoint) not in ('best', 'latest'):
    checkpoint_path = workdir_lib.resolve_checkpoint(path, checkpoint)
  else:
    checkpoint_path = os.path.abspath(path)
  params = workdir_lib.restore_params(checkpoint_path)

  config_dir = (path if workdir_lib.is_workdir(path)
                else workdir_lib.find_workdir(checkpoint_path))
  if config_dir is not None:
    config = workdir_lib.load_config(config_dir)
    if config.num_classes == -1:
      config.num_classes = architecture.infer_architecture(
          params)['num_classes']
  else:
    # No run config (e.g. converted weights): read the model off the params.
    config = default_config.get_config()
    config.dataset = ''
    for key, value in architecture.infer_architecture(params).items():
      config[key] = value
    logging.info('%s: no %s found; architecture read from the parameters: '
                 '%s %d classes, width %g.', checkpoint_path,
                 workdir_lib.CONFIG_FILE, config.model, config.num_classes,
                 config.width)
  config = workdir_lib.apply_overrides(config, config_overrides or {})
  from fcn_jax import seeds  # pylint: disable=g-import-not-at-top
  params, seed_note = seeds.params_of_seed(
      params, config, config_dir,
      workdir_lib.checkpoint_step(checkpoint_path), seed)
  if seed_note:
    logging.info('%s', seed_note)
  if dtype:
    config.dtype = dtype
  if config.model not in models.MODELS:
    raise workdir_lib.CheckpointError(
        f'config.model={config.model!r}: expected one of {models.MODELS}.')
  try:
    model = models.create_model(config, config.num_classes)
  except ValueError as e:
    raise workdir_lib.CheckpointError(
        f'{checkpoint_path}: cannot build the model: {e}')
  architecture.check_params_fit(model, params, checkpoint_path)
  class_names, palette = dataset_info.dataset_meta(config, config.num_classes,
                                                   config_dir)
  return Segmenter(model=model, params=params, config=config,
                   class_names=class_names, palette=palette,
                   checkpoint=checkpoint_path, bucket=bucket,
                   seed_note=seed_note)


def load_from_args(workdir: str | None, checkpoint: str = 'best',
                   dtype: str = '', model: str = '',
                   bucket: bool = True, seed: int = -1) -> Segmenter:
  """`load` as the command lines name it: --workdir and/or --checkpoint
  (alone, a path), '' for the config's dtype and model."""
  overrides = {'model': model} if model else {}
  seed = None if seed < 0 else seed
  if workdir:
    return load(workdir, checkpoint, config_overrides=overrides,
                dtype=dtype or None, bucket=bucket, seed=seed)
  if checkpoint in ('best', 'latest') or str(checkpoint).isdigit():
    raise workdir_lib.CheckpointError(
        f'--checkpoint={checkpoint} needs --workdir; without it, --checkpoint '
        'must be a path.')
  return load(checkpoint, config_overrides=overrides, dtype=dtype or None,
              bucket=bucket, seed=seed)
