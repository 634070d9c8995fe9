"""Agreement between two band structures: dispersion RMSE, Fermi-surface contours and their distance,
intersection over union of the occupied regions.

Energies are relative to E_F (eV), momenta in Å⁻¹. Contours come from contourpy (matplotlib's contour
generator) on a regular k_x–k_y grid; a contour is an (m, 2) array of (k_x, k_y) vertices joined by
straight segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import contourpy
import numpy as np
import torch

from .tightbinding import TightBindingModel

__all__ = [
    'band_energies',
    'compare_models',
    'contour_distance',
    'dispersion_rmse',
    'fermi_contours',
    'occupied_iou',
]


def band_energies(model: TightBindingModel, k: np.ndarray) -> np.ndarray:
    """Bands E_n(k) − E_F (eV) of ``model`` at k (..., 3) Å⁻¹, shape (..., n_bands)."""
    with torch.no_grad():
        return model.bands(torch.as_tensor(np.asarray(k, dtype=float))).numpy()


def dispersion_rmse(
    fitted: TightBindingModel,
    true: TightBindingModel,
    k: np.ndarray,
    window: tuple[float, float] = (-np.inf, np.inf),
) -> float:
    """Root-mean-square difference (eV) of band n of ``fitted`` and band n of ``true`` over k (..., 3),
    counting only the (k, n) where the true band lies inside ``window`` (eV); NaN if none does."""
    a, b = band_energies(fitted, k), band_energies(true, k)
    inside = (b >= window[0]) & (b <= window[1])
    if not inside.any():
        return float('nan')
    return float(np.sqrt(np.mean((a - b)[inside] ** 2)))


def fermi_contours(
    energy: np.ndarray, kx: np.ndarray, ky: np.ndarray, level: float = 0.0
) -> list[np.ndarray]:
    """Lines where ``energy`` (nx, ny) on the grid kx (nx,), ky (ny,) crosses ``level``: a list of (m, 2)
    arrays of (k_x, k_y) vertices (marching squares, linear interpolation along grid edges)."""
    generator = contourpy.contour_generator(np.asarray(kx), np.asarray(ky), np.asarray(energy).T)
    return [line for line in generator.lines(level) if len(line) > 1]


def _distances_to_lines(points: np.ndarray, lines: list[np.ndarray]) -> np.ndarray:
    """Distance of each point (n, 2) to the nearest segment of ``lines``, (n,)."""
    starts = np.concatenate([line[:-1] for line in lines])
    steps = np.concatenate([np.diff(line, axis=0) for line in lines])
    length2 = (steps**2).sum(-1)
    relative = points[:, None, :] - starts[None]
    t = np.clip((relative * steps).sum(-1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    return np.linalg.norm(relative - t[..., None] * steps, axis=-1).min(1)


def contour_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Symmetric mean distance (Å⁻¹) between two sets of contours: the mean over the vertices of ``a`` of
    the distance to the nearest segment of ``b``, and vice versa, averaged. 0 for identical contours and
    for two empty sets; infinite if only one set is empty."""
    if not a and not b:
        return 0.0
    if not a or not b:
        return float('inf')
    pa, pb = np.concatenate(a), np.concatenate(b)
    return float((_distances_to_lines(pa, b).mean() + _distances_to_lines(pb, a).mean()) / 2)


def occupied_iou(energy_a: np.ndarray, energy_b: np.ndarray, level: float = 0.0) -> float:
    """Intersection over union of the occupied regions {E < level} of two energies on the same grid;
    1 if both are empty."""
    a, b = np.asarray(energy_a) < level, np.asarray(energy_b) < level
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def compare_models(
    fitted: TightBindingModel,
    true: TightBindingModel,
    kx: np.ndarray,
    ky: np.ndarray,
    kz: Sequence[float] = (0.0,),
    window: tuple[float, float] = (-np.inf, np.inf),
) -> dict:
    """Dispersion and Fermi-surface agreement of two models of the same band count.

    :param kx, ky: 1-D grids (Å⁻¹) of the Fermi-surface maps and of the dispersion comparison.
    :param kz: k_z values of the dispersion comparison; the Fermi surface is taken at the first.
    :param window: energies (eV) of the true bands counted in the dispersion RMSE.
    :return: ``dispersion_rmse`` (eV), per band ``fermi_contour_distance`` (Å⁻¹) and ``occupied_iou``, and
        their means over the bands that cross E_F in either model (``*_mean``; IoU 1, distance 0 if none).
    """
    kx, ky = np.asarray(kx, dtype=float), np.asarray(ky, dtype=float)
    mesh = np.stack(np.meshgrid(kx, ky, np.asarray(kz, dtype=float), indexing='ij'), -1)
    out = {'dispersion_rmse': dispersion_rmse(fitted, true, mesh, window)}
    ea, eb = band_energies(fitted, mesh[:, :, 0]), band_energies(true, mesh[:, :, 0])
    distances, ious, crossing = [], [], []
    for n in range(ea.shape[-1]):
        ca, cb = fermi_contours(ea[..., n], kx, ky), fermi_contours(eb[..., n], kx, ky)
        distances.append(contour_distance(ca, cb))
        ious.append(occupied_iou(ea[..., n], eb[..., n]))
        crossing.append(bool(ca or cb))
    out['fermi_contour_distance'] = distances
    out['occupied_iou'] = ious
    crossing = np.array(crossing)
    out['fermi_contour_distance_mean'] = (
        float(np.mean(np.array(distances)[crossing])) if crossing.any() else 0.0
    )
    out['occupied_iou_mean'] = float(np.mean(np.array(ious)[crossing])) if crossing.any() else 1.0
    return out
