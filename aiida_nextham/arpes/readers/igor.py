"""Igor Pro binary waves (``.ibw``) and packed experiments (``.pxt``), through ``igor2``.

Scienta SES, ALS MERLIN (BL4.0.3) and DA30 waves: dimension names come from the dimension labels or
units (``Kinetic Energy [eV]``, ``Y-Scale [deg]``, ``Sample X``...); unlabelled dimensions are energy,
slit angle, perpendicular angle in that order, and length-1 dimensions (one channel) are dropped. The
wave note (``key=value`` lines) is the metadata; ``Energy Scale=Binding`` waves are converted to
E − E_F (see :func:`.common.energy_from_scale`).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import xarray as xr
from igor2 import binarywave, packed
from igor2.record.wave import WaveRecord

from ..data import ArpesFormatError, make_intensity
from .common import angle_dims, axis_dim, energy_from_scale, first_positive, parse_key_values

__all__ = ['from_wave', 'read_ibw', 'read_pxt']

_UNLABELLED = ('eV', 'phi', 'beta')
# version, checksum, then the byte counts of the wave record, formula, note, data units, 4 dimension
# units, 4 dimension labels, string indices and two option blocks (Igor technical note PTN003)
_BIN_HEADER5 = 'hh15i'
PHOTON_ENERGY_KEYS = ('hv', 'BL Energy', 'Excitation Energy', 'Photon Energy')
#: MERLIN's sample sensor and the ERLab DA30 sample stage.
TEMPERATURE_KEYS = ('Temperature Sensor B', 'TB', 'sample_temp')
WORK_FUNCTION_KEYS = ('WorkFunction', 'Eff. Workfunction')


def read_ibw(path: str | Path) -> xr.DataArray:
    """Read one Igor binary wave."""
    _check_ibw_size(Path(path))
    try:
        wave = binarywave.load(str(path))['wave']
    except (TypeError, ValueError, struct.error) as exc:
        raise ArpesFormatError(f'corrupt or truncated Igor binary wave ({exc})') from None
    return from_wave(wave, 'ibw', path)


def _check_ibw_size(path: Path) -> None:
    """Refuse a truncated version-5 wave before igor2 logs its whole data buffer as an error."""
    size = struct.calcsize(f'<{_BIN_HEADER5}')
    with open(path, 'rb') as stream:
        head = stream.read(size)
    if len(head) < size:
        return
    for order in '<>':
        version, _, *blocks = struct.unpack(f'{order}{_BIN_HEADER5}', head)
        if version == 5 and path.stat().st_size < size + sum(blocks):
            raise ArpesFormatError(
                f'the wave needs {size + sum(blocks)} bytes, the file has {path.stat().st_size}: truncated'
            )


def read_pxt(path: str | Path) -> xr.DataArray:
    """Read the largest wave of an Igor packed experiment (SES and MERLIN files hold one)."""
    error = None
    for order in ('<', '>'):
        try:
            records, _ = packed.load(str(path), initial_byte_order=order)
            break
        except ValueError as exc:  # igor2 asks to retry with the other byte order
            error = exc
    else:
        raise ArpesFormatError(
            f'not a complete Igor packed experiment, truncated or of another type ({error})'
        )
    waves = [record.wave['wave'] for record in records if isinstance(record, WaveRecord)]
    if not waves:
        raise ArpesFormatError('the packed experiment holds no wave')
    return from_wave(max(waves, key=lambda wave: wave['wData'].size), 'pxt', path)


def from_wave(wave: dict, source_format: str, path: str | Path) -> xr.DataArray:
    """An ``intensity`` DataArray from an igor2 wave dictionary."""
    header = wave['wave_header']
    values = np.asarray(wave['wData'])
    if 'sfA' in header:
        step, start = header['sfA'][: values.ndim], header['sfB'][: values.ndim]
    else:  # version 2/3 waves are 1-D
        step, start = [header['hsA']], [header['hsB']]
    note = parse_key_values(_text(wave.get('note', b'')))
    labels = [_text(label[0]) if len(label) else '' for label in wave.get('labels', [])]
    texts = [
        labels[i] if i < len(labels) and labels[i] else unit
        for i, unit in enumerate(_units(wave, values.ndim))
    ]
    names = angle_dims(axis_dim(text) if text else None for text in texts)
    free = [name for name in _UNLABELLED if name not in names]
    coords, dims, keep = {}, [], []
    for i, name in enumerate(names):
        if values.shape[i] == 1:
            continue
        name = name or (free.pop(0) if free else None)
        if name is None:
            raise ArpesFormatError(f'cannot name dimension {i} of the wave (label {texts[i]!r})')
        coords[name] = start[i] + step[i] * np.arange(values.shape[i])
        dims.append(name)
        keep.append(i)
    values = values.reshape([values.shape[i] for i in keep])
    hv = first_positive(note, PHOTON_ENERGY_KEYS)
    energy_axis = None
    if 'eV' in coords:
        text = texts[names.index('eV')].lower() if 'eV' in names else ''
        kind = next(
            (k for k in ('kinetic', 'binding') if k in text), str(note.get('Energy Scale', 'Kinetic'))
        )
        energy_axis = 'binding' if kind.lower() == 'binding' else 'kinetic'
        coords['eV'] = energy_from_scale(coords['eV'], energy_axis, hv)
    return make_intensity(
        values,
        coords,
        tuple(dims),
        energy_axis=energy_axis,
        source_format=source_format,
        source_file=path,
        metadata=note,
        photon_energy=hv,
        temperature=first_positive(note, TEMPERATURE_KEYS),
        work_function=first_positive(note, WORK_FUNCTION_KEYS),
    )


def _units(wave: dict, ndim: int) -> list[str]:
    """Per-dimension unit strings: the extended units if present, else the 3-character ones."""
    sizes = wave.get('bin_header', {}).get('dimEUnitsSize')
    extended = wave.get('dimension_units', b'')
    if sizes is not None and sum(sizes):
        text = _text(extended) if isinstance(extended, bytes) else ''
        bounds = np.cumsum([0, *sizes])
        return [text[bounds[i] : bounds[i + 1]] for i in range(ndim)]
    short = wave['wave_header'].get('dimUnits')
    if short is None:
        return [''] * ndim
    return [_text(b''.join(np.atleast_1d(short[i]))) for i in range(ndim)]


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode('latin-1')
