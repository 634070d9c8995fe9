"""A few band energies of large cells: sparse H(k), S(k) and shift-invert Lanczos/Arnoldi.

``eigenvalues_near`` factorises H(k) − σ S(k) once (SuperLU) and lets ARPACK find the ``n``
eigenvalues of H c = ε S c nearest σ, which converge in a few dozen solves. ARPACK has no complex
Hermitian Lanczos, so complex H(k) goes through ``eigs`` (Arnoldi in the S inner product, real parts
kept); when H(k) and S(k) are real (Γ, or zone-boundary points of a real Hamiltonian) the real
symmetric Lanczos of ``eigsh`` is used, about four times cheaper.

The overlap check mirrors the dense path (:data:`bloch.S_MIN_WARN`, :data:`bloch.S_MIN_RAISE`): S(k)
is factorised with symmetric (diagonal) pivoting, S = P L D Lᴴ Pᵀ, so by Sylvester's law of inertia
a non-positive pivot proves S is not positive definite; otherwise the smallest eigenvalue is the
one nearest zero, found by shift-invert with the same factorisation.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg as sla

from . import bloch
from .block import BlockHamiltonian

__all__ = ['eigenvalues_auto', 'eigenvalues_near', 'overlap_min_eigenvalue']

#: below this many states per cell ``eigenvalues_auto`` diagonalises densely
DENSE_LIMIT = 4000


def _real_if_possible(matrix: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    if matrix.dtype.kind == 'c' and not np.any(matrix.data.imag):
        return matrix.real.tocsr()
    return matrix


def _shift_invert(matrix: scipy.sparse.spmatrix) -> sla.LinearOperator:
    """(matrix)⁻¹ as a LinearOperator, from one sparse LU factorisation."""
    lu = sla.splu(matrix.tocsc())
    return sla.LinearOperator(matrix.shape, matvec=lu.solve, dtype=matrix.dtype)


def overlap_min_eigenvalue(s: scipy.sparse.spmatrix) -> float:
    """Smallest eigenvalue of the Hermitian ``s`` (n, n); 0.0 when ``s`` is exactly singular."""
    s = _real_if_possible(scipy.sparse.csr_matrix(s))
    if s.shape[0] <= 2:
        return float(np.linalg.eigvalsh(s.toarray())[0])
    try:  # no row pivoting: L D Lᴴ, whose pivots carry the inertia of s
        lu = sla.splu(
            s.tocsc(), permc_spec='MMD_AT_PLUS_A', diag_pivot_thresh=0.0, options={'SymmetricMode': True}
        )
    except RuntimeError:  # SuperLU: "Factor is exactly singular"
        return 0.0
    if np.array_equal(lu.perm_r, lu.perm_c) and np.any(lu.U.diagonal().real <= 0):
        return _lowest_eigenvalue(s)
    inverse = sla.LinearOperator(s.shape, matvec=lu.solve, dtype=s.dtype)
    value = sla.eigsh(s, k=1, sigma=0.0, which='LM', OPinv=inverse, return_eigenvectors=False)
    return float(np.real(value[0]))


def _lowest_eigenvalue(s: scipy.sparse.spmatrix) -> float:
    """Lowest (negative) eigenvalue by plain Lanczos; -inf when it does not converge."""
    try:
        return float(np.real(sla.eigsh(s, k=1, which='SA', tol=1e-6, return_eigenvectors=False)[0]))
    except sla.ArpackNoConvergence as exc:
        return float(np.real(exc.eigenvalues).min()) if len(exc.eigenvalues) else -np.inf


def eigenvalues_near(
    bh: BlockHamiltonian,
    kpoint: np.ndarray,
    sigma: float,
    n: int = 10,
    *,
    name: str = 'H',
    check_overlap: bool = True,
    tol: float = 0.0,
) -> np.ndarray:
    """The ``n`` band energies (eV) nearest ``sigma`` at one fractional k-point, ascending, shape (n,).

    :param name: ``'H'`` or ``'H0'``.
    :param check_overlap: check S(k)'s eigenvalue nearest 0 first (one more factorisation).
    :param tol: ARPACK relative tolerance (0: machine precision).
    :raises IllConditionedOverlapError: S(k) is singular or not positive definite.
    """
    kpoint = np.asarray(kpoint, dtype=np.float64).reshape(3)
    h = bloch.bloch_sum(bh, name, kpoint, sparse=True)
    s = bloch.bloch_sum(bh, 'S', kpoint, sparse=True)
    h, s = _real_if_possible(h), _real_if_possible(s)
    if h.dtype != s.dtype:
        h, s = h.astype(np.complex128), s.astype(np.complex128)
    if check_overlap and bh.overlap is not None:
        bloch._check_overlap(overlap_min_eigenvalue(s), kpoint)
    size = h.shape[0]
    if n >= size - 1:  # ARPACK needs n < size - 1: small problems are dense anyway
        values = bloch.eigh_generalized(h.toarray(), s.toarray(), kpoint=kpoint)
        return np.sort(values[np.argsort(np.abs(values - sigma), kind='stable')[:n]])
    inverse = _shift_invert(h - sigma * s)
    values = sla.eigsh(
        h, k=n, M=s, sigma=sigma, which='LM', OPinv=inverse, tol=tol, return_eigenvectors=False
    )
    return np.sort(np.real(values))


def eigenvalues_auto(
    bh: BlockHamiltonian,
    kpoints: np.ndarray,
    *,
    sigma: float | None = None,
    n: int | None = None,
    dense_limit: int = DENSE_LIMIT,
    progress: bool = False,
) -> np.ndarray:
    """Band energies at fractional ``kpoints`` (nk, 3), dense or sparse by size.

    All bands (dense) when ``n`` is None; otherwise the ``n`` bands nearest ``sigma`` (default: the
    Hamiltonian's Fermi level), dense below ``dense_limit`` states per cell and sparse above.

    :return: shape (nk, n_states) or (nk, n), ascending per k-point.
    """
    from tqdm.auto import tqdm

    kpoints = np.atleast_2d(np.asarray(getattr(kpoints, 'kpoints', kpoints), dtype=np.float64))
    if n is None:
        return bloch.eigenvalues(bh, kpoints, progress=progress)
    if sigma is None:
        if bh.fermi_level is None:
            raise ValueError('give sigma (the energy to look around): the Hamiltonian has no Fermi level')
        sigma = bh.fermi_level
    n = min(int(n), bh.n_states)
    if bh.n_states <= dense_limit:
        values = bloch.eigenvalues(bh, kpoints, progress=progress)
        nearest = np.argsort(np.abs(values - sigma), axis=1, kind='stable')[:, :n]
        return np.sort(np.take_along_axis(values, nearest, axis=1), axis=1)
    rows = [
        eigenvalues_near(bh, k, sigma, n) for k in tqdm(kpoints, desc='eigenvalues', disable=not progress)
    ]
    return np.array(rows)
