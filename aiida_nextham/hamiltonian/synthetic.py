"""Random but physically shaped block Hamiltonians, for tests and benchmarks."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from .basis import Basis
from .block import BlockHamiltonian, _dagger

__all__ = ['neighbour_pairs', 'random_block_hamiltonian']


def neighbour_pairs(atoms: Atoms, cutoff: float) -> np.ndarray:
    """All pairs (R1, R2, R3, i, j) with |τ_j + R - τ_i| <= cutoff, on-site pairs included, sorted."""
    i, j, shifts = neighbor_list('ijS', atoms, cutoff, self_interaction=False)
    onsite = np.arange(len(atoms))
    pairs = np.concatenate(
        [
            np.column_stack([shifts, i, j]),
            np.column_stack([np.zeros((len(atoms), 3), dtype=np.int64), onsite, onsite]),
        ]
    ).astype(np.int64)
    return pairs[np.lexsort(pairs.T[::-1])]


def random_block_hamiltonian(
    atoms: Atoms, basis: Basis, cutoff: float, *, seed: int = 0, spin: str = 'none', decay: float = 1.5
) -> BlockHamiltonian:
    """A random hermitian H and a positive-definite S with blocks decaying as exp(-d/decay).

    S has identity on-site blocks and off-site blocks scaled so that every row's absolute sum is
    below 0.5: diagonally dominant, hence positive definite at every k. For ``spin='spinor'`` H is
    complex with (2, 2, ni, nj) blocks; hermiticity M_ji(-R) = M_ij(R)^† holds exactly.
    """
    rng = np.random.default_rng(seed)
    pairs = neighbour_pairs(atoms, cutoff)
    counts = basis.n_orbitals(atoms.numbers)
    vectors = atoms.positions[pairs[:, 4]] + pairs[:, :3] @ atoms.cell.array - atoms.positions[pairs[:, 3]]
    weights = np.exp(-np.linalg.norm(vectors, axis=1) / decay)
    onsite = (pairs[:, 3] == pairs[:, 4]) & ~pairs[:, :3].any(axis=1)
    spin_shape = (2, 2) if spin == 'spinor' else ()
    index = {tuple(row): n for n, row in enumerate(pairs.tolist())}
    partners = [index[(-a, -b, -c, j, i)] for a, b, c, i, j in pairs.tolist()]

    h_blocks, s_blocks = [None] * len(pairs), [None] * len(pairs)
    for n, partner in enumerate(partners):
        if partner < n:
            continue
        shape = (counts[pairs[n, 3]], counts[pairs[n, 4]])
        h = rng.normal(size=spin_shape + shape)
        if spin == 'spinor':
            h = h + 1j * rng.normal(size=spin_shape + shape)
        s = rng.normal(size=shape)
        h, s = weights[n] * h, weights[n] * s
        if partner == n:
            h, s = 0.5 * (h + _dagger(h)), 0.5 * (s + s.T)
        h_blocks[n], s_blocks[n] = h, s
        h_blocks[partner], s_blocks[partner] = _dagger(h), s.T
    row_sums = np.zeros(len(atoms))
    np.add.at(
        row_sums, pairs[~onsite, 3], [np.abs(s_blocks[n]).sum(axis=1).max() for n in np.flatnonzero(~onsite)]
    )
    scale = 0.5 / max(row_sums.max(), 1e-12)
    for n in range(len(pairs)):
        s_blocks[n] = np.eye(len(s_blocks[n])) if onsite[n] else scale * s_blocks[n]
    return BlockHamiltonian(
        lattice=atoms.cell.array,
        positions=atoms.positions,
        numbers=atoms.numbers,
        basis=basis,
        pairs=pairs,
        hamiltonian=np.concatenate([b.reshape(-1) for b in h_blocks]),
        overlap=np.concatenate([b.reshape(-1) for b in s_blocks]),
        spin=spin,
        metadata={'source': 'synthetic', 'seed': seed, 'cutoff': cutoff},
    )
