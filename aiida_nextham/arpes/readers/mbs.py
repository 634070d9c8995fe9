"""MB Scientific A1 analyser text files (``.txt``).

``key<TAB>value`` header lines, then ``DATA:`` and one line per detector slice (the slit angle,
``XScale*``) holding one value per column (``YScale*``: energy, or the perpendicular angle of a
deflector map). Axis values run from ``Min`` to ``Max`` (``Mult`` is the rounded step). Energies
are kinetic; a map without an energy axis gets the scalar coordinate ``eV`` = ``Center K.E.`` (the
fixed-mode window centre).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..data import ArpesFormatError, make_intensity
from .common import angle_dims, axis_dim, to_number

__all__ = ['read_mbs']


def read_mbs(path: str | Path) -> xr.DataArray:
    """Read an MBS A1Soft text file."""
    text = Path(path).read_text(encoding='latin-1')
    head, marker, body = text.partition('DATA:')
    if not marker:
        raise ArpesFormatError('no DATA: line: not an MBS text file, or truncated')
    meta = {}
    for line in head.splitlines():
        key, sep, value = line.partition('\t')
        if sep:
            meta[key.strip() or 'Unknown'] = to_number(value)
    rows = [line.split() for line in body.splitlines() if line.strip()]
    if len({len(row) for row in rows}) > 1:
        raise ArpesFormatError('data lines of different lengths: the file is truncated')
    values = np.array(rows, dtype=float)
    axes = []
    for scale in ('XScale', 'YScale'):
        keys = [f'{scale}{field}' for field in ('Name', 'Min', 'Max', 'Mult')]
        if any(key not in meta for key in keys):
            raise ArpesFormatError(f'the header lacks one of {keys}')
        name, lo, hi, step = (meta[key] for key in keys)
        axes.append((str(name), float(lo), float(hi), int(round((float(hi) - float(lo)) / float(step))) + 1))
    expected = tuple(axis[3] for axis in axes)
    if values.ndim != 2 or values.shape != expected:
        raise ArpesFormatError(
            f'the data block has shape {values.shape}, the header says {expected}: truncated?'
        )
    dims = angle_dims('eV' if axis_dim(name) == 'eV' else 'phi' for name, *_ in axes)
    coords = {dim: np.linspace(lo, hi, n) for dim, (_, lo, hi, n) in zip(dims, axes, strict=True)}
    if 'eV' not in coords:
        coords['eV'] = float(meta['Center K.E.'])
    return make_intensity(
        values,
        coords,
        tuple(dims),
        energy_axis='kinetic',
        source_format='mbs',
        source_file=path,
        metadata=meta,
    )
