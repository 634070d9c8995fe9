"""Orbital blocks <-> irreps: the Wigner-3j change of basis behind every input and output of the model.

A block between a shell of angular momentum l1 (rows) and one of l2 (columns) transforms under a
rotation as ``D(l1) B D(l2)^T``; it is the tensor product l1 ⊗ l2 = ⊕_{L=|l1-l2|}^{l1+l2} L, each L
with parity (-1)^(l1+l2). With e3nn's Wigner-3j symbols scaled by sqrt(2L+1) the change of basis is
orthogonal, so the same matrix maps blocks to irreps (transpose) and irreps to blocks.

For a model covering several elements, all pair types (Zi, Zj) share one feature vector of
:attr:`OrbitalIrreps.irreps` (for every (L, parity) the largest multiplicity any pair type needs);
each pair type reads and writes its own channels through a dense ``(ni*nj, dim)`` matrix.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import cached_property

import numpy as np
import torch
from e3nn import o3

from ..hamiltonian.block import partner_rows

__all__ = ['BlockLayout', 'OrbitalIrreps', 'shell_pair_matrix']


def shell_pair_matrix(l1: int, l2: int) -> tuple[o3.Irreps, np.ndarray]:
    """Orthogonal map between a (2l1+1, 2l2+1) block (row-major) and ⊕_L L.

    :returns: ``(irreps, U)`` with ``U`` of shape ((2l1+1)(2l2+1), dim): ``block.ravel() = U @ f``
        and ``f = U.T @ block.ravel()``.
    """
    parity = (-1) ** (l1 + l2)
    columns = []
    for big_l in range(abs(l1 - l2), l1 + l2 + 1):
        c = o3.wigner_3j(l1, l2, big_l, dtype=torch.float64).numpy() * math.sqrt(2 * big_l + 1)
        columns.append(c.reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * big_l + 1))
    irreps = o3.Irreps([(1, (big_l, parity)) for big_l in range(abs(l1 - l2), l1 + l2 + 1)])
    return irreps, np.concatenate(columns, axis=1)


def _pair_irreps(shells_i: tuple[int, ...], shells_j: tuple[int, ...]):
    """Irreps (in shell-pair order) and orthogonal matrix of a whole atom-pair block."""
    ni = sum(2 * l + 1 for l in shells_i)
    nj = sum(2 * l + 1 for l in shells_j)
    matrix = np.zeros((ni * nj, ni * nj))
    irreps: list[tuple[int, int]] = []
    column = 0
    row_i = 0
    for l1 in shells_i:
        row_j = 0
        for l2 in shells_j:
            pair_irreps, u = shell_pair_matrix(l1, l2)
            rows = ((row_i + np.arange(2 * l1 + 1))[:, None] * nj + row_j + np.arange(2 * l2 + 1)).ravel()
            matrix[rows, column : column + u.shape[1]] = u
            column += u.shape[1]
            irreps += [(ir.l, ir.p) for _, ir in pair_irreps]
            row_j += 2 * l2 + 1
        row_i += 2 * l1 + 1
    return irreps, matrix


class OrbitalIrreps:
    """The irreps of every pair type of a set of elements, and the block <-> feature maps.

    :param shells: angular momenta of the shells of each element, ``{Z: (l, ...)}``, in the internal
        (e3nn) orbital convention.
    """

    def __init__(self, shells: dict[int, tuple[int, ...]]):
        if not shells:
            raise ValueError('OrbitalIrreps needs at least one element')
        self.shells = {int(z): tuple(int(l) for l in ls) for z, ls in sorted(shells.items())}
        self.elements = tuple(self.shells)
        per_type = {}
        need: Counter = Counter()
        for zi in self.elements:
            for zj in self.elements:
                irreps, matrix = _pair_irreps(self.shells[zi], self.shells[zj])
                per_type[zi, zj] = (irreps, matrix)
                for key, count in Counter(irreps).items():
                    need[key] = max(need[key], count)
        order = sorted(need, key=lambda key: (key[0], -key[1]))
        self.irreps = o3.Irreps([(need[key], key) for key in order])
        starts = dict(
            zip(order, np.cumsum([0] + [need[k] * (2 * k[0] + 1) for k in order])[:-1], strict=True)
        )
        self._maps: dict[tuple[int, int], np.ndarray] = {}
        for pair_type, (irreps, matrix) in per_type.items():
            used: Counter = Counter()
            full = np.zeros((matrix.shape[0], self.irreps.dim))
            column = 0
            for key in irreps:
                dim = 2 * key[0] + 1
                start = starts[key] + used[key] * dim
                full[:, start : start + dim] = matrix[:, column : column + dim]
                used[key] += 1
                column += dim
            self._maps[pair_type] = full

    def __repr__(self) -> str:
        return f'OrbitalIrreps({self.shells}, irreps={self.irreps})'

    @classmethod
    def from_basis(cls, basis, elements=None) -> OrbitalIrreps:
        """From a :class:`~aiida_nextham.hamiltonian.basis.Basis` (all its elements, or ``elements``)."""
        numbers = elements if elements is not None else sorted(basis.elements)
        return cls({int(z): tuple(int(l) for l in basis[int(z)].shells) for z in numbers})

    def as_dict(self) -> dict:
        return {'shells': {str(z): list(ls) for z, ls in self.shells.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> OrbitalIrreps:
        return cls({int(z): tuple(ls) for z, ls in data['shells'].items()})

    def n_orbitals(self, number: int) -> int:
        return sum(2 * l + 1 for l in self.shells[number])

    def matrix(self, zi: int, zj: int) -> np.ndarray:
        """``(ni*nj, dim)``: ``block.ravel() = M @ f``, ``f = M.T @ block.ravel()`` (0 in unused channels)."""
        try:
            return self._maps[int(zi), int(zj)]
        except KeyError:
            raise ValueError(f'element pair ({zi}, {zj}) is not covered; elements: {self.elements}') from None

    def channel_mask(self, zi: int, zj: int) -> np.ndarray:
        """``(dim,)`` bool: the channels pair type (zi, zj) uses."""
        return np.abs(self.matrix(zi, zj)).sum(axis=0) > 0

    def to_features(self, blocks: torch.Tensor, zi: int, zj: int) -> torch.Tensor:
        """``(n, ni*nj)`` flattened blocks -> ``(n, dim)`` irreps features."""
        return blocks @ torch.as_tensor(self.matrix(zi, zj), dtype=blocks.dtype, device=blocks.device)

    def to_blocks(self, features: torch.Tensor, zi: int, zj: int) -> torch.Tensor:
        """``(n, dim)`` irreps features -> ``(n, ni*nj)`` flattened blocks."""
        m = torch.as_tensor(self.matrix(zi, zj), dtype=features.dtype, device=features.device)
        return features @ m.T


class BlockLayout:
    """Gather/scatter between flat spinless block arrays and per-pair irreps features, by pair type.

    Built once per structure from its pair list; the flat layout is the one of
    :class:`~aiida_nextham.hamiltonian.block.BlockHamiltonian` (row-major blocks in pair order).

    :param orbital_irreps: the coverage of the model.
    :param numbers: ``(n_atoms,)`` atomic numbers.
    :param pairs: ``(n_pairs, 5)`` rows ``(R1, R2, R3, i, j)``; every partner ``(-R, j, i)`` must be present.
    """

    def __init__(self, orbital_irreps: OrbitalIrreps, numbers: np.ndarray, pairs: np.ndarray):
        self.orbital_irreps = orbital_irreps
        numbers = np.asarray(numbers)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 5)
        missing = sorted(set(numbers.tolist()) - set(orbital_irreps.elements))
        if missing:
            raise ValueError(
                f'elements {missing} are outside the coverage of the model '
                f'(elements {orbital_irreps.elements})'
            )
        counts = np.array([orbital_irreps.n_orbitals(int(z)) for z in numbers])
        zi, zj = numbers[pairs[:, 3]], numbers[pairs[:, 4]]
        sizes = counts[pairs[:, 3]] * counts[pairs[:, 4]]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.n_pairs = len(pairs)
        self.size = int(offsets[-1])
        self.groups: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        for a, b in sorted(set(zip(zi.tolist(), zj.tolist(), strict=True))):
            ids = np.flatnonzero((zi == a) & (zj == b))
            flat = offsets[ids][:, None] + np.arange(sizes[ids[0]])
            self.groups.append((a, b, ids, flat))
        self.transpose = self._transpose_permutation(pairs, counts, offsets)

    @staticmethod
    def _transpose_permutation(pairs, counts, offsets) -> np.ndarray:
        """Flat index of element [b, a] of block (j, i, -R) for every element [a, b] of block (i, j, R)."""
        partner = partner_rows(pairs, len(counts))
        if (partner < 0).any():
            r1, r2, r3, i, j = pairs[np.flatnonzero(partner < 0)[0]].tolist()
            raise ValueError(
                f'pair (R={r1, r2, r3}, i={i}, j={j}) has no partner (-R, j, i): complete the '
                'Hamiltonian with complete_hermitian() first'
            )
        perm = np.empty(int(offsets[-1]), dtype=np.int64)
        shape = np.stack([counts[pairs[:, 3]], counts[pairs[:, 4]]], axis=1)
        for ni, nj in np.unique(shape, axis=0):
            ids = np.flatnonzero((shape[:, 0] == ni) & (shape[:, 1] == nj))
            a, b = np.meshgrid(np.arange(ni), np.arange(nj), indexing='ij')
            within = (b * ni + a).ravel()
            perm[offsets[ids][:, None] + np.arange(ni * nj)] = offsets[partner[ids]][:, None] + within
        return perm

    @cached_property
    def _torch_groups(self):
        return [(a, b, torch.from_numpy(ids), torch.from_numpy(flat)) for a, b, ids, flat in self.groups]

    def to_features(self, flat: torch.Tensor) -> torch.Tensor:
        """``(size,)`` flat blocks -> ``(n_pairs, dim)`` features."""
        out = flat.new_zeros(self.n_pairs, self.orbital_irreps.irreps.dim)
        for a, b, ids, index in self._torch_groups:
            out[ids.to(flat.device)] = self.orbital_irreps.to_features(flat[index.to(flat.device)], a, b)
        return out

    def to_flat(self, features: torch.Tensor, hermitian: bool = True) -> torch.Tensor:
        """``(n_pairs, dim)`` features -> ``(size,)`` flat blocks; with ``hermitian`` the result is
        symmetrised, ``(X_ij(R) + X_ji(-R)^T) / 2``, so ``H_ij(R) = H_ji(-R)^T`` holds exactly."""
        flat = features.new_zeros(self.size)
        for a, b, ids, index in self._torch_groups:
            blocks = self.orbital_irreps.to_blocks(features[ids.to(features.device)], a, b)
            flat = flat.index_put((index.to(features.device).reshape(-1),), blocks.reshape(-1))
        if hermitian:
            flat = 0.5 * (flat + flat[torch.from_numpy(self.transpose).to(features.device)])
        return flat
