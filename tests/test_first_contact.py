"""What a new user meets first: path expansion, dataset_info.json, TensorBoard
pictures and class-named tags, learning-rate schedules, the ETA."""

import glob
import io
import json
import os
import struct

import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from fcn_jax import cli
from fcn_jax import dataset_info
from fcn_jax import input_pipeline
from fcn_jax import optimizer
from fcn_jax import summaries
from fcn_jax import train
from fcn_jax import writers
from fcn_jax.configs import default
from fcn_jax.data import decode


def read_events(workdir):
  """{(tag, step): scalar float or decoded RGB image} of a workdir's events,
  read with the TensorBoard record format (length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  values = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      while header := f.read(12):
        data = f.read(struct.unpack('<Q', header[:8])[0])
        f.read(4)
        event = event_pb2.Event.FromString(data)
        for value in event.summary.value:
          if value.HasField('image'):
            with Image.open(io.BytesIO(value.image.encoded_image_string)) as im:
              values[value.tag, event.step] = np.asarray(im.convert('RGB'))
          else:
            values[value.tag, event.step] = value.simple_value
  return values


def test_paths_expand_home_and_variables(monkeypatch):
  monkeypatch.setenv('HOME', '/home/u')
  monkeypatch.setenv('DATA', '/mnt/data')
  assert cli.expand_path('~/runs/x') == '/home/u/runs/x'
  assert cli.expand_path('$DATA/voc') == '/mnt/data/voc'
  assert cli.expand_path('') == ''
  config = ml_collections.ConfigDict({
      'data_dir': '~/data', 'init_from': '$DATA/vgg', 'model': '~fcn8s',
      'synthetic': {'cache_dir': '~/cache'}})
  expanded = cli.expand_config_paths(config)
  assert expanded.data_dir == '/home/u/data'
  assert expanded.init_from == '/mnt/data/vgg'
  assert expanded.synthetic.cache_dir == '/home/u/cache'
  assert expanded.model == '~fcn8s'  # Not a path key: left alone.
  assert config.data_dir == '~/data'  # A copy.
  assert cli.expand_config_paths({'val_data_dir': '~/v'}) == {
      'val_data_dir': '/home/u/v'}


def test_dataset_info_round_trip_and_errors(tmp_path):
  palette = input_pipeline.voc_palette(3)
  path = dataset_info.save(str(tmp_path), 'voc_dir', ['bg', 'cat', 'dog'],
                           palette)
  assert os.path.basename(path) == 'dataset_info.json'
  info = dataset_info.load(str(tmp_path))
  assert info['class_names'] == ('bg', 'cat', 'dog')
  assert info['num_classes'] == 3 and info['ignore_label'] == 255
  np.testing.assert_array_equal(info['palette'], palette)
  assert dataset_info.load(str(tmp_path / 'none')) is None
  with open(path, 'w') as f:
    f.write('{"num_classes": 4, "class_names": ["a"]}')
  with pytest.raises(dataset_info.DatasetInfoError, match='num_classes=4'):
    dataset_info.load(str(tmp_path))


def test_class_names_come_from_dataset_info_without_the_dataset(tmp_path):
  # The dataset cannot be built here (no such folder): without the file the
  # names are numbered, with it they are the training run's.
  config = default.get_config()
  config.dataset, config.data_dir = 'voc_dir', str(tmp_path / 'gone')
  names, _ = dataset_info.dataset_meta(config, 3, str(tmp_path))
  assert names == ('class_0', 'class_1', 'class_2')
  dataset_info.save(str(tmp_path), 'voc_dir', ['sky', 'road', 'car'],
                    [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  names, palette = dataset_info.dataset_meta(config, 3, str(tmp_path))
  assert names == ('sky', 'road', 'car')
  assert palette.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_prediction_strip_is_input_truth_prediction():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  label = np.array([[0, 1, 255], [1, 0, 0]])
  pred = np.array([[1, 1, 0], [0, 0, 1]])
  palette = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
  strip = summaries.prediction_strip(image, label, pred, palette)
  assert strip.shape == (2, 3 * 3 + 2 * 4, 3)
  np.testing.assert_array_equal(strip[:, :3], image)
  assert (strip[:, 3:7] == 255).all()
  cream = [224, 224, 192]  # VOC's colour of label 255.
  np.testing.assert_array_equal(strip[0, 7:10], [[10, 20, 30], [40, 50, 60],
                                                 cream])
  np.testing.assert_array_equal(strip[1, 14:17], [[10, 20, 30], [10, 20, 30],
                                                  [40, 50, 60]])


def test_writer_tags_per_class_scores_by_name_and_writes_images(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), class_names=['bg', 'cat'])
  writer.write(5, 'val', {'mean_iu': 0.5, 'per_class_iu': [0.25, 0.75]})
  picture = np.zeros((4, 6, 3), np.uint8)
  picture[1, 2] = (200, 10, 30)
  writer.write_image(5, 'val/predictions/0', picture)
  writer.close()
  events = read_events(str(tmp_path))
  assert events['val/per_class_iu/bg', 5] == pytest.approx(0.25)
  assert events['val/per_class_iu/cat', 5] == pytest.approx(0.75)
  np.testing.assert_array_equal(events['val/predictions/0', 5], picture)


def _schedule(**overrides):
  config = default.get_config()
  config.num_train_steps, config.warmup_steps = 110, 10
  config.update(overrides)
  return optimizer.learning_rate_schedule(config)


def test_poly_schedule_after_warmup():
  schedule = _schedule(lr_schedule='poly', learning_rate=0.01, poly_power=0.9)
  assert float(schedule(5)) == pytest.approx(0.005)  # Linear warm-up.
  # 10 warm-up steps, then 100 of lr * (1 - t/100) ** 0.9.
  for t in (0, 30, 99):
    assert float(schedule(10 + t)) == pytest.approx(
        0.01 * (1 - t / 100) ** 0.9, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)


def test_adamw_decays_kernels_decoupled_not_biases():
  config = default.get_config()
  config.update(optimizer='adamw', learning_rate=0.1, weight_decay=0.5,
                lr_schedule='constant', warmup_steps=0, bias_lr_mult=1.0)
  params = {'conv1_1': {'kernel': np.full((1, 1, 1, 2), 2.0, np.float32),
                        'bias': np.full((2,), 2.0, np.float32)}}
  tx = optimizer.create_optimizer(config, params)
  zero = {'conv1_1': {'kernel': np.zeros((1, 1, 1, 2), np.float32),
                      'bias': np.zeros((2,), np.float32)}}
  updates, _ = tx.update(zero, tx.init(params), params)
  # With a zero gradient Adam's step is 0, so only the decoupled decay acts:
  # -lr * wd * p on kernels (an L2 term would have gone through Adam's
  # normalization instead), nothing on biases.
  np.testing.assert_allclose(updates['conv1_1']['kernel'], -0.1 * 0.5 * 2.0)
  np.testing.assert_allclose(updates['conv1_1']['bias'], 0.0)


def test_eta_shows_hours_for_long_runs():
  assert train._format_duration(65) == '1m05s'
  assert train._format_duration(3 * 3600 + 7 * 60 + 59) == '3h07m'
  assert train._format_duration(float('nan')) == '?'


def test_read_image_applies_exif_orientation(tmp_path):
  # Orientation 6: the camera was turned clockwise; viewers rotate the stored
  # pixels 90 degrees clockwise to show them.
  stored = np.zeros((20, 30, 3), np.uint8)
  stored[:10, :15] = (250, 20, 20)  # A red top-left quadrant.
  exif = Image.Exif()
  exif[0x0112] = 6
  path = str(tmp_path / 'photo.jpg')
  Image.fromarray(stored).save(path, exif=exif, quality=100)
  image, _ = decode.read_input_image(path)
  expected = np.rot90(stored, k=-1)  # Clockwise: red is now top-right.
  assert image.shape == expected.shape == (30, 20, 3)
  assert np.abs(image.astype(int) - expected).mean() < 3


class _Stream(io.StringIO):

  def __init__(self, tty):
    super().__init__()
    self._tty = tty

  def isatty(self):
    return self._tty


def test_progress_redraws_only_on_a_terminal():
  tty, log = _Stream(True), _Stream(False)
  for done in range(1, 101):
    cli.show_progress(done, 100, 0.0, stream=tty)
    cli.show_progress(done, 100, 0.0, stream=log)
  # Terminal: 100 redraws of one line, one newline at the end.
  assert tty.getvalue().count('\r') == 100 and tty.getvalue().count('\n') == 1
  # File or pipe: a plain line every 10 % (10, 20, ..., 100), no \r.
  lines = log.getvalue().splitlines()
  assert '\r' not in log.getvalue()
  assert [l.split()[1] for l in lines] == [f'{n}/100' for n in range(10, 101, 10)]
  short = _Stream(False)
  for done in range(1, 4):  # Fewer items than steps: every item, once.
    cli.show_progress(done, 3, 0.0, stream=short)
  assert [l.split()[1] for l in short.getvalue().splitlines()] == [
      '1/3', '2/3', '3/3']


def test_report_of_a_single_training_workdir(tmp_path, capsys):
  from experiments import report  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'fcn8s'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"num_train_steps": 4, "seed": 0}')
  dataset_info.save(str(workdir), 'x', ['sky', 'road'], [[0, 0, 0]] * 2)
  lines = [
      {'step': 2, 'split': 'train', 'loss': 2.0, 'steps_per_sec': 1.0},
      {'step': 2, 'split': 'val', 'overall_acc': 0.5, 'mean_acc': 0.5,
       'mean_iu': 0.25, 'fwavacc': 0.3, 'per_class_iu': [0.1, 0.4]},
      {'step': 4, 'split': 'train', 'loss': 1.0, 'steps_per_sec': 3.0},
      {'step': 4, 'split': 'val', 'overall_acc': 0.75, 'mean_acc': 0.625,
       'mean_iu': 0.5, 'fwavacc': 0.55, 'per_class_iu': [0.375, 0.625]}]
  (workdir / 'metrics.jsonl').write_text(
      ''.join(json.dumps(line) + '\n' for line in lines))
  assert report.main(['report', '--help']) == 0
  assert 'one training workdir' in capsys.readouterr().out
  paths = report.write_report(str(workdir))
  text = open(paths['md']).read()
  assert text.startswith('# Run `fcn8s`')
  # The final scores, in percent, and the class names of dataset_info.json.
  assert '| `fcn8s` | 1 | 75.0 | 62.5 | 50.0 | 55.0 |' in text
  assert '| setting | sky | road |' in text and '| `fcn8s` | 37.5 | 62.5 |' in text
  with Image.open(paths['curves']) as curves:
    assert curves.size[0] >= 500
