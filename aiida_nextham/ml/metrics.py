"""Accuracy metrics of a predicted block Hamiltonian against the true one (numpy; meV in results).

Alignment: a uniform shift H → H + μS moves all bands rigidly and is a gauge freedom (see
:mod:`aiida_nextham.ml.loss`). Unless asked otherwise, metrics first remove the least-squares shift
μ* = ⟨S, H_pred − H_true⟩ / ⟨S, S⟩ of the real-space error; since (H − μS) c = (ε − μ) S c, this
moves every predicted band by exactly −μ*, so band metrics and the ghost count use the same
alignment as the H MAE.
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from ..hamiltonian.block import BlockHamiltonian, HamiltonianError

__all__ = [
    'band_energy_error',
    'compare_bands',
    'count_ghost_bands',
    'ghost_bands',
    'hamiltonian_mae',
    'real_space_shift',
]

MEV = 1000.0


def _aligned(pred: BlockHamiltonian, true: BlockHamiltonian) -> BlockHamiltonian:
    """``true`` restricted to ``pred``'s pairs, in ``pred``'s order."""
    if pred.pairs.shape == true.pairs.shape and np.array_equal(pred.pairs, true.pairs):
        return true
    if pred.spin != true.spin or pred.n_orbitals != true.n_orbitals:
        raise HamiltonianError('predicted and true Hamiltonians have different spin treatments or bases')
    index = true.pair_index
    rows = [index.get(tuple(int(x) for x in row), -1) for row in pred.pairs]
    missing = rows.count(-1)
    if missing:
        raise HamiltonianError(f'{missing} predicted pairs have no true block to compare with')
    return true.select_pairs(np.array(rows, dtype=np.int64))


def _overlap_flat(bh: BlockHamiltonian) -> np.ndarray:
    """S in the flat layout of H (expanded onto ↑↑ and ↓↓ for spinors; identity when S is absent)."""
    overlap = bh.overlap
    if overlap is None:
        overlap = np.zeros(bh.block_offsets('S')[-1])
        offsets = bh.block_offsets('S')
        for pair in np.flatnonzero((bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)):
            n = int(bh.orbital_counts[bh.pairs[pair, 3]])
            overlap[offsets[pair] : offsets[pair + 1]] = np.eye(n).reshape(-1)
    if bh.spin == 'spinor':
        from .loss import SpinorLayout

        overlap = SpinorLayout.from_hamiltonian(bh).expand(overlap)
    return overlap


def real_space_shift(pred: BlockHamiltonian, true: BlockHamiltonian) -> float:
    """Least-squares gauge shift μ* (eV) of H_pred − H_true along the true S."""
    true = _aligned(pred, true)
    overlap = _overlap_flat(true)
    error = pred.hamiltonian - true.hamiltonian
    return float(np.real(overlap @ error) / max(float(overlap @ overlap), np.finfo(float).tiny))


def hamiltonian_mae(pred: BlockHamiltonian, true: BlockHamiltonian, optimal_shift: bool = True) -> dict:
    """Mean absolute error of the H blocks, meV per matrix element.

    ``pred``'s pairs must all be stored in ``true`` (extra true pairs are ignored).

    :param optimal_shift: subtract μ*S first (the gauge; see the module docstring).
    :return: ``{'mae', 'onsite', 'offsite', 'by_pair': {'Si-Si': ..., 'B-N': ...}, 'shift', 'n_elements'}``;
        ``shift`` is μ* in eV (0 without ``optimal_shift``); ``onsite``/``offsite`` are None when there
        are no such blocks; element pairs are named in order of atomic number.
    """
    true = _aligned(pred, true)
    error = pred.hamiltonian - true.hamiltonian
    shift = real_space_shift(pred, true) if optimal_shift else 0.0
    if shift:
        error = error - shift * _overlap_flat(true)
    absolute = MEV * np.abs(error)
    pair = np.repeat(np.arange(pred.n_pairs), np.diff(pred.block_offsets('H')))
    onsite = ((pred.pairs[:, 3] == pred.pairs[:, 4]) & ~pred.pairs[:, :3].any(axis=1))[pair]
    z = np.sort(pred.numbers[pred.pairs[:, 3:]], axis=1)[pair]

    def mean(selection: np.ndarray) -> float | None:
        return float(absolute[selection].mean()) if selection.any() else None

    by_pair = {}
    for za, zb in np.unique(z, axis=0):
        by_pair[f'{chemical_symbols[za]}-{chemical_symbols[zb]}'] = mean((z[:, 0] == za) & (z[:, 1] == zb))
    return {
        'mae': float(absolute.mean()),
        'onsite': mean(onsite),
        'offsite': mean(~onsite),
        'by_pair': by_pair,
        'shift': float(shift),
        'n_elements': int(absolute.size),
    }


def _fermi_from_count(bh: BlockHamiltonian, energies: np.ndarray) -> float:
    from ..hamiltonian.spectra import fermi_level

    if bh.n_electrons is None:
        raise ValueError('the Hamiltonian has no electron count: cannot compute its Fermi level')
    weights = np.full(len(energies), 1.0 / len(energies))
    degeneracy = 1 if bh.spin == 'spinor' else 2
    return fermi_level(energies, weights, bh.n_electrons, smearing=None, spin_degeneracy=degeneracy)


def _reference_fermi(bh: BlockHamiltonian, energies: np.ndarray) -> float:
    """The stored Fermi level, else one from the electron count on these k-points."""
    return float(bh.fermi_level) if bh.fermi_level is not None else _fermi_from_count(bh, energies)


def _aligned_bands(
    pred, true, kpoints, align: str, ghost_filter=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(pred energies shifted by the alignment, true energies, applied shift in eV); the ghost filter
    acts on the prediction only: the reference is the full-basis DFT band structure."""
    from ..hamiltonian.spectra import band_energies

    if align not in ('shift', 'fermi', 'none'):
        raise ValueError(f"align must be 'shift', 'fermi' or 'none', got {align!r}")
    e_true = band_energies(true, kpoints)
    e_pred = band_energies(pred, kpoints, ghost_filter=ghost_filter)
    if align == 'shift':
        offset = real_space_shift(pred, true)
    elif align == 'fermi':
        offset = _fermi_from_count(pred, e_pred) - _fermi_from_count(true, e_true)
    else:
        offset = 0.0
    return e_pred - offset, e_true, offset


def band_energy_error(
    pred: BlockHamiltonian,
    true: BlockHamiltonian,
    kpoints: np.ndarray,
    window: tuple[float, float] = (-3.0, 3.0),
    *,
    align: str = 'shift',
    ghost_filter: float | None = None,
) -> dict:
    """Band-energy error (meV) of the true bands inside ``window`` (eV relative to the true E_F).

    ``ghost_filter``: predicted bands with ``hamiltonian.bloch.filter_correction`` at this threshold
    (needs H0 in ``pred``); the true bands are always those of the full basis.

    Bands are compared by index at each k-point, after aligning the predicted bands:
    ``'shift'`` subtracts the real-space gauge μ* (default; exact for a pure μS error), ``'fermi'``
    matches the Fermi levels both computed from the electron count on ``kpoints`` (use a mesh),
    ``'none'`` compares absolute energies. The true E_F is ``true.fermi_level`` or, when absent,
    computed from the electron count on ``kpoints``.

    :param kpoints: (nk, 3) fractional k-points.
    :return: ``{'mae', 'max', 'n_values', 'fermi_level', 'shift'}`` (meV; E_F and shift in eV).
    """
    return compare_bands(pred, true, kpoints, window, align=align, ghost_filter=ghost_filter)['band_error']


def ghost_bands(
    pred_energies: np.ndarray,
    true_energies: np.ndarray,
    window: tuple[float, float],
    tolerance: float = 0.1,
) -> dict:
    """Spurious states: predicted eigenvalues in ``window`` beyond the number of true ones there.

    At each k the ghost count is #pred in ``window`` − #true in ``window`` widened by ``tolerance``
    on both sides (never negative), so a band that is merely misplaced (a band-energy error, or a
    uniform shift) is not a ghost, while an extra state is, wherever it sits. The ghosts listed in
    ``where`` are, at each such k, the predicted eigenvalues in the window farthest from any true one.

    :param pred_energies: (nk, nb_pred) predicted band energies (eV), already aligned.
    :param true_energies: (nk, nb_true) true band energies (eV), all bands (not only the window).
    :param window: (E_min, E_max) absolute energies (eV).
    :param tolerance: eV.
    :return: ``{'count', 'where': [(k_index, band_index, energy), ...], 'n_kpoints_affected'}``.
    """
    pred = np.atleast_2d(np.asarray(pred_energies, dtype=np.float64))
    true = np.sort(np.atleast_2d(np.asarray(true_energies, dtype=np.float64)), axis=1)
    if len(pred) != len(true):
        raise ValueError(f'{len(pred)} k-points of predicted energies but {len(true)} of true ones')
    low, high = window
    inside = (pred >= low) & (pred <= high)
    n_true = ((true >= low - tolerance) & (true <= high + tolerance)).sum(axis=1)
    excess = np.maximum(inside.sum(axis=1) - n_true, 0)
    where = []
    for k in np.flatnonzero(excess):  # nearest true eigenvalue by binary search: O(nb log nb)
        position = np.searchsorted(true[k], pred[k])
        below = true[k][np.clip(position - 1, 0, true.shape[1] - 1)]
        above = true[k][np.clip(position, 0, true.shape[1] - 1)]
        distance = np.where(inside[k], np.minimum(np.abs(pred[k] - below), np.abs(pred[k] - above)), -1.0)
        for n in sorted(np.argsort(distance)[::-1][: excess[k]]):
            where.append((int(k), int(n), float(pred[k, n])))
    return {'count': int(excess.sum()), 'where': where, 'n_kpoints_affected': int((excess > 0).sum())}


def count_ghost_bands(
    pred: BlockHamiltonian,
    true: BlockHamiltonian,
    kpoints: np.ndarray,
    window: tuple[float, float] = (-3.0, 3.0),
    tolerance: float = 0.1,
    *,
    align: str = 'shift',
    ghost_filter: float | None = None,
) -> dict:
    """:func:`ghost_bands` of two block Hamiltonians at ``kpoints``.

    ``window`` is relative to the true E_F (``true.fermi_level`` or from the electron count on
    ``kpoints``); predicted bands are aligned as in :func:`band_energy_error`.
    :return: the :func:`ghost_bands` dict plus ``fermi_level`` and ``shift`` (eV).
    """
    comparison = compare_bands(pred, true, kpoints, window, tolerance, align=align, ghost_filter=ghost_filter)
    return {**comparison['ghosts'], 'fermi_level': comparison['fermi_level'], 'shift': comparison['shift']}


def compare_bands(
    pred: BlockHamiltonian,
    true: BlockHamiltonian,
    kpoints: np.ndarray,
    window: tuple[float, float] = (-3.0, 3.0),
    tolerance: float = 0.1,
    *,
    align: str = 'shift',
    ghost_filter: float | None = None,
) -> dict:
    """Band error and ghost bands from one diagonalisation of each Hamiltonian at ``kpoints``.

    :return: ``{'band_error'`` (as :func:`band_energy_error`), ``'ghosts'`` (as :func:`ghost_bands`),
        ``'fermi_level'``, ``'shift'`` (eV), ``'pred_energies'`` (aligned), ``'true_energies'``}.
    """
    e_pred, e_true, offset = _aligned_bands(pred, true, kpoints, align, ghost_filter)
    fermi = _reference_fermi(true, e_true)
    inside = (e_true >= fermi + window[0]) & (e_true <= fermi + window[1])
    difference = MEV * np.abs(e_pred - e_true)[inside]
    band_error = {
        'mae': float(difference.mean()) if difference.size else 0.0,
        'max': float(difference.max()) if difference.size else 0.0,
        'n_values': int(difference.size),
        'fermi_level': fermi,
        'shift': float(offset),
    }
    ghosts = ghost_bands(e_pred, e_true, (fermi + window[0], fermi + window[1]), tolerance)
    return {
        'band_error': band_error,
        'ghosts': ghosts,
        'fermi_level': fermi,
        'shift': float(offset),
        'pred_energies': e_pred,
        'true_energies': e_true,
    }
