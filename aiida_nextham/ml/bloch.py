"""Differentiable Bloch sums M(k) = Σ_R exp(2πi k·R) M(R) of flat block arrays, in torch.

Same convention as :mod:`aiida_nextham.hamiltonian.bloch`: fractional k-points, the phase uses the
cell vector R of each pair only, and the block of pair (R, i, j) lands at the orbital offsets of
atoms i (rows) and j (columns). Spinor layouts put all ↑ orbitals first, then all ↓.

The index (row, column and pair of every stored number) is built once per structure with numpy and
moved to torch; a Bloch sum is then one scatter-add over all stored numbers and all k-points at
once, so gradients flow back to the flat blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..hamiltonian.block import BlockHamiltonian

__all__ = ['BlochIndex', 'bloch_sum']


@dataclass(frozen=True)
class BlochIndex:
    """Where every number of a flat block array goes in M(k).

    :param flat: (n_elements,) int64, ``row * size + column`` of each stored number.
    :param pair: (n_elements,) int64, the pair each number belongs to.
    :param cells: (n_pairs, 3) float64, the cell vector R (integers) of each pair.
    :param size: matrix dimension (n_orbitals, or 2 n_orbitals for a spinor layout).
    """

    flat: torch.Tensor
    pair: torch.Tensor
    cells: torch.Tensor
    size: int

    @classmethod
    def from_hamiltonian(
        cls, bh: BlockHamiltonian, name: str = 'S', device: torch.device | str | None = None
    ) -> BlochIndex:
        """Index of matrix ``name``'s flat layout: ``'S'`` is always spinless, ``'H'``/``'H0'`` follow
        ``bh.spin`` (spinor blocks (2, 2, ni, nj) map to a 2 n_orbitals matrix)."""
        counts, offsets = bh.orbital_counts, bh.orbital_offsets
        n_spin = int(np.prod(bh.spin_shape(name)))
        i, j = bh.pairs[:, 3], bh.pairs[:, 4]
        area = counts[i] * counts[j]
        sizes = area * n_spin
        pair = np.repeat(np.arange(bh.n_pairs), sizes)
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        spin, local = np.divmod(within, area[pair])
        row_in, col_in = np.divmod(local, counts[j][pair])
        rows = offsets[i][pair] + row_in
        cols = offsets[j][pair] + col_in
        size = bh.n_orbitals
        if n_spin == 4:
            rows = rows + (spin // 2) * size
            cols = cols + (spin % 2) * size
            size *= 2
        return cls(
            flat=torch.as_tensor(rows * size + cols, dtype=torch.int64, device=device),
            pair=torch.as_tensor(pair, dtype=torch.int64, device=device),
            cells=torch.as_tensor(bh.pairs[:, :3], dtype=torch.float64, device=device),
            size=int(size),
        )

    @property
    def n_elements(self) -> int:
        return int(self.flat.numel())

    def to(self, device: torch.device | str) -> BlochIndex:
        return BlochIndex(self.flat.to(device), self.pair.to(device), self.cells.to(device), self.size)


def bloch_sum(values: torch.Tensor, index: BlochIndex, kpoints: torch.Tensor | np.ndarray) -> torch.Tensor:
    """M(k) for fractional ``kpoints``, differentiable in ``values``.

    :param values: (n_elements,) flat blocks, real (float32/float64) or complex.
    :param index: :class:`BlochIndex` of the same layout.
    :param kpoints: (nk, 3) fractional k-points.
    :return: (nk, size, size) complex64 (float32/complex64 values) or complex128.
    """
    if values.shape != (index.n_elements,):
        raise ValueError(f'values have shape {tuple(values.shape)}, the index needs ({index.n_elements},)')
    complex_dtype = torch.complex64 if values.dtype in (torch.float32, torch.complex64) else torch.complex128
    real_dtype = torch.float32 if complex_dtype == torch.complex64 else torch.float64
    kpoints = torch.as_tensor(kpoints, dtype=torch.float64, device=values.device).reshape(-1, 3)
    angles = 2 * torch.pi * (kpoints @ index.cells.T)  # (nk, n_pairs), float64 for accurate phases
    cos = torch.cos(angles).to(real_dtype)[:, index.pair]
    sin = torch.sin(angles).to(real_dtype)[:, index.pair]
    n_k, n = len(kpoints), index.size
    target = index.flat.expand(n_k, -1)
    if values.is_complex():
        re, im = values.real, values.imag
        real_part = cos * re - sin * im
        imag_part = sin * re + cos * im
    else:
        real_part, imag_part = cos * values, sin * values
    zeros = values.new_zeros((n_k, n * n), dtype=real_dtype)
    real_m = zeros.scatter_add(1, target, real_part)
    imag_m = zeros.scatter_add(1, target, imag_part)
    return torch.complex(real_m, imag_m).reshape(n_k, n, n).to(complex_dtype)
