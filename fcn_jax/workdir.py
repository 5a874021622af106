"""The run folder (workdir): its layout, and reading a trained model back.

    <workdir>/config.json             the run's resolved config (`save_config`)
    <workdir>/checkpoints/<step>/     the train state (written by checkpointing)
    <workdir>/corrupt_checkpoints/    damaged steps moved aside on resume
    <workdir>/metrics.jsonl           train and validation records (writers)
    <workdir>/dataset_info.json       class names and palette (dataset_info)

A saved config.json is read over the current defaults (`load_config`), so
workdirs written before a config key existed still load.

The best checkpoint is the finished step with the highest validation mean IU
in metrics.jsonl (for a run of several seeds: the mean over the seeds, as the
checkpoints are ranked), the later step on a tie, the latest step when no
finished step was evaluated. Only step directories count that Orbax has
renamed from their temporary name, i.e. finished ones, so an evaluation whose
checkpoint a kill cut short is never picked; the last record of a step wins
(a resumed run evaluates a step again). The readers below never write, lock
or clean up, so they are safe while a trainer writes into the same workdir.

Parameters are restored without the optimizer state (`restore_params`) from
a step directory, any Orbax PyTree checkpoint holding them, or a converted
checkpoint (`save_params`: items `params` and `metadata`, as ``python -m
fcn_jax.convert`` writes); `load_params` also takes a workdir (its best step).
Only these import JAX and Orbax, so that reports and sweeps read workdirs
without them.
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
from typing import Any, Iterator, Mapping

import ml_collections
import numpy as np

from fcn_jax import errors
from fcn_jax.configs import default as default_config

CONFIG_FILE = 'config.json'
CHECKPOINTS = 'checkpoints'
CORRUPT_CHECKPOINTS = 'corrupt_checkpoints'
METRICS_FILE = 'metrics.jsonl'
DATASET_INFO_FILE = 'dataset_info.json'  # Written by fcn_jax.dataset_info.
CONVERTED_MARKER = 'metadata'  # Sub-directory of a converted checkpoint.
# A checkpoint may declare more array bytes than it stores (TensorStore
# compresses, and skips chunks equal to the fill value), but not absurdly
# more: above this ratio plus slack the declared shapes are not believed.
MAX_DECLARED_RATIO = 1000
MAX_DECLARED_SLACK_BYTES = 1 << 30


class CheckpointError(ValueError, errors.UserError):
  """A checkpoint is missing, unreadable or does not fit the model."""


class DeclaredSizeError(CheckpointError):
  """A checkpoint's metadata declares arrays far larger than its files."""


# ---------------------------------------------------------------------------
# Paths.


def config_path(workdir: str) -> str:
  """`<workdir>/config.json`."""
  return os.path.join(workdir, CONFIG_FILE)


def checkpoint_dir(workdir: str) -> str:
  """The absolute `<workdir>/checkpoints` (Orbax's CheckpointManager root)."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def step_dir(workdir: str, step: int) -> str:
  """The directory of the checkpoint at `step`."""
  return os.path.join(checkpoint_dir(workdir), str(step))


def corrupt_dir(workdir: str) -> str:
  """Where damaged checkpoints are moved aside on resume."""
  return os.path.join(os.path.abspath(workdir), CORRUPT_CHECKPOINTS)


def metrics_path(workdir: str) -> str:
  """`<workdir>/metrics.jsonl`."""
  return os.path.join(workdir, METRICS_FILE)


def is_workdir(path: str) -> bool:
  """Whether `path` holds a saved run config."""
  return os.path.isfile(config_path(path))


def find_workdir(checkpoint_path: str) -> str | None:
  """The workdir of a checkpoint: the nearest ancestor with config.json."""
  path = os.path.abspath(checkpoint_path)
  for _ in range(4):
    if is_workdir(path):
      return path
    path = os.path.dirname(path)
  return None


def checkpoint_step(path: str) -> int | None:
  """The training step of a checkpoint directory named by its step."""
  name = os.path.basename(os.path.normpath(path))
  return int(name) if name.isdigit() else None


# ---------------------------------------------------------------------------
# config.json.


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `<workdir>/config.json` atomically."""
  path = config_path(workdir)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def read_config(workdir: str, strict: bool = True) -> dict | None:
  """The saved config.json as written (no defaults added); None if absent.

  Raises CheckpointError if it is unreadable or not a JSON object; with
  `strict=False` such a file reads as None too (for reports and sweeps).
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    if not strict:
      return None
    raise CheckpointError(f'{path}: cannot read the run config ({e}).') from e
  if not isinstance(saved, dict):
    if not strict:
      return None
    raise CheckpointError(f'{path}: the run config is a '
                          f'{type(saved).__name__}, not an object.')
  return saved


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """`<workdir>/config.json` over the current defaults (for keys added
  since); CheckpointError if it is missing or unusable."""
  saved = read_config(workdir)
  if saved is None:
    raise CheckpointError(f'{config_path(workdir)}: cannot read the run '
                          'config (no such file).')
  config = default_config.get_config()
  try:
    _merge(config, saved)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise CheckpointError(f'{config_path(workdir)}: cannot use the run config '
                          f'({e}).') from e
  return config


def _merge(config: ml_collections.ConfigDict, values: dict) -> None:
  for key, value in values.items():
    if isinstance(value, dict) and key in config and isinstance(
        config[key], ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      with config.ignore_type():
        config[key] = value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys ('synthetic.val_size') on a copy of `config`."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    with node.ignore_type():
      node[leaf] = value
  return config


# ---------------------------------------------------------------------------
# Which checkpoint.


def finished_steps(workdir: str) -> dict[int, str]:
  """{step: directory} of the finished checkpoints (Orbax renames a step
  directory to its number only once it is complete)."""
  root = os.path.join(workdir, CHECKPOINTS)
  steps = {}
  for name in os.listdir(root):
    if name.isdigit() and os.path.isdir(os.path.join(root, name)):
      steps[int(name)] = os.path.join(root, name)
  return steps


def metrics_records(path: str) -> Iterator[tuple[str, dict]]:
  """(line, record) of every whole line of a metrics.jsonl file, in order
  (none if it is absent; a line cut short by a kill is skipped)."""
  try:
    with open(path) as f:
      lines = f.readlines()
  except OSError:
    return
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict):
      yield line, record


def read_metrics(workdir: str) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`, in order."""
  return [record for _, record in metrics_records(metrics_path(workdir))]


def val_records(workdir: str) -> list[dict]:
  """The validation records of metrics.jsonl, in order ([] without it)."""
  return [r for r in read_metrics(workdir) if r.get('split') == 'val']


def validation_scores(workdir: str) -> dict[int, float]:
  """{step: validation mean IU} from metrics.jsonl (mean over seeds).

  Steps whose mean IU is missing or NaN (for any seed) are skipped; the last
  record of a step (and seed) counts.
  """
  latest = {}
  for record in val_records(workdir):
    latest.setdefault(record.get('step'), {})[record.get('seed')] = (
        record.get('mean_iu'))
  scores = {}
  for step, by_seed in latest.items():
    values = list(by_seed.values())
    if isinstance(step, int) and values and all(
        isinstance(v, (int, float)) and np.isfinite(v) for v in values):
      scores[step] = float(np.mean(values))
  return scores


def best_step(workdir: str) -> int | None:
  """The best finished step (see the module docstring), else the latest;
  None if the workdir has no finished checkpoint."""
  steps = finished_steps(workdir) if os.path.isdir(
      checkpoint_dir(workdir)) else {}
  return _best_of(workdir, steps)


def _best_of(workdir: str, steps: Mapping[int, str]) -> int | None:
  scores = validation_scores(workdir)
  ranked = [(scores[s], s) for s in steps if s in scores]
  if ranked:
    return max(ranked)[1]
  return max(steps) if steps else None


def resolve_checkpoint(workdir: str, checkpoint: str | int = 'best') -> str:
  """The checkpoint directory named by `checkpoint` for a workdir.

  Args:
    workdir: a training workdir (holding `checkpoints/`).
    checkpoint: 'best' (highest validation mean IU; the latest if none was
      ranked), 'latest', a step number, or a path to a checkpoint.
  """
  checkpoint = str(checkpoint)
  if checkpoint not in ('best', 'latest') and not checkpoint.isdigit():
    if not os.path.exists(checkpoint):
      raise CheckpointError(f'{checkpoint}: checkpoint does not exist.')
    return os.path.abspath(checkpoint)
  checkpoints_dir = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(checkpoints_dir):
    raise CheckpointError(f'{checkpoints_dir}: no checkpoints (is {workdir} '
                          'a training workdir?).')
  steps = finished_steps(workdir)
  if not steps:
    raise CheckpointError(f'{checkpoints_dir}: holds no finished checkpoint.')
  if checkpoint.isdigit():
    if int(checkpoint) not in steps:
      raise CheckpointError(
          f'{checkpoints_dir}: no checkpoint at step {checkpoint}; available '
          f'steps: {sorted(steps)}.')
    return steps[int(checkpoint)]
  step = _best_of(workdir, steps) if checkpoint == 'best' else max(steps)
  return steps[step]


# ---------------------------------------------------------------------------
# Parameters only.


def save_params(path: str, params, metadata: Mapping[str, Any]) -> None:
  """Writes params + JSON metadata as an Orbax checkpoint directory."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'{path}: output already exists; choose a new path.')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(path, ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        metadata=ocp.args.JsonSave(dict(metadata))))


def load_params(path: str) -> tuple[dict, dict]:
  """Reads params from a converted checkpoint or a training checkpoint.

  Accepts: a directory written by `save_params` / ``python -m
  fcn_jax.convert``; a training workdir (its best checkpoint); its
  ``checkpoints`` directory; or one step directory
  ``<workdir>/checkpoints/<step>``.

  Returns:
    (params as nested dict of numpy arrays, metadata dict).
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise errors.MissingFileError(f'{path}: no such checkpoint directory.')
  if os.path.isdir(os.path.join(path, CONVERTED_MARKER)):
    params = restore_params(path)
    with open(os.path.join(path, CONVERTED_MARKER, 'metadata')) as f:
      return params, json.load(f)
  run = path
  if os.path.basename(path) == CHECKPOINTS:
    run = os.path.dirname(path)
  if os.path.isdir(os.path.join(run, CHECKPOINTS)):
    path = resolve_checkpoint(run, 'best')
  metadata = {'source': path, 'format': 'fcn_jax-train'}
  params = restore_params(path)
  run = find_workdir(path)
  if run is not None:
    config = load_config(run)
    metadata.update(variant=config.model, num_classes=config.num_classes,
                    width=config.width,
                    learn_upsampling=config.learn_upsampling)
  return params, metadata


def restore_params(path: str) -> dict:
  """Restores only the model parameters (as numpy) from an Orbax checkpoint.

  `path` is a step directory of a CheckpointManager or a PyTree checkpoint
  directory; optimizer state and other items are not read.
  """
  if not os.path.isdir(path):
    raise CheckpointError(f'{path}: checkpoint does not exist or is not a '
                          'directory.')
  with _no_step_metadata_warning():
    return _restore_params(path)


def check_declared_sizes(item_dir: str, metadata_tree) -> None:
  """Raises DeclaredSizeError before restoring absurdly declared arrays.

  Args:
    item_dir: an Orbax item directory (holding _METADATA and the data).
    metadata_tree: its item metadata (leaves with .shape and .dtype).
  """
  import jax  # pylint: disable=g-import-not-at-top
  declared = 0
  for leaf in jax.tree.leaves(metadata_tree):
    shape = getattr(leaf, 'shape', None)
    dtype = getattr(leaf, 'dtype', None)
    if shape is None or dtype is None:
      continue
    declared += int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
  on_disk = sum(os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(item_dir) for f in files)
  if declared > MAX_DECLARED_RATIO * on_disk + MAX_DECLARED_SLACK_BYTES:
    raise DeclaredSizeError(
        f'{item_dir}: the checkpoint declares {declared:,} bytes of arrays '
        f'but holds {on_disk:,} bytes of files; refusing to allocate them '
        '(damaged or crafted metadata).')


def _item_dirs(path: str) -> list[str]:
  """Orbax PyTree directories (holding `_METADATA`) at or below `path`."""
  if os.path.isfile(os.path.join(path, '_METADATA')):
    return [path]
  found = []
  for name in sorted(os.listdir(path)):
    sub = os.path.join(path, name)
    if os.path.isfile(os.path.join(sub, '_METADATA')):
      # The train state is the 'default' item of a CheckpointManager step.
      if name in ('default', 'state'):
        found.insert(0, sub)
      else:
        found.append(sub)
  return found


def _params_subtree(tree: Any) -> tuple[Any, str | None]:
  """The parameters in a saved tree: TrainState-like {'params': ...} or the
  parameter dict itself (keys conv1_1, ..., conv1_1_bgrd / conv1_1color for
  the NYUDv2 models, or conv1, ... for FCN-AlexNet)."""
  if isinstance(tree, dict):
    if 'params' in tree and isinstance(tree['params'], dict):
      inner, _ = _params_subtree(tree['params'])
      if inner is not None:
        return tree['params'], 'params'
    if any(str(k).startswith('conv1_1') for k in tree) or 'conv1' in tree:
      return tree, None
  return None, None


class _StepMetadataFilter(std_logging.Filter):
  """Drops Orbax's warning that an item directory has no step metadata.

  The step's _CHECKPOINT_METADATA lives one level up (in the step directory,
  written by the CheckpointManager); reading an item directory alone, as
  `restore_params` does, makes Orbax warn about it on every load.
  """

  def filter(self, record) -> bool:
    message = record.getMessage()
    return not ('_CHECKPOINT_METADATA' in message and
                'does not exist' in message)


@contextlib.contextmanager
def _no_step_metadata_warning():
  logger = std_logging.getLogger('absl')
  metadata_filter = _StepMetadataFilter()
  logger.addFilter(metadata_filter)
  try:
    yield
  finally:
    logger.removeFilter(metadata_filter)


def _restore_params(path: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.PyTreeCheckpointer()
  problems = []
  for item in _item_dirs(path):
    try:
      metadata = checkpointer.metadata(item).item_metadata
    except Exception as e:  # pylint: disable=broad-except
      metadata = None
      problems.append(f'{item}: {_first_line(e)}')
    if metadata is None:
      problems.append(f'{item}: unreadable metadata')
      continue
    tree = _to_dict(metadata)
    params_meta, key = _params_subtree(tree)
    if params_meta is None and os.path.basename(item) == 'params':
      params_meta = tree  # A converted checkpoint's params item.
    if params_meta is None:
      continue
    check_declared_sizes(item, params_meta)
    target = jax.tree.map(lambda m: np.zeros((), m.dtype), params_meta)
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    if key is not None:
      target, restore_args = {key: target}, {key: restore_args}
    try:
      restored = checkpointer.restore(
          item, args=ocp.args.PyTreeRestore(
              item=target, restore_args=restore_args,
              partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      # TensorStore/Orbax raise many types for damaged files.
      raise CheckpointError(f'{item}: cannot read the checkpoint (corrupt or '
                            f'incomplete?): {_first_line(e)}') from e
    return restored[key] if key is not None else restored
  if problems:
    reasons = '; '.join(p.split(': ', 1)[1] for p in problems)
    raise CheckpointError(f'{problems[-1].split(": ")[0]}: cannot read the '
                          f'checkpoint (corrupt or incomplete?): {reasons}.')
  raise CheckpointError(f'{path}: not a readable fcn_jax checkpoint: no '
                        'saved tree with model parameters.')


def _to_dict(tree: Any) -> Any:
  if hasattr(tree, 'keys') and not hasattr(tree, 'shape'):
    return {k: _to_dict(tree[k]) for k in tree.keys()}
  return tree


def _first_line(e: Any) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__
