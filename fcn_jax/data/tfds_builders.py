"""TFDS builders for PASCAL VOC segmentation and SBD, from manual downloads.

TFDS's own `voc` is detection only. These builders read the archives the user
downloaded (see docs/datasets.md) from the manual_dir, either unpacked
or as the original .tar/.tgz, and write array_record data that
`tfds:voc_segmentation/2012`, `tfds:voc_segmentation/2011` and
`tfds:sbd_segmentation` read like any TFDS dataset. Images are stored as the
original JPEG bytes; labels as lossless grayscale PNGs of the class indices
(255 = ignore), validated with the same checks as the folder readers.
"""

from __future__ import annotations

import os
import shutil
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from fcn_jax.data import decode
from fcn_jax.data import sbd
from fcn_jax.data import voc

_VOC_ARCHIVES = {
    '2012': 'VOCtrainval_11-May-2012.tar',
    '2011': 'VOCtrainval_25-May-2011.tar',
}
_SBD_ARCHIVE = 'benchmark.tgz'


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'segmentation_mask': tfds.features.Image(shape=(None, None, 1)),
      'image_id': tfds.features.Text(),
  })


def _unpacked(dl_manager, archive_name: str, unpacked_names) -> str:
  """manual_dir itself if it holds an unpacked folder, else the extracted archive."""
  manual_dir = os.fspath(dl_manager.manual_dir)
  if any(os.path.isdir(os.path.join(manual_dir, name))
         for name in unpacked_names):
    return manual_dir
  archive = os.path.join(manual_dir, archive_name)
  if not os.path.isfile(archive):
    raise decode.DataError(
        f'{manual_dir}: neither {" nor ".join(unpacked_names)} nor '
        f'{archive_name} found in the manual_dir.')
  return _extract(archive, os.path.join(os.fspath(dl_manager.download_dir),
                                        'extracted', archive_name))


def _plain_members_only(member: tarfile.TarInfo, path: str):
  """tarfile filter: regular files and directories inside `path`, no more.

  The datasets hold nothing else; a link or special file in a downloaded
  archive is a sign of tampering (links can point writes anywhere).
  """
  if not (member.isfile() or member.isdir()):
    kind = ('symbolic link' if member.issym() else
            'hard link' if member.islnk() else 'device file or FIFO')
    raise tarfile.TarError(f'member {member.name!r} is a {kind}; only regular '
                           'files and directories are unpacked')
  if os.path.isabs(member.name) or '..' in member.name.split('/'):
    raise tarfile.TarError(f'member {member.name!r} points outside the '
                           'archive folder')
  return tarfile.data_filter(member, path)


def _extract(archive: str, target: str) -> str:
  """Unpacks a .tar/.tgz into `target` once; returns `target`.

  Python's tarfile rather than dl_manager.extract, which needs TensorFlow.
  Only regular files and directories are unpacked: a link (symbolic or
  hard), device file or FIFO is refused, as is a member named with an
  absolute path or '..' (and, by the 'data' filter, anything else that
  would land outside `target`). Unpacking
  into a temporary folder that is renamed at the end means an interrupted or
  refused archive leaves nothing half-written.
  """
  if os.path.isdir(target):
    return target
  partial = target + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(partial, filter=_plain_members_only)
  except (tarfile.TarError, OSError, EOFError) as e:
    shutil.rmtree(partial, ignore_errors=True)
    raise decode.DataError(f'{archive}: cannot unpack ({e}); download it '
                           'again.') from e
  os.replace(partial, target)
  return target


def _examples(source: voc.VOCLayoutSource):
  """(key, example) pairs of a validated source, images as original bytes."""
  for index, image_id in enumerate(source.ids):
    example = source[index]  # Decodes and validates image and label.
    with open(source.image_path(image_id), 'rb') as f:
      image_bytes = f.read()
    if (example['image'].shape[2] != 3 or
        decode.image_bytes_mode(image_bytes, image_id) != 'RGB'):
      image_bytes = _rgb_png(example['image'])
    yield image_id, {
        'image': image_bytes,
        'segmentation_mask': decode.encode_png(example['label']),
        'image_id': image_id,
    }


def _rgb_png(image: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image, 'RGB').save(buffer, 'PNG')
  return buffer.getvalue()


class VocSegmentation(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2011/2012 class segmentation (21 classes, 255 = ignore)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='2012', description='VOC2012 train/val.'),
      tfds.core.BuilderConfig(
          name='2011',
          description='VOC2011 train/val and seg11valid (the FCN paper val).'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put VOCtrainval_11-May-2012.tar (2012) or VOCtrainval_25-May-2011.tar '
      '(2011) from http://host.robots.ox.ac.uk/pascal/VOC/, or the VOCdevkit/ '
      'folder they unpack to, in the manual_dir.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=_features(), supervised_keys=('image', 'segmentation_mask'),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/')

  def _split_generators(self, dl_manager):
    year = self.builder_config.name
    base = _unpacked(dl_manager, _VOC_ARCHIVES[year],
                     ['VOCdevkit', f'VOC{year}'])
    root = voc.find_voc_root(base, (year,))
    num_classes = len(voc.VOC_CLASS_NAMES)
    splits = {split: _examples(voc.VOCLayoutSource(root, split, num_classes))
              for split in ('train', 'val')}
    if year == '2011':
      splits['seg11valid'] = _examples(voc.VOCLayoutSource(
          root, 'seg11valid', num_classes, ids=sbd.packaged_split('seg11valid')))
    return splits

  def _generate_examples(self, examples):
    yield from examples


class SbdSegmentation(tfds.core.GeneratorBasedBuilder):
  """SBD (Hariharan et al. 2011) class segmentation: train 8498 / val 2820."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put benchmark.tgz from http://www.eecs.berkeley.edu/Research/Projects/'
      'CS/vision/grouping/semantic_contours/benchmark.tgz, or the '
      'benchmark_RELEASE/ folder it unpacks to, in the manual_dir.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=_features(), supervised_keys=('image', 'segmentation_mask'),
        homepage='http://home.bharathh.info/pubs/codes/SBD/download.html')

  def _split_generators(self, dl_manager):
    base = _unpacked(dl_manager, _SBD_ARCHIVE, ['benchmark_RELEASE'])
    root = sbd.find_sbd_root(base)
    return {split: _examples(sbd.SBDSource(root, split))
            for split in ('train', 'val')}

  def _generate_examples(self, examples):
    yield from examples
