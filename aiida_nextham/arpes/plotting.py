"""Plots of ARPES fits: the data with the fitted (and, if known, the true) bands overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fitdata import FitData
from .metrics import band_energies, fermi_contours
from .simulate import kz_from_photon_energy
from .tightbinding import TightBindingModel

__all__ = ['cut_momenta', 'plot_fit']

#: half width (eV) of the energy window around E_F integrated for the Fermi-surface map
FERMI_WINDOW = 0.03


def cut_momenta(data: FitData, j: int, kx: np.ndarray) -> np.ndarray:
    """k (n, 3) along k_x at ky index j and the first point of the third axis (k_z of hν at E_F)."""
    ky = data.axes['ky'][j]
    if data.third == 'hv':
        kz = kz_from_photon_energy(
            float(data.axes['hv'][0]), 0.0, np.hypot(kx, ky), data.work_function, data.inner_potential
        ).numpy()
    else:
        kz = np.full_like(kx, data.axes['kz'][0] if data.third == 'kz' else 0.0)
    return np.stack([kx, np.full_like(kx, ky), kz], -1)


def plot_fit(
    data: FitData,
    fitted: TightBindingModel,
    path: str | Path,
    *,
    true: TightBindingModel | None = None,
    title: str = '',
) -> Path:
    """Write a PNG: the E–k_x cut at k_y nearest 0 (first k_z or hν) with the bands of ``fitted`` (solid)
    and ``true`` (dashed), and, for k_x–k_y maps, the intensity within ±:data:`FERMI_WINDOW` of E_F with
    both models' Fermi contours."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    models = [(fitted, '-', 'fit')] + ([(true, '--', 'true')] if true is not None else [])
    two_d = len(data.axes['ky']) > 1
    fig, axes = plt.subplots(1, 2 if two_d else 1, figsize=(10 if two_d else 5.5, 4.5), squeeze=False)
    kx, energy = data.axes['kx'], data.axes['eV']
    j = int(np.abs(data.axes['ky']).argmin())
    cut = data.intensity[:, j, 0] if data.third else data.intensity[:, j]
    ax = axes[0, 0]
    ax.pcolormesh(kx, energy, cut.T, shading='nearest', cmap='Greys')
    dense = np.linspace(kx.min(), kx.max(), 400)
    for model, style, label in models:
        bands = band_energies(model, cut_momenta(data, j, dense))
        for n in range(bands.shape[-1]):
            ax.plot(
                dense,
                bands[:, n],
                style,
                color='C3' if label == 'fit' else 'C0',
                lw=1.2,
                label=label if n == 0 else None,
            )
    ax.axhline(0.0, color='k', lw=0.5, ls=':')
    ax.set(
        xlim=(kx.min(), kx.max()),
        ylim=(energy.min(), energy.max()),
        xlabel='$k_x$ (1/Å)',
        ylabel='$E - E_F$ (eV)',
        title=f'$k_y$ = {data.axes["ky"][j]:.3g} 1/Å',
    )
    ax.legend(loc='lower right', fontsize=8)
    if two_d:
        ax = axes[0, 1]
        ky = data.axes['ky']
        near = np.abs(energy) <= FERMI_WINDOW
        near = near if near.any() else np.abs(energy) == np.abs(energy).min()
        fs = data.intensity[..., near].sum(-1)
        ax.pcolormesh(kx, ky, (fs[:, :, 0] if data.third else fs).T, shading='nearest', cmap='Greys')
        gx, gy = np.linspace(kx.min(), kx.max(), 201), np.linspace(ky.min(), ky.max(), 201)
        mesh = np.stack(np.meshgrid(gx, gy, indexing='ij'), -1)
        kz = data.axes['kz'][0] if data.third == 'kz' else 0.0
        k = np.concatenate([mesh, np.full(mesh.shape[:-1] + (1,), kz)], -1)
        for model, style, label in models:
            bands = band_energies(model, k)
            for n in range(bands.shape[-1]):
                for line in fermi_contours(bands[..., n], gx, gy):
                    ax.plot(*line.T, style, color='C3' if label == 'fit' else 'C0', lw=1.2)
        ax.set(xlabel='$k_x$ (1/Å)', ylabel='$k_y$ (1/Å)', aspect='equal', title='Fermi surface')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
