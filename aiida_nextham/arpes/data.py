"""The in-memory form of ARPES data: an ``xarray.DataArray`` named ``intensity``.

Dimensions (each with a 1-D, finite, strictly monotonic coordinate) come from :data:`DIMS`:
``eV`` (energy), ``kx``/``ky``/``kz`` (Å⁻¹), the angles ``phi`` (along the analyser slit), ``theta``
(manipulator polar) and ``beta`` (perpendicular to the slit: tilt or deflector), all in degrees,
``hv`` (photon energy, eV), sample position ``x``/``y``/``z`` (mm), ``temperature`` (K), ``pixel``
(uncalibrated detector channel) and ``step`` (index of a scan without a physical axis).

``eV`` is declared by ``attrs['energy_axis']``: ``'binding'`` means E − E_F (negative below the
Fermi level), ``'kinetic'`` the photoelectron kinetic energy. Metadata attributes have fixed names
and units (:data:`METADATA_UNITS`) and are absent when unknown; ``source_format`` and ``source_file``
name where the data came from and ``metadata`` holds the file's own header as a JSON string. Attributes
are netCDF-safe (strings, numbers or 1-D numeric arrays; never None, booleans or dicts).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = [
    'DIMS',
    'ENERGY_AXES',
    'METADATA_UNITS',
    'ArpesFormatError',
    'make_intensity',
    'read_netcdf',
    'to_binding',
    'to_kinetic',
    'to_netcdf',
    'validate',
]

DIMS = {
    'eV': 'eV',
    'kx': '1/Angstrom',
    'ky': '1/Angstrom',
    'kz': '1/Angstrom',
    'phi': 'deg',
    'theta': 'deg',
    'beta': 'deg',
    'hv': 'eV',
    'x': 'mm',
    'y': 'mm',
    'z': 'mm',
    'temperature': 'K',
    'pixel': '',
    'step': '',
}
ANGLES = ('phi', 'theta', 'beta')
ENERGY_AXES = ('binding', 'kinetic')
METADATA_UNITS = {
    'photon_energy': 'eV',
    'temperature': 'K',
    'energy_resolution': 'eV',
    'angle_resolution': 'deg',
    'work_function': 'eV',
    'inner_potential': 'eV',
}
_POSITIVE = ('photon_energy', 'energy_resolution', 'angle_resolution', 'work_function')
_NETCDF3_INTS = (np.int8, np.int16, np.int32)


class ArpesFormatError(ValueError):
    """A file is not ARPES data in a supported format, or is truncated or inconsistent."""


def make_intensity(
    values: np.ndarray,
    coords: Mapping[str, np.ndarray | float | tuple[tuple[str, ...], np.ndarray]],
    dims: tuple[str, ...],
    *,
    energy_axis: str | None,
    source_format: str,
    source_file: str | Path,
    metadata: Mapping | None = None,
    **attrs: float | None,
) -> xr.DataArray:
    """Build and validate an ``intensity`` DataArray; metadata attrs that are None are left out.

    :param coords: dimension coordinates, scalar coordinates and ``(dims, values)`` for other
        coordinates (names from :data:`DIMS`).
    :param metadata: the file's own header, stored as the JSON string attr ``metadata``.
    :param attrs: values for :data:`METADATA_UNITS` names, in those units.
    """
    unknown = set(attrs) - set(METADATA_UNITS)
    if unknown:
        raise TypeError(f'unknown metadata attributes {sorted(unknown)}; known: {sorted(METADATA_UNITS)}')
    out = {name: float(value) for name, value in attrs.items() if value is not None}
    if energy_axis is not None:
        out['energy_axis'] = energy_axis
    out['source_format'] = source_format
    out['source_file'] = Path(source_file).name
    if metadata:
        out['metadata'] = json.dumps(_plain(metadata), sort_keys=True, allow_nan=False)
    values = np.asarray(values)
    values = values.astype(values.dtype.newbyteorder('='), copy=False)
    da = xr.DataArray(values, dims=dims, name='intensity', attrs=out)
    da = da.assign_coords({name: _coordinate(value) for name, value in coords.items()})
    for name in da.coords:
        if name in DIMS:
            da[name].attrs['units'] = DIMS[name]
    validate(da)
    return da


def validate(da: xr.DataArray) -> None:
    """Raise ValueError naming the first thing that makes ``da`` invalid ARPES data."""
    if not isinstance(da, xr.DataArray):
        raise ValueError(f'ARPES data must be an xarray.DataArray, not {type(da).__name__}')
    if da.name != 'intensity':
        raise ValueError(f"the DataArray must be named 'intensity', not {da.name!r}")
    if da.ndim == 0 or da.size == 0:
        raise ValueError(f'the intensity is empty (shape {da.shape})')
    if not (np.issubdtype(da.dtype, np.integer) or np.issubdtype(da.dtype, np.floating)):
        raise ValueError(f'the intensity must be integer or real, not {da.dtype}')
    if np.issubdtype(da.dtype, np.floating) and np.isnan(da.values).all():
        raise ValueError('the intensity is all NaN')
    for dim in da.dims:
        if dim not in DIMS:
            raise ValueError(f'unknown dimension {dim!r}; dimensions must be among {sorted(DIMS)}')
        if dim not in da.coords:
            raise ValueError(f'dimension {dim!r} has no coordinate')
        _check_axis(dim, da[dim].values)
    for name, coord in da.coords.items():
        if not np.issubdtype(coord.dtype, np.number):
            raise ValueError(f'coordinate {name!r} must be numeric, not {coord.dtype}')
        if name in DIMS:
            _check_values(name, coord.values)
    _check_attrs(da)


def to_netcdf(da: xr.DataArray, path: str | Path) -> Path:
    """Validate ``da`` and write it atomically as a netCDF-3 file (xarray's scipy engine).

    Integer intensities that netCDF-3 cannot hold (int64, unsigned) are stored as int32 when they
    fit, else as float64.
    """
    validate(da)
    path = Path(path)
    if np.issubdtype(da.dtype, np.integer) and da.dtype.type not in _NETCDF3_INTS:
        info = np.iinfo(np.int32)
        da = da.astype(np.int32 if info.min <= int(da.min()) and int(da.max()) <= info.max else np.float64)
    tmp = path.with_name(f'.{path.name}.tmp')
    try:
        da.to_netcdf(tmp, engine='scipy')
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_netcdf(path: str | Path) -> xr.DataArray:
    """Read a file written by :func:`to_netcdf` (validated, loaded into memory)."""
    with xr.open_dataarray(path, engine='scipy') as da:
        da = da.load()
    validate(da)
    return da


def to_binding(
    da: xr.DataArray, photon_energy: float | None = None, work_function: float | None = None
) -> xr.DataArray:
    """Return ``da`` with ``eV`` as E − E_F, where E − E_F = E_kin − (hν − W).

    hν is ``photon_energy``, else the ``photon_energy`` attr, else the ``hv`` coordinate; W is
    ``work_function`` or the attr. With an ``hv`` dimension the shift differs per photon energy and
    each slice is interpolated onto one common energy grid (NaN where a slice has no data).
    """
    if da.attrs.get('energy_axis') == 'binding':
        return da
    _require_energy(da, 'kinetic')
    offset = _photon_energy(da, photon_energy) - _work_function(da, work_function)
    return _shift_energy(da, -offset, 'binding', work_function)


def to_kinetic(
    da: xr.DataArray, photon_energy: float | None = None, work_function: float | None = None
) -> xr.DataArray:
    """Return ``da`` with ``eV`` as kinetic energy, E_kin = hν − W + (E − E_F); see :func:`to_binding`."""
    if da.attrs.get('energy_axis') == 'kinetic':
        return da
    _require_energy(da, 'binding')
    offset = _photon_energy(da, photon_energy) - _work_function(da, work_function)
    return _shift_energy(da, offset, 'kinetic', work_function)


def _shift_energy(
    da: xr.DataArray, offset: xr.DataArray, energy_axis: str, work_function: float | None
) -> xr.DataArray:
    attrs = dict(da.attrs, energy_axis=energy_axis)
    if work_function is not None:
        attrs['work_function'] = float(work_function)
    if offset.ndim == 0:
        out = da.assign_coords(eV=da['eV'] + float(offset))
    else:
        energy = da['eV'].values
        step = float(np.median(np.abs(np.diff(energy)))) if energy.size > 1 else 1.0
        lo = float((energy.min() + offset).min())
        hi = float((energy.max() + offset).max())
        grid = lo + step * np.arange(int(round((hi - lo) / step)) + 1)
        source = xr.DataArray(grid, dims='_eV', coords={'_eV': grid}) - offset
        out = da.sortby('eV').interp(eV=source).drop_vars('eV').rename(_eV='eV')
    out['eV'].attrs['units'] = 'eV'
    out = out.assign_attrs(attrs)
    validate(out)
    return out


def _coordinate(value) -> np.ndarray | tuple[tuple[str, ...], np.ndarray]:
    if isinstance(value, tuple):
        return value[0], np.asarray(value[1], dtype=float)
    return np.asarray(value, dtype=float)


def _require_energy(da: xr.DataArray, expected: str) -> None:
    if 'eV' not in da.coords:
        raise ValueError('the data has no eV coordinate')
    if da.attrs.get('energy_axis') != expected:
        raise ValueError(f'energy_axis must be one of {ENERGY_AXES}, not {da.attrs.get("energy_axis")!r}')


def _photon_energy(da: xr.DataArray, value: float | None) -> xr.DataArray:
    if value is None:
        value = da.attrs.get('photon_energy')
    if value is not None:
        return xr.DataArray(float(value))
    if 'hv' in da.coords:
        return da['hv'].reset_coords(drop=True) if 'hv' in da.dims else xr.DataArray(float(da['hv']))
    raise ValueError('the photon energy is unknown: pass photon_energy or set attrs["photon_energy"]')


def _work_function(da: xr.DataArray, value: float | None) -> float:
    value = da.attrs.get('work_function') if value is None else value
    if value is None:
        raise ValueError('the work function is unknown: pass work_function or set attrs["work_function"]')
    return float(value)


def _check_axis(dim: str, values: np.ndarray) -> None:
    if values.ndim != 1:
        raise ValueError(f'coordinate {dim!r} must be 1-D, not of shape {values.shape}')
    if values.size > 1:
        steps = np.diff(values.astype(float))
        if not ((steps > 0).all() or (steps < 0).all()):
            raise ValueError(f'coordinate {dim!r} is not strictly monotonic')


def _check_values(name: str, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():
        raise ValueError(f'coordinate {name!r} has non-finite values')
    if name in ANGLES and (np.abs(values) > 180).any():
        raise ValueError(f'angle {name!r} outside [-180, 180] deg: is it in degrees?')
    if name in ('hv', 'temperature') and (values < 0).any():
        raise ValueError(f'coordinate {name!r} has negative values')


def _check_attrs(da: xr.DataArray) -> None:
    for key, value in da.attrs.items():
        if not _netcdf_safe(value):
            raise ValueError(
                f'attribute {key!r} = {value!r} is not netCDF-safe: use a string, a number or a 1-D '
                'numeric array (nested metadata goes into the JSON string attr "metadata")'
            )
    for key in METADATA_UNITS:
        if key in da.attrs:
            value = da.attrs[key]
            if not isinstance(value, numbers.Real) or not np.isfinite(value):
                raise ValueError(f'attribute {key!r} must be a finite number in {METADATA_UNITS[key]}')
            if value < 0 or (key in _POSITIVE and value == 0):
                raise ValueError(f'attribute {key!r} = {value} {METADATA_UNITS[key]} is not physical')
    axis = da.attrs.get('energy_axis')
    if 'eV' in da.coords:
        if axis not in ENERGY_AXES:
            raise ValueError(f"attrs['energy_axis'] must be one of {ENERGY_AXES}, not {axis!r}")
        energy = da['eV'].values
        if axis == 'kinetic' and (energy <= 0).any():
            raise ValueError('kinetic energies must be positive: is eV a binding energy (E - E_F)?')
        hv = da.attrs.get('photon_energy')
        if axis == 'binding' and hv is not None and energy.max() > hv:
            raise ValueError(f'binding energies (E - E_F) above hv = {hv} eV: is eV a kinetic energy?')
    for key in ('source_format', 'source_file', 'metadata'):
        if key in da.attrs and not isinstance(da.attrs[key], str):
            raise ValueError(f'attribute {key!r} must be a string')


def _netcdf_safe(value) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Number):
        return not isinstance(value, complex | np.complexfloating)
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and (np.issubdtype(value.dtype, np.integer) or value.dtype.kind == 'f')
    return False


def _plain(value):
    """``value`` with numpy types, bytes and tuples made JSON types; NaN and infinities become None."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
