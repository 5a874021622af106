"""Converts existing weights into fcn_jax parameters ("net surgery").

    python -m fcn_jax.convert --input=vgg16_from_caffe.pth --output=weights/vgg16
    python -m fcn_jax.convert --input=fcn8s_from_caffe.pth --output=weights/fcn8s

Sources:

* VGG16 ImageNet classifiers as PyTorch state dicts: the Caffe VGG16 converted
  by pytorch-fcn (``vgg16_from_caffe.pth``: BGR, mean-subtracted 0-255 input,
  exactly our convention) and torchvision's ``vgg16-397923af.pth`` (RGB in
  [0, 1], normalized by mean/std; the normalization and the channel swap are
  folded into conv1_1). The fully connected fc6/fc7/fc8 become 7x7, 1x1 and
  1x1 convolutions: the paper's convolutionalization.
* FCN-32s/16s/8s/8s-at-once weights of wkentaro/pytorch-fcn
  (``from_torchfcn``), e.g. its ``fcn8s_from_caffe.pth``.
* The reference's own Caffe ``.caffemodel`` files (format detected from the
  file; see fcn_jax/caffemodel.py for the reader and fcn_jax/caffe_models.py
  for the released models and their layer tables), e.g.
  ``fcn8s-heavy-pascal.caffemodel`` or ``VGG_ILSVRC_16_layers.caffemodel``.

``.pth`` files are read WITHOUT torch by the restricted unpickler of
`fcn_jax.pth` (it refuses every other global, so a malicious pickle cannot
run code); the layer surgery is `fcn_jax.surgery`. The output is an Orbax
checkpoint directory holding ``params`` and ``metadata``
(`fcn_jax.workdir.save_params`; `workdir.load_params` reads it back, as well
as a training workdir), and `surgery.init_from` merges it into a model's
parameters (``config.init_from``).
"""

from __future__ import annotations

import json
import os

from absl import logging

from fcn_jax import errors
from fcn_jax import models
from fcn_jax import pth
from fcn_jax import surgery
from fcn_jax import workdir as workdir_lib

FORMATS = ('vgg16-caffe', 'vgg16-torchvision', 'torchfcn', 'caffemodel')


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _is_caffemodel(input_path: str, fmt: str) -> bool:
  """--format=caffemodel, or auto with a file that looks like one."""
  from fcn_jax import caffemodel  # pylint: disable=g-import-not-at-top
  if fmt != 'auto' or not os.path.isfile(input_path):
    return fmt == 'caffemodel'
  return (input_path.endswith('.caffemodel')
          or caffemodel.looks_like_caffemodel(input_path))


def convert_file(input_path: str, output: str, fmt: str = 'auto',
                 variant: str = '', skip_checksum: bool = False) -> dict:
  """Converts one .pth or .caffemodel file into a checkpoint at `output`.

  Returns the metadata written next to the params. For a .caffemodel,
  `variant` may name a reference model or architecture (see
  `caffe_models.convert_caffemodel`).
  """
  if _is_caffemodel(input_path, fmt):
    from fcn_jax import caffe_models  # pylint: disable=g-import-not-at-top
    if os.path.exists(output):  # Before reading a large file.
      raise FileExistsError(f'{os.path.abspath(output)}: output already '
                            'exists; choose a new path.')
    params, metadata = caffe_models.convert_caffemodel(input_path, variant)
    workdir_lib.save_params(output, params, metadata)
    return metadata
  known = None if skip_checksum else surgery.verify_checksum(input_path)
  if fmt == 'auto':
    fmt = known['format'] if known else ''
  state = pth.state_dict_from(pth.load_pth(input_path), input_path)
  if not fmt:
    if 'conv1_1.weight' in state:
      fmt = 'torchfcn'
    else:
      raise ValueError(
          f'{input_path}: cannot tell the input convention of this VGG16 '
          "file; pass --format=vgg16-caffe or --format=vgg16-torchvision.")
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r}: expected one of {FORMATS} or auto.')
  metadata = {'source': os.path.abspath(input_path), 'format': fmt,
              'input': 'BGR, 0-255, minus models.MEAN_BGR'}
  if known:
    metadata['checksum_verified'] = True
  if fmt == 'torchfcn':
    variant = (variant or (known or {}).get('variant')
               or surgery.guess_torchfcn_variant(state))
    params = surgery.from_torchfcn(state, variant)
    metadata.update(variant=variant,
                    num_classes=surgery.infer_num_classes(params),
                    learn_upsampling=surgery.has_learned_upsampling(params))
  else:
    params = surgery.from_vgg16(state, fmt.split('-')[1])
    metadata.update(variant='vgg16', num_classes=1000)
  metadata['width'] = surgery.infer_width(params)
  workdir_lib.save_params(output, params, metadata)
  return metadata


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  if os.path.exists(f.output):  # Before reading a large file.
    raise errors.FlagError(f'--output={f.output}: already exists; choose a '
                           'new path.')
  with errors.user_file(f.input):  # The readers' and converters' errors.
    metadata = convert_file(f.input, f.output, f.format, f.variant,
                            f.skip_checksum)
  logging.info('Wrote %s: %s', os.path.abspath(f.output), json.dumps(metadata))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from fcn_jax import caffe_models  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('input', None,
                      'PyTorch .pth or Caffe .caffemodel file to convert.')
  flags.DEFINE_string('output', None, 'Directory to write (must not exist).')
  flags.DEFINE_enum('format', 'auto', ('auto',) + FORMATS,
                    'Source: auto = .caffemodel by its content, else known '
                    'file name, else pytorch-fcn names.')
  flags.DEFINE_enum('variant', '', ('',) + models.MODELS + tuple(sorted(
      set(caffe_models.REFERENCE_MODELS) - set(models.MODELS))),
                    'FCN variant of a pytorch-fcn file (default: from names; '
                    'fcn8s-atonce must be given unless the file is known), or '
                    'reference model of a .caffemodel (default: from its file '
                    'name, else its layer names).')
  flags.DEFINE_bool('skip_checksum', False,
                    'Convert a known file name even if its checksum differs.')
  flags.mark_flags_as_required(['input', 'output'])


if __name__ == '__main__':
  from fcn_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main, path_flags=('input', 'output'))
