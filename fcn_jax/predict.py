"""Segments images with a trained FCN and writes label maps and overlays.

    python -m fcn_jax.predict --workdir=runs/fcn8s --input=photos/ --output=out/
    python -m fcn_jax.predict --checkpoint=runs/fcn8s/checkpoints/1500 \
        --input=photo.jpg --output=out/ [--tta] [--probabilities]

NYUDv2 models that read HHA or depth take them from folders of files named
like the inputs (`--hha=hha/`, `--depth=depth/`); SIFT Flow's two-headed
models also write the geometric label map `<stem>_geo.png` (and overlay).

For every input image (any size) it writes `<output>/<stem>.png`, the label
map as a palette PNG of the input's size (pixel value = class index, VOC
colours in the palette), `<output>/<stem>_overlay.png`, the colours blended
over the photo, and with --probabilities one grey-level heat map per class,
`<output>/<stem>_prob_<class>.png`. Images that cannot be read are reported
by name and the others are still processed. Exit status: 0 all written, 2
some images failed (the others were written), 1 a user error (one line).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

import numpy as np
from absl import app
from absl import flags
from absl import logging
from PIL import Image

from fcn_jax import cli
from fcn_jax import errors
from fcn_jax import inference
from fcn_jax import input_pipeline
from fcn_jax import tasks
from fcn_jax import visualize
from fcn_jax import writers
from fcn_jax.data import decode
from fcn_jax.data import nyud

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff',
                    '.webp', '.ppm', '.pgm', '.pbm')

FLAGS = flags.FLAGS
# Exit status when some inputs failed but the others were written.
EXIT_SOME_FAILED = 2



@dataclasses.dataclass
class Report:
  """What a prediction run did."""
  written: list = dataclasses.field(default_factory=list)
  failures: list = dataclasses.field(default_factory=list)
  warnings: list = dataclasses.field(default_factory=list)
  sizes: set = dataclasses.field(default_factory=set)
  compilations: int = 0
  seconds: float = 0.0


def list_images(path: str) -> list[str]:
  """The image files named by `path` (a file, or a folder's image files).

  Raises:
    errors.MissingFileError (a FileNotFoundError) / errors.BadFileError
      (a ValueError): with the path, if it is missing or a folder without
      images.
  """
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise errors.MissingFileError(f'--input={path}: no such file or '
                                  'folder.')
  files = sorted(
      os.path.join(path, name) for name in os.listdir(path)
      if not name.startswith('.') and os.path.isfile(os.path.join(path, name))
      and name.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise errors.BadFileError(f'--input={path}: folder holds no images '
                              f'(looked for {", ".join(IMAGE_EXTENSIONS)}).')
  return files


def predict_files(segmenter: inference.Segmenter, paths: list[str],
                  output: str, *, tta: bool = False,
                  scales: tuple[float, ...] | None = None,
                  window: int | None = None, overlap: float = 1 / 3,
                  probabilities: bool = False,
                  overlay_alpha: float = 0.5,
                  modality_dirs: dict[str, str] | None = None) -> Report:
  """Segments `paths` into `output`; failures are collected, not raised.

  `modality_dirs` ({'hha': folder, 'depth': folder}) holds the further
  inputs of NYUDv2 models, one file per input named like it.
  """
  os.makedirs(output, exist_ok=True)
  report = Report()
  compiled_before = segmenter.num_compilations
  stems = {}
  start = time.time()
  for index, path in enumerate(paths, 1):
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in stems:
      report.failures.append(
          f'{path}: output name {stem}.png clashes with {stems[stem]}; rename '
          'one of them.')
      continue
    stems[stem] = path
    try:
      image, notes = decode.read_input_image(path)
      report.warnings.extend(f'{path}: {note}' for note in notes)
      for note in notes:
        logging.warning('%s: %s', path, note)
      if tasks.uses_model_input(segmenter.config):
        report.written += _predict_heads(segmenter, image, path, stem, output,
                                         modality_dirs or {}, overlay_alpha)
        report.sizes.add(image.shape[:2])
        continue
      if probabilities:
        probs = segmenter.probabilities(image, tta=tta, scales=scales,
                                        window=window, overlap=overlap)
        labels = np.argmax(probs, axis=-1).astype(np.uint8)
      else:  # Bounded memory on huge images (tiles, a band at a time).
        labels = segmenter.segment(image, tta=tta, scales=scales,
                                   window=window, overlap=overlap)
      label_path = os.path.join(output, f'{stem}.png')
      visualize.save_label_png(label_path, labels, segmenter.palette)
      overlay_path = os.path.join(output, f'{stem}_overlay.png')
      Image.fromarray(visualize.overlay(image, labels, segmenter.palette,
                                        overlay_alpha)).save(overlay_path)
      report.written += [label_path, overlay_path]
      if probabilities:
        for c, name in enumerate(segmenter.class_names):
          prob_path = os.path.join(
              output, f'{stem}_prob_{_safe_name(name)}.png')
          Image.fromarray(visualize.heatmap(probs[..., c])).save(prob_path)
          report.written.append(prob_path)
      report.sizes.add(image.shape[:2])
      logging.info('[%d/%d] %s (%dx%d) -> %s', index, len(paths), path,
                   image.shape[1], image.shape[0], label_path)
    except decode.ImageError as e:
      report.failures.append(str(e))
      logging.error('%s', e)
    except Exception as e:  # pylint: disable=broad-except
      # Keep going with the other images; the run still exits non-zero.
      report.failures.append(f'{path}: {type(e).__name__}: {e}')
      logging.exception('%s failed', path)
  report.compilations = segmenter.num_compilations - compiled_before
  report.seconds = time.time() - start
  return report


def _safe_name(name: str) -> str:
  """A class name usable in file names ('tv/monitor' -> 'tv_monitor')."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'class'


def read_modality(modality: str, image_path: str,
                  modality_dirs: dict[str, str]) -> np.ndarray:
  """The `modality` ('hha' or 'depth') file that goes with `image_path`:
  same file name (or same stem, .png) in the folder of --hha / --depth."""
  folder = os.path.expanduser(modality_dirs.get(modality) or '')
  if not folder:
    raise decode.ImageError(
        f'{image_path}: this model also reads {modality}; give '
        f'--{modality}=FOLDER with a file named like each input.')
  name = os.path.basename(image_path)
  candidates = [os.path.join(folder, name),
                os.path.join(folder, os.path.splitext(name)[0] + '.png')]
  path = next((c for c in candidates if os.path.isfile(c)), None)
  if path is None:
    raise decode.ImageError(f'{candidates[-1]}: {modality} file for '
                               f'{image_path} not found.')
  try:
    return (nyud.read_depth(path) if modality == 'depth'
            else decode.read_image(path))
  except decode.DataError as e:
    raise decode.ImageError(str(e)) from None


def _predict_heads(segmenter: inference.Segmenter, image: np.ndarray,
                   path: str, stem: str, output: str,
                   modality_dirs: dict[str, str],
                   overlay_alpha: float) -> list[str]:
  """Label map and overlay of every head: <stem>.png, <stem>_geo.png, ..."""
  extras = {}
  for modality in tasks.extra_modalities(segmenter.config):
    extras[modality] = read_modality(modality, path, modality_dirs)
    if extras[modality].shape[:2] != image.shape[:2]:
      raise decode.ImageError(
          f'{path}: its {modality} is {extras[modality].shape[1]}x'
          f'{extras[modality].shape[0]} (WxH) but the image is '
          f'{image.shape[1]}x{image.shape[0]}.')
  logits = segmenter.head_logits(
      tasks.model_input(segmenter.config, image, extras))
  written = []
  for key, head in logits.items():
    labels = np.argmax(head, axis=-1).astype(np.uint8)
    tag = '' if key == 'label' else '_' + key[:-len('_label')]
    palette = (segmenter.palette if key == 'label'
               else input_pipeline.voc_palette(head.shape[-1]))
    label_path = os.path.join(output, f'{stem}{tag}.png')
    visualize.save_label_png(label_path, labels, palette)
    overlay_path = os.path.join(output, f'{stem}{tag}_overlay.png')
    Image.fromarray(visualize.overlay(image, labels, palette,
                                      overlay_alpha)).save(overlay_path)
    written += [label_path, overlay_path]
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_library_logs()
  if not FLAGS.input or not FLAGS.output:
    raise errors.FlagError('--input and --output are required.')
  if not FLAGS.workdir and FLAGS.checkpoint in ('best', 'latest'):
    raise errors.FlagError('Give --workdir or --checkpoint=PATH.')
  try:
    scales = tuple(float(s) for s in FLAGS.scales)
  except ValueError:
    raise errors.FlagError(f'--scales={",".join(FLAGS.scales)}: expected '
                           'numbers, e.g. 0.75,1,1.25.') from None
  decode.set_max_image_pixels(FLAGS.max_image_pixels)
  paths = list_images(FLAGS.input)
  segmenter = inference.load_from_args(FLAGS.workdir, FLAGS.checkpoint, FLAGS.dtype,
                                        FLAGS.model, FLAGS.bucket, FLAGS.seed)
  if segmenter.seed_note:
    print(segmenter.seed_note)
  logging.info('Model %s (%d classes) from %s; %d image(s).',
               segmenter.config.model, segmenter.num_classes,
               segmenter.checkpoint, len(paths))
  report = predict_files(
      segmenter, paths, FLAGS.output, tta=FLAGS.tta,
      scales=scales if FLAGS.tta else None, window=FLAGS.window or None,
      overlap=FLAGS.overlap, probabilities=FLAGS.probabilities,
      overlay_alpha=FLAGS.overlay_alpha,
      modality_dirs={'hha': FLAGS.hha or '', 'depth': FLAGS.depth or ''})
  done = len(paths) - len(report.failures)
  print(f'Segmented {done} of {len(paths)} image(s) into {FLAGS.output} in '
        f'{report.seconds:.1f}s: {len(report.sizes)} distinct size(s), '
        f'{report.compilations} compilation(s) (input shapes '
        f'{", ".join("x".join(map(str, s[1:3])) for s in segmenter.compiled_shapes)}).')
  if report.failures:
    print(f'{len(report.failures)} image(s) failed:', file=sys.stderr)
    for failure in report.failures:
      print(f'  {failure}', file=sys.stderr)
    sys.exit(EXIT_SOME_FAILED)


def _define_flags():
  """Flags of the command line (defined only when run as a program, so the
  module can be imported next to other fcn_jax programs)."""
  cli.define_checkpoint_flags()
  flags.DEFINE_string('input', None, 'An image file or a folder of images.')
  flags.DEFINE_string('output', None, 'Folder for the outputs (created).')
  flags.DEFINE_bool('tta', False, 'Test-time augmentation: average over '
                    'horizontal flips and --scales.')
  flags.DEFINE_list('scales', [str(s) for s in inference.DEFAULT_TTA_SCALES],
                    'Image scales averaged with --tta.')
  flags.DEFINE_integer('window', 1024, 'Images with a side larger than this are '
                       'segmented in overlapping tiles of this size (0 = never).')
  flags.DEFINE_integer('max_image_pixels', decode.DEFAULT_MAX_IMAGE_PIXELS,
                       'Largest image read (width x height); larger files are '
                       'refused as decompression bombs. Raise it for real '
                       'gigapixel images (they are segmented in tiles).')
  flags.DEFINE_float('overlap', 1 / 3, 'Tile overlap, as a fraction of --window.')
  flags.DEFINE_bool('probabilities', False, 'Also write per-class probability '
                    'heat maps.')
  flags.DEFINE_bool('bucket', True, 'Pad images to a few bucket shapes so that '
                    'mixed sizes reuse compilations.')
  cli.define_model_flag()
  flags.DEFINE_float('overlay_alpha', 0.5, 'Opacity of the colours in overlays.')
  flags.DEFINE_string('hha', None, 'NYUDv2 HHA / RGB-HHA models: folder of '
                      'HHA images named like the inputs.')
  flags.DEFINE_string('depth', None, 'NYUDv2 RGB-D models: folder of depth '
                      'PNGs named like the inputs.')


if __name__ == '__main__':
  _define_flags()
  cli.run(main, path_flags=('workdir', 'checkpoint', 'input', 'output'))
