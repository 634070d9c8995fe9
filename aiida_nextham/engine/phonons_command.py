"""``nextham phonons``: finite-displacement phonons (phonopy) with DFT, ML-force-field or EMT forces.

Writes into the new folder ``-o OUTDIR`` (atomically: a failed run leaves no folder): phonopy's own
files (``phonopy_disp.yaml``, ``phonopy_params.yaml`` with displacements and forces, ``FORCE_SETS``,
``force_constants.hdf5``), ``bands.json`` (path frequencies, THz), ``dos.json``,
``thermal_properties.json`` and ``summary.json`` (stability flag, Γ/X/L... frequencies, timings);
the summary also goes to stdout. A named failure writes ``{"error": ..., "exit_status": ...}`` to
stdout (and to ``--summary`` when given), one ``Error:`` line to stderr and exits with its status:
the DFT engine's (21 invalid config, 22 bad structure, 23 unsupported element, 24 SCF not converged)
or :data:`EXIT_BAD_SETTINGS` / :data:`EXIT_BAD_MODEL` / :data:`EXIT_BAD_FORCES`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from .failures import EngineFailure

__all__ = ['EXIT_BAD_FORCES', 'EXIT_BAD_MODEL', 'EXIT_BAD_SETTINGS', 'PHONON_DFT_DEFAULTS', 'phonons']

#: invalid phonon settings (supercell, path, mesh, temperatures, tolerance)
EXIT_BAD_SETTINGS = 30
#: the ML force-field model folder cannot be loaded or does not cover the elements
EXIT_BAD_MODEL = 31
#: the force backend returned forces of the wrong shape or non-finite values
EXIT_BAD_FORCES = 32
#: DFT settings applied on top of the protocol for forces (unless given): an SCF at least this tight
#: (the protocol's own threshold when tighter), since a 0.01 Å displacement gives forces of ~0.1 eV/Å
PHONON_DFT_DEFAULTS = {'conv_tol': 1e-8, 'selfcheck': False}


def _emit(data: dict, summary: Path | None) -> None:
    from .cli import write_json
    from .dft_command import _json_default

    click.echo(json.dumps(data, indent=1, default=_json_default))
    if summary is not None:
        write_json(data, summary)


def _fail(name: str, message: str, code: int, summary: Path | None, **extra) -> EngineFailure:
    text = ' '.join(str(message).split())
    _emit({'error': name, 'error_class': name, 'exit_status': code, 'message': text, **extra}, summary)
    return EngineFailure(name, text, code)


def _backend(protocol: str | None, model: Path | None, calculator: str | None, overrides: dict, kmesh):
    from ..phonons import AseCalculatorBackend, DftForceBackend, MLForceBackend

    if model is not None:
        return MLForceBackend(model)
    if calculator is not None:
        return AseCalculatorBackend(calculator)
    from ..dft.protocols import get_protocol, protocol_settings

    defaults = dict(PHONON_DFT_DEFAULTS)
    defaults['conv_tol'] = min(defaults['conv_tol'], protocol_settings(protocol).get('conv_tol', 1.0))
    config = get_protocol(protocol, {**defaults, **overrides})
    return DftForceBackend(config, kmesh=kmesh)


@click.command('phonons')
@click.argument('structure', type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    '--supercell',
    type=int,
    nargs=3,
    default=(2, 2, 2),
    show_default=True,
    metavar='N N N',
    help='Supercell of the input cell (diagonal).',
)
@click.option(
    '--protocol',
    type=click.Choice(['fast', 'balanced', 'stringent']),
    default=None,
    help='DFT forces (PySCF) with this protocol.',
)
@click.option(
    '--model',
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help='ML force-field model folder (safetensors + JSON) instead of DFT.',
)
@click.option(
    '--calculator',
    type=click.Choice(['emt']),
    default=None,
    help='Empirical ASE calculator instead of DFT (emt: Al, Cu, Ag, Au, Ni, Pd, Pt); cheap references.',
)
@click.option(
    '--kmesh',
    type=int,
    nargs=3,
    default=None,
    metavar='N N N',
    help='DFT k-mesh of each supercell; 1 1 1: fast Γ-point gradient route (default: protocol spacing).',
)
@click.option('--basis', default=None, help='DFT: GTH basis (default: protocol).')
@click.option(
    '--conv-tol',
    type=float,
    default=None,
    help="DFT: SCF energy threshold, eV (default 1e-8, or the protocol's if tighter).",
)
@click.option('--max-cycles', type=int, default=None, help='DFT: SCF cycle limit.')
@click.option(
    '--smearing', type=click.Choice(['fermi-dirac', 'gaussian']), default=None, help='DFT: smearing.'
)
@click.option('--smearing-width', type=float, default=None, help='DFT: smearing width, eV.')
@click.option('--threads', type=int, default=None, help='DFT: OpenMP threads for PySCF.')
@click.option(
    '--parameters',
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON/YAML file of DftConfig settings (after the protocol, before the options).',
)
@click.option('--displacement', type=float, default=0.01, show_default=True, help='Displacement, Å.')
@click.option(
    '--path', 'qpath', default='auto', show_default=True, help="q-path: 'auto' (seekpath) or labels."
)
@click.option('--npoints', type=int, default=101, show_default=True, help='q-points along the path.')
@click.option(
    '--mesh',
    type=int,
    nargs=3,
    default=(20, 20, 20),
    show_default=True,
    metavar='N N N',
    help='Γ-centred q-mesh of the DOS and thermal properties.',
)
@click.option('--tmax', type=float, default=1000.0, show_default=True, help='Highest temperature, K.')
@click.option('--tstep', type=float, default=10.0, show_default=True, help='Temperature step, K.')
@click.option(
    '--imaginary-tolerance',
    type=float,
    default=-0.05,
    show_default=True,
    help='THz; a mode below it (except acoustic modes at Γ) makes the structure dynamically unstable.',
)
@click.option('--structure-format', default=None, help='ASE format of STRUCTURE (default: guessed).')
@click.option('-o', '--output', type=click.Path(path_type=Path), required=True, help='New folder to write.')
@click.option(
    '--plot', type=click.Path(path_type=Path), default=None, help='Also write a bands+DOS plot (PNG).'
)
@click.option(
    '--summary', type=click.Path(path_type=Path), default=None, help='Also write the JSON summary here.'
)
def phonons(
    structure: Path,
    supercell: tuple[int, int, int],
    protocol: str | None,
    model: Path | None,
    calculator: str | None,
    kmesh: tuple[int, int, int] | None,
    parameters: Path | None,
    displacement: float,
    qpath: str,
    npoints: int,
    mesh: tuple[int, int, int],
    tmax: float,
    tstep: float,
    imaginary_tolerance: float,
    structure_format: str | None,
    output: Path,
    plot: Path | None,
    summary: Path | None,
    **options,
) -> None:
    """Phonon bands, DOS and thermal properties of STRUCTURE (forces: --protocol, --model or --calculator)."""
    from ..dft import DftError
    from ..phonons import PhononSettings, run_phonons, write_phonon_files
    from .cli import atomic_output, check_destination
    from .dft_command import DftFailure, _overrides, _read_structure

    if sum(source is not None for source in (protocol, model, calculator)) != 1:
        raise click.UsageError(
            'give exactly one force source: --protocol NAME (DFT), --model DIR or --calculator NAME'
        )
    if protocol is None and (
        kmesh is not None or parameters is not None or any(v is not None for v in options.values())
    ):
        raise click.UsageError('DFT options (--kmesh, --basis, --parameters, ...) apply to --protocol only')
    for destination in (output, plot, summary):
        if destination is not None:
            check_destination(destination)
    source = 'model' if model else ('ase' if calculator else 'dft')
    base = {'structure': str(structure), 'force_source': source, 'protocol': protocol}
    try:
        settings = PhononSettings(
            supercell=tuple(supercell),
            displacement=displacement,
            path=qpath,
            npoints=npoints,
            mesh=tuple(mesh),
            tmax=tmax,
            tstep=tstep,
            imaginary_tolerance=imaginary_tolerance,
        )
    except ValueError as exc:
        raise _fail('InvalidSettings', str(exc), EXIT_BAD_SETTINGS, summary, **base) from None

    start = time.perf_counter()
    try:
        atoms = _read_structure(structure, structure_format)
        from ..dft.checks import check_structure

        check_structure(atoms)
        backend = _backend(protocol, model, calculator, _overrides(options, parameters), kmesh)
        result = run_phonons(atoms, backend, settings, progress=_progress)
    except DftError as error:
        _emit({**error.as_dict(), **base}, summary)
        raise DftFailure(error) from None
    except EngineFailure:
        raise
    except Exception as exc:
        name, code = _classify(exc, model is not None)
        if name is None:
            _emit(
                {
                    'error': 'InternalError',
                    'error_class': type(exc).__name__,
                    'exit_status': 1,
                    'message': ' '.join(str(exc).split()),
                    **base,
                },
                summary,
            )
            raise
        raise _fail(name, f'{type(exc).__name__}: {exc}', code, summary, **base) from None

    data = {**base, **result.summary(), 'output': str(output)}
    data['timings'] = {**result.timings, 'wall': time.perf_counter() - start}
    with atomic_output(output) as tmp:
        write_phonon_files(result, tmp)
        from ..phonons.files import write_json

        write_json(data, tmp / 'summary.json')
    if plot is not None:
        with atomic_output(plot) as tmp:
            result.plot(tmp)
    _emit(data, summary)
    stable = 'dynamically stable' if result.dynamically_stable else 'dynamically UNSTABLE (imaginary modes)'
    click.echo(f'Wrote {output}' + (f' and {plot}' if plot else '') + f'; {stable}', err=True)


def _classify(exc: Exception, with_model: bool) -> tuple[str | None, int]:
    """Map an exception of the phonon run to a named failure (None: unexpected)."""
    text = str(exc)
    if with_model and not isinstance(exc, MemoryError):
        if 'returned forces' in text:
            return 'BadForces', EXIT_BAD_FORCES
        return 'BadModel', EXIT_BAD_MODEL
    if 'returned forces' in text:
        return 'BadForces', EXIT_BAD_FORCES
    if isinstance(exc, ValueError):  # phonopy/seekpath: bad path labels, symmetry, supercell
        return 'InvalidSettings', EXIT_BAD_SETTINGS
    return None, 1


def _progress(done: int, total: int, seconds: float) -> None:
    click.echo(f'forces: {done}/{total} supercells ({seconds:.0f} s)', err=True)


if __name__ == '__main__':  # pragma: no cover
    phonons.main(args=sys.argv[1:], prog_name='nextham phonons')
