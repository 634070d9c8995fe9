"""ARPES file readers: :func:`load` picks the reader from the suffix and checks the file's content.

Every reader returns a validated ``intensity`` DataArray (see :mod:`..data`) and raises
:class:`ArpesFormatError` for a file that is of another type, truncated or of an unknown layout.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import xarray as xr

from ..data import ArpesFormatError
from .fits import read_fits
from .igor import read_ibw, read_pxt
from .itx import read_itx
from .mbs import read_mbs
from .netcdf import is_netcdf4, read_netcdf_any
from .nexus import is_nexus, read_nexus
from .scienta import read_da30_zip
from .specs import read_sp2, read_xy
from .ssrl import is_ssrl, read_ssrl

__all__ = ['FORMATS', 'ArpesFormatError', 'load', 'read_hdf5']


def read_hdf5(path: Path) -> xr.DataArray:
    """Read an HDF5 file with the reader of its layout: NeXus, SSRL 5-2 or netCDF-4."""
    with h5py.File(path, 'r') as handle:
        if is_nexus(handle):
            reader = read_nexus
        elif is_ssrl(handle):
            reader = read_ssrl
        elif is_netcdf4(handle):
            reader = read_netcdf_any
        else:
            top = sorted(handle.keys())[:12]
            raise ArpesFormatError(
                'an HDF5 file with neither a NeXus NXentry, SSRL 5-2 /Data nor netCDF-4 layout '
                f'(top-level: {top})'
            )
    return reader(path)


#: format name → (description, suffixes, reader)
FORMATS: dict[str, tuple[str, tuple[str, ...], Callable[[Path], xr.DataArray]]] = {
    'netcdf': ('NetCDF-3/4, aiida-nextham or PyARPES', ('.nc',), read_netcdf_any),
    'hdf5': (
        'HDF5: NeXus (Diamond i05, ALBA LOREA), SSRL 5-2 or netCDF-4',
        ('.h5', '.hdf5', '.nxs'),
        read_hdf5,
    ),
    'nexus': ('NeXus HDF5 (Diamond i05, ALBA LOREA)', (), read_nexus),
    'ssrl': ('SSRL 5-2 HDF5', (), read_ssrl),
    'ibw': ('Igor binary wave', ('.ibw',), read_ibw),
    'pxt': ('Igor packed experiment', ('.pxt',), read_pxt),
    'itx': ('Igor text', ('.itx',), read_itx),
    'da30': ('Scienta SES zip (DA30)', ('.zip',), read_da30_zip),
    'mbs': ('MB Scientific A1 text', ('.txt',), read_mbs),
    'xy': ('SpecsLab Prodigy .xy', ('.xy',), read_xy),
    'sp2': ('SpecsLab Prodigy .sp2', ('.sp2',), read_sp2),
    'fits': ('ALS LabVIEW FITS', ('.fits', '.fit'), read_fits),
}
_MAGIC = {
    'netcdf': (b'CDF\x01', b'CDF\x02', b'\x89HDF'),
    'hdf5': (b'\x89HDF',),
    'da30': (b'PK\x03\x04',),
    'fits': (b'SIMPLE  =',),
    'itx': (b'IGOR',),
    'sp2': (b'P2',),
    'xy': (b'#',),
    'ibw': tuple(bytes(pair) for version in (1, 2, 3, 5) for pair in ((version, 0), (0, version))),
}
# Errors of a file that is not what it claims (parsers of truncated or foreign files raise these).
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, struct.error, zipfile.BadZipFile)


def load(path: str | Path, format: str | None = None) -> xr.DataArray:
    """Read ARPES data from ``path``; ``format`` (a key of :data:`FORMATS`) overrides the suffix.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ArpesFormatError: if the file is of another type, truncated or of an unknown layout; the
        message says why and lists the supported formats.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    if format is None:
        format = next(
            (name for name, (_, suffixes, _) in FORMATS.items() if path.suffix.lower() in suffixes), None
        )
        if format is None:
            format = _sniff(path)
    if format not in FORMATS:
        raise ArpesFormatError(f'unknown format {format!r}; {_supported()}')
    head = _head(path)
    magic = _MAGIC.get(format)
    if magic is not None and not head.startswith(magic):
        raise ArpesFormatError(
            f'{path}: the content is not {FORMATS[format][0]} (it starts with {head[:16]!r}); {_supported()}'
        )
    try:
        return FORMATS[format][2](path)
    except _READ_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise ArpesFormatError(
            f'{path}: cannot read as {FORMATS[format][0]}: {reason}; {_supported()}'
        ) from exc


def _sniff(path: Path) -> str:
    head = _head(path)
    for name in ('hdf5', 'netcdf', 'da30', 'fits', 'itx', 'sp2'):
        if head.startswith(_MAGIC[name]):
            return name
    raise ArpesFormatError(f'{path}: unknown suffix {path.suffix!r} and unrecognised content; {_supported()}')


def _head(path: Path) -> bytes:
    with open(path, 'rb') as stream:
        return stream.read(64)


def _supported() -> str:
    listed = ', '.join(f'{desc} ({" ".join(suffixes)})' for desc, suffixes, _ in FORMATS.values() if suffixes)
    return f'supported: {listed}'
