"""SPECS SpecsLab Prodigy exports: ``.xy`` text and ``.sp2`` detector images.

``.xy``: ``# Key: value`` comment lines, then per curve a ``# NonEnergyOrdinate:`` (the slit angle,
deg) and ``energy counts`` lines; all curves share one energy axis. Energies are kinetic or, with
``Energy Axis: Binding Energy``, positive binding energies (converted to E − E_F). One region and one
cycle per file.

``.sp2``: first line ``P2``, ``# key = value`` lines (``X Range = "[lo .. hi] eV"``, ``Y Range`` in
deg), then ``n_energy n_angle n`` and the values, energy fastest; ranges include both ends.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xarray as xr

from ..data import ArpesFormatError, make_intensity
from .common import first_positive, to_number

__all__ = ['read_sp2', 'read_xy']

_RANGE = re.compile(r'\[\s*([-+\d.eE]+)\s*\.\.\s*([-+\d.eE]+)\s*\]\s*(\S*)')


def read_xy(path: str | Path) -> xr.DataArray:
    """Read a SpecsLab Prodigy ``.xy`` export."""
    meta: dict = {}
    curves: list[list[tuple[float, float]]] = []
    ordinates: list[float] = []
    cycles = set()
    for line in Path(path).read_text(encoding='latin-1').splitlines():
        if line.startswith('#'):
            key, sep, value = line[1:].partition(':')
            key = key.strip()
            if key == 'Cycle':
                cycles.add(value.split(',')[0].strip())
                if 'Curve' in value:
                    curves.append([])
            elif key == 'NonEnergyOrdinate':
                ordinates.append(float(value))
            elif key == 'Region' and 'Region' in meta:
                raise ArpesFormatError('the file holds several regions; export one region per file')
            elif sep and key not in meta:
                meta[key] = to_number(value)
        elif line.strip():
            if not curves:
                curves.append([])
            columns = line.split()
            if len(columns) < 2:
                raise ArpesFormatError(f'data line {line!r} has fewer than two columns: truncated?')
            curves[-1].append((float(columns[0]), float(columns[1])))
    if len(cycles) > 1:
        raise ArpesFormatError(f'{len(cycles)} cycles in one file are not supported')
    if not curves or not all(curves):
        raise ArpesFormatError('no data curves: not a SpecsLab Prodigy .xy file, or truncated')
    if len({len(curve) for curve in curves}) != 1:
        raise ArpesFormatError('curves of different lengths: the file is truncated')
    table = np.asarray(curves)
    energy = table[0, :, 0]
    if not np.allclose(table[:, :, 0], energy):
        raise ArpesFormatError('the curves have different energy axes')
    binding = 'binding' in str(meta.get('Energy Axis', '')).lower()
    coords = {'eV': -energy if binding else energy}
    if ordinates:
        if len(ordinates) != len(curves):
            raise ArpesFormatError('not every curve has a NonEnergyOrdinate')
        coords['phi'] = np.asarray(ordinates)
        dims, values = ('phi', 'eV'), table[:, :, 1]
    else:
        dims, values = ('eV',), table[0, :, 1]
    return make_intensity(
        values,
        coords,
        dims,
        energy_axis='binding' if binding else 'kinetic',
        source_format='specs-xy',
        source_file=path,
        metadata=meta,
        photon_energy=first_positive(meta, ('Excitation Energy',)),
        work_function=first_positive(meta, ('Eff. Workfunction',)),
    )


def read_sp2(path: str | Path) -> xr.DataArray:
    """Read a SpecsLab Prodigy ``.sp2`` image (slit angle × kinetic energy)."""
    lines = Path(path).read_text(encoding='latin-1').splitlines()
    if not lines or lines[0].strip() != 'P2':
        raise ArpesFormatError('an .sp2 file starts with the line P2')
    meta: dict = {}
    start = 1
    while start < len(lines) and lines[start].startswith('#'):
        key, sep, value = lines[start][1:].partition('=')
        if sep:
            meta[key.strip()] = to_number(value.split('#')[0].strip().strip('"'))
        start += 1
    if start >= len(lines):
        raise ArpesFormatError('no image size line: the file is truncated')
    n_energy, n_angle = (int(n) for n in lines[start].split()[:2])
    values = np.asarray(lines[start + 1 :], dtype=float)
    if values.size != n_energy * n_angle:
        raise ArpesFormatError(
            f'{values.size} values for a {n_angle} × {n_energy} image: the file is truncated'
        )
    coords = {}
    for key, dim, n in (('Y Range', 'phi', n_angle), ('X Range', 'eV', n_energy)):
        match = _RANGE.search(str(meta.get(key, '')))
        if match is None:
            raise ArpesFormatError(f'no {key} = "[lo .. hi] unit" line')
        coords[dim] = np.linspace(float(match[1]), float(match[2]), n)
    if 'kinetic' not in str(meta.get('X Label', '')).lower():
        raise ArpesFormatError(
            f'the energy axis is {meta.get("X Label")!r}; only kinetic-energy images are read'
        )
    return make_intensity(
        values.reshape(n_angle, n_energy),
        coords,
        ('phi', 'eV'),
        energy_axis='kinetic',
        source_format='specs-sp2',
        source_file=path,
        metadata=meta,
        work_function=first_positive(meta, ('WF',)),
    )
