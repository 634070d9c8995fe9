"""Differentiable ARPES forward model: tight-binding bands → spectral function → measured intensity.

With ω = E − E_F (eV; the house 'binding' energy axis, negative below E_F):

I(k, ω) = R_k ⊗ R_ω ⊗ { [S Σ_n w_n A_n(k, ω) + b0 + b1 ω] f(ω; T) }

- A_n = (1/π) Σ''(ω) / ((ω − Σ'(ω) − E_n(k))² + Σ''(ω)²), a Lorentzian of half width Σ'' = γ0 + γ2 ω²
  around the band, with the real part Σ' = −λω (λ > 0 renormalises the dispersion to E_n / (1 + λ)).
- f is the Fermi–Dirac function at temperature T (a step at T = 0); it multiplies the background too.
- R_ω and R_k are Gaussian convolutions (FWHM ``energy_resolution`` along ω, ``k_resolution`` along
  k_x and k_y, ``kz_resolution`` along a k_z axis) applied as row-normalised kernel matrices on grids
  padded by 4σ so that the edges see the intensity beyond them.
- Photon-energy scans use a free-electron final state with inner potential V0:
  k_z = K √(E_kin cos²θ + V0) = √(K² (E_kin + V0) − k∥²), E_kin = hν − W + ω, K = √(2m_e)/ħ
  = 0.5123 Å⁻¹ eV^−1/2, so k_z is evaluated for every (k_x, k_y, hν, ω).

Everything is float64 torch and differentiable with respect to the model and broadening parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.constants as sc
import torch
import xarray as xr
from torch import nn

from .kspace import K_FACTOR
from .tightbinding import TightBindingModel

__all__ = [
    'K_B',
    'ArpesForwardModel',
    'Broadening',
    'SimulationGrid',
    'fermi_dirac',
    'gaussian_blur',
    'gaussian_matrix',
    'kz_from_photon_energy',
    'poisson_noise',
    'simulate_dataset',
    'spectral_function',
]

#: Boltzmann constant in eV/K
K_B = sc.k / sc.e
_FWHM_TO_SIGMA = 1 / (2 * math.sqrt(2 * math.log(2)))
_PAD_SIGMAS = 4.0


def _float(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def fermi_dirac(omega: torch.Tensor, temperature: float) -> torch.Tensor:
    """Occupation 1/(e^{ω/k_BT} + 1) of energies ω = E − E_F (eV) at T (K); a step (½ at 0) for T = 0."""
    if temperature < 0:
        raise ValueError(f'temperature must be >= 0 K, got {temperature}')
    if temperature == 0:
        return torch.heaviside(-omega, torch.tensor(0.5, dtype=omega.dtype))
    return torch.sigmoid(-omega / (K_B * temperature))


def spectral_function(
    bands: torch.Tensor,
    omega: torch.Tensor,
    gamma0: torch.Tensor | float,
    gamma2: torch.Tensor | float = 0.0,
    lam: torch.Tensor | float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """A(k, ω) = Σ_n w_n (1/π) Σ''/((ω − Σ' − E_n)² + Σ''²) with Σ'' = γ0 + γ2 ω², Σ' = −λω (eV⁻¹).

    :param bands: (*S, n_bands) energies E_n(k) relative to E_F (eV).
    :param omega: energies ω (eV), broadcastable against S, e.g. (n_ω,) with bands (..., 1, n_bands).
    :param gamma0: constant half width (eV, > 0). :param gamma2: ω² coefficient of the width (eV⁻¹).
    :param lam: dimensionless coupling of the real part Σ' = −λω.
    :param weights: intensity weight of each band (matrix elements), (n_bands,) or (*S, n_bands); default 1.
    :return: the broadcast shape of S and omega.
    """
    width = gamma0 + gamma2 * omega**2
    x = omega * (1 + lam)
    out = 0.0
    for n in range(bands.shape[-1]):
        term = width / ((x - bands[..., n]) ** 2 + width**2)
        out = out + (term if weights is None else weights[..., n] * term)
    return out / math.pi


def gaussian_matrix(axis: torch.Tensor, fwhm: torch.Tensor | float) -> torch.Tensor:
    """Gaussian smoothing matrix K (n, n) on the samples ``axis`` (n,), FWHM in the axis' unit.

    ``out_i = Σ_j K_ij x_j``. Rows sum to 1 (a constant stays constant up to the edges); on a uniform
    grid every column farther than ~4σ from the edges sums to 1 as well, so integrals are conserved.
    """
    sigma = fwhm * _FWHM_TO_SIGMA
    w = torch.exp(-0.5 * ((axis[:, None] - axis[None, :]) / sigma) ** 2)
    return w / w.sum(-1, keepdim=True)


def gaussian_blur(x: torch.Tensor, axis: torch.Tensor, fwhm: torch.Tensor | float, dim: int) -> torch.Tensor:
    """Convolve ``x`` along ``dim`` (sampled at ``axis``) with a Gaussian of FWHM ``fwhm``; no-op for
    fwhm <= 0 or a single sample."""
    if x.shape[dim] == 1 or _float(fwhm) <= 0:
        return x
    m = gaussian_matrix(axis.to(x.dtype), fwhm)
    dim = dim % x.ndim
    if dim == x.ndim - 1:
        return x @ m.T
    shape = x.shape
    return (m @ x.reshape(math.prod(shape[:dim]), shape[dim], -1)).reshape(shape)


def kz_from_photon_energy(
    hv: torch.Tensor | float,
    omega: torch.Tensor | float,
    k_parallel: torch.Tensor | float,
    work_function: float,
    inner_potential: float,
) -> torch.Tensor:
    """k_z (Å⁻¹) = √(K² (hν − W + ω + V0) − k∥²) of a free-electron final state; arguments broadcast.

    :param hv: photon energy (eV). :param omega: E − E_F of the initial state (eV).
    :param k_parallel: in-plane momentum |k∥| (Å⁻¹). :param work_function: W (eV).
    :param inner_potential: V0 (eV).
    """
    hv, omega, k_parallel = (torch.as_tensor(x, dtype=torch.float64) for x in (hv, omega, k_parallel))
    arg = K_FACTOR**2 * (hv - work_function + omega + inner_potential) - k_parallel**2
    if bool((arg < 0).any()):
        raise ValueError('k∥ beyond the photoemission horizon: E_kin + V0 < (k∥/K)² for some points')
    return torch.sqrt(arg)


def poisson_noise(
    intensity: torch.Tensor, counts: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Counting statistics: scale ``intensity`` so that its maximum is ``counts`` expected counts and draw
    Poisson numbers (float tensor of counts, mean = variance = the scaled intensity)."""
    peak = float(intensity.max())
    if not peak > 0 or counts <= 0:
        raise ValueError('poisson_noise needs a positive intensity maximum and counts > 0')
    rate = intensity.detach().clamp_min(0) * (counts / peak)
    return torch.poisson(rate, generator=generator)


@dataclass
class Broadening:
    """Everything between the bands and the measured intensity (energies in eV, momenta in Å⁻¹).

    :param gamma0: constant Lorentzian half width Σ'' (eV, > 0). :param gamma2: Σ'' = γ0 + γ2 ω² (eV⁻¹).
    :param lam: Σ' = −λω. :param temperature: sample temperature (K) of the Fermi–Dirac cut-off.
    :param energy_resolution: FWHM of the Gaussian energy resolution (eV).
    :param k_resolution: FWHM of the Gaussian momentum resolution along k_x, k_y (Å⁻¹).
    :param kz_resolution: FWHM along a k_z grid axis (Å⁻¹; k_z broadening by the finite escape depth).
    :param background: constant b0; :param background_slope: b1 (per eV), background b0 + b1 ω.
    :param amplitude: overall scale S of the spectral function.
    :param band_weights: one weight per band (matrix elements); ``None``: all 1.
    """

    gamma0: float = 0.02
    gamma2: float = 0.0
    lam: float = 0.0
    temperature: float = 20.0
    energy_resolution: float = 0.015
    k_resolution: float = 0.01
    kz_resolution: float = 0.0
    background: float = 0.0
    background_slope: float = 0.0
    amplitude: float = 1.0
    band_weights: list[float] | None = None

    def __post_init__(self):
        if not self.gamma0 > 0 or self.temperature < 0:
            raise ValueError('gamma0 must be > 0 and temperature >= 0')
        if min(self.energy_resolution, self.k_resolution, self.kz_resolution) < 0:
            raise ValueError('resolutions are FWHM and must be >= 0')


_TRAINABLE = (
    'gamma0',
    'gamma2',
    'lam',
    'energy_resolution',
    'k_resolution',
    'kz_resolution',
    'background',
    'background_slope',
    'amplitude',
)


def _padded(axis: torch.Tensor, n: int) -> torch.Tensor:
    """``axis`` extended by n samples at each end with the spacing of its end intervals."""
    if n == 0 or len(axis) < 2:
        return axis
    steps = torch.arange(1, n + 1, dtype=axis.dtype)
    low = axis[0] - (axis[1] - axis[0]) * steps.flip(0)
    high = axis[-1] + (axis[-1] - axis[-2]) * steps
    return torch.cat([low, axis, high])


def _n_pad(axis: torch.Tensor, fwhm: float) -> int:
    if len(axis) < 2 or fwhm <= 0:
        return 0
    step = float((axis[1:] - axis[:-1]).abs().min())
    return math.ceil(_PAD_SIGMAS * fwhm * _FWHM_TO_SIGMA / step)


class ArpesForwardModel(nn.Module):
    """A tight-binding model and its :class:`Broadening`: intensity on a regular (k_x, k_y, [k_z | hν], ω)
    grid. The broadening values are float64 parameters (freeze what should not be fitted: ``amplitude``
    and ``band_weights`` are degenerate); the temperature is a fixed attribute (it is measured)."""

    def __init__(self, model: TightBindingModel, broadening: Broadening | None = None):
        super().__init__()
        b = broadening or Broadening()
        self.model = model
        self.temperature = float(b.temperature)
        for name in _TRAINABLE:
            setattr(self, name, nn.Parameter(torch.tensor(float(getattr(b, name)), dtype=torch.float64)))
        weights = b.band_weights if b.band_weights is not None else [1.0] * model.n_bands
        if len(weights) != model.n_bands:
            raise ValueError(f'{len(weights)} band weights for a model with {model.n_bands} bands')
        self.band_weights = nn.Parameter(torch.tensor(weights, dtype=torch.float64))

    def broadening(self) -> Broadening:
        """The current values as a :class:`Broadening`."""
        values = {name: float(getattr(self, name).detach()) for name in _TRAINABLE}
        return Broadening(
            **values, temperature=self.temperature, band_weights=self.band_weights.detach().tolist()
        )

    def forward(
        self,
        kx: torch.Tensor,
        ky: torch.Tensor,
        omega: torch.Tensor,
        kz: torch.Tensor | None = None,
        hv: torch.Tensor | None = None,
        work_function: float = 4.5,
        inner_potential: float = 10.0,
    ) -> torch.Tensor:
        """Intensity (nx, ny, [nz | nhv,] nω) on the grid of 1-D axes kx, ky (Å⁻¹), omega (eV, ascending)
        and either kz (Å⁻¹; none: k_z = 0) or hv (eV; k_z from the photon energy, W and V0 in eV).
        Momentum resolution acts along axes with more than one point (a single cut is not integrated
        over the perpendicular direction)."""
        if kz is not None and hv is not None:
            raise ValueError('give kz or hv, not both')
        axes = {'kx': kx, 'ky': ky, 'kz': kz, 'hv': hv, 'omega': omega}
        axes = {
            k: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for k, v in axes.items() if v is not None
        }
        fwhm = {
            'kx': self.k_resolution,
            'ky': self.k_resolution,
            'kz': self.kz_resolution,
            'hv': 0.0,
            'omega': self.energy_resolution,
        }
        pads = {name: _n_pad(axis, _float(fwhm[name])) for name, axis in axes.items()}
        grid = {name: _padded(axis, pads[name]) for name, axis in axes.items()}
        w = grid['omega']

        x, y = grid['kx'], grid['ky']
        if 'hv' in grid:
            kx4, ky4 = x[:, None, None, None], y[None, :, None, None]
            kz4 = kz_from_photon_energy(
                grid['hv'][None, None, :, None],
                w,
                torch.sqrt(kx4**2 + ky4**2),
                work_function,
                inner_potential,
            )
            k = torch.stack(torch.broadcast_tensors(kx4, ky4, kz4), -1)
            bands = self.model.bands(k)  # (nx, ny, nhv, nω, n_bands)
        else:
            z = grid.get('kz', torch.zeros(1, dtype=torch.float64))
            k = torch.stack(torch.meshgrid(x, y, z, indexing='ij'), -1)
            if 'kz' not in grid:
                k = k[:, :, 0]
            bands = self.model.bands(k)[..., None, :]  # (nx, ny, [nz,] 1, n_bands)

        a = spectral_function(bands, w, self.gamma0, self.gamma2, self.lam, self.band_weights)
        intensity = (self.amplitude * a + self.background + self.background_slope * w) * fermi_dirac(
            w, self.temperature
        )
        for dim, name in enumerate(grid):  # the dims of intensity, in order
            intensity = gaussian_blur(intensity, grid[name], fwhm[name], dim)
        return intensity[tuple(slice(pads[name], pads[name] + len(axes[name])) for name in grid)]


@dataclass
class SimulationGrid:
    """Where to simulate. Each k axis is 1-D values (Å⁻¹) or one number (a cut: a scalar coordinate).

    :param kx, ky: in-plane momenta (Å⁻¹). :param eV: E − E_F (eV), ascending (the 'binding' axis).
    :param kz: out-of-plane momenta (Å⁻¹); ``None`` (and no hv) evaluates k_z = 0.
    :param hv: photon energies (eV) instead of kz; k_z then follows from ``work_function`` and
        ``inner_potential`` (eV) for every (k_x, k_y, hν, ω).
    """

    kx: float | Sequence[float]
    ky: float | Sequence[float]
    eV: Sequence[float]
    kz: float | Sequence[float] | None = None
    hv: float | Sequence[float] | None = None
    work_function: float = 4.5
    inner_potential: float = 10.0

    def __post_init__(self):
        if self.kz is not None and self.hv is not None:
            raise ValueError('a grid has kz or hv, not both')
        energies = np.asarray(self.eV, dtype=float)
        if energies.ndim != 1 or len(energies) < 2 or np.any(np.diff(energies) <= 0):
            raise ValueError('eV must be a 1-D ascending axis with at least two energies')


def simulate_dataset(
    model: TightBindingModel,
    grid: SimulationGrid,
    broadening: Broadening | None = None,
    seed: int = 0,
    counts: float | None = None,
) -> xr.DataArray:
    """Simulated ARPES data in the house format: DataArray ``intensity`` with dims (kx, ky, [kz | hv,] eV)
    (scalar axes become scalar coordinates), ``energy_axis='binding'`` (eV = E − E_F), the true model
    parameters as JSON in ``attrs['true_parameters']``, the model and broadening as JSON.

    :param counts: if given, Poisson noise with ``counts`` expected counts at the intensity maximum
        (the data are then counts); drawn from a generator seeded with ``seed``.
    """
    broadening = broadening or Broadening()
    third = 'hv' if grid.hv is not None else ('kz' if grid.kz is not None else None)
    values = {'kx': grid.kx, 'ky': grid.ky, **({third: getattr(grid, third)} if third else {}), 'eV': grid.eV}
    axes = {name: np.atleast_1d(np.asarray(v, dtype=float)) for name, v in values.items()}
    forward = ArpesForwardModel(model, broadening)
    with torch.no_grad():
        intensity = forward(
            *(torch.from_numpy(axes[name]) for name in ('kx', 'ky', 'eV')),
            **({third: torch.from_numpy(axes[third])} if third else {}),
            work_function=grid.work_function,
            inner_potential=grid.inner_potential,
        )
        if counts is not None:
            intensity = poisson_noise(intensity, counts, torch.Generator().manual_seed(seed))
    coords = {name: axes[name] for name in axes}
    data = xr.DataArray(intensity.numpy(), coords=coords, dims=list(axes), name='intensity')
    scalar = [name for name, v in values.items() if np.ndim(v) == 0]
    data = data.squeeze(scalar)
    for name in data.coords:
        data.coords[name].attrs['units'] = 'eV' if name in ('eV', 'hv') else '1/Angstrom'
    attrs = {
        'energy_axis': 'binding',
        'source_format': 'simulated',
        'temperature': broadening.temperature,
        'energy_resolution': broadening.energy_resolution,
        'k_resolution': broadening.k_resolution,
        'true_parameters': json.dumps(model.get_parameters()),
        'model': model.spec().to_json(indent=None),
        'broadening': json.dumps(asdict(broadening)),
        'seed': int(seed),
    }
    if third == 'hv':
        attrs.update(work_function=grid.work_function, inner_potential=grid.inner_potential)
        if np.ndim(grid.hv) == 0:
            attrs['photon_energy'] = float(grid.hv)
    if counts is not None:
        attrs['counts'] = float(counts)
    data.attrs.update(attrs)
    return data
