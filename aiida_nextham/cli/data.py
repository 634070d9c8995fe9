"""``verdi data nextham``: import, export, inspect, list and diagonalise ``HamiltonianData`` nodes;
``verdi data nextham arpes``: ``ArpesData`` nodes (:mod:`.arpes`)."""

from __future__ import annotations

import pathlib

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.params import options, types
from aiida.cmdline.params.arguments.overridable import OverridableArgument
from aiida.cmdline.utils import decorators, echo

from .arpes import data_arpes

__all__ = ('data_nextham',)

HAMILTONIAN = OverridableArgument(
    'hamiltonian',
    metavar='HAMILTONIAN',
    type=types.DataParamType(sub_classes=('aiida.data:nextham.hamiltonian',)),
)

LIST_HEADERS = ('PK', 'Label', 'Formula', 'Atoms', 'Orbitals', 'Spin', 'Basis', 'Source')
LIST_PROJECTIONS = (
    'id',
    'label',
    'attributes.formula',
    'attributes.n_atoms',
    'attributes.n_orbitals',
    'attributes.spin',
    'attributes.basis',
    'attributes.source_code',
    'attributes.source_format',
)


def _source(code: str | None, fmt: str | None) -> str:
    """``'abacus (abacus)'``-style source column from the basis code and the file format."""
    if code and fmt and code != fmt:
        return f'{code} ({fmt})'
    return code or fmt or ''


@click.group('nextham', cls=VerdiCommandGroup)
def data_nextham():
    """Block Hamiltonians H_ij(R), S_ij(R) stored as HamiltonianData nodes (and ARPES data: `arpes`)."""


data_nextham.add_command(data_arpes)


@data_nextham.command('import')
@click.argument('path', type=click.Path(exists=True, path_type=pathlib.Path))
@click.option(
    '-F',
    '--format',
    'format_',
    metavar='FORMAT',
    default=None,
    help='Format of PATH (default: auto-detected; `nextham formats` lists them).',
)
@options.LABEL(help='Label of the new node.')
@options.DESCRIPTION(help='Description of the new node.')
@options.DRY_RUN(help='Read and validate the file, but do not store a node.')
@decorators.with_dbenv()
def cmd_import(path: pathlib.Path, format_: str | None, label: str | None, description: str, dry_run: bool):
    """Import the block Hamiltonian in PATH (a file or a folder) as a HamiltonianData node."""
    from ..data.hamiltonian import HamiltonianData
    from ..hamiltonian.block import HamiltonianError
    from ..hamiltonian.importers import detect_format, read

    try:
        format_ = format_ or detect_format(path)
        bh = read(path, format_)
        HamiltonianData.validate_block_hamiltonian(bh)
    except (HamiltonianError, OSError) as exception:
        echo.echo_critical(' '.join(str(exception).split()))
    summary = f'{bh.formula}, {bh.n_orbitals} orbitals, {bh.n_pairs} blocks, format {format_}'
    if dry_run:
        echo.echo_success(f'read {path} ({summary}); not stored (dry run)')
        return
    node = HamiltonianData(bh, source_format=format_, label=label or '', description=description or '')
    node.store()
    echo.echo_success(f'imported {path} ({summary}) as HamiltonianData<{node.pk}>')


@data_nextham.command('export')
@HAMILTONIAN()
@click.argument('dest', type=click.Path(path_type=pathlib.Path))
@click.option(
    '-F',
    '--format',
    'format_',
    metavar='FORMAT',
    default='nextham',
    show_default=True,
    help='Format to write: nextham (HDF5), deeph, deeph-legacy, ...',
)
@options.OVERWRITE()
@decorators.with_dbenv()
def cmd_export(hamiltonian, dest: pathlib.Path, format_: str, overwrite: bool):
    """Write the Hamiltonian of node HAMILTONIAN to DEST."""
    from ..hamiltonian.block import HamiltonianError

    if dest.is_dir():
        echo.echo_critical(f'{dest} is an existing folder; remove it or choose another destination')
    if dest.exists() and not overwrite:
        echo.echo_critical(f'{dest} exists; pass --overwrite to replace it')
    try:
        hamiltonian.export(dest, format_)
    except (HamiltonianError, OSError) as exception:
        echo.echo_critical(' '.join(str(exception).split()))
    echo.echo_success(f'exported HamiltonianData<{hamiltonian.pk}> to {dest} ({format_})')


@data_nextham.command('show')
@HAMILTONIAN()
@decorators.with_dbenv()
def cmd_show(hamiltonian):
    """Show the summary of node HAMILTONIAN."""
    rows = [('PK', hamiltonian.pk), ('UUID', hamiltonian.uuid), ('Label', hamiltonian.label)]
    rows += [(key, value) for key, value in sorted(hamiltonian.summary.items())]
    echo.echo_tabulate(rows, tablefmt='plain')


@data_nextham.command('list')
@click.option('--formula', default=None, help='Only Hamiltonians with this (Hill) formula, e.g. MoTe2.')
@click.option(
    '-e',
    '--element',
    'elements',
    multiple=True,
    help='Only Hamiltonians containing this element (repeatable).',
)
@click.option('--spin', type=click.Choice(['none', 'spinor']), default=None, help='Only this spin treatment.')
@click.option(
    '--source', default=None, help='Only Hamiltonians from this code or file format (e.g. abacus, deeph).'
)
@options.PAST_DAYS()
@options.RAW()
@decorators.with_dbenv()
def cmd_list(formula, elements, spin, source, past_days, raw):
    """List HamiltonianData nodes."""
    import datetime

    from aiida import orm
    from aiida.common import timezone

    from ..data.hamiltonian import HamiltonianData

    filters: dict = {}
    if formula:
        filters['attributes.formula'] = formula
    if spin:
        filters['attributes.spin'] = spin
    if elements:
        filters['attributes.elements'] = {'contains': list(elements)}
    if source:
        filters['or'] = [{'attributes.source_code': source}, {'attributes.source_format': source}]
    if past_days is not None:
        filters['ctime'] = {'>': timezone.now() - datetime.timedelta(days=past_days)}
    query = orm.QueryBuilder().append(HamiltonianData, filters=filters, project=list(LIST_PROJECTIONS))
    query.order_by({HamiltonianData: {'id': 'asc'}})
    rows = [[*row[:7], _source(row[7], row[8])] for row in query.iterall()]
    if raw:
        echo.echo_tabulate(rows, tablefmt='plain')
        return
    if not rows:
        echo.echo_report('no HamiltonianData nodes found')
        return
    echo.echo_tabulate(rows, headers=LIST_HEADERS)


@data_nextham.command('bands')
@HAMILTONIAN()
@click.option(
    '--path', 'kpath_spec', default='auto', show_default=True, help="'auto' or labels such as G-X-W-K-G-L."
)
@click.option(
    '--npoints', default=100, show_default=True, type=click.IntRange(min=2), help='Points along the path.'
)
@click.option(
    '--mesh', default=None, metavar='N1xN2xN3', help='Monkhorst-Pack mesh for the Fermi level and gap.'
)
@click.option(
    '--n-electrons', type=float, default=None, help='Valence electrons per cell (default: from the node).'
)
@click.option(
    '-o', '--output', type=click.Path(path_type=pathlib.Path), default=None, help='Write a PNG plot here.'
)
@click.option('--emin', type=float, default=None, help='Plot window bottom, eV (relative to E_F when known).')
@click.option('--emax', type=float, default=None, help='Plot window top, eV (relative to E_F when known).')
@decorators.with_dbenv()
def cmd_bands(hamiltonian, kpath_spec, npoints, mesh, n_electrons, output, emin, emax):
    """Compute the band structure of HAMILTONIAN (provenance-tracked calcfunction) and plot it."""
    from aiida import orm

    from ..calculations.functions import band_kpath, compute_bands, kpath_to_kpointsdata
    from ..engine.cli import atomic_output, check_destination, parse_mesh, plot_window
    from ..hamiltonian.block import HamiltonianError

    parameters = {}
    try:
        if output is not None:
            check_destination(output)
        if mesh is not None:
            parameters['mesh'] = list(parse_mesh(mesh))
        lattice = hamiltonian.get_structure_arrays()[0]
        kpath = band_kpath(hamiltonian, kpath_spec, npoints)
    except (HamiltonianError, ValueError) as exception:
        echo.echo_critical(' '.join(str(exception).split()))
    if n_electrons is not None:
        parameters['n_electrons'] = n_electrons

    inputs = {'hamiltonian': hamiltonian, 'kpoints': kpath_to_kpointsdata(kpath, lattice)}
    if parameters:
        inputs['parameters'] = orm.Dict(parameters)
    try:
        results, node = compute_bands.run_get_node(**inputs)
    except (HamiltonianError, ValueError) as exception:  # the process is excepted and records the traceback
        echo.echo_critical(f'compute_bands failed: {" ".join(str(exception).split())}')
    if not node.is_finished_ok:
        echo.echo_critical(f'compute_bands<{node.pk}> failed: [{node.exit_status}] {node.exit_message}')

    bands, output_parameters = results['bands'], results['output_parameters'].get_dict()
    fermi = output_parameters.get('fermi_level')
    echo.echo_success(f'BandsData<{bands.pk}> computed by compute_bands<{node.pk}>')
    if fermi is not None:
        echo.echo_report(f'Fermi level {fermi:.4f} eV ({output_parameters.get("fermi_level_source")})')
    if output_parameters.get('gap') is not None:
        echo.echo_report(f'band gap {output_parameters["gap"]:.4f} eV')
    if output is not None:
        from ..hamiltonian.plotting import plot_bands

        try:
            with atomic_output(output) as tmp:
                low, high = plot_window(fermi, emin, emax)
                plot_bands(
                    kpath, bands.get_bands(), fermi, tmp, title=hamiltonian.formula, emin=low, emax=high
                )
        except (HamiltonianError, OSError) as exception:
            echo.echo_critical(' '.join(str(exception).split()))
        echo.echo_success(f'wrote {output}')
