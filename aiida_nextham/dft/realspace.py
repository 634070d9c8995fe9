"""k-space matrices on a Γ-centred mesh -> real-space blocks M_ij(R) by inverse Fourier transform.

Convention (PySCF's and :mod:`aiida_nextham.hamiltonian.bloch`'s): M(k) = Σ_R exp(2πi k·R) M(R)
with fractional k. On an n1×n2×n3 mesh the inverse transform returns M(R) plus its aliases
M(R + L) for every vector L of the Born-von Kármán supercell, so the mesh must be wide enough that
the aliases of kept pairs are negligible (see :func:`~aiida_nextham.dft.config.dense_mesh`).

Matrices of a real basis without spin-orbit coupling obey M(-k) = M(k)*, so only half of the mesh
is computed: :func:`half_mesh` returns one k of each (k, -k) couple with weight 2 (weight 1 for
k = -k), and the transform takes the real part.
"""

from __future__ import annotations

import numpy as np

from .errors import DftConfigError

__all__ = ['check_pairs_resolved', 'gather_blocks', 'half_mesh', 'inverse_fourier']


def half_mesh(mesh: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One k-point of each time-reversal couple of the Γ-centred ``mesh``.

    :return: fractional k-points (n, 3) in [0, 1) and integer weights (n,) summing to n1 n2 n3.
    """
    mesh = np.asarray(mesh, dtype=np.int64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mesh], indexing='ij'), axis=-1).reshape(-1, 3)
    partner = (-grid) % mesh
    strides = np.array([mesh[1] * mesh[2], mesh[2], 1])
    key, partner_key = grid @ strides, partner @ strides
    keep = key <= partner_key
    weights = np.where(key[keep] == partner_key[keep], 1, 2)
    return grid[keep] / mesh, weights


def inverse_fourier(
    matrices: np.ndarray, kpoints: np.ndarray, weights: np.ndarray, cells: np.ndarray
) -> np.ndarray:
    """Real M(R) = (1/N) Σ_k w_k Re[exp(-2πi k·R) M(k)] for each cell vector R.

    :param matrices: (nk, n, n) complex M(k) at the k-points of :func:`half_mesh`.
    :param kpoints: (nk, 3) fractional k-points.
    :param weights: (nk,) weights (sum N, the number of k-points of the full mesh).
    :param cells: (nR, 3) integer cell vectors.
    :return: (nR, n, n) float64.
    """
    nk, n, _ = matrices.shape
    angle = 2 * np.pi * np.asarray(kpoints) @ np.asarray(cells, dtype=np.float64).T  # (nk, nR)
    scale = np.asarray(weights, dtype=np.float64)[:, None] / np.sum(weights)
    flat = matrices.reshape(nk, n * n)
    result = (np.cos(angle) * scale).T @ flat.real + (np.sin(angle) * scale).T @ flat.imag
    return result.reshape(len(cells), n, n)


def check_pairs_resolved(pairs: np.ndarray, mesh: tuple[int, int, int]) -> None:
    """Two kept pairs of the same atoms must not be aliases of each other on ``mesh``.

    :raises DftConfigError: when the mesh is too coarse for the cutoff.
    """
    folded = np.column_stack([pairs[:, :3] % np.asarray(mesh), pairs[:, 3:]])
    if len(np.unique(folded, axis=0)) != len(pairs):
        raise DftConfigError(
            f'the dense k-mesh {list(mesh)} is too coarse for the neighbour cutoff: distinct blocks '
            'would alias onto each other; use a denser mesh or a smaller cutoff'
        )


def gather_blocks(
    realspace: np.ndarray, cells: np.ndarray, pairs: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Flat row-major blocks M_ij(R) of ``pairs`` (the layout of :class:`BlockHamiltonian`).

    :param realspace: (nR, n, n) matrices of the cell vectors ``cells``.
    :param pairs: (n_pairs, 5) rows (R1, R2, R3, i, j).
    :param offsets: (n_atoms + 1,) index of each atom's first orbital in the matrices.
    """
    index = {tuple(cell): n for n, cell in enumerate(np.asarray(cells).tolist())}
    cell_of_pair = np.array([index[tuple(row)] for row in pairs[:, :3].tolist()], dtype=np.int64)
    i, j = pairs[:, 3], pairs[:, 4]
    ni, nj = offsets[i + 1] - offsets[i], offsets[j + 1] - offsets[j]
    sizes = ni * nj
    pair = np.repeat(np.arange(len(pairs)), sizes)
    within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = offsets[i][pair] + within // nj[pair]
    cols = offsets[j][pair] + within % nj[pair]
    return realspace[cell_of_pair[pair], rows, cols]
