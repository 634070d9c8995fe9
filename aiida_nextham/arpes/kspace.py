"""Angle → momentum for ARPES data (see :mod:`.data` for the dimension names and units).

Free-electron final states: with k₀ = K·√E_kin (K = √(2mₑ)/ħ ≈ 0.5123 Å⁻¹ eV^-1/2), the analyser
slit angle φ (``phi``) and the angle β perpendicular to the slit (``beta``: a sample rotation about
the slit direction, i.e. tilt, or polar for a vertical slit)::

    kx = k₀ sin φ,   ky = k₀ cos φ sin β,   kz = K √(E_kin cos²φ cos²β + V₀)

with V₀ the inner potential. For a cut (no ``beta``) β = 0, so kx = k₀ sin φ. Photon-energy scans
(an ``hv`` dimension) need ``eV`` as binding energy, so that E_kin = hν − W + (E − E_F) varies with hν.
Deflector maps (DA30 style, both angles deflected) use another geometry and are not converted here.
Angle offsets (normal emission) are applied by the caller beforehand, e.g.
``da.assign_coords(phi=da.phi - phi0)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from scipy import constants

from .data import DIMS, validate

__all__ = ['K_FACTOR', 'exact_k', 'k_parallel', 'k_perpendicular', 'kinetic_energy', 'to_kspace']

#: √(2 mₑ · 1 eV) / ħ in Å⁻¹ (≈ 0.5123).
K_FACTOR = float(np.sqrt(2 * constants.m_e * constants.e) / constants.hbar * 1e-10)
_K_DIM = {'phi': 'kx', 'beta': 'ky', 'hv': 'kz'}


def k_parallel(e_kin, angle):
    """k∥ = K·√E_kin·sin(angle) in Å⁻¹; ``e_kin`` in eV, ``angle`` in degrees (arrays broadcast)."""
    return K_FACTOR * np.sqrt(e_kin) * np.sin(np.deg2rad(angle))


def k_perpendicular(e_kin, inner_potential: float, phi=0.0, beta=0.0):
    """kz = K·√(E_kin cos²φ cos²β + V₀) in Å⁻¹; energies in eV, angles in degrees (arrays broadcast)."""
    cos2 = (np.cos(np.deg2rad(phi)) * np.cos(np.deg2rad(beta))) ** 2
    return K_FACTOR * np.sqrt(e_kin * cos2 + inner_potential)


def kinetic_energy(da: xr.DataArray, work_function: float | None = None) -> xr.DataArray:
    """E_kin (eV) at every energy (and photon energy) of ``da``: dims ``eV`` and, if scanned, ``hv``.

    Binding data need the photon energy (attr ``photon_energy`` or an ``hv`` coordinate) and the work
    function (``work_function`` or the attr).
    """
    if 'eV' not in da.coords:
        raise ValueError('the data has no eV coordinate: the kinetic energy is unknown')
    energy = da['eV'].reset_coords(drop=True)
    if da.attrs.get('energy_axis') == 'kinetic':
        if 'hv' in da.dims:
            raise ValueError('a photon-energy scan needs eV as binding energy: convert with data.to_binding')
        return energy
    if da.attrs.get('energy_axis') != 'binding':
        raise ValueError(
            f"attrs['energy_axis'] must be 'binding' or 'kinetic', not {da.attrs.get('energy_axis')!r}"
        )
    work = da.attrs.get('work_function') if work_function is None else work_function
    if work is None:
        raise ValueError('binding-energy data need the work function (argument or attrs["work_function"])')
    if 'photon_energy' in da.attrs:
        hv = da.attrs['photon_energy']
    elif 'hv' in da.coords:
        hv = da['hv'].reset_coords(drop=True)
    else:
        raise ValueError(
            'binding-energy data need the photon energy (attrs["photon_energy"] or an hv coordinate)'
        )
    return energy + hv - float(work)


def exact_k(
    da: xr.DataArray, *, inner_potential: float | None = None, work_function: float | None = None
) -> xr.Dataset:
    """Momentum of every data point, without interpolation (for fitting on the measured grid).

    :returns: a Dataset with ``kx`` (from ``phi``), ``ky`` (if ``beta`` is a coordinate) and ``kz``
        (if ``inner_potential`` is given), in Å⁻¹; each has the dims among ``phi``, ``beta``,
        ``eV`` and ``hv`` it depends on and broadcasts against ``da``.
    """
    if 'phi' not in da.coords:
        raise ValueError('angle → momentum needs a phi (analyser slit angle) coordinate')
    e_kin = kinetic_energy(da, work_function)
    phi = da['phi'].reset_coords(drop=True)
    beta = da['beta'].reset_coords(drop=True) if 'beta' in da.coords else 0.0
    out = {'kx': k_parallel(e_kin, phi)}
    if 'beta' in da.coords:
        out['ky'] = K_FACTOR * np.sqrt(e_kin) * np.cos(np.deg2rad(phi)) * np.sin(np.deg2rad(beta))
    if inner_potential is not None:
        out['kz'] = k_perpendicular(e_kin, inner_potential, phi, beta)
    for value in out.values():
        value.attrs['units'] = DIMS['kx']
    return xr.Dataset(out)


def to_kspace(
    da: xr.DataArray,
    *,
    inner_potential: float | None = None,
    work_function: float | None = None,
    shape: Mapping[str, int] | None = None,
) -> xr.DataArray:
    """Interpolate ``da`` onto a regular momentum grid: ``phi`` → ``kx``, ``beta`` → ``ky``, ``hv`` → ``kz``.

    The grid spans the measured momenta (:func:`exact_k`); by default each k axis has as many points
    as the angle or photon-energy axis it replaces (``shape={'kx': 400}`` overrides). Points outside
    the measured region are NaN. ``eV`` and the other dimensions are kept. A photon-energy scan needs
    ``inner_potential`` (eV), which is recorded in the result's attrs.
    """
    if 'phi' not in da.dims:
        raise ValueError('angle → momentum needs phi (analyser slit angle) as a dimension')
    if 'hv' in da.dims and inner_potential is None:
        raise ValueError('a photon-energy scan needs the inner potential V0 for kz')
    scan = [dim for dim in ('phi', 'beta', 'hv') if dim in da.dims]
    points = exact_k(
        da, inner_potential=inner_potential if 'hv' in da.dims else None, work_function=work_function
    )
    shape = dict(shape or {})
    grid = {}
    for dim in scan:
        name = _K_DIM[dim]
        k = points[name].values
        grid[name] = xr.DataArray(
            np.linspace(np.nanmin(k), np.nanmax(k), shape.get(name, da.sizes[dim])),
            dims=name,
            attrs={'units': DIMS[name]},
        )
        grid[name] = grid[name].assign_coords({name: grid[name]})
    out = da.sortby(scan).interp(_inverse(da, grid, inner_potential, work_function))
    out = out.drop_vars([name for name in scan if name in out.coords]).assign_attrs(da.attrs)
    if 'hv' in da.dims:
        out.attrs['inner_potential'] = float(inner_potential)
    if work_function is not None and da.attrs.get('energy_axis') == 'binding':
        out.attrs['work_function'] = float(work_function)
    validate(out)
    return out


def _inverse(
    da: xr.DataArray,
    grid: dict[str, xr.DataArray],
    inner_potential: float | None,
    work_function: float | None,
) -> dict[str, xr.DataArray]:
    """Angles (and photon energies) at which each point of the k grid was measured."""
    kx = grid['kx']
    ky = grid.get('ky', 0.0)
    if 'kz' in grid:
        # k₀² = kx² + ky² + kz² − K²V₀ fixes E_kin; hν = E_kin + W − (E − E_F)
        work = da.attrs.get('work_function') if work_function is None else work_function
        if da.attrs.get('energy_axis') != 'binding' or work is None:
            raise ValueError('a photon-energy scan needs binding energies and the work function')
        k0_squared = kx**2 + ky**2 + grid['kz'] ** 2 - K_FACTOR**2 * inner_potential
        k0 = np.sqrt(k0_squared.where(k0_squared > 0))
        angles = {'hv': (k0 / K_FACTOR) ** 2 + float(work) - da['eV'].reset_coords(drop=True)}
    else:
        k0 = K_FACTOR * np.sqrt(kinetic_energy(da, work_function))
        angles = {}
    sin_phi = kx / k0
    angles['phi'] = np.rad2deg(np.arcsin(sin_phi.where(np.abs(sin_phi) <= 1)))
    if 'ky' in grid:
        sin_beta = ky / (k0 * np.cos(np.deg2rad(angles['phi'])))
        angles['beta'] = np.rad2deg(np.arcsin(sin_beta.where(np.abs(sin_beta) <= 1)))
    return angles
