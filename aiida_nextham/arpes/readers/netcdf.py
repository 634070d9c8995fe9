"""NetCDF (``.nc``) ARPES files: this package's own files and PyARPES exports.

NetCDF-3 files are opened with xarray's scipy engine; netCDF-4 (HDF5) files are read with h5py
(root-group numeric variables, dimensions from the HDF5 dimension scales, so no netCDF library is
needed). Two conventions are understood:

- aiida-nextham: a variable ``intensity`` following :mod:`..data` (as written by ``data.to_netcdf``).
- PyARPES: one data variable with the coordinates ``chi``, ``psi``, ``alpha``, ``beta`` and ``theta``;
  angles are radians (converted to degrees), ``eV`` is E − E_F. Coordinates outside
  :data:`..data.DIMS` (``chi``, ``psi``, PyARPES's analyser orientation ``alpha``) go into the metadata.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ..data import DIMS, ArpesFormatError, make_intensity, validate

__all__ = ['is_netcdf4', 'read_netcdf_any']

_PYARPES_COORDS = {'chi', 'psi', 'alpha', 'beta', 'theta'}
_RADIANS = ('phi', 'theta', 'beta', 'chi', 'psi', 'alpha')
_INTERNAL = {
    'DIMENSION_LIST',
    'REFERENCE_LIST',
    'CLASS',
    'NAME',
    '_Netcdf4Dimid',
    '_Netcdf4Coordinates',
    '_FillValue',
}
_NO_VARIABLE = b'This is a netCDF dimension but not a netCDF variable'


def is_netcdf4(handle: h5py.File) -> bool:
    """True when an open HDF5 file is a netCDF-4 file (``_NCProperties`` or dimension scales)."""
    if '_NCProperties' in handle.attrs:
        return True
    return any(
        isinstance(item, h5py.Dataset) and item.attrs.get('CLASS') == b'DIMENSION_SCALE'
        for item in handle.values()
    )


def read_netcdf_any(path: str | Path) -> xr.DataArray:
    """Read a netCDF-3 or netCDF-4 file in the aiida-nextham or PyARPES convention."""
    with open(path, 'rb') as stream:
        magic = stream.read(4)
    if magic.startswith(b'CDF'):
        with xr.open_dataset(path, engine='scipy') as ds:
            ds = ds.load()
    elif magic == b'\x89HDF':
        ds = _hdf5_dataset(path)
    else:
        raise ArpesFormatError(f'neither netCDF-3 nor netCDF-4/HDF5 (starts with {magic!r})')
    if 'intensity' in ds.data_vars:
        da = ds['intensity']
        validate(da)
        return da
    if _PYARPES_COORDS <= set(ds.coords) and len(ds.data_vars) == 1:
        return _from_pyarpes(next(iter(ds.data_vars.values())), path)
    raise ArpesFormatError(
        f'no known ARPES convention: variables {sorted(ds.data_vars)}, coordinates {sorted(ds.coords)}; '
        "expected an aiida-nextham 'intensity' variable or a PyARPES export"
    )


def _from_pyarpes(da: xr.DataArray, path: str | Path) -> xr.DataArray:
    coords, extra = {}, {}
    for name, coord in da.coords.items():
        values = np.rad2deg(coord.values) if name in _RADIANS else coord.values
        if name not in DIMS or (name in ('hv', 'temperature') and name not in da.dims):
            extra[name] = values
        else:
            coords[name] = values if coord.dims == (name,) or coord.ndim == 0 else (coord.dims, values)
    attrs = dict(da.attrs)
    hv = da.coords['hv'] if 'hv' in da.coords and 'hv' not in da.dims else attrs.get('hv')
    temperature = attrs.get('temperature') if 'temperature' not in da.dims else None
    return make_intensity(
        da.values,
        coords,
        da.dims,
        energy_axis='binding' if 'eV' in coords else None,
        source_format='pyarpes-netcdf',
        source_file=path,
        metadata={'attrs': attrs, 'coords': extra},
        photon_energy=None if hv is None else float(hv),
        temperature=None if temperature is None else float(temperature),
    )


def _hdf5_dataset(path: str | Path) -> xr.Dataset:
    """The numeric root-group variables of a netCDF-4 file as an xarray Dataset."""
    variables, coordinates = {}, set()
    with h5py.File(path, 'r') as handle:
        for name, item in handle.items():
            if not isinstance(item, h5py.Dataset) or item.dtype.kind not in 'iuf':
                continue
            if bytes(item.attrs.get('NAME', b'')).startswith(_NO_VARIABLE):
                continue
            if 'DIMENSION_LIST' in item.attrs:
                dims = tuple(handle[refs[0]].name.rsplit('/', 1)[-1] for refs in item.attrs['DIMENSION_LIST'])
            elif item.attrs.get('CLASS') == b'DIMENSION_SCALE':
                dims = (name,)
            elif item.ndim == 0:
                dims = ()
            else:
                raise ArpesFormatError(f'variable {name!r} has no netCDF dimensions')
            attrs = {key: _attr(value) for key, value in item.attrs.items() if key not in _INTERNAL}
            coordinates.update(str(attrs.pop('coordinates', '')).split())
            variables[name] = xr.Variable(dims, item[()], attrs)
    coordinates |= {dim for var in variables.values() for dim in var.dims}
    return xr.Dataset(
        {name: var for name, var in variables.items() if name not in coordinates},
        coords={name: var for name, var in variables.items() if name in coordinates},
    )


def _attr(value):
    if isinstance(value, bytes | np.bytes_):
        return value.decode('utf-8', 'replace')
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.ravel()[0].item()
    return value
