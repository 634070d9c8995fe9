"""Scienta SES ``.zip`` files (DA30 deflector maps and cuts).

The archive holds, per region ``NAME``: ``Spectrum_NAME.ini`` (shape, axis offsets, steps and labels),
``Spectrum_NAME.bin`` (little-endian float32 values, width fastest) and ``NAME.ini`` (SES metadata).
Axes: ``width`` is energy, ``height`` the slit angle (Thetax), ``depth`` the deflector angle (Thetay).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import xarray as xr

from ..data import ArpesFormatError, make_intensity
from .common import angle_dims, axis_dim, energy_from_scale, first_positive, parse_key_values
from .igor import PHOTON_ENERGY_KEYS, TEMPERATURE_KEYS

__all__ = ['read_da30_zip']

_AXES = ('depth', 'height', 'width')


def read_da30_zip(path: str | Path) -> xr.DataArray:
    """Read the one region of a SES zip file."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        regions = [
            name[len('Spectrum_') : -len('.ini')]
            for name in names
            if name.startswith('Spectrum_') and name.endswith('.ini')
        ]
        if len(regions) != 1:
            raise ArpesFormatError(
                f'expected one Spectrum_*.ini region in the zip, found {regions or "none"}'
            )
        region = regions[0]
        spectrum = parse_key_values(archive.read(f'Spectrum_{region}.ini').decode('latin-1'))
        meta = (
            parse_key_values(archive.read(f'{region}.ini').decode('latin-1'))
            if f'{region}.ini' in names
            else {}
        )
        raw = archive.read(f'Spectrum_{region}.bin')
    shape = tuple(int(spectrum.get(axis, 1)) for axis in _AXES)
    width = int(spectrum.get('byteperpoint', 4))
    if width not in (4, 8) or len(raw) != width * int(np.prod(shape)):
        raise ArpesFormatError(
            f'Spectrum_{region}.bin has {len(raw)} bytes, not {shape} values of {width} bytes'
        )
    values = np.frombuffer(raw, dtype=f'<f{width}').reshape(shape)
    kept = [axis for axis, n in zip(_AXES, shape, strict=True) if n > 1 or axis != 'depth']
    labels = [str(spectrum.get(f'{axis}label', '')) for axis in kept]
    dims = angle_dims(axis_dim(label) for label in labels)
    if None in dims:
        raise ArpesFormatError(f'cannot tell what the axes {labels} are')
    coords = {
        dim: float(spectrum[f'{axis}offset']) + float(spectrum[f'{axis}delta']) * np.arange(spectrum[axis])
        for dim, axis in zip(dims, kept, strict=True)
    }
    hv = first_positive(meta, PHOTON_ENERGY_KEYS)
    energy_axis = 'binding' if str(meta.get('Energy Scale', 'Kinetic')).lower() == 'binding' else 'kinetic'
    if 'eV' in coords:
        coords['eV'] = energy_from_scale(coords['eV'], energy_axis, hv)
    return make_intensity(
        values.reshape([len(coords[dim]) for dim in dims]),
        coords,
        tuple(dims),
        energy_axis=energy_axis if 'eV' in coords else None,
        source_format='da30-zip',
        source_file=path,
        metadata={'region': meta, 'spectrum': spectrum},
        photon_energy=hv,
        temperature=first_positive(meta, TEMPERATURE_KEYS),
    )
