"""``nextham dft``: H0 or a full label (H_scf, H0, S) of one structure with PySCF.

On success: the block Hamiltonian goes to ``-o OUT.h5`` (nextham HDF5, written atomically), the
JSON summary to stdout and, with ``--summary``, to a file. On a named failure the command writes
``{"error": "ScfNotConverged", "error_class": ..., "exit_status": ..., "message": ...}`` to stdout
and to the summary file, prints one ``Error: <Class>: ...`` line on stderr and exits with the
failure's status (see :mod:`aiida_nextham.dft.errors`); no HDF5 file is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ['dft']


class DftFailure(click.ClickException):
    """A named engine failure: one ``Error:`` line and the failure's own exit status."""

    def __init__(self, error):
        message = ' '.join(str(error).split())
        super().__init__(f'{type(error).__name__}: {message}')
        self.exit_code = error.exit_status


def _overrides(options: dict, parameters: Path | None) -> dict:
    """Settings from ``--parameters`` (JSON or YAML mapping), then the explicit options on top."""
    settings: dict = {}
    if parameters is not None:
        import yaml

        loaded = yaml.safe_load(parameters.read_text()) or {}
        if not isinstance(loaded, dict):
            raise click.BadParameter(
                'must contain a mapping of DftConfig settings', param_hint='--parameters'
            )
        settings.update(loaded)
    settings.update({key: value for key, value in options.items() if value is not None})
    return settings


def _read_structure(path: Path, format_: str | None):
    from ase.io import read

    from ..dft.errors import BadStructureError

    try:
        return read(path, format=format_)
    except Exception as exc:  # ASE raises many types for unreadable files
        raise BadStructureError(
            f'cannot read a structure from {path}: {" ".join(str(exc).split()) or type(exc).__name__}',
            details={'reason': 'unreadable'},
        ) from None


def _emit(data: dict, summary: Path | None) -> None:
    from .cli import write_json

    click.echo(json.dumps(data, indent=1, default=_json_default))
    if summary is not None:
        write_json(data, summary)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


@click.command('dft')
@click.argument('structure', type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option('--mode', type=click.Choice(['h0', 'label']), default='label', show_default=True)
@click.option(
    '--protocol', type=click.Choice(['fast', 'balanced', 'stringent']), default='balanced', show_default=True
)
@click.option('--basis', default=None, help='GTH basis, e.g. gth-szv, gth-dzvp (default: protocol).')
@click.option('--pseudo', default=None, help='GTH pseudopotential family (default: gth-pbe).')
@click.option('--xc', default=None, help='Exchange-correlation functional (default: pbe).')
@click.option('--kmesh', type=int, nargs=3, default=None, metavar='N N N', help='SCF k-mesh (Γ-centred).')
@click.option(
    '--kspacing', type=float, default=None, help='SCF k-spacing, 1/Å with 2π (when --kmesh is not given).'
)
@click.option(
    '--dense-kmesh',
    type=int,
    nargs=3,
    default=None,
    metavar='N N N',
    help='Mesh of the real-space transform.',
)
@click.option('--cutoff', type=float, default=None, help='Neighbour cutoff of the stored blocks, Å.')
@click.option('--smearing', type=click.Choice(['fermi-dirac', 'gaussian']), default=None)
@click.option('--smearing-width', type=float, default=None, help='Smearing width, eV.')
@click.option('--max-cycles', type=int, default=None, help='SCF cycle limit.')
@click.option('--conv-tol', type=float, default=None, help='SCF energy threshold, eV.')
@click.option('--level-shift', type=float, default=None, help='Level shift, eV.')
@click.option('--damping', type=float, default=None, help='Fock damping factor in [0, 1).')
@click.option('--density-fit', type=click.Choice(['multigrid', 'fftdf']), default=None)
@click.option('--init-guess', type=click.Choice(['atom', 'minao']), default=None)
@click.option('--seed', type=int, default=None, help='Seed of the self-check k-points.')
@click.option('--selfcheck/--no-selfcheck', default=None, help='Compare bands off the mesh (default: on).')
@click.option('--selfcheck-tolerance', type=float, default=None, help='Self-check tolerance, meV.')
@click.option('--threads', type=int, default=None, help='OpenMP threads for PySCF.')
@click.option(
    '--parameters',
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON/YAML file of DftConfig settings (applied after the protocol, before the options).',
)
@click.option('--structure-format', default=None, help='ASE format of STRUCTURE (default: guessed).')
@click.option('-o', '--output', type=click.Path(path_type=Path), required=True, help='HDF5 file to write.')
@click.option(
    '--summary', type=click.Path(path_type=Path), default=None, help='Also write the JSON summary here.'
)
def dft(
    structure: Path,
    mode: str,
    protocol: str,
    parameters: Path | None,
    structure_format: str | None,
    output: Path,
    summary: Path | None,
    **options,
) -> None:
    """H0 (--mode h0) or H_scf, H0 and S (--mode label) of STRUCTURE (any file ASE reads) with PySCF."""
    from ..dft import DftError, get_protocol, run_engine
    from ..hamiltonian.hdf5 import write_hdf5
    from .cli import check_destination

    for destination in (output, summary):
        if destination is not None:
            check_destination(destination)
    try:
        config = get_protocol(protocol, _overrides(options, parameters))
        atoms = _read_structure(structure, structure_format)
        result = run_engine(atoms, config, mode)
    except DftError as error:
        data = error.as_dict()
        if error.result is not None:
            data = {**error.result.summary(), **data}
        _emit({**data, 'structure': str(structure), 'protocol': protocol, 'mode': mode}, summary)
        raise DftFailure(error) from None
    except click.ClickException:
        raise
    except Exception as exc:  # unexpected: still leave a machine-readable trace, then let the group report
        data = {'error': 'InternalError', 'error_class': type(exc).__name__, 'exit_status': 1}
        _emit({**data, 'message': ' '.join(str(exc).split()), 'structure': str(structure)}, summary)
        raise
    write_hdf5(result.hamiltonian, output)
    _emit(
        {**result.summary(), 'structure': str(structure), 'protocol': protocol, 'output': str(output)},
        summary,
    )
    click.echo(f'Wrote {output}', err=True)


if __name__ == '__main__':  # pragma: no cover
    dft.main(args=sys.argv[1:], prog_name='nextham dft')
