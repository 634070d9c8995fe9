"""Igor text files (``.itx``), as SpecsLab Prodigy and Scienta export them.

One 1-D or 2-D wave per file: ``WAVES/N=(n0,n1) 'name'``, the values between ``BEGIN`` and ``END``
(one line per index of the first dimension), ``X SetScale/I`` (first and last value) or ``/P``
(first value and step) for the axes, and Prodigy's ``X //key = value`` comment lines as metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xarray as xr

from ..data import ArpesFormatError, make_intensity
from .common import angle_dims, axis_dim, energy_from_scale, first_positive, to_number
from .igor import PHOTON_ENERGY_KEYS, WORK_FUNCTION_KEYS

__all__ = ['read_itx']

_WAVES = re.compile(r"WAVES(?P<flags>(?:/\w+(?:=\([\d,\s]*\))?)*)\s+'?(?P<name>[^']+?)'?\s*$")
_SHAPE = re.compile(r'/N=\(([\d,\s]+)\)')
_SCALE = re.compile(
    r'SetScale/(?P<kind>[IP])\s+(?P<axis>[xyzt])\s*,\s*([^,]+),\s*([^,]+),\s*"(?P<unit>[^"]*)"'
)
_COMMENT = re.compile(r'^X\s*//\s*(?P<key>[^=]+?)\s*=\s*(?P<value>.*)$')


def read_itx(path: str | Path) -> xr.DataArray:
    """Read the wave of an Igor text file."""
    lines = Path(path).read_text(encoding='latin-1').splitlines()
    if not lines or lines[0].strip() != 'IGOR':
        raise ArpesFormatError('an Igor text file starts with the line IGOR')
    meta: dict = {}
    shape = None
    rows: list[list[float]] = []
    scales: dict[str, tuple[str, float, float, str]] = {}
    in_data = False
    for line in (line.strip() for line in lines[1:]):
        if in_data:
            if line == 'END':
                in_data = False
            elif line:
                rows.append([float(value) for value in line.split()])
        elif line.startswith('WAVES'):
            if shape is not None:
                raise ArpesFormatError('the file holds several waves; only one wave per file is read')
            match = _WAVES.match(line)
            if match is None:
                raise ArpesFormatError(f'cannot parse the WAVES line {line!r}')
            size = _SHAPE.search(match['flags'])
            shape = tuple(int(n) for n in size[1].split(',')) if size else ()
            meta['wave_name'] = match['name']
        elif line == 'BEGIN':
            in_data = True
        elif (scale := _SCALE.search(line)) is not None:
            scales[scale['axis']] = (scale['kind'], float(scale[3]), float(scale[4]), scale['unit'])
        elif (comment := _COMMENT.match(line)) is not None:
            meta[comment['key']] = to_number(comment['value'])
    if shape is None or in_data:
        raise ArpesFormatError('no complete WAVES ... BEGIN ... END block: the file is truncated or empty')
    values = np.asarray(rows, dtype=float)
    if len(shape) > 2:
        raise ArpesFormatError(f'{len(shape)}-D waves are not supported (only 1-D and 2-D)')
    shape = shape or (values.shape[0],)
    if values.size != int(np.prod(shape)):
        raise ArpesFormatError(f'the wave has {values.size} values, not {shape}: the file is truncated')
    values = values.reshape(shape)
    axes = 'xy'[: len(shape)]
    if any(axis not in scales for axis in axes):
        raise ArpesFormatError(f'every axis needs an X SetScale line; found {sorted(scales)} for {shape}')
    units = [scales[axis][3] for axis in axes]
    names = angle_dims(axis_dim(unit) for unit in units)
    if None in names:
        raise ArpesFormatError(f'cannot tell what the axes {units} are')
    coords = {name: _axis(scales[axis], n) for name, axis, n in zip(names, axes, shape, strict=True)}
    hv = first_positive(meta, PHOTON_ENERGY_KEYS)
    energy_axis = None
    if 'eV' in coords:
        energy_axis = 'binding' if 'binding' in units[names.index('eV')].lower() else 'kinetic'
        coords['eV'] = energy_from_scale(coords['eV'], energy_axis, hv)
    return make_intensity(
        values,
        coords,
        tuple(names),
        energy_axis=energy_axis,
        source_format='itx',
        source_file=path,
        metadata=meta,
        photon_energy=hv,
        work_function=first_positive(meta, WORK_FUNCTION_KEYS),
    )


def _axis(scale: tuple[str, float, float, str], n: int) -> np.ndarray:
    kind, first, second, _ = scale
    return np.linspace(first, second, n) if kind == 'I' else first + second * np.arange(n)
