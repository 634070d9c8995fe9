"""The ``nextham`` command: convert, inspect and diagonalise block-Hamiltonian files.

Every sub-command reads and writes files only (no aiida), so the same command runs on a laptop, on
a remote computer through a CalcJob, or on a GPU node without an AiiDA profile. Output files are
written atomically: a temporary sibling is renamed into place, so a failed run never leaves a
half-written result behind. Errors are reported as one ``Error: ...`` line on stderr with a
non-zero exit code; ``nextham --debug ...`` (or ``NEXTHAM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np

from ..hamiltonian.block import BlockHamiltonian, HamiltonianError

__all__ = [
    'DEFAULT_KSPACING',
    'atomic_output',
    'check_destination',
    'cli',
    'default_mesh',
    'main',
    'parse_mesh',
    'resolve_fermi_level',
    'spin_degeneracy',
]

#: default Monkhorst-Pack spacing for the Fermi level, Å⁻¹ (2π included, as in VASP's KSPACING)
DEFAULT_KSPACING = 0.25


# ------------------------------------------------------------------------------------------ helpers
def spin_degeneracy(bh: BlockHamiltonian) -> int:
    """Electrons per band: 1 for spinor Hamiltonians, 2 otherwise."""
    return 1 if bh.spin == 'spinor' else 2


def default_mesh(bh: BlockHamiltonian, spacing: float = DEFAULT_KSPACING) -> tuple[int, int, int]:
    """A Monkhorst-Pack mesh with at most ``spacing`` Å⁻¹ between k-points along each reciprocal vector.

    Directions without any hopping (no stored pair with a non-zero cell index there, e.g. the vacuum
    direction of a 2D material) get a single k-point.
    """
    if spacing <= 0:
        raise ValueError(f'the k-point spacing must be positive, got {spacing}')
    reciprocal = 2 * np.pi * np.linalg.inv(bh.lattice).T
    lengths = np.linalg.norm(reciprocal, axis=1)
    return tuple(
        int(max(1, math.ceil(length / spacing))) if p else 1
        for length, p in zip(lengths, bh.periodic, strict=True)
    )


def parse_mesh(text: str | None) -> tuple[int, int, int] | None:
    """Parse ``'8 8 8'``, ``'8x8x8'`` or ``'8,8,8'`` (a single number means the same in every direction)."""
    if text is None:
        return None
    parts = text.replace('x', ' ').replace(',', ' ').split()
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f'invalid k-point mesh {text!r}: expected three integers such as 8x8x8') from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f'invalid k-point mesh {text!r}: expected three positive integers such as 8x8x8')
    return tuple(values)


def resolve_fermi_level(
    bh: BlockHamiltonian,
    *,
    mesh: tuple[int, int, int] | None = None,
    n_electrons: float | None = None,
    smearing: str | None = None,
    width: float | None = None,
    progress: bool = False,
    ghost_filter: float | None = None,
) -> dict:
    """The Fermi level of ``bh``: from a Monkhorst-Pack mesh when the electron count is known.

    Otherwise the Fermi level stored with the Hamiltonian, otherwise None.

    :param mesh: Monkhorst-Pack mesh (default: :func:`default_mesh`).
    :param n_electrons: valence electrons per cell (default: the Hamiltonian's own count).
    :param smearing: smearing of :func:`~aiida_nextham.hamiltonian.spectra.fermi_level` (default: its
        own); ``'none'`` counts states without smearing.
    :param width: smearing width in eV (default: its own).
    :param ghost_filter: band energies with the ghost filter (``bloch.filter_correction``).
    :return: dict with ``fermi_level`` (eV or None), ``source`` (``'mesh'``, ``'file'`` or None),
        ``n_electrons``, ``mesh``, and ``kpoints`` / ``energies`` / ``weights`` of the mesh when it
        was computed.
    """
    n_electrons = bh.n_electrons if n_electrons is None else float(n_electrons)
    result = {
        'fermi_level': None,
        'source': None,
        'n_electrons': n_electrons,
        'mesh': None,
        'kpoints': None,
        'energies': None,
        'weights': None,
    }
    if n_electrons is not None:
        from ..hamiltonian.spectra import band_energies, fermi_level, monkhorst_pack

        mesh = tuple(mesh) if mesh is not None else default_mesh(bh)
        kpoints, weights = monkhorst_pack(mesh)
        energies = band_energies(bh, kpoints, progress=progress, ghost_filter=ghost_filter)
        options = {} if width is None else {'width': float(width)}
        if smearing is not None:
            options['smearing'] = None if smearing.lower() == 'none' else smearing
        value = fermi_level(energies, weights, n_electrons, spin_degeneracy=spin_degeneracy(bh), **options)
        result.update(
            fermi_level=float(value),
            source='mesh',
            mesh=[int(n) for n in mesh],
            kpoints=kpoints,
            energies=energies,
            weights=weights,
        )
    elif bh.fermi_level is not None:
        result.update(fermi_level=float(bh.fermi_level), source='file')
    return result


#: default energy window of band plots around the Fermi level, eV
PLOT_WINDOW = (-5.0, 5.0)


def plot_window(
    fermi_level: float | None, emin: float | None, emax: float | None
) -> tuple[float | None, float | None]:
    """Energy window of a band plot: as given, else :data:`PLOT_WINDOW` around a known Fermi level."""
    if emin is None and emax is None and fermi_level is not None:
        return PLOT_WINDOW
    return emin, emax


def _temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffix (matplotlib picks the format from it)."""
    return path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')


def check_destination(path: str | Path) -> Path:
    """Fail early unless ``path`` can be written: its folder exists and it is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise HamiltonianError(
            f'{path}: a folder already exists there; remove it or choose another destination'
        )
    if not path.parent.is_dir():
        raise HamiltonianError(f'{path.parent}: no such folder')
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; it is renamed to ``path`` only if the block succeeds.

    Works for files and for folders (formats that write a directory); an existing folder at
    ``path`` is never removed.
    """
    path = check_destination(path)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise HamiltonianError(f'{path}: nothing was written')
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_json(data: dict, path: str | Path) -> Path:
    """Serialise ``data`` (numpy arrays allowed) to ``path`` atomically."""
    path = Path(path)
    text = json.dumps(data, indent=1, default=_json_default)
    with atomic_output(path) as tmp:
        tmp.write_text(text + '\n')
    return path


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _one_line(text: str) -> str:
    return ' '.join(str(text).split())


# ----------------------------------------------------------------------------------------- commands
class _EngineGroup(click.Group):
    """Turns every error into one ``Error: ...`` line and exit code 1 (unless ``--debug``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if (ctx.obj or {}).get('debug') or os.environ.get('NEXTHAM_DEBUG'):
                raise
            message = _one_line(exc) or type(exc).__name__
            if not isinstance(exc, HamiltonianError | OSError | ValueError):
                message = f'{type(exc).__name__}: {message} (run `nextham --debug ...` for the traceback)'
            raise click.ClickException(message) from None


@click.group('nextham', cls=_EngineGroup, context_settings={'help_option_names': ['-h', '--help']})
@click.option('--debug', is_flag=True, help='Show full tracebacks instead of one-line error messages.')
@click.version_option(package_name='aiida-nextham', prog_name='nextham')
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Block Hamiltonians H_ij(R), S_ij(R): convert, inspect and compute band structures."""
    ctx.obj = {'debug': debug}


FORMAT_OPTION = click.option(
    '-f',
    '--format',
    'format_',
    metavar='FORMAT',
    default=None,
    help='Format of the input (default: auto-detected; see `nextham formats`).',
)


@cli.command('formats')
def cmd_formats() -> None:
    """List the file formats that can be read and written."""
    from ..hamiltonian.importers import FORMATS, _load_builtin_formats

    _load_builtin_formats()
    for name, fmt in sorted(FORMATS.items()):
        modes = ('r' if fmt.read else '-') + ('w' if fmt.write else '-')
        click.echo(f'{name:<14} {modes}  {fmt.description}')


@cli.command('info')
@click.argument('path', type=click.Path(path_type=Path))
@FORMAT_OPTION
def cmd_info(path: Path, format_: str | None) -> None:
    """Print the JSON summary of the block Hamiltonian in PATH (file or folder)."""
    from ..hamiltonian.importers import detect_format, read

    format_ = format_ or detect_format(path)
    bh = read(path, format_)
    click.echo(json.dumps({**bh.summary(), 'format': format_}, indent=2))


@cli.command('convert')
@click.argument('source', type=click.Path(path_type=Path))
@click.argument('dest', type=click.Path(path_type=Path))
@FORMAT_OPTION
@click.option(
    '-t',
    '--to',
    'to_format',
    default='nextham',
    show_default=True,
    metavar='FORMAT',
    help='Format to write: nextham (HDF5), deeph, deeph-legacy, ... (see `nextham formats`).',
)
def cmd_convert(source: Path, dest: Path, format_: str | None, to_format: str) -> None:
    """Convert the block Hamiltonian in SOURCE (any readable format) and write it to DEST."""
    from ..hamiltonian.importers import detect_format, read, write

    check_destination(dest)
    format_ = format_ or detect_format(source)
    bh = read(source, format_)
    with atomic_output(dest) as tmp:
        write(bh, tmp, to_format)
    click.echo(
        f'Wrote {dest} ({to_format}): {bh.formula}, {bh.n_orbitals} orbitals, {bh.n_pairs} blocks', err=True
    )


@cli.command('bands')
@click.argument('path', type=click.Path(path_type=Path))
@FORMAT_OPTION
@click.option(
    '--path',
    'kpath_spec',
    default=None,
    metavar='PATH',
    help="High-symmetry path: 'auto' (default, from the cell) or labels such as G-X-W-K-G-L.",
)
@click.option(
    '--npoints', default=100, show_default=True, type=click.IntRange(min=2), help='Points along the path.'
)
@click.option(
    '--kpoints',
    'kpoints_file',
    type=click.Path(path_type=Path),
    default=None,
    help='File of explicit fractional k-points (replaces --path).',
)
@click.option(
    '--mesh',
    default=None,
    metavar='N1xN2xN3',
    help=f'Monkhorst-Pack mesh for the Fermi level (default: from the cell, {DEFAULT_KSPACING} 1/Å spacing).',
)
@click.option(
    '--n-electrons', type=float, default=None, help='Valence electrons per cell (default: from the file).'
)
@click.option('-o', '--output', type=click.Path(path_type=Path), required=True, help='JSON file to write.')
@click.option(
    '--plot', type=click.Path(path_type=Path), default=None, help='Also write a band-structure plot (PNG).'
)
@click.option(
    '--emin',
    type=float,
    default=None,
    help=f'Plot window bottom, eV (relative to E_F when known; default {PLOT_WINDOW[0]}).',
)
@click.option(
    '--emax',
    type=float,
    default=None,
    help=f'Plot window top, eV (relative to E_F when known; default {PLOT_WINDOW[1]}).',
)
def cmd_bands(
    path: Path,
    format_: str | None,
    kpath_spec: str | None,
    npoints: int,
    kpoints_file: Path | None,
    mesh: str | None,
    n_electrons: float | None,
    output: Path,
    plot: Path | None,
    emin: float | None,
    emax: float | None,
) -> None:
    """Band energies of the Hamiltonian in PATH along a k-path, written to a JSON file.

    The JSON holds kpoints (fractional), distances, labels, energies (eV, not shifted) and
    fermi_level (eV): computed on a Monkhorst-Pack mesh when the electron count is known, else
    the Fermi level stored in the file, else null.
    """
    from ..hamiltonian.importers import read
    from ..hamiltonian.kpath import band_path, explicit_kpath, read_kpoints_file
    from ..hamiltonian.spectra import band_energies

    if kpoints_file is not None and kpath_spec is not None:
        raise click.UsageError('--path and --kpoints are mutually exclusive')
    mesh_tuple = parse_mesh(mesh)
    for destination in (output, plot):
        if destination is not None:
            check_destination(destination)
    bh = read(path, format_)
    if kpoints_file is not None:
        kpath = explicit_kpath(read_kpoints_file(kpoints_file), lattice=bh.lattice)
    else:
        kpath = band_path(
            bh.lattice,
            path=kpath_spec or 'auto',
            npoints=npoints,
            positions=bh.positions,
            numbers=bh.numbers,
            periodic=bh.periodic,
        )
    progress = sys.stderr.isatty()
    energies = band_energies(bh, kpath.kpoints, progress=progress)
    fermi = resolve_fermi_level(bh, mesh=mesh_tuple, n_electrons=n_electrons, progress=progress)
    data = {
        'formula': bh.formula,
        'spin': bh.spin,
        'units': 'eV',
        'kpoints': np.asarray(kpath.kpoints, dtype=float),
        'distances': np.asarray(kpath.distances, dtype=float),
        'labels': [[int(index), str(label)] for index, label in kpath.labels],
        'energies': energies,
        'fermi_level': fermi['fermi_level'],
        'fermi_level_source': fermi['source'],
        'n_electrons': fermi['n_electrons'],
        'mesh': fermi['mesh'],
    }
    if plot is not None:  # the plot first: if it fails, no JSON claims the run succeeded
        from ..hamiltonian.plotting import plot_bands

        with atomic_output(plot) as tmp:
            low, high = plot_window(fermi['fermi_level'], emin, emax)
            plot_bands(kpath, energies, fermi['fermi_level'], tmp, title=bh.formula, emin=low, emax=high)
    write_json(data, output)
    click.echo(f'Wrote {output}' + (f' and {plot}' if plot else ''), err=True)


def _register_subcommands() -> None:
    from .arpes_command import arpes_fit, arpes_simulate
    from .bench_command import bench
    from .dft_command import dft
    from .phonons_command import phonons
    from .predict_command import predict
    from .train_command import train
    from .train_ff_command import train_ff

    cli.add_command(arpes_fit)
    cli.add_command(arpes_simulate)
    cli.add_command(bench)
    cli.add_command(dft)
    cli.add_command(phonons)
    cli.add_command(predict)
    cli.add_command(train)
    cli.add_command(train_ff)


_register_subcommands()


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f'Warning: {_one_line(message)}\n'


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nextham`` console script."""
    warnings.formatwarning = _format_warning
    cli.main(args=argv, prog_name='nextham')


if __name__ == '__main__':
    main()
