"""Helpers shared by the readers: header parsing, axis names and energy conventions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..data import ArpesFormatError

__all__ = [
    'angle_dims',
    'axis_dim',
    'energy_from_scale',
    'first_positive',
    'parse_key_values',
    'to_number',
]

_LINE = re.compile(r'\r\n|\r|\n')


def to_number(text: str) -> int | float | str:
    """``text`` as an int or float when it is one, else the stripped string."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_key_values(text: str, separator: str = '=') -> dict[str, int | float | str]:
    """``key<separator>value`` lines (Scienta SES notes and .ini files); section headers are skipped."""
    out = {}
    for line in _LINE.split(text):
        key, sep, value = line.partition(separator)
        if sep and key.strip() and not key.lstrip().startswith('['):
            out[key.strip()] = to_number(value)
    return out


def axis_dim(label: str) -> str | None:
    """The :data:`..data.DIMS` name an axis label or unit string stands for (None if unknown).

    Angles are returned as ``'phi'`` except those that name the direction perpendicular to the slit
    (``ThetaY``, deflector, ``beta``); :func:`angle_dims` resolves several angles.
    """
    text = label.lower()
    if 'non-energy' in text:
        return 'phi'
    if 'photon' in text or text.strip() == 'hv':
        return 'hv'
    if 'energy' in text or text.strip() in ('ev', '[ev]'):
        return 'eV'
    if 'temperature' in text:
        return 'temperature'
    for axis in ('x', 'y', 'z'):
        if text.startswith(f'sample {axis}') or text.strip() == axis:
            return axis
    if 'thetay' in text or 'deflect' in text or 'beta' in text:
        return 'beta'
    if any(word in text for word in ('deg', 'angle', 'thetax', 'scienta')):
        return 'phi'
    if 'pixel' in text:
        return 'pixel'
    if 'step' in text:
        return 'step'
    return None


def angle_dims(names: Iterable[str | None]) -> list[str | None]:
    """Second and later ``'phi'`` become ``'beta'`` (a slit angle plus a perpendicular one)."""
    out: list[str | None] = []
    for name in names:
        out.append('beta' if name == 'phi' and 'phi' in out else name)
    duplicates = {name for name in out if name is not None and out.count(name) > 1}
    if duplicates:
        raise ArpesFormatError(f'several axes map to {sorted(duplicates)}')
    return out


def energy_from_scale(values: np.ndarray, kind: str, photon_energy: float | None) -> np.ndarray:
    """Energies of a file axis on this package's scale (kinetic, or E − E_F for binding).

    A ``'binding'`` axis holds either binding energies E_B = E_F − E (positive below E_F) or, as
    MERLIN live waves do, hν − E_B. The one whose mid-point is nearer to the values is taken: E − E_F
    is −E_B or values − hν.
    """
    if kind == 'kinetic':
        return values
    mid = 0.5 * (values.min() + values.max())
    if photon_energy is not None and abs(mid - photon_energy) < abs(mid):
        return values - photon_energy
    return -values


def first_positive(meta: Mapping, keys: Iterable[str], scale: float = 1.0) -> float | None:
    """The first of ``keys`` in ``meta`` holding a positive finite number, times ``scale``."""
    for key in keys:
        value = meta.get(key)
        if isinstance(value, int | float | np.number) and np.isfinite(value) and value > 0:
            return float(value) * scale
    return None
