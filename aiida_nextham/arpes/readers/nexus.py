"""NeXus (HDF5) ARPES files: Diamond i05 and ALBA LOREA (NXarpes).

The entry's default ``NXdata`` group (else its first) gives the signal (``signal`` attr of the group,
or the dataset with ``signal=1``) and its axes (``axes`` attr, or datasets with ``axis=i`` and
``primary=1``). Axis names map to dimensions (``angles`` → ``phi``, ``energies`` → kinetic ``eV``,
``energy`` → ``hv``, ``sax/say/saz`` → ``x/y/z``, deflector → ``beta``); length-1 axes are dropped.
Small datasets of the entry are the metadata; photon energy and temperature come from
``instrument/monochromator/energy`` and ``sample/temperature``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ..data import ArpesFormatError, make_intensity

__all__ = ['is_nexus', 'read_nexus']

AXIS_DIMS = {
    'angles': 'phi',
    'energies': 'eV',
    'energy': 'hv',
    'sax': 'x',
    'say': 'y',
    'saz': 'z',
    'deflector_x': 'beta',
    'defl_angles': 'beta',
}
_SMALL = 64


def is_nexus(handle: h5py.File) -> bool:
    """True when an open HDF5 file has an ``NXentry`` group at the top."""
    return any(_nx_class(item) == 'NXentry' for item in handle.values())


def read_nexus(path: str | Path) -> xr.DataArray:
    """Read the default ``NXdata`` of the first ``NXentry``."""
    with h5py.File(path, 'r') as handle:
        entry = _default(handle, 'NXentry')
        group = _default(entry, 'NXdata')
        signal = _signal(group)
        values = signal[()]
        axes = _axes(group, signal.ndim)
        coords, dims, keep = {}, [], []
        for i, name in enumerate(axes):
            if values.shape[i] == 1:
                continue
            dim = AXIS_DIMS.get(name.rsplit('/', 1)[-1]) if name else None
            if dim is None:
                raise ArpesFormatError(f'NeXus axis {i} ({name or "unnamed"}) has no known ARPES meaning')
            coord = np.asarray(group[name][()], dtype=float).ravel()
            if coord.size != values.shape[i]:
                raise ArpesFormatError(
                    f'axis {name!r} has {coord.size} values for a dimension of {values.shape[i]}'
                )
            coords[dim] = coord
            dims.append(dim)
            keep.append(i)
        meta = _metadata(entry, exclude=group.name)
        hv = _scalar(entry, 'instrument/monochromator/energy')
        temperature = _scalar(entry, 'sample/temperature')
    return make_intensity(
        values.reshape([values.shape[i] for i in keep]),
        coords,
        tuple(dims),
        energy_axis='kinetic' if 'eV' in coords else None,
        source_format='nexus',
        source_file=path,
        metadata=meta,
        photon_energy=hv,
        temperature=temperature,
    )


def _nx_class(item) -> str:
    value = item.attrs.get('NX_class', b'') if isinstance(item, h5py.Group) else b''
    return value.decode() if isinstance(value, bytes) else str(value)


def _default(group: h5py.Group, nx_class: str) -> h5py.Group:
    name = _text(group.attrs.get('default', ''))
    if name and name in group and _nx_class(group[name]) == nx_class:
        return group[name]
    for item in group.values():
        if _nx_class(item) == nx_class:
            return item
    raise ArpesFormatError(f'no {nx_class} group in {group.name}')


def _signal(group: h5py.Group) -> h5py.Dataset:
    name = _text(group.attrs.get('signal', ''))
    if name and name in group:
        return group[name]
    for item in group.values():
        if isinstance(item, h5py.Dataset) and int(np.ravel(item.attrs.get('signal', [0]))[0]) == 1:
            return item
    raise ArpesFormatError(f'the NXdata group {group.name} names no signal')


def _axes(group: h5py.Group, ndim: int) -> list[str]:
    """The axis dataset name of each dimension ('' when there is none)."""
    if 'axes' in group.attrs:
        names = [_text(name) for name in np.atleast_1d(group.attrs['axes'])]
        return [name if name != '.' else '' for name in names] + [''] * (ndim - len(names))
    axes = [''] * ndim
    for name, item in group.items():
        if isinstance(item, h5py.Dataset) and 'axis' in item.attrs:
            primary = int(np.ravel(item.attrs.get('primary', [1]))[0])
            index = int(_text(np.ravel(item.attrs['axis'])[0]).split(',')[0]) - 1
            if primary == 1 and 0 <= index < ndim:
                axes[index] = name
    return axes


def _scalar(group: h5py.Group, path: str) -> float | None:
    if path not in group:
        return None
    value = np.ravel(group[path][()])
    return float(value[0]) if value.size == 1 and np.issubdtype(value.dtype, np.number) else None


def _metadata(group: h5py.Group, exclude: str) -> dict:
    """Attributes and small datasets below ``group`` as a nested dict (the data group left out)."""
    out = {f'@{key}': _value(value) for key, value in group.attrs.items()}
    for name, item in group.items():
        if item.name == exclude:
            continue
        if isinstance(item, h5py.Group):
            out[name] = _metadata(item, exclude)
        elif item.size <= _SMALL:
            out[name] = _value(item[()])
    return out


def _value(value):
    if isinstance(value, bytes | np.bytes_):
        return _text(value)
    if isinstance(value, np.ndarray):
        value = [_value(item) for item in value.ravel()]
        return value[0] if len(value) == 1 else value
    return value


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ''
    return value.decode('utf-8', 'replace') if isinstance(value, bytes | np.bytes_) else str(value)
