"""``verdi data nextham arpes``: import, show and plot ``ArpesData`` nodes."""

from __future__ import annotations

import pathlib

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.params import options, types
from aiida.cmdline.params.arguments.overridable import OverridableArgument
from aiida.cmdline.utils import decorators, echo

__all__ = ('data_arpes',)

ARPES = OverridableArgument(
    'arpes',
    metavar='ARPES',
    type=types.DataParamType(sub_classes=('aiida.data:nextham.arpes',)),
)


def _describe(summary: dict) -> str:
    """``'phi 835 × eV 1034, kinetic energy, format nexus'``."""
    shape = ' × '.join(f'{dim} {n}' for dim, n in zip(summary['dims'], summary['shape'], strict=True))
    axis = summary.get('energy_axis')
    return f'{shape}, {f"{axis} energy" if axis else "no energy axis"}, format {summary["source_format"]}'


@click.group('arpes', cls=VerdiCommandGroup)
def data_arpes():
    """ARPES intensities (NetCDF files of every beamline format) stored as ArpesData nodes."""


@data_arpes.command('import')
@click.argument('path', type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option(
    '-F',
    '--format',
    'format_',
    metavar='FORMAT',
    default=None,
    help='Reader of PATH (default: from the suffix and content), e.g. netcdf, hdf5, nexus, ssrl, ibw, pxt, '
    'itx, da30, mbs, xy, sp2, fits.',
)
@options.LABEL(help='Label of the new node.')
@options.DESCRIPTION(help='Description of the new node.')
@options.DRY_RUN(help='Read and validate the file, but do not store a node.')
@decorators.with_dbenv()
def cmd_import(path: pathlib.Path, format_: str | None, label: str | None, description: str, dry_run: bool):
    """Import the ARPES data in PATH as an ArpesData node."""
    from ..arpes.readers import load
    from ..data.arpes import ArpesData

    try:
        da = load(path, format_)
    except (ValueError, OSError) as exception:  # ArpesFormatError is a ValueError
        echo.echo_critical(' '.join(str(exception).split()))
    summary = _describe(ArpesData.summarise(da))
    if dry_run:
        echo.echo_success(f'read {path} ({summary}); not stored (dry run)')
        return
    node = ArpesData(da, label=label or '', description=description or '')
    node.store()
    echo.echo_success(f'imported {path} ({summary}) as ArpesData<{node.pk}>')


@data_arpes.command('show')
@ARPES()
@decorators.with_dbenv()
def cmd_show(arpes):
    """Show the summary of node ARPES."""
    summary = arpes.summary
    coordinates = summary.pop('coordinates', {})
    rows = [('PK', arpes.pk), ('UUID', arpes.uuid), ('Label', arpes.label)]
    rows += [(key, value) for key, value in sorted(summary.items())]
    for name, coord in coordinates.items():
        units = f' {coord["units"]}' if coord.get('units') else ''
        span = f'{coord["min"]:.6g} … {coord["max"]:.6g}{units} ({coord["size"]})'
        rows.append((f'coordinate {name}', span))
    echo.echo_tabulate(rows, tablefmt='plain')


@data_arpes.command('plot')
@ARPES()
@click.option(
    '-o', '--output', type=click.Path(path_type=pathlib.Path), required=True, help='PNG file to write.'
)
@click.option('--overwrite', is_flag=True, default=False, help='Replace OUTPUT if it exists.')
@decorators.with_dbenv()
def cmd_plot(arpes, output: pathlib.Path, overwrite: bool):
    """Plot node ARPES: the energy against the first other axis (further axes at their middle point)."""
    from ..engine.cli import atomic_output

    if output.is_dir():
        echo.echo_critical(f'{output} is an existing folder; choose a file name')
    if output.exists() and not overwrite:
        echo.echo_critical(f'{output} exists; pass --overwrite to replace it')
    try:
        da = arpes.get_dataarray()
        with atomic_output(output) as tmp:
            title = arpes.label or f'ArpesData<{arpes.pk}> ({da.attrs.get("source_file")})'
            plot_intensity(da, tmp, title=title)
    except (ValueError, OSError) as exception:
        echo.echo_critical(' '.join(str(exception).split()))
    echo.echo_success(f'wrote {output}')


def plot_intensity(da, path: pathlib.Path, title: str = '') -> pathlib.Path:
    """A PNG image of a 2-D view of ``da``: ``eV`` vertical against the first other dimension; further
    dimensions are taken at their middle index (named in the title). A 1-D spectrum is drawn as a line."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    dims = list(da.dims)
    vertical = 'eV' if 'eV' in dims else dims[-1]
    horizontal = next((dim for dim in dims if dim != vertical), None)
    fixed = {dim: da.sizes[dim] // 2 for dim in dims if dim not in (vertical, horizontal)}
    view = da.isel(fixed)
    where = ', '.join(f'{dim} = {float(da[dim][index]):.4g}' for dim, index in fixed.items())
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    try:
        if horizontal is None:
            ax.plot(view[vertical].values, view.values, lw=1.0)
            ax.set(xlabel=_axis_label(da, vertical), ylabel='intensity')
        else:
            image = view.transpose(vertical, horizontal)
            ax.pcolormesh(
                image[horizontal].values,
                image[vertical].values,
                image.values,
                shading='nearest',
                cmap='Greys',
            )
            ax.set(xlabel=_axis_label(da, horizontal), ylabel=_axis_label(da, vertical))
        ax.set_title('\n'.join(part for part in (title, where) if part), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, format='png', dpi=120)
    finally:
        plt.close(fig)
    return pathlib.Path(path)


def _axis_label(da, dim: str) -> str:
    units = da[dim].attrs.get('units', '')
    if dim == 'eV':
        name = '$E - E_F$' if da.attrs.get('energy_axis') == 'binding' else '$E_{kin}$'
        return f'{name} (eV)'
    return f'{dim} ({units})' if units else dim
