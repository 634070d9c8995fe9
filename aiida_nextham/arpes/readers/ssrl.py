"""SSRL beamline 5-2 HDF5 files (PEAK / PyPES writer).

``/Data/Count`` holds the values; ``/Data/Axes0``, ``Axes1``... (one per dimension, in order) carry the
attributes ``Label``, ``Offset``, ``Delta`` and ``Count``, axis values ``Offset + Delta·i``. Labels
map to dimensions (``Kinetic Energy`` → ``eV``, ``ThetaX`` → ``phi``, ``ThetaY`` → ``beta``,
``X/Y/Z`` → ``x/y/z``). Metadata are the attributes of every group: photon energy
``Beamline/energy``, sample temperature ``Temperature/TB``, work function
``UserSettings/WorkFunction``, energy resolution ``Resolution/TotalResolution`` (meV).
Photon-energy scans (offsets that reference ``MapInfo``) are not supported yet.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ..data import ArpesFormatError, make_intensity
from .common import first_positive

__all__ = ['is_ssrl', 'read_ssrl']

LABEL_DIMS = {'Kinetic Energy': 'eV', 'ThetaX': 'phi', 'ThetaY': 'beta', 'X': 'x', 'Y': 'y', 'Z': 'z'}


def is_ssrl(handle: h5py.File) -> bool:
    """True when an open HDF5 file has the SSRL 5-2 ``/Data/Count`` + ``/Data/Axes0`` layout."""
    return 'Data/Axes0' in handle and any(name in handle['Data'] for name in ('Count', 'counts'))


def read_ssrl(path: str | Path) -> xr.DataArray:
    """Read an SSRL 5-2 file."""
    with h5py.File(path, 'r') as handle:
        data = handle['Data']
        values = (data['Count'] if 'Count' in data else data['counts'])[()]
        coords, dims = {}, []
        for i, n in enumerate(values.shape):
            if f'Axes{i}' not in data:
                raise ArpesFormatError(f'/Data has no Axes{i} for dimension {i}')
            axis = {key.lower(): value for key, value in data[f'Axes{i}'].attrs.items()}
            label = _text(axis.get('label', ''))
            dim = LABEL_DIMS.get(label)
            if dim is None:
                raise ArpesFormatError(f'axis label {label!r} is not one of {sorted(LABEL_DIMS)}')
            offset, delta = axis.get('offset'), axis.get('delta')
            if isinstance(offset, str | bytes) or isinstance(delta, str | bytes):
                raise ArpesFormatError(
                    f'axis {label!r} takes its values from MapInfo (a photon-energy scan): not supported'
                )
            coords[dim] = float(offset) + float(delta) * np.arange(n)
            dims.append(dim)
        meta = _attrs(handle)
    return make_intensity(
        values,
        coords,
        tuple(dims),
        energy_axis='kinetic' if 'eV' in coords else None,
        source_format='ssrl52',
        source_file=path,
        metadata=meta,
        photon_energy=first_positive(meta.get('Beamline', {}), ('energy',)),
        temperature=first_positive(meta.get('Temperature', {}), ('TB',)),
        work_function=first_positive(meta.get('UserSettings', {}), ('WorkFunction',)),
        energy_resolution=first_positive(meta.get('Resolution', {}), ('TotalResolution',), scale=1e-3),
    )


def _attrs(group: h5py.Group) -> dict:
    """A group's attributes and, nested, its subgroups' (datasets are left out)."""
    out = {key: _text(value) if isinstance(value, bytes) else value for key, value in group.attrs.items()}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            out[name] = _attrs(item)
    return out


def _text(value) -> str:
    return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)
