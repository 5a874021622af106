"""Exports a trained FCN as a serialized `jax.export` artifact (StableHLO).

    python -m fcn_jax.export --workdir=runs/fcn8s --output=exported/fcn8s
        [--checkpoint=best] [--shapes=symbolic | --shapes=512x512,384x512]

writes to the output folder:

    fcn.jax_export           the serialized function (StableHLO + calling
                             convention), or one fcn_<H>x<W>.jax_export per
                             bucket shape with --shapes=HxW,...
    params.npz               the parameters, one array per 'layer/name'
    meta.json                class names, palette, shapes, input convention

The exported function is `f(params, images, sizes) -> logits` with images
uint8 RGB (N, H, W, 3), sizes int32 (N, 2) the valid height and width of each
image (the rest is padding), and float32 logits (N, H, W, C). Preprocessing
(BGR, mean subtraction, zero padding) is inside, so a server only decodes
images. With symbolic shapes (the default) any N, H, W work without
re-exporting. It is lowered for CPU and CUDA by default.

Serving needs only jax and numpy, not the training code (no flax):

    from fcn_jax import export
    model = export.load('exported/fcn8s')
    labels = model.segment(image)          # (H, W) uint8 class indices
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from fcn_jax import errors

FUNCTION_FILE = 'fcn.jax_export'
PARAMS_FILE = 'params.npz'
META_FILE = 'meta.json'
DEFAULT_PLATFORMS = ('cpu', 'cuda')


def _bucket_file(height: int, width: int) -> str:
  return f'fcn_{height}x{width}.jax_export'


def parse_shapes(text: str) -> list[tuple[int, int]] | None:
  """'symbolic' -> None; '512x512,384x512' -> [(512, 512), (384, 512)]."""
  if text.strip() == 'symbolic':
    return None
  shapes = []
  for item in text.split(','):
    try:
      height, width = (int(v) for v in item.lower().split('x'))
    except ValueError:
      raise errors.FlagError(f"--shapes={text}: expected 'symbolic' or "
                             f'HxW,HxW,... (bad item {item!r}).') from None
    if height < 1 or width < 1:
      raise errors.FlagError(f'--shapes={text}: sides must be positive.')
    shapes.append((height, width))
  return shapes


def export_segmenter(segmenter, output: str,
                     shapes: list[tuple[int, int]] | None = None,
                     platforms=DEFAULT_PLATFORMS) -> list[str]:
  """Exports `segmenter` (an inference.Segmenter) into folder `output`.

  Args:
    segmenter: the loaded model.
    output: folder to write (created).
    shapes: None for symbolic batch/height/width, else a list of (H, W)
      bucket shapes, each exported with a symbolic batch size.
    platforms: lowering platforms.

  Returns:
    The written files.
  """
  from fcn_jax import inference  # pylint: disable=g-import-not-at-top

  model = segmenter.model
  if 'fast_ops' in model.__dataclass_fields__:
    # The custom-gradient ops only speed up training and need static shapes;
    # the plain ops compute the same forward pass and export symbolically.
    model = model.clone(fast_ops='off')

  def fn(params, images, sizes):
    return inference.forward(model, params, images, sizes)

  params = jax.tree.map(np.asarray, segmenter.params)
  params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                             params)
  os.makedirs(output, exist_ok=True)
  written = []
  specs = []
  if shapes is None:
    specs.append((FUNCTION_FILE, 'b, h, w'))
  else:
    specs += [(_bucket_file(h, w), f'b, {h}, {w}') for h, w in shapes]
  for filename, dims in specs:
    batch_dim, height_dim, width_dim = jax_export.symbolic_shape(dims)
    images = jax.ShapeDtypeStruct((batch_dim, height_dim, width_dim, 3),
                                  jnp.uint8)
    sizes = jax.ShapeDtypeStruct((batch_dim, 2), jnp.int32)
    exported = jax_export.export(jax.jit(fn), platforms=tuple(platforms))(
        params_spec, images, sizes)
    path = os.path.join(output, filename)
    with open(path, 'wb') as f:
      f.write(exported.serialize())
    written.append(path)
  params_path = os.path.join(output, PARAMS_FILE)
  np.savez(params_path, **_flatten(params))
  meta = {
      'format': 'fcn_jax.export/1',
      'model': segmenter.config.model,
      'num_classes': segmenter.num_classes,
      'class_names': list(segmenter.class_names),
      'palette': np.asarray(segmenter.palette).tolist(),
      'shapes': 'symbolic' if shapes is None else [list(s) for s in shapes],
      'platforms': list(platforms),
      'checkpoint': segmenter.checkpoint,
      'dtype': str(segmenter.config.dtype),
      'signature': 'f(params, images uint8 RGB (N,H,W,3), sizes int32 (N,2) '
                   'valid height/width) -> float32 logits (N,H,W,C)',
      'jax_version': jax.__version__,
  }
  meta_path = os.path.join(output, META_FILE)
  with open(meta_path, 'w') as f:
    json.dump(meta, f, indent=2)
  return written + [params_path, meta_path]


def _flatten(tree: dict, prefix: str = '') -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    else:
      flat[f'{prefix}{key}'] = np.asarray(value)
  return flat


def _unflatten(flat) -> dict:
  tree = {}
  for name in flat.files if hasattr(flat, 'files') else flat:
    node = tree
    *parents, leaf = name.split('/')
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = np.asarray(flat[name])
  return tree


# ---------------------------------------------------------------------------
# Loading (jax + numpy only).


class ExportedModel:
  """An exported FCN, callable on uint8 RGB images.

  Attributes:
    meta: the contents of meta.json (class_names, palette, ...).
  """

  def __init__(self, path: str):
    with open(os.path.join(path, META_FILE)) as f:
      self.meta = json.load(f)
    with np.load(os.path.join(path, PARAMS_FILE)) as flat:
      self.params = jax.device_put(_unflatten(flat))
    self._functions = {}
    if self.meta['shapes'] == 'symbolic':
      self._functions[None] = self._read(os.path.join(path, FUNCTION_FILE))
    else:
      for height, width in self.meta['shapes']:
        self._functions[(height, width)] = self._read(
            os.path.join(path, _bucket_file(height, width)))

  @staticmethod
  def _read(path: str):
    with open(path, 'rb') as f:
      return jax_export.deserialize(bytearray(f.read()))

  @property
  def class_names(self) -> list[str]:
    return self.meta['class_names']

  @property
  def palette(self) -> np.ndarray:
    return np.asarray(self.meta['palette'], np.uint8)

  def _pick(self, height: int, width: int):
    """The function and padded shape for an image of height x width."""
    if None in self._functions:
      return self._functions[None], (height, width)
    fits = [s for s in self._functions if s[0] >= height and s[1] >= width]
    if not fits:
      raise ValueError(f'Image of {height}x{width} exceeds every exported '
                       f'shape {sorted(self._functions)}; export larger '
                       'shapes or symbolic ones.')
    shape = min(fits, key=lambda s: s[0] * s[1])
    return self._functions[shape], shape

  def logits(self, image: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 logits of one (H, W, 3) uint8 RGB image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'Expected an (H, W, 3) uint8 RGB image, got '
                       f'{image.dtype} {image.shape}.')
    height, width = image.shape[:2]
    function, (padded_h, padded_w) = self._pick(height, width)
    batch = np.zeros((1, padded_h, padded_w, 3), np.uint8)
    batch[0, :height, :width] = image
    sizes = np.array([[height, width]], np.int32)
    out = function.call(self.params, batch, sizes)
    return np.asarray(out)[0, :height, :width]

  def segment(self, image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices of one uint8 RGB image."""
    return np.argmax(self.logits(image), axis=-1).astype(np.uint8)


def load(path: str) -> ExportedModel:
  """Loads an exported model folder written by `export_segmenter`."""
  if not os.path.isfile(os.path.join(path, META_FILE)):
    raise errors.MissingFileError(f'{path}: not an fcn_jax export (no '
                                  f'{META_FILE}).')
  return ExportedModel(path)


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fcn_jax import inference  # pylint: disable=g-import-not-at-top
  from fcn_jax import writers  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_library_logs()
  flags_ = flags.FLAGS
  shapes = parse_shapes(flags_.shapes)
  segmenter = inference.load_from_args(flags_.workdir, flags_.checkpoint,
                                       flags_.dtype, flags_.model,
                                       seed=flags_.seed)
  if segmenter.seed_note:
    print(segmenter.seed_note)
  files = export_segmenter(segmenter, flags_.output, shapes,
                           tuple(flags_.platforms))
  print(f'Exported {segmenter.config.model} ({segmenter.num_classes} classes) '
        f'from {segmenter.checkpoint} for {",".join(flags_.platforms)}:')
  for path in files:
    print(f'  {path} ({os.path.getsize(path) / 1e6:.1f} MB)')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fcn_jax import cli  # pylint: disable=g-import-not-at-top
  cli.define_checkpoint_flags()
  flags.DEFINE_string('output', None, 'Folder to write the export into.')
  flags.DEFINE_string('shapes', 'symbolic', "'symbolic' (any batch and image "
                      'size) or bucket shapes HxW,HxW,...')
  flags.DEFINE_list('platforms', list(DEFAULT_PLATFORMS), 'Platforms to lower '
                    'for (cpu, cuda, rocm, tpu).')
  cli.define_model_flag()
  flags.mark_flags_as_required(['output'])


if __name__ == '__main__':
  from fcn_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main, path_flags=('workdir', 'checkpoint', 'output'))
