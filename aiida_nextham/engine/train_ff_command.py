"""``nextham train-ff CONFIG``: train the equivariant force field on labelled structures (extxyz).

::

    nextham train-ff train_ff.yaml [--resume] [--output DIR] [--steps N]

Config sections: ``data`` (``paths`` of extxyz files with energies in eV and forces in eV/Å, ``split``,
``seed``), ``model`` (ForceFieldConfig fields: ``cutoff``, ``channels``, ``n_layers``, ...), ``train``
(FFTrainConfig fields) and ``output``. The output folder receives ``checkpoints/step-*/``,
``metrics.jsonl``, ``learning_curves.png``, the final ``model/`` (safetensors + JSON with provenance) and
``status.json``. Exit codes are those of ``nextham train`` (30 config, 31 data, 32 checkpoint, 33 diverged).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from .failures import EngineFailure
from .train_command import EXIT_INTERNAL, EXIT_SUCCESS, _named_failures

__all__ = ['run_ff_training', 'train_ff']


def run_ff_training(config, *, resume: bool = False) -> dict:
    """Run one force-field training; ``config`` is an FFRunConfig or the path of a config file."""
    from ..ml.forcefield.training import FFRunConfig, ForceFieldRun, load_ff_config

    if not isinstance(config, FFRunConfig):
        config = load_ff_config(config)
    return ForceFieldRun(config, resume=resume).run()


@click.command('train-ff')
@click.argument('config_path', metavar='CONFIG', type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option('--resume', is_flag=True, help='Continue from the newest checkpoint in the output folder.')
@click.option(
    '--output', type=click.Path(file_okay=False, path_type=Path), default=None, help='Output folder.'
)
@click.option('--steps', type=click.IntRange(min=1), default=None, help='Overrides train.steps.')
def train_ff(config_path: Path, resume: bool, output: Path | None, steps: int | None) -> None:
    """Train an equivariant force field on the extxyz structures named in CONFIG (YAML or JSON)."""
    from ..ml.forcefield.training import load_ff_config
    from ..ml.run_config import ConfigError
    from ..ml.training_log import write_status

    destination = None if output is None else output.expanduser().resolve()
    try:
        config = load_ff_config(config_path)
        if steps is not None:
            try:
                config.train = dataclasses.replace(config.train, steps=steps)
            except ValueError as exc:
                raise ConfigError(f'command-line override: {exc}') from None
        if destination is not None:
            config.output = str(destination)
        destination = Path(config.output)
        summary = run_ff_training(config, resume=resume)
    except Exception as exc:
        name, code = 'InternalError', EXIT_INTERNAL
        for kind, kind_name, kind_code in _named_failures():
            if isinstance(exc, kind):
                name, code = kind_name, kind_code
                break
        message = ' '.join(str(exc).split()) or type(exc).__name__
        record = {'status': 'failed', 'error': name, 'exit_code': code, 'message': message}
        if destination is not None:
            write_status(destination, record)
        click.echo(json.dumps(record, indent=1))
        if code == EXIT_INTERNAL:
            raise
        raise EngineFailure(name, message, code) from None
    write_status(summary['output'], {**summary, 'exit_code': EXIT_SUCCESS})
    click.echo(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    """``python -m aiida_nextham.engine.train_ff_command CONFIG ...``."""
    train_ff.main(args=sys.argv[1:] if argv is None else argv, prog_name='nextham train-ff')


if __name__ == '__main__':  # pragma: no cover
    main()
