"""ARPES data prepared for fitting: the forward model's regular grid, intensities and the points used.

:func:`prepare_data` turns an ``intensity`` DataArray (see :mod:`.data`) into a :class:`FitData`: the
axes in the order of :class:`~.simulate.ArpesForwardModel` (``kx``, ``ky``, optionally ``kz`` or ``hv``,
``eV`` as E − E_F), every axis ascending, a missing ``kx``/``ky`` as one point (its scalar coordinate or
0), and a boolean mask of the points that enter the loss (finite values, E ≥ E_F + ``emin``, a seeded
random ``fraction``). Angle data (``phi``) are converted to momentum first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import xarray as xr

from .data import to_binding, validate
from .simulate import ArpesForwardModel, Broadening

__all__ = ['AXES', 'FitData', 'prepare_data']

#: the axes of a :class:`FitData`, in the forward model's order (``kz`` and ``hv`` exclusive)
AXES = ('kx', 'ky', 'kz', 'hv', 'eV')


@dataclass
class FitData:
    """Intensities on a regular grid, ready for the forward model.

    :param axes: 1-D ascending coordinates, keys a subsequence of :data:`AXES` (``kx``, ``ky``, ``eV``
        always; ``kz`` or ``hv`` when scanned), Å⁻¹ and eV.
    :param intensity: (nx, ny, [n3,] nE) float64, zero where not finite.
    :param mask: same shape, True where the point enters the loss.
    :param counts: the values are photoelectron counts (Poisson statistics) rather than arbitrary units.
    :param broadening: the instrument (temperature, resolutions) from the metadata; linewidth, amplitude
        and background at their defaults (they are fitted).
    :param work_function, inner_potential: eV, for photon-energy scans.
    :param attrs: the DataArray's attributes.
    """

    axes: dict[str, np.ndarray]
    intensity: np.ndarray
    mask: np.ndarray
    counts: bool
    broadening: Broadening
    work_function: float = 4.5
    inner_potential: float = 10.0
    attrs: dict | None = None

    @property
    def n_points(self) -> int:
        return int(self.mask.sum())

    @property
    def third(self) -> str | None:
        """``'kz'``, ``'hv'`` or None."""
        return next((name for name in ('kz', 'hv') if name in self.axes), None)

    def points(self) -> np.ndarray:
        """Coordinates of the masked points, (n_points, n_axes) in the order of ``axes``."""
        mesh = np.meshgrid(*self.axes.values(), indexing='ij')
        return np.stack([m[self.mask] for m in mesh], -1)

    def values(self) -> np.ndarray:
        """Intensities of the masked points, (n_points,)."""
        return self.intensity[self.mask]

    def forward_model(self, model, broadening: Broadening | None = None) -> ArpesForwardModel:
        """An :class:`ArpesForwardModel` of ``model`` with this instrument (or ``broadening``)."""
        return ArpesForwardModel(model, broadening or self.broadening)

    def evaluate(self, forward: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Intensity on this grid, shape of ``intensity`` (differentiable): ``forward`` is an
        :class:`ArpesForwardModel` or a callable with its signature."""
        axes = {name: torch.tensor(v, dtype=torch.float64) for name, v in self.axes.items()}
        extra = {name: axes[name] for name in ('kz', 'hv') if name in axes}
        return forward(
            axes['kx'],
            axes['ky'],
            axes['eV'],
            **extra,
            work_function=self.work_function,
            inner_potential=self.inner_potential,
        )

    def fermi_step(self) -> np.ndarray:
        """The Fermi–Dirac step at the temperature, broadened by the energy resolution, at the energies
        (nE,): the shape of a constant background (it does not depend on k or on the bands)."""
        from .tightbinding import get_model

        broadening = replace(self.broadening, amplitude=0.0, background=1.0, background_slope=0.0)
        zero = torch.zeros(1, dtype=torch.float64)
        with torch.no_grad():
            step = ArpesForwardModel(get_model('single-band'), broadening)(
                zero, zero, torch.tensor(self.axes['eV'])
            )
        return step[0, 0].numpy()

    def subset(self, fraction: float = 1.0, emin: float | None = None, seed: int = 0) -> FitData:
        """The same data with only E ≥ E_F + ``emin`` (the energy axis is cut, which makes the forward
        model cheaper) and a random ``fraction`` of the remaining points in the mask (seeded)."""
        if not 0 < fraction <= 1:
            raise ValueError(f'fraction must be in (0, 1], got {fraction}')
        out = self
        if emin is not None:
            keep = self.axes['eV'] >= emin
            if keep.sum() < 2:
                top = self.axes['eV'].max()
                raise ValueError(
                    f'emin = {emin} eV leaves fewer than two energies (the data end at {top:.3f} eV)'
                )
            out = replace(
                self,
                axes={**self.axes, 'eV': self.axes['eV'][keep]},
                intensity=self.intensity[..., keep],
                mask=self.mask[..., keep],
            )
        if fraction < 1:
            index = np.flatnonzero(out.mask)
            chosen = np.random.default_rng(seed).choice(index, max(1, round(fraction * len(index))), False)
            mask = np.zeros(out.mask.size, dtype=bool)
            mask[chosen] = True
            out = replace(out, mask=mask.reshape(out.mask.shape))
        if out.n_points == 0:
            raise ValueError('no data points left to fit')
        return out


def prepare_data(
    da: xr.DataArray,
    *,
    fraction: float = 1.0,
    emin: float | None = None,
    seed: int = 0,
    work_function: float | None = None,
) -> FitData:
    """Validate ``da`` and bring it onto the forward model's grid (see the module docstring).

    :param work_function: eV, for kinetic-energy or angle data without ``attrs['work_function']``
        (E − E_F = E_kin − hν + W).

    :raises ValueError: data that cannot be fitted: no ``eV`` axis, an energy axis that cannot be
        made E − E_F (or kinetic energies that all land above E_F: another energy reference),
        dimensions other than k (or angles), ``hv`` and ``eV``, or no finite values.
    """
    validate(da)
    if 'eV' not in da.dims:
        raise ValueError(f'the data have no eV (energy) axis: dims {list(da.dims)}')
    if da.attrs.get('energy_axis') == 'kinetic':
        kinetic = da
        da = to_binding(da, work_function=work_function)  # needs the photon energy and the work function
        if float(da['eV'].min()) > 0:
            hv, work = kinetic.attrs.get('photon_energy'), da.attrs.get('work_function')
            raise ValueError(
                f'with E - E_F = E_kin - hv + W (hv = {hv} eV, W = {work} eV) every energy lies above E_F '
                f"({float(da['eV'].min()):.3f} to {float(da['eV'].max()):.3f} eV): the file's kinetic "
                'energies use another reference (e.g. some SpecsLab Prodigy exports put E_F at E_kin = hv), '
                'or the work function is wrong; convert the energies to E - E_F first (energy_axis binding)'
            )
    if 'phi' in da.dims:
        from .kspace import to_kspace

        da = to_kspace(da, inner_potential=da.attrs.get('inner_potential'), work_function=work_function)
    other = [dim for dim in da.dims if dim not in AXES]
    if other:
        raise ValueError(
            f'cannot fit data with dimension(s) {other}: select one slice (dims {list(da.dims)})'
        )
    if 'kz' in da.dims and 'hv' in da.dims:
        raise ValueError('the data have both kz and hv dimensions')
    da = da.sortby(list(da.dims)).astype(float)
    for name in ('kx', 'ky'):
        if name not in da.dims:
            value = float(da.coords[name]) if name in da.coords and da.coords[name].ndim == 0 else 0.0
            da = da.drop_vars(name, errors='ignore').expand_dims({name: [value]})
    order = [name for name in AXES if name in da.dims]
    da = da.transpose(*order)
    values = da.values
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError('the intensity has no finite values')
    attrs = dict(da.attrs)
    known = ('temperature', 'energy_resolution', 'k_resolution')
    instrument = {name: float(attrs[name]) for name in known if name in attrs}
    data = FitData(
        axes={name: np.asarray(da[name].values, dtype=float) for name in order},
        intensity=np.where(finite, values, 0.0),
        mask=finite,
        counts=_is_counts(values[finite], attrs),
        broadening=Broadening(**instrument),
        work_function=float(attrs.get('work_function', 4.5)),
        inner_potential=float(attrs.get('inner_potential', 10.0)),
        attrs=attrs,
    )
    return data.subset(fraction, emin, seed)


def _is_counts(values: np.ndarray, attrs: dict) -> bool:
    """Counts: declared by ``attrs['counts']`` or non-negative integers with some above 1."""
    if 'counts' in attrs:
        return True
    return bool((values >= 0).all() and np.array_equal(values, np.round(values)) and values.max() > 1)
