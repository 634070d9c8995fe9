"""Accuracy of predicted Hamiltonians against DFT labels: the numbers the benchmark reports.

For each structure: MAE of H (meV) raw and after the optimal uniform shift μS (NextHAM's metric),
on-site and off-site; band-energy error within a window around E_F on a k-mesh; gap error; ghost
bands. "H0 alone" is evaluated the same way with H0 as the prediction.
"""

from __future__ import annotations

import numpy as np

from ..hamiltonian.block import BlockHamiltonian
from ..hamiltonian.spectra import band_gap, monkhorst_pack
from .metrics import compare_bands, hamiltonian_mae

__all__ = ['evaluate_pairs', 'summarise']


def _mesh_for(bh: BlockHamiltonian, density: float) -> tuple[int, int, int]:
    """Γ-centred mesh with ~``density`` k-points per Å⁻¹ (2π) along every periodic direction."""
    reciprocal = np.linalg.norm(np.linalg.inv(bh.lattice).T, axis=1)
    return tuple(
        max(1, int(np.ceil(density * r))) if p else 1 for r, p in zip(reciprocal, bh.periodic, strict=True)
    )


def evaluate_pairs(
    pairs: list[tuple[BlockHamiltonian, BlockHamiltonian]],
    *,
    window: tuple[float, float] = (-2.0, 2.0),
    kdensity: float = 20.0,
    ghost_tolerance: float = 0.1,
    ghost_filter: float | None = None,
) -> list[dict]:
    """Metrics of every (predicted, true) pair (meV; gap error in meV, gaps in eV).

    :param kdensity: k-points per reciprocal-lattice length (Å⁻¹ without 2π) of the evaluation mesh.
    :param ghost_filter: predicted bands with the ghost filter at this threshold
        (``hamiltonian.bloch.filter_correction``), for nearly dependent Gaussian bases where tiny
        errors of H otherwise become ghost bands; the true bands are those of the full basis.
    """
    rows = []
    for predicted, true in pairs:
        kpoints, _ = monkhorst_pack(_mesh_for(true, kdensity), gamma_centered=True)
        raw = hamiltonian_mae(predicted, true, optimal_shift=False)
        shifted = hamiltonian_mae(predicted, true)
        comparison = compare_bands(
            predicted, true, kpoints, window, ghost_tolerance, ghost_filter=ghost_filter
        )
        bands, ghosts = comparison['band_error'], comparison['ghosts']
        gap_true = band_gap(comparison['true_energies'], true.n_electrons)['gap']
        gap_pred = band_gap(comparison['pred_energies'], true.n_electrons)['gap']  # rigid shifts leave gaps
        rows.append(
            {
                'formula': true.formula,
                'n_atoms': true.n_atoms,
                'mae_raw': raw['mae'],
                'mae_shifted': shifted['mae'],
                'onsite_shifted': shifted['onsite'],
                'offsite_shifted': shifted['offsite'],
                'shift_eV': shifted['shift'],
                'band_mae': bands['mae'],
                'band_max': bands['max'],
                'gap_true_eV': gap_true,
                'gap_error': 1000.0 * abs(gap_pred - gap_true),
                'ghost_bands': ghosts['count'],
                'n_kpoints': len(kpoints),
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean of every metric over structures (max for the band max and sum for ghost bands)."""
    numeric = [
        k for k, v in rows[0].items() if isinstance(v, int | float) and k not in ('n_atoms', 'n_kpoints')
    ]
    summary = {key: float(np.mean([row[key] for row in rows])) for key in numeric}
    summary['band_max'] = float(max(row['band_max'] for row in rows))
    summary['ghost_bands'] = int(sum(row['ghost_bands'] for row in rows))
    summary['n_structures'] = len(rows)
    return summary
