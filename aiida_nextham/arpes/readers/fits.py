"""ALS LabVIEW FITS files (BL7 MAESTRO, BL10 HERS, BL4 laser ARPES), through ``astropy.io.fits``.

The primary header holds the beamline and analyser settings; a binary table holds one row per scan
point with the spectrum in the column that has ``TRVALn`` (FITS order ``TDIMn``, names ``TDESCn`` such
as ``(pixel,eV)``). Axis i (1-based pixel p) is ``TRVAL + (p − TRPIX)·TDELT``. Energies are E − E_F
unless the analyser region says kinetic (``SSKE_0``/``SFKE_0``). Detector ``pixel`` axes are kept
uncalibrated. Only single-row (unscanned) files are read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from ..data import ArpesFormatError, make_intensity
from .common import angle_dims, axis_dim, first_positive

__all__ = ['read_fits']

PHOTON_ENERGY_KEYS = ('BL_E', 'MONOEV', 'MONO_E', 'SS_HV', 'SF_HV')


def read_fits(path: str | Path) -> xr.DataArray:
    """Read the spectrum of an ALS LabVIEW FITS file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with fits.open(path, memmap=False) as hdul:
            if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
                raise ArpesFormatError('no binary table after the primary header: not an ALS ARPES FITS file')
            meta = _cards(hdul[0].header)
            table = _cards(hdul[1].header)
            column = next(
                (n for n in range(1, int(table.get('TFIELDS', 0)) + 1) if f'TRVAL{n}' in table), None
            )
            if column is None:
                raise ArpesFormatError('no table column with axis scales (TRVALn): not an ARPES spectrum')
            try:
                values = np.asarray(hdul[1].data[table[f'TTYPE{column}']])
            except ValueError as exc:
                raise ArpesFormatError(f'cannot read the data table ({exc}): truncated or corrupt') from None
    truncated = [str(w.message) for w in caught if 'truncated' in str(w.message)]
    if truncated:
        raise ArpesFormatError(truncated[0])
    if values.shape[0] != 1:
        raise ArpesFormatError(f'{values.shape[0]} scan rows: scanned FITS files are not supported yet')
    values = values[0]
    names = _tuple(table.get(f'TDESC{column}', ''))
    start, step = _tuple(table[f'TRVAL{column}']), _tuple(table[f'TDELT{column}'])
    ref = _tuple(table.get(f'TRPIX{column}', '1'))
    # FITS lists axes fastest first, numpy the other way round
    names, start, step, ref = (list(reversed(item)) for item in (names, start, step, ref))
    if len(names) != values.ndim:
        raise ArpesFormatError(f'axis names {names} do not match the {values.ndim}-D spectrum')
    dims = angle_dims(axis_dim(str(name)) for name in names)
    if None in dims:
        raise ArpesFormatError(f'cannot tell what the axes {names} are')
    coords = {
        dim: float(a) + (np.arange(n) + 1 - float(p)) * float(d)
        for dim, a, d, p, n in zip(dims, start, step, ref, values.shape, strict=True)
    }
    kinetic = bool(meta.get('SSKE_0', meta.get('SFKE_0', False)))
    meta['table'] = table
    return make_intensity(
        values,
        coords,
        tuple(dims),
        energy_axis=('kinetic' if kinetic else 'binding') if 'eV' in coords else None,
        source_format='fits',
        source_file=path,
        metadata=meta,
        photon_energy=first_positive(meta, PHOTON_ENERGY_KEYS),
        energy_resolution=first_positive(meta, ('E_RESOLU',)),
    )


def _cards(header: fits.Header) -> dict:
    """Header cards whose values parse (LabVIEW writes a few non-standard ones, e.g. 'Inf')."""
    out = {}
    for card in header.cards:
        try:
            value = card.value
        except (ValueError, fits.VerifyError):
            continue
        if card.keyword and card.keyword not in ('COMMENT', 'HISTORY') and card.keyword not in out:
            out[card.keyword] = value
    return out


def _tuple(text) -> list:
    """``'(6.8E+1,-5.2)'`` → ``['6.8E+1', '-5.2']``; a bare value → a one-item list."""
    if not isinstance(text, str):
        return [text]
    return [item.strip() for item in text.strip().strip('()').split(',')]
