"""PySCF's orbital order and the basis description of a PySCF cell.

PySCF's spherical GTOs (libcint ``cart2sph``) are the standard real harmonics without the
Condon-Shortley phase, all signs positive, ordered m = -l..l, except p, which is (px, py, pz)
(m = +1, -1, 0). Checked against :func:`~aiida_nextham.hamiltonian.conventions.real_harmonics` by
evaluating the GTOs (``tests/test_dft_engine.py``) and by the rotation test.

Within an atom, the AOs follow the shells of ``cell._bas``; a shell with several contractions
holds all m of its first contraction, then all m of the next.
"""

from __future__ import annotations

import numpy as np

from ..hamiltonian.basis import Basis, ElementBasis
from ..hamiltonian.conventions import Convention, atom_transform, register_convention

__all__ = ['PYSCF_CONVENTION', 'basis_from_cell', 'internal_transforms']

_MAX_L = 5


def _pyscf_order(l: int) -> tuple[tuple[int, int], ...]:
    if l == 1:
        return ((1, 1), (-1, 1), (0, 1))
    return tuple((m, 1) for m in range(-l, l + 1))


PYSCF_CONVENTION = register_convention(
    Convention(
        'pyscf',
        order={l: _pyscf_order(l) for l in range(_MAX_L + 1)},
        description='PySCF spherical GTOs: p = (x, y, z); l >= 2: real Y_lm, m = -l..l, no CS phase',
    )
)


def _atom_shells(cell, atom: int) -> tuple[list[int], list[str]]:
    """Angular momenta and names (e.g. '3p') of the shells of one atom, in PySCF's AO order."""
    labels = cell.ao_labels(fmt=False)
    first_shell, last_shell, start, _ = (int(x) for x in cell.aoslice_by_atom()[atom])
    shells, names = [], []
    for shell in range(first_shell, last_shell):
        l = int(cell.bas_angular(shell))
        for _ in range(int(cell.bas_nctr(shell))):
            names.append(str(labels[start][2]))
            shells.append(l)
            start += 2 * l + 1
    return shells, names


def basis_from_cell(cell, name: str) -> Basis:
    """The :class:`Basis` (internal convention) of a built PySCF cell, one entry per element.

    :raises ValueError: when two atoms of one element carry different shells.
    """
    elements: dict[int, ElementBasis] = {}
    offsets = cell.aoslice_by_atom()
    for atom in range(cell.natm):
        shells, names = _atom_shells(cell, atom)
        symbol = cell.atom_pure_symbol(atom)
        element = ElementBasis(symbol, tuple(shells), tuple(names))
        if element.n_orbitals != offsets[atom, 3] - offsets[atom, 2]:
            raise ValueError(f'atom {atom} ({symbol}): shell list does not match its AO count')
        known = elements.setdefault(element.number, element)
        if known.shells != element.shells:
            raise ValueError(f'atoms of {symbol} carry different shells: {known.shells} and {element.shells}')
    return Basis(elements, name=name, code='pyscf')


def internal_transforms(basis: Basis) -> dict[int, np.ndarray]:
    """Per element, the matrix T with ``M_internal = T M_pyscf T^T`` for that element's blocks."""
    return {z: atom_transform(element.shells, PYSCF_CONVENTION) for z, element in basis.elements.items()}
