"""Training checkpoints: a folder with ``checkpoint.safetensors`` (tensors) + ``checkpoint.json`` (the rest).

Layout of a run's checkpoints: ``<output>/checkpoints/step-00000010/``, one folder per saved step. A
folder is written under a hidden temporary name and renamed into place only when both files are
complete and flushed, so a process killed mid-write never leaves a half-written checkpoint behind
(:func:`latest_checkpoint` ignores the temporary folders). Nothing is ever unpickled.

Tensor names (safetensors keys) follow one scheme:

- ``model/<state_dict name>``, ``ema/<name>``, ``best/<name>``: model, EMA and best-EMA weights;
- ``optimizer/<parameter index>/<state key>``: per-parameter optimizer state (e.g. ``exp_avg``),
  parameters numbered in ``model.parameters()`` order (their names are listed in the JSON);
- ``rng/torch``, ``rng/cuda/<device>``: torch random states (uint8 tensors).

The JSON holds everything else (config, step, data position, optimizer hyperparameters and non-tensor
state, scheduler, python/numpy random states, split, best metric) plus the SHA-256 of the tensor file,
checked on load so that a truncated or altered file is reported as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    'CHECKPOINT_FORMAT',
    'CheckpointError',
    'TENSORS',
    'METADATA',
    'Checkpoint',
    'checkpoint_folder',
    'flatten_optimizer',
    'get_rng_state',
    'latest_checkpoint',
    'list_checkpoints',
    'prune_checkpoints',
    'read_checkpoint',
    'restore_trainer_state',
    'set_rng_state',
    'trainer_state',
    'unflatten_optimizer',
    'write_checkpoint',
]

CHECKPOINT_FORMAT = 'nextham-checkpoint'
FORMAT_VERSION = 1
TENSORS, METADATA = 'checkpoint.safetensors', 'checkpoint.json'
_NAME = re.compile(r'^step-(\d{8,})$')


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format or does not match the run."""


class Checkpoint:
    """A checkpoint in memory: ``tensors`` (name -> CPU tensor) and JSON-serialisable ``metadata``."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict, path: Path | None = None):
        self.tensors, self.metadata, self.path = tensors, metadata, path

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix/`` with the prefix removed (e.g. ``group('model')`` -> a state dict)."""
        start = prefix.rstrip('/') + '/'
        return {name[len(start) :]: t for name, t in self.tensors.items() if name.startswith(start)}

    @property
    def step(self) -> int:
        return int(self.metadata['step'])


# ------------------------------------------------------------------------------------------ folders
def checkpoint_folder(root: str | Path, step: int) -> Path:
    return Path(root) / f'step-{int(step):08d}'


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest step first (temporary folders ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint folder of the largest step under ``root``, or None."""
    folders = list_checkpoints(root)
    return folders[-1] if folders else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary folders)."""
    root = Path(root)
    for folder in list_checkpoints(root)[: -max(1, keep)]:
        shutil.rmtree(folder, ignore_errors=True)
    for stale in root.glob('.step-*'):
        if stale.is_dir() and f'.{os.getpid()}.' not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)


# -------------------------------------------------------------------------------------------- write
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(root: str | Path, checkpoint: Checkpoint, *, fault=None) -> Path:
    """Write ``checkpoint`` to ``root/step-<step>`` atomically; returns the folder.

    :param fault: test hook called between the two files (e.g. to kill the process mid-write).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_folder(root, checkpoint.step)
    tmp = root / f'.{final.name}.{os.getpid()}.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {name: t.detach().to('cpu').contiguous().clone() for name, t in checkpoint.tensors.items()}
        save_file(tensors, str(tmp / TENSORS), metadata={'format': CHECKPOINT_FORMAT})
        _fsync(tmp / TENSORS)
        if fault is not None:
            fault()
        metadata = {
            'format': CHECKPOINT_FORMAT,
            'format_version': FORMAT_VERSION,
            **checkpoint.metadata,
            'tensors': {'file': TENSORS, 'sha256': _sha256(tmp / TENSORS), 'count': len(tensors)},
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=1, allow_nan=False))
        _fsync(tmp / METADATA)
        if final.exists():  # the same step again (e.g. after a NaN-guard reload): swap, then delete
            old = root / f'.{final.name}.{os.getpid()}.old'
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint.path = final
    return final


# --------------------------------------------------------------------------------------------- read
def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Read and verify a checkpoint folder (format, version, SHA-256 of the tensor file)."""
    folder = Path(folder)
    json_path, tensor_path = folder / METADATA, folder / TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f'{folder}: not a checkpoint folder (needs {TENSORS} and {METADATA})')
    try:
        metadata = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f'{json_path}: corrupt checkpoint metadata, not valid JSON ({exc})') from None
    if not isinstance(metadata, dict) or metadata.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{json_path}: not a {CHECKPOINT_FORMAT} file')
    if metadata.get('format_version') != FORMAT_VERSION:
        raise CheckpointError(
            f'{json_path}: checkpoint format version {metadata.get("format_version")} is not supported '
            f'(this version reads {FORMAT_VERSION})'
        )
    expected = metadata.get('tensors', {}).get('sha256')
    if expected != _sha256(tensor_path):
        raise CheckpointError(
            f'{tensor_path}: corrupt checkpoint: the file does not match the SHA-256 recorded in '
            f'{METADATA} (truncated or modified); resume from an earlier checkpoint or start afresh'
        )
    try:
        tensors = load_file(str(tensor_path), device='cpu')
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f'{tensor_path}: corrupt checkpoint, unreadable tensors ({exc})') from None
    return Checkpoint(tensors, metadata, folder)


# -------------------------------------------------------------------------------------- optimizer
def flatten_optimizer(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict, dict]:
    """Optimizer state as (tensors ``optimizer/<index>/<key>``, JSON with groups and scalar state).

    :param names: parameter names in the optimizer's parameter order (recorded to detect mismatches).
    """
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state['state'].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f'optimizer/{index}/{key}'] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {'param_groups': state['param_groups'], 'scalars': scalars, 'param_names': names}


def unflatten_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], record: dict, names: list[str]
) -> None:
    """Load the state written by :func:`flatten_optimizer` into ``optimizer`` (checked against ``names``)."""
    if record.get('param_names') != names:
        raise CheckpointError('the checkpoint optimizer was made for other model parameters')
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split('/', 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in record.get('scalars', {}).items():
        state.setdefault(int(index), {}).update(entries)
    try:
        optimizer.load_state_dict({'state': state, 'param_groups': record['param_groups']})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f'the checkpoint optimizer state does not fit this model ({exc})') from None


# -------------------------------------------------------------------------------------------- RNG
def get_rng_state() -> tuple[dict, dict]:
    """(tensors, JSON) with the random states of python, numpy (global) and torch (CPU and CUDA)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global state)
    numpy_state['state']['key'] = numpy_state['state']['key'].tolist()
    tensors = {'rng/torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'rng/cuda/{device}'] = state
    return tensors, {'python': [version, list(internal), gauss], 'numpy': numpy_state}


def set_rng_state(tensors: dict[str, torch.Tensor], record: dict) -> None:
    """Restore the states written by :func:`get_rng_state` (CUDA only for devices that exist)."""
    version, internal, gauss = record['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(record['numpy'])
    numpy_state['state'] = {**numpy_state['state'], 'key': np.asarray(numpy_state['state']['key'], np.uint32)}
    np.random.set_state(numpy_state)  # noqa: NPY002
    if 'rng/torch' in tensors:
        torch.set_rng_state(tensors['rng/torch'])
    if torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            if f'rng/cuda/{device}' in tensors:
                torch.cuda.set_rng_state(tensors[f'rng/cuda/{device}'], device)


def trainer_state(trainer) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON of what every trainer resumes from: weights, EMA weights, optimizer, schedule,
    random states and step (``trainer``: ``model``, ``ema``, ``optimizer``, ``schedule``, ``generator``,
    ``step``); each trainer adds its own keys to the JSON."""
    names = [name for name, _ in trainer.model.named_parameters()]
    tensors = {f'model/{k}': v for k, v in trainer.model.state_dict().items()}
    if trainer.ema is not None:
        tensors.update({f'ema/{k}': v for k, v in trainer.ema.module.state_dict().items()})
    optimizer_tensors, optimizer = flatten_optimizer(trainer.optimizer, names)
    rng_tensors, rng = get_rng_state()
    tensors.update(optimizer_tensors)
    tensors.update(rng_tensors)
    ema = None if trainer.ema is None else {'decay': trainer.ema.decay, 'updates': trainer.ema.updates}
    metadata = {
        'step': trainer.step,
        'optimizer': optimizer,
        'scheduler': trainer.schedule.state_dict(),
        'ema': ema,
        'rng': rng,
        'generator': trainer.generator.bit_generator.state,
    }
    return tensors, metadata


def restore_trainer_state(trainer, checkpoint: Checkpoint) -> dict:
    """Restore :func:`trainer_state` into ``trainer``; returns the JSON for the trainer's own keys.

    :raises CheckpointError: when the weights do not fit the model or EMA is missing.
    """
    meta = checkpoint.metadata
    try:
        trainer.model.load_state_dict(checkpoint.group('model'))
        if trainer.ema is not None:
            if meta.get('ema') is None:
                raise CheckpointError('the checkpoint has no EMA weights but this run uses EMA')
            trainer.ema.module.load_state_dict(checkpoint.group('ema'))
            trainer.ema.updates = int(meta['ema']['updates'])
    except RuntimeError as exc:
        first = ' '.join(str(exc).split())[:300]
        raise CheckpointError(f'the checkpoint weights do not fit the model ({first})') from None
    names = [name for name, _ in trainer.model.named_parameters()]
    unflatten_optimizer(trainer.optimizer, checkpoint.group('optimizer'), meta['optimizer'], names)
    trainer.schedule.load_state_dict(meta['scheduler'])
    set_rng_state(checkpoint.tensors, meta['rng'])
    trainer.generator.bit_generator.state = meta['generator']
    trainer.step = int(meta['step'])
    return meta
