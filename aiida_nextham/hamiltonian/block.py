"""The block Hamiltonian: H_ij(R), S_ij(R) (and optionally H0) of a periodic structure in real space.

A pair ``(R1, R2, R3, i, j)`` names the block between the orbitals of atom ``i`` in the home cell
and atom ``j`` in the cell displaced by ``R = R1 a1 + R2 a2 + R3 a3``:
``H_ij(R)[a, b] = <φ_ia(r - τ_i) | H | φ_jb(r - τ_j - R)>``. Atoms are 0-based.

Blocks of all pairs are stored in one flat array per matrix (row-major blocks, one after the other
in pair order), so millions of blocks cost one allocation. Block shapes follow from the basis:
``(ni, nj)`` without spin, ``(2, 2, ni, nj)`` (↑↑, ↑↓ / ↓↑, ↓↓) for spinors. The overlap is
spin-independent and always stored spinless.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .basis import Basis

__all__ = ['SPIN_SHAPES', 'BlockHamiltonian', 'HamiltonianError', 'MATRICES', 'find_pairs', 'partner_rows']

SPIN_SHAPES: dict[str, tuple[int, ...]] = {'none': (), 'spinor': (2, 2)}
MATRICES = ('H', 'S', 'H0')
_ATTRIBUTES = {'H': 'hamiltonian', 'S': 'overlap', 'H0': 'h0'}


class HamiltonianError(ValueError):
    """A block Hamiltonian (or a file describing one) is inconsistent."""


@dataclass(eq=False)
class BlockHamiltonian:
    """Real-space block Hamiltonian of a periodic structure. Units: eV and Å.

    :param lattice: (3, 3) lattice vectors as rows, Å.
    :param positions: (n_atoms, 3) Cartesian positions, Å.
    :param numbers: (n_atoms,) atomic numbers.
    :param basis: orbital basis of every element present (internal e3nn orbital convention).
    :param pairs: (n_pairs, 5) int64 rows ``(R1, R2, R3, i, j)``.
    :param hamiltonian: flat blocks of H (eV), float64 or complex128.
    :param overlap: flat spinless blocks of S, float64, or None for an orthogonal basis.
    :param h0: flat blocks of the zeroth-step Hamiltonian H0 (eV), or None.
    :param spin: ``'none'`` or ``'spinor'``.
    :param fermi_level: Fermi level in eV, when known.
    :param n_electrons: number of valence electrons per cell, when known.
    :param metadata: free provenance (source code, files, cutoff, ...), JSON-serialisable.
    """

    lattice: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    basis: Basis
    pairs: np.ndarray
    hamiltonian: np.ndarray
    overlap: np.ndarray | None = None
    h0: np.ndarray | None = None
    spin: str = 'none'
    fermi_level: float | None = None
    n_electrons: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 5)
        if self.spin not in SPIN_SHAPES:
            raise HamiltonianError(f'spin must be one of {sorted(SPIN_SHAPES)}, got {self.spin!r}')
        if len(self.positions) != len(self.numbers):
            raise HamiltonianError(f'{len(self.positions)} positions but {len(self.numbers)} atomic numbers')
        try:
            self.basis.n_orbitals(self.numbers)
        except ValueError as exc:
            raise HamiltonianError(str(exc)) from None
        atoms = self.pairs[:, 3:]
        if len(atoms) and (atoms.min() < 0 or atoms.max() >= len(self.numbers)):
            raise HamiltonianError(f'pair atom indices must lie in 0..{len(self.numbers) - 1} (0-based)')
        for name in MATRICES:
            self._check_matrix(name)

    def _check_matrix(self, name: str) -> None:
        attribute = _ATTRIBUTES[name]
        data = getattr(self, attribute)
        if data is None:
            if name == 'H':
                raise HamiltonianError('a block Hamiltonian needs H')
            return
        data = np.asarray(data)
        if data.dtype.kind not in 'fc':
            raise HamiltonianError(f'{name} must be real or complex, got dtype {data.dtype}')
        data = data.astype(np.complex128 if data.dtype.kind == 'c' else np.float64, copy=False).reshape(-1)
        expected = self.block_offsets(name)[-1]
        if data.size != expected:
            raise HamiltonianError(f'{name} has {data.size} entries but the pairs and basis need {expected}')
        setattr(self, attribute, data)

    def __repr__(self) -> str:
        return (
            f'BlockHamiltonian({self.formula}, {self.n_atoms} atoms, {self.n_orbitals} orbitals, '
            f'{self.n_pairs} pairs, spin={self.spin!r}, basis={self.basis.label!r})'
        )

    # ----------------------------------------------------------------------------- sizes and indices
    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @cached_property
    def orbital_counts(self) -> np.ndarray:
        """Orbitals of each atom (spinless), shape (n_atoms,)."""
        return self.basis.n_orbitals(self.numbers)

    @cached_property
    def orbital_offsets(self) -> np.ndarray:
        """Index of each atom's first orbital, shape (n_atoms + 1,)."""
        return np.concatenate([[0], np.cumsum(self.orbital_counts)])

    @property
    def n_orbitals(self) -> int:
        """Spinless orbitals per cell."""
        return int(self.orbital_offsets[-1])

    @property
    def n_states(self) -> int:
        """Basis functions per cell including spin (= size of H(k))."""
        return self.n_orbitals * (2 if self.spin == 'spinor' else 1)

    def spin_shape(self, name: str) -> tuple[int, ...]:
        return () if name == 'S' else SPIN_SHAPES[self.spin]

    def block_shape(self, name: str, pair: int) -> tuple[int, ...]:
        i, j = self.pairs[pair, 3:]
        return self.spin_shape(name) + (int(self.orbital_counts[i]), int(self.orbital_counts[j]))

    def block_offsets(self, name: str) -> np.ndarray:
        """Start of each pair's block in the flat array of matrix ``name``, shape (n_pairs + 1,)."""
        key = '_offsets_S' if name == 'S' else '_offsets_H'
        if key not in self.__dict__:
            counts = self.orbital_counts
            sizes = counts[self.pairs[:, 3]] * counts[self.pairs[:, 4]] * int(np.prod(self.spin_shape(name)))
            self.__dict__[key] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return self.__dict__[key]

    def matrix(self, name: str) -> np.ndarray | None:
        """Flat blocks of ``'H'``, ``'S'`` or ``'H0'`` (None when absent)."""
        if name not in _ATTRIBUTES:
            raise KeyError(f'unknown matrix {name!r}; choose from {MATRICES}')
        return getattr(self, _ATTRIBUTES[name])

    def block(self, name: str, pair: int) -> np.ndarray:
        """View of one block, shaped ``spin_shape + (ni, nj)``."""
        offsets = self.block_offsets(name)
        return self.matrix(name)[offsets[pair] : offsets[pair + 1]].reshape(self.block_shape(name, pair))

    @cached_property
    def pair_index(self) -> dict[tuple[int, int, int, int, int], int]:
        """Map ``(R1, R2, R3, i, j)`` -> row in :attr:`pairs`."""
        index = {tuple(int(x) for x in row): n for n, row in enumerate(self.pairs)}
        if len(index) != len(self.pairs):
            raise HamiltonianError('pairs contain duplicates')
        return index

    def distances(self) -> np.ndarray:
        """Distance |τ_j + R - τ_i| of every pair, Å, shape (n_pairs,)."""
        vectors = (
            self.positions[self.pairs[:, 4]]
            + self.pairs[:, :3] @ self.lattice
            - self.positions[self.pairs[:, 3]]
        )
        return np.linalg.norm(vectors, axis=1)

    @property
    def periodic(self) -> tuple[bool, bool, bool]:
        """Which lattice directions carry any block (False e.g. for the vacuum direction of a slab)."""
        return tuple(bool(x) for x in self.pairs[:, :3].any(axis=0))

    @property
    def formula(self) -> str:
        from ase.data import chemical_symbols
        from ase.formula import Formula

        return Formula(''.join(chemical_symbols[z] for z in self.numbers)).format('hill')

    # --------------------------------------------------------------------------------- operations
    def replace(self, **changes) -> BlockHamiltonian:
        """A copy with some fields replaced (arrays not replaced are shared)."""
        return dataclasses.replace(self, **changes)

    def select_pairs(self, keep: np.ndarray) -> BlockHamiltonian:
        """A new object with only the pairs where boolean mask (or index array) ``keep`` selects."""
        keep = np.arange(self.n_pairs)[keep]
        changes = {'pairs': self.pairs[keep]}
        for name, attribute in _ATTRIBUTES.items():
            data = self.matrix(name)
            if data is not None:
                offsets = self.block_offsets(name)
                changes[attribute] = _gather_blocks(data, offsets, keep)
        return self.replace(**changes)

    def truncate(self, cutoff: float) -> BlockHamiltonian:
        """Drop the blocks of pairs farther apart than ``cutoff`` Å (on-site blocks always stay)."""
        if cutoff <= 0:
            raise ValueError(f'cutoff must be positive, got {cutoff}')
        onsite = (self.pairs[:, 3] == self.pairs[:, 4]) & ~self.pairs[:, :3].any(axis=1)
        result = self.select_pairs((self.distances() <= cutoff) | onsite)
        result.metadata = {**self.metadata, 'cutoff': float(cutoff)}
        return result

    def partner_index(self) -> np.ndarray:
        """Row of the hermitian partner (-R, j, i) of each pair, or -1 when it is not stored."""
        return partner_rows(self.pairs, self.n_atoms)

    def hermiticity_error(self, name: str = 'H') -> float:
        """max |M_ij(R) - M_ji(-R)^†| over pairs whose partner is stored."""
        partner = self.partner_index()
        worst = 0.0
        for pair in np.flatnonzero(partner >= 0):
            worst = max(
                worst, float(np.abs(self.block(name, pair) - _dagger(self.block(name, partner[pair]))).max())
            )
        return worst

    def complete_hermitian(self) -> BlockHamiltonian:
        """Add every missing partner block M_ji(-R) = M_ij(R)^† (a no-op when storage is full)."""
        partner = self.partner_index()
        missing = np.flatnonzero(partner < 0)
        if not len(missing):
            return self
        new_pairs = self.pairs[missing][:, [0, 1, 2, 4, 3]] * np.array([-1, -1, -1, 1, 1])
        changes = {'pairs': np.concatenate([self.pairs, new_pairs])}
        for name, attribute in _ATTRIBUTES.items():
            data = self.matrix(name)
            if data is not None:
                extra = [_dagger(self.block(name, p)).reshape(-1) for p in missing]
                changes[attribute] = np.concatenate([data, *extra])
        return self.replace(**changes)

    def transform_orbitals(self, transforms: dict[int, np.ndarray], names=MATRICES) -> BlockHamiltonian:
        """Apply per-element orbital transforms: ``M_ij -> T_zi @ M_ij @ T_zj^T`` for every block.

        :param transforms: atomic number -> (n_orb, n_orb) real matrix (e.g. a code's convention
            matrix from :func:`~aiida_nextham.hamiltonian.conventions.atom_transform`).
        """
        changes = {}
        zi = self.numbers[self.pairs[:, 3]]
        zj = self.numbers[self.pairs[:, 4]]
        for name in names:
            data = self.matrix(name)
            if data is None:
                continue
            offsets = self.block_offsets(name)
            out = np.empty_like(data)
            for a, b in {(int(x), int(y)) for x, y in zip(zi, zj, strict=True)}:
                group = np.flatnonzero((zi == a) & (zj == b))
                ta, tb = transforms[a], transforms[b]
                shape = self.block_shape(name, group[0])
                index = offsets[group][:, None] + np.arange(int(np.prod(shape)))
                blocks = data[index].reshape((len(group), *shape))
                out[index] = np.einsum('ab,...bc,dc->...ad', ta, blocks, tb).reshape(len(group), -1)
            changes[_ATTRIBUTES[name]] = out
        return self.replace(**changes)

    def rotated(self, rotation: np.ndarray) -> BlockHamiltonian:
        """The same crystal rotated by a proper rotation: r -> R r, blocks -> D(R) M D(R)^T."""
        from .conventions import wigner_d

        if self.spin != 'none':
            raise NotImplementedError('rotating spinor Hamiltonians needs the spin-1/2 rotation too')
        from scipy.linalg import block_diag

        transforms = {
            z: block_diag(*[wigner_d(l, rotation) for l in self.basis[z].shells])
            for z in set(self.numbers.tolist())
        }
        rotated = self.transform_orbitals(transforms)
        rotated.lattice = self.lattice @ np.asarray(rotation).T
        rotated.positions = self.positions @ np.asarray(rotation).T
        return rotated

    def summary(self) -> dict:
        """JSON-serialisable summary (what ``nextham info`` prints and AiiDA stores as attributes)."""
        return {
            'formula': self.formula,
            'n_atoms': self.n_atoms,
            'n_orbitals': self.n_orbitals,
            'n_pairs': self.n_pairs,
            'spin': self.spin,
            'basis': self.basis.label,
            'basis_set': self.basis.name,
            'source_code': self.basis.code,
            'has_overlap': self.overlap is not None,
            'has_h0': self.h0 is not None,
            'max_distance': float(self.distances().max()) if self.n_pairs else 0.0,
            'cutoff': self.metadata.get('cutoff'),
            'fermi_level': self.fermi_level,
            'n_electrons': self.n_electrons,
            'complex': bool(self.hamiltonian.dtype.kind == 'c'),
            'periodic': list(self.periodic),
        }


def _pair_keys(pairs: np.ndarray, n_atoms: int, radius: int) -> np.ndarray:
    """One int64 key per row (R1, R2, R3, i, j) for |R_k| <= radius, shape (n,)."""
    width = 2 * radius + 1
    if width**3 * n_atoms**2 >= 2**62:
        raise HamiltonianError(f'pair index too large to encode ({n_atoms} atoms, |R| up to {radius})')
    shifted = pairs[:, :3] + radius
    cell = (shifted[:, 0] * width + shifted[:, 1]) * width + shifted[:, 2]
    return (cell * n_atoms + pairs[:, 3]) * n_atoms + pairs[:, 4]


def find_pairs(stored: np.ndarray, queries: np.ndarray, n_atoms: int) -> np.ndarray:
    """Row of each query (R1, R2, R3, i, j) in ``stored``, or -1, shape (n_queries,). Vectorised."""
    stored = np.asarray(stored, dtype=np.int64).reshape(-1, 5)
    queries = np.asarray(queries, dtype=np.int64).reshape(-1, 5)
    if not len(queries):
        return np.zeros(0, dtype=np.int64)
    if not len(stored):
        return np.full(len(queries), -1, dtype=np.int64)
    radius = int(max(np.abs(stored[:, :3]).max(), np.abs(queries[:, :3]).max()))
    keys = _pair_keys(stored, n_atoms, radius)
    order = np.argsort(keys, kind='stable')
    sorted_keys = keys[order]
    query_keys = _pair_keys(queries, n_atoms, radius)
    position = np.minimum(np.searchsorted(sorted_keys, query_keys), len(keys) - 1)
    return np.where(sorted_keys[position] == query_keys, order[position], -1)


def partner_rows(pairs: np.ndarray, n_atoms: int) -> np.ndarray:
    """Row of the hermitian partner (-R, j, i) of every pair (R, i, j), or -1, shape (n_pairs,)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 5)
    return find_pairs(pairs, pairs[:, [0, 1, 2, 4, 3]] * np.array([-1, -1, -1, 1, 1]), n_atoms)


def _dagger(block: np.ndarray) -> np.ndarray:
    """Hermitian conjugate of a block, including the spin indices of spinor blocks (..., 2, 2, ni, nj)."""
    if block.ndim == 4:
        return block.transpose(1, 0, 3, 2).conj()
    return block.T.conj()


def _gather_blocks(data: np.ndarray, offsets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Concatenate the flat blocks of ``pairs`` (vectorised)."""
    starts, stops = offsets[pairs], offsets[pairs + 1]
    lengths = stops - starts
    if not len(pairs):
        return data[:0].copy()
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return data[np.repeat(starts, lengths) + within]
