"""A short training run on the real VOC sample through the command line."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = os.path.join(ROOT, 'tests', 'data', 'voc-real-mini')


def test_train_on_real_voc_sample_from_the_cli(tmp_path):
  workdir = tmp_path / 'run'
  command = [
      sys.executable, '-m', 'fcn_jax.main', f'--workdir={workdir}',
      '--config=fcn_jax/configs/tiny.py', '--config.dataset=voc_dir',
      f'--config.data_dir={MINI}', '--config.image_size=32',
      '--config.batch_size=2', '--config.eval_batch_size=2',
      '--config.num_train_steps=2',
      '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
      '--config.log_every_steps=1']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Dataset voc_dir: 21 classes, 3 train / 2 val images.' in result.stderr
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  val = [r for r in records if 'overall_acc' in json.dumps(r)]
  assert val, records
  assert os.path.isdir(workdir / 'checkpoints' / '2')
