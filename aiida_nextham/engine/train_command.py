"""``nextham train CONFIG``: train a NextHAM ΔH model from a YAML/JSON run config.

Single process::

    nextham train train.yaml [--resume] [--output DIR] [--device cpu|cuda] [--steps N]

Distributed (DistributedDataParallel; gloo on CPU, NCCL on GPUs; multi-node through the same launcher)::

    torchrun --nproc_per_node 2 -m aiida_nextham.engine.train_command train.yaml
    torchrun --nproc_per_node 2 "$(which nextham)" train train.yaml

The output folder receives ``checkpoints/step-*/``, ``metrics.jsonl``, ``learning_curves.png``, the
final ``model/`` (safetensors + JSON with provenance) and ``status.json``, which always describes the
latest known state: ``running`` (rewritten at every checkpoint, so a killed run is recognisable),
``finished``, ``early_stopped`` or ``failed`` with ``exit_code``, ``error`` and ``message``. On success the
JSON summary goes to stdout. Failures exit with the named codes below (under ``torchrun`` the launcher
exits with its own code: read ``status.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from .failures import EngineFailure

__all__ = [
    'EXIT_BAD_CHECKPOINT',
    'EXIT_BAD_CONFIG',
    'EXIT_BAD_DATA',
    'EXIT_DIVERGED',
    'EXIT_INTERNAL',
    'EXIT_SUCCESS',
    'apply_overrides',
    'run_training',
    'train',
]

#: training finished (or stopped early); the model is written
EXIT_SUCCESS = 0
#: an unexpected error (a bug or an environment problem); see the message / --debug traceback
EXIT_INTERNAL = 1
#: the run config is unreadable, has unknown keys or invalid values, or the output folder is in use
EXIT_BAD_CONFIG = 30
#: the dataset is unusable: empty, unreadable files, missing H0/H/S, mismatched bases, too small a split
EXIT_BAD_DATA = 31
#: the checkpoint to resume from is corrupt or was written by a different run config / model
EXIT_BAD_CHECKPOINT = 32
#: the NaN/Inf guard gave up: non-finite steps persisted after every reload with a lower learning rate
EXIT_DIVERGED = 33


def _named_failures() -> list[tuple[type, str, int]]:
    from ..ml.checkpoint import CheckpointError
    from ..ml.dataset import DatasetError
    from ..ml.run_config import ConfigError
    from ..ml.training import TrainingDiverged

    return [
        (ConfigError, 'BadConfig', EXIT_BAD_CONFIG),
        (CheckpointError, 'BadCheckpoint', EXIT_BAD_CHECKPOINT),
        (DatasetError, 'BadData', EXIT_BAD_DATA),
        (TrainingDiverged, 'Diverged', EXIT_DIVERGED),
    ]


def init_distributed(device: str = 'auto') -> bool:
    """Join the process group ``torchrun`` describes (env://) when WORLD_SIZE > 1; True if it was created."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get('WORLD_SIZE', '1')) <= 1 or dist.is_initialized():
        return False
    backend = 'nccl' if device != 'cpu' and torch.cuda.is_available() else 'gloo'
    dist.init_process_group(backend)
    return True


def run_training(config, *, resume: bool = False) -> dict:
    """Run one training (joining a torchrun process group when launched by one); returns the summary.

    :param config: a :class:`~aiida_nextham.ml.run_config.RunConfig` or the path of a config file.
    """
    import torch.distributed as dist

    from ..ml.run_config import RunConfig, load_run_config
    from ..ml.training_run import TrainingRun

    if not isinstance(config, RunConfig):
        config = load_run_config(config)
    owner = init_distributed(config.train.device)
    try:
        return TrainingRun(config, resume=resume).run()
    finally:
        if owner and dist.is_initialized():
            dist.destroy_process_group()


def apply_overrides(config, *, output=None, device=None, steps=None, progress=None):
    """The config with command-line overrides (``output`` relative to the working directory)."""
    from ..ml.run_config import ConfigError

    train = {'device': device, 'steps': steps, 'progress': progress}
    train = {key: value for key, value in train.items() if value is not None}
    try:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
    except ValueError as exc:
        raise ConfigError(f'command-line override: {exc}') from None
    if output is not None:
        config = dataclasses.replace(config, output=str(Path(output).expanduser().resolve()))
    return config


@click.command('train')
@click.argument('config_path', metavar='CONFIG', type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option('--resume', is_flag=True, help='Continue from the newest checkpoint in the output folder.')
@click.option(
    '--output', type=click.Path(file_okay=False, path_type=Path), default=None, help='Output folder.'
)
@click.option(
    '--device', type=click.Choice(['auto', 'cpu', 'cuda']), default=None, help='Overrides train.device.'
)
@click.option('--steps', type=click.IntRange(min=1), default=None, help='Overrides train.steps.')
@click.option('--progress/--no-progress', default=None, help='Progress bar (default: train.progress).')
def train(
    config_path: Path,
    resume: bool,
    output: Path | None,
    device: str | None,
    steps: int | None,
    progress: bool | None,
) -> None:
    """Train a NextHAM model on the label files named in CONFIG (YAML or JSON); see examples/train_si.yaml."""
    from ..ml.run_config import load_run_config
    from ..ml.training_log import write_status

    main = int(os.environ.get('RANK', '0')) == 0
    destination = None if output is None else output.expanduser().resolve()
    try:
        config = apply_overrides(
            load_run_config(config_path), output=output, device=device, steps=steps, progress=progress
        )
        destination = Path(config.output)
        summary = run_training(config, resume=resume)
    except Exception as exc:
        name, code = 'InternalError', EXIT_INTERNAL
        for kind, kind_name, kind_code in _named_failures():
            if isinstance(exc, kind):
                name, code = kind_name, kind_code
                break
        message = ' '.join(str(exc).split()) or type(exc).__name__
        record = {'status': 'failed', 'error': name, 'exit_code': code, 'message': message}
        if main:
            if destination is not None:
                write_status(destination, record)
            click.echo(json.dumps(record, indent=1))
        if code == EXIT_INTERNAL:
            raise
        raise EngineFailure(name, message, code) from None
    if main:
        write_status(summary['output'], {**summary, 'exit_code': EXIT_SUCCESS})
        click.echo(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    """``python -m aiida_nextham.engine.train_command CONFIG ...`` (what torchrun launches)."""
    train.main(args=sys.argv[1:] if argv is None else argv, prog_name='nextham train')


if __name__ == '__main__':  # pragma: no cover
    main()
