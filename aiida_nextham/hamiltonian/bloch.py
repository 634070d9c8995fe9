"""Bloch sums M(k) = Σ_R exp(2πi k·R) M(R) and the generalized eigenproblem H(k) c = ε S(k) c.

k-points are fractional (reduced) coordinates of the reciprocal lattice. The phase uses the cell
vector R only (not the atomic positions); eigenvalues do not depend on that choice.

Matrices are assembled from a precomputed scatter index (row, column, pair of every stored
number), so one k-point costs one vectorised pass over the stored numbers: dense for small cells,
``scipy.sparse`` CSR for large ones.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse

from .block import BlockHamiltonian, HamiltonianError

__all__ = [
    'IllConditionedOverlapError',
    'OverlapWarning',
    'bloch_matrices',
    'bloch_sum',
    'eigh_generalized',
    'eigenvalues',
]

#: smallest overlap eigenvalue below which eigenvalues are unreliable (warned), and unusable (raised)
S_MIN_WARN = 1e-4
S_MIN_RAISE = 1e-8


class IllConditionedOverlapError(HamiltonianError):
    """S(k) is singular or not positive definite: the basis is (nearly) linearly dependent."""


class OverlapWarning(UserWarning):
    """S(k) is nearly singular: expect ghost states and inaccurate eigenvalues."""


@dataclass(frozen=True)
class _ScatterIndex:
    rows: np.ndarray
    cols: np.ndarray
    pair: np.ndarray
    size: int


def _scatter_index(bh: BlockHamiltonian, name: str) -> _ScatterIndex:
    """Row, column and pair of every number of matrix ``name`` (cached on the object)."""
    key = f'_scatter_{name}'
    if key in bh.__dict__:
        return bh.__dict__[key]
    offsets = bh.orbital_offsets
    counts = bh.orbital_counts
    spin_shape = bh.spin_shape(name)
    n_spin = int(np.prod(spin_shape))
    n_orb = bh.n_orbitals
    i, j = bh.pairs[:, 3], bh.pairs[:, 4]
    ni, nj = counts[i], counts[j]
    sizes = ni * nj * n_spin
    pair = np.repeat(np.arange(bh.n_pairs), sizes)
    within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    nj_e = nj[pair]
    block_area = (ni * nj)[pair]
    spin_index = within // block_area
    local = within % block_area
    rows = offsets[i][pair] + local // nj_e
    cols = offsets[j][pair] + local % nj_e
    if n_spin == 4:
        rows = rows + (spin_index // 2) * n_orb
        cols = cols + (spin_index % 2) * n_orb
    index_type = np.int32 if n_orb * 2 < np.iinfo(np.int32).max else np.int64
    result = _ScatterIndex(
        rows.astype(index_type), cols.astype(index_type), pair.astype(index_type), n_orb * max(1, n_spin // 2)
    )
    bh.__dict__[key] = result
    return result


def bloch_sum(bh: BlockHamiltonian, name: str, kpoint: np.ndarray, *, sparse: bool = False):
    """M(k) for one fractional k-point: dense (n, n) complex array, or CSR when ``sparse``.

    For spinor Hamiltonians the size is 2·n_orbitals (all ↑ orbitals, then all ↓); S is then
    expanded to S ⊗ 1₂ so that it matches H.
    """
    data = bh.matrix(name)
    if data is None:
        if name != 'S':
            raise HamiltonianError(f'the Hamiltonian has no {name} blocks')
        eye = scipy.sparse.identity(bh.n_states, dtype=np.complex128, format='csr')
        return eye if sparse else eye.toarray()
    index = _scatter_index(bh, name)
    phases = np.exp(2j * np.pi * (bh.pairs[:, :3] @ np.asarray(kpoint, dtype=np.float64)))
    values = data * phases[index.pair]
    matrix = scipy.sparse.coo_matrix((values, (index.rows, index.cols)), shape=(index.size, index.size))
    if name == 'S' and bh.spin == 'spinor':
        matrix = scipy.sparse.block_diag([matrix, matrix])
    return matrix.tocsr() if sparse else matrix.toarray()


def bloch_matrices(bh: BlockHamiltonian, name: str, kpoints: np.ndarray) -> np.ndarray:
    """M(k) for several fractional k-points, dense, shape (n_k, n, n)."""
    kpoints = np.atleast_2d(kpoints)
    return np.stack([bloch_sum(bh, name, k) for k in kpoints])


def _check_overlap(s_min: float, kpoint) -> None:
    where = f'at k = {np.round(kpoint, 6).tolist()}' if kpoint is not None else ''
    if s_min < S_MIN_RAISE:
        raise IllConditionedOverlapError(
            f'S(k) {where} has smallest eigenvalue {s_min:.3e}: the basis is linearly dependent there. '
            'Check that all overlap blocks are present (no cutoff truncation of S) and the basis is sane.'
        )
    if s_min < S_MIN_WARN:
        warnings.warn(
            f'S(k) {where} is nearly singular (smallest eigenvalue {s_min:.3e}); '
            'eigenvalues may contain ghost states',
            OverlapWarning,
            stacklevel=3,
        )


#: above this size the overlap check factorises S (Cholesky) instead of tridiagonalising it
CHOLESKY_CHECK_SIZE = 2000


def smallest_overlap_eigenvalue(s: np.ndarray) -> float:
    """Smallest eigenvalue of a dense Hermitian S (n, n).

    Small S: exact (LAPACK, one eigenvalue). Large S: a Cholesky factorisation (n³/3, fails when S
    is not positive definite) and Lanczos on S⁻¹ for 1/λ_min, ~10× cheaper than tridiagonalising.
    """
    if len(s) <= CHOLESKY_CHECK_SIZE:
        return float(scipy.linalg.eigvalsh(s, subset_by_index=[0, 0])[0])
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    try:
        factor = scipy.linalg.cho_factor(s, lower=True, check_finite=False)
    except np.linalg.LinAlgError:  # not positive definite: Lanczos on S for its lowest eigenvalue
        try:
            lowest = float(np.real(eigsh(s, k=1, which='SA', tol=1e-6, return_eigenvectors=False)[0]))
        except ArpackNoConvergence:
            lowest = 0.0
        return min(lowest, 0.0)
    inverse = LinearOperator(
        s.shape, matvec=lambda x: scipy.linalg.cho_solve(factor, x, check_finite=False), dtype=s.dtype
    )
    largest = eigsh(inverse, k=1, which='LM', tol=1e-8, return_eigenvectors=False)[0]
    return 1.0 / float(np.real(largest))


def eigh_generalized(
    h: np.ndarray, s: np.ndarray, *, eigvals_only: bool = True, kpoint=None, lindep: float | None = None
):
    """Solve H c = ε S c for one k-point, after checking S's smallest eigenvalue.

    :param lindep: canonical orthogonalisation: drop the directions of S with eigenvalues below
        ``lindep`` × its largest one and solve in the rest (what Gaussian-basis DFT codes do with a
        linearly dependent basis). The missing eigenvalues are returned as +inf at the top (their
        eigenvectors as zero columns), so shapes do not change. In a nearly dependent basis, errors
        of H along those directions become "ghost" eigenvalues anywhere in the spectrum.
    :raises IllConditionedOverlapError: when S is singular or not positive definite (without ``lindep``).
    """
    if lindep is None:
        _check_overlap(smallest_overlap_eigenvalue(s), kpoint)
        return scipy.linalg.eigh(h, s, eigvals_only=eigvals_only, check_finite=False)
    w, v = np.linalg.eigh(s)
    keep = w > lindep * w[-1]
    x = v[:, keep] / np.sqrt(w[keep])
    values, vectors = np.linalg.eigh(x.conj().T @ h @ x)
    padded = np.full(len(h), np.inf)
    padded[: len(values)] = values
    if eigvals_only:
        return padded
    coefficients = np.zeros((len(h), len(h)), dtype=np.result_type(h, s, float))
    coefficients[:, : len(values)] = x @ vectors
    return padded, coefficients


def eigenvalues(
    bh: BlockHamiltonian,
    kpoints: np.ndarray,
    *,
    name: str = 'H',
    progress: bool = False,
    lindep: float | None = None,
) -> np.ndarray:
    """Band energies (eV) at fractional ``kpoints``, shape (n_k, n_states), ascending.

    :param lindep: see :func:`eigh_generalized` (removed states come back as +inf at the top).
    """
    from tqdm.auto import tqdm

    kpoints = np.atleast_2d(np.asarray(kpoints, dtype=np.float64))
    out = np.empty((len(kpoints), bh.n_states))
    for n, k in enumerate(tqdm(kpoints, desc='eigenvalues', unit='k', disable=not progress)):
        h = bloch_sum(bh, name, k)
        s = bloch_sum(bh, 'S', k)
        out[n] = eigh_generalized(h, s, kpoint=k, lindep=lindep)
    return out
