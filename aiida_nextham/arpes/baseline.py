"""The classic analysis: band positions from EDC and MDC peaks, then a least-squares fit of the
tight-binding bands to them.

:func:`extract_peaks` divides the intensity by the resolution-broadened Fermi–Dirac step (where it is
above ``FD_FLOOR``), smooths each curve with a Gaussian of ``smooth`` samples, and takes the local
maxima above ``threshold`` × the 99.5th percentile as peaks, refined to sub-sample precision by a
parabola through the three samples around each maximum. Curves are the EDCs (intensity against E at
each k) and the MDCs along k_x and along k_y (at each E and the other momenta). Every peak is a point
(k, E) on the dispersion.

:func:`fit_peaks` minimises Σ_j ρ(r_j²) over θ with the effective-variance residual

r_j = (E_n(k_j; θ) − E_j) / √(σ_E² + (v_n σ_k)²),   v_n = d_j·∇_k E_n(k_j; θ),

for the band n nearest to the peak (peaks are not assigned to bands beforehand): an EDC peak is
uncertain in energy (σ_E: the energy step), an MDC peak in momentum along its curve direction d_j (σ_k:
the momentum step, turned into energy by the band velocity). ρ is the soft-L1 loss of
``scipy.optimize.least_squares`` (robust against spurious peaks); several starts within the bounds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import least_squares

from .fitdata import FitData
from .simulate import kz_from_photon_energy
from .tightbinding import TightBindingModel

__all__ = ['FD_FLOOR', 'Peaks', 'PeakFit', 'denoise', 'extract_peaks', 'fit_peaks']

#: peaks are taken only where the broadened Fermi–Dirac step is at least this (the data divided by it)
FD_FLOOR = 0.2


@dataclass
class Peaks:
    """Points on the measured dispersion: k (n, 3) Å⁻¹ and energy (n,) eV; the curve type of each
    (``'edc'``, ``'mdc_kx'``, ``'mdc_ky'``), the unit vector (n, 3) along which its momentum is uncertain
    (zero for EDC peaks) and the uncertainties ``sigma_energy`` (eV) and ``sigma_k`` (Å⁻¹), (n,) each."""

    k: np.ndarray
    energy: np.ndarray
    kind: np.ndarray
    direction: np.ndarray
    sigma_energy: np.ndarray
    sigma_k: np.ndarray

    def __len__(self) -> int:
        return len(self.energy)


@dataclass
class PeakFit:
    """One least-squares solution: ``parameters``, ``cost`` (½ Σ ρ(r²)), ``rms`` of the (dimensionless)
    residuals, ``covariance`` (p, p) in the order of the model's parameters, ``start``."""

    parameters: dict[str, float]
    cost: float
    rms: float
    covariance: np.ndarray
    start: dict[str, float]


def _peaks_along(values: np.ndarray, axis: int, threshold: float) -> np.ndarray:
    """Local maxima of ``values`` along ``axis`` above ``threshold``, as fractional grid indices (n, ndim)
    (the index along ``axis`` refined by a parabola through the three samples around the maximum)."""
    v = np.moveaxis(values, axis, -1)
    mid = v[..., 1:-1]
    index = np.argwhere((mid > v[..., :-2]) & (mid >= v[..., 2:]) & (mid > threshold))
    left, centre, right = (v[(*index[:, :-1].T, index[:, -1] + s)] for s in (0, 1, 2))
    curvature = left - 2 * centre + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1), 0.0)
    position = index.astype(float)
    position[:, -1] += 1 + offset
    moved = [d for d in range(values.ndim) if d != axis] + [axis]  # original axis of each column
    return position[:, np.argsort(moved)]


def extract_peaks(data: FitData, *, threshold: float = 0.15, smooth: float = 1.0) -> Peaks:
    """EDC and MDC peak positions of ``data`` (see the module docstring); points outside the mask are
    not used (fill them first, e.g. with :func:`denoise`)."""
    fd = np.broadcast_to(data.fermi_step(), data.intensity.shape)
    usable = data.mask & (fd >= FD_FLOOR)
    divided = np.where(usable, data.intensity / np.maximum(fd, FD_FLOOR), 0.0)
    names = list(data.axes)
    curves = {'edc': names.index('eV'), 'mdc_kx': 0, 'mdc_ky': 1}
    level = threshold * np.percentile(divided[usable], 99.5) if usable.any() else np.inf
    steps = {name: float(np.median(np.diff(v))) if len(v) > 1 else 0.0 for name, v in data.axes.items()}
    parts = []
    for kind, axis in curves.items():
        if data.intensity.shape[axis] < 3:
            continue
        smoothed = gaussian_filter1d(divided, smooth, axis=axis, mode='nearest') if smooth > 0 else divided
        smoothed = np.where(usable, smoothed, 0.0)
        position = _peaks_along(smoothed, axis, level)
        coords = {
            name: np.interp(position[:, i], np.arange(len(axis_values)), axis_values)
            for i, (name, axis_values) in enumerate(data.axes.items())
        }
        n = len(position)
        direction = np.zeros((n, 3))
        if kind != 'edc':
            direction[:, axis] = 1.0
        sigma_k = 0.0 if kind == 'edc' else steps[names[axis]]
        parts.append(
            (
                _momenta(data, coords),
                coords['eV'],
                np.full(n, kind),
                direction,
                np.full(n, steps['eV']),
                np.full(n, sigma_k),
            )
        )
    return Peaks(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def _momenta(data: FitData, coords: dict[str, np.ndarray]) -> np.ndarray:
    """k (n, 3) of points with coordinates ``coords`` (k_z from the photon energy for hν scans)."""
    if 'hv' in coords:
        kz = kz_from_photon_energy(
            torch.as_tensor(coords['hv']),
            torch.as_tensor(coords['eV']),
            torch.as_tensor(np.hypot(coords['kx'], coords['ky'])),
            data.work_function,
            data.inner_potential,
        ).numpy()
    else:
        kz = coords.get('kz', np.zeros_like(coords['kx']))
    return np.stack([coords['kx'], coords['ky'], kz], -1)


def denoise(data: FitData, *, steps: int = 1500, seed: int = 0, progress: bool = False, **siren) -> FitData:
    """``data`` with every grid point replaced by a SIREN fitted to the masked points (a continuous,
    denoised representation that also fills unmeasured points); the mask becomes all True."""
    from .siren import fit_field

    options = {'first_omega': 10.0, 'hidden_features': 128, 'hidden_layers': 3} | siren
    field, _ = fit_field(data.points(), data.values(), steps=steps, seed=seed, progress=progress, **options)
    mesh = np.stack(np.meshgrid(*data.axes.values(), indexing='ij'), -1).reshape(-1, len(data.axes))
    with torch.no_grad():
        values = torch.cat([field(torch.as_tensor(chunk)) for chunk in np.array_split(mesh, 64)])
    return replace(
        data,
        intensity=values.double().numpy().reshape(data.intensity.shape),
        mask=np.ones_like(data.mask),
    )


def fit_peaks(
    model: TightBindingModel,
    peaks: Peaks,
    starts: np.ndarray,
    *,
    f_scale: float = 3.0,
) -> list[PeakFit]:
    """Least-squares fits of ``model``'s bands to ``peaks`` from each start (n_starts, n_params) within
    the bounds; ``f_scale`` is the (dimensionless) residual beyond which the soft-L1 loss grows linearly.

    The covariance is s² (JᵀJ)⁻¹ with J the (loss-weighted) Jacobian at the solution and
    s² = 2 cost / (n − p).
    """
    if len(peaks) <= len(model.parameter_names):
        raise ValueError(
            f'only {len(peaks)} peaks found: too few to fit {len(model.parameter_names)} parameters'
        )
    work = copy.deepcopy(model)
    names = work.parameter_names
    bounds = np.array([work.bounds()[name] for name in names], dtype=float)
    k, energy, direction, sigma_e, sigma_k = (
        torch.as_tensor(v, dtype=torch.float64)
        for v in (peaks.k, peaks.energy, peaks.direction, peaks.sigma_energy, peaks.sigma_k)
    )
    h = 1e-4  # Å⁻¹, central differences for the band velocity along the MDC direction

    def residuals(theta: np.ndarray) -> np.ndarray:
        values = {name: torch.tensor(v, dtype=torch.float64) for name, v in zip(names, theta, strict=True)}
        with torch.no_grad():
            bands = work.bands(k, values)
            velocity = (work.bands(k + h * direction, values) - work.bands(k - h * direction, values)) / (
                2 * h
            )
            r = (bands - energy[:, None]) / torch.sqrt(
                sigma_e[:, None] ** 2 + (velocity * sigma_k[:, None]) ** 2
            )
        return r.gather(1, r.abs().argmin(1, keepdim=True))[:, 0].numpy()

    fits = []
    for start in np.atleast_2d(starts):
        start = np.clip(start, bounds[:, 0], bounds[:, 1])
        result = least_squares(
            residuals,
            start,
            bounds=(bounds[:, 0], bounds[:, 1]),
            loss='soft_l1',
            f_scale=f_scale,
            x_scale=(bounds[:, 1] - bounds[:, 0]) / 2,
        )
        dof = max(len(peaks) - len(names), 1)
        jtj = result.jac.T @ result.jac
        covariance = 2 * result.cost / dof * np.linalg.pinv(jtj)
        fits.append(
            PeakFit(
                dict(zip(names, result.x.tolist(), strict=True)),
                float(result.cost),
                float(np.sqrt(np.mean(result.fun**2))),
                covariance,
                dict(zip(names, start.tolist(), strict=True)),
            )
        )
    return fits
