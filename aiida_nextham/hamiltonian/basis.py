"""Atomic-orbital basis descriptions: per element, an ordered list of shells of angular momentum l.

Orbitals of a shell are stored in the internal convention (e3nn real spherical harmonics, see
:mod:`aiida_nextham.hamiltonian.conventions`); orbitals of an atom are its shells in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

__all__ = ['Basis', 'ElementBasis']

_SHELL_LETTERS = 'spdfgh'


@dataclass(frozen=True)
class ElementBasis:
    """The shells of one element.

    :param symbol: chemical symbol, e.g. ``'Si'``.
    :param shells: angular momentum of each shell, in storage order, e.g. ``(0, 0, 1, 1, 2)``.
    :param shell_names: optional names such as ``('3s', '4s', '3p', '4p', '3d')``.
    :param radii: optional cutoff radius of each shell in Å (numerical orbitals).
    """

    symbol: str
    shells: tuple[int, ...]
    shell_names: tuple[str, ...] | None = None
    radii: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.symbol not in atomic_numbers:
            raise ValueError(f'unknown chemical symbol {self.symbol!r}')
        object.__setattr__(self, 'shells', tuple(int(l) for l in self.shells))
        if not self.shells or any(l < 0 or l > 5 for l in self.shells):
            raise ValueError(
                f'{self.symbol}: shells must be a non-empty list of l in 0..5, got {self.shells}'
            )
        for name in ('shell_names', 'radii'):
            value = getattr(self, name)
            if value is not None:
                value = tuple(value)
                object.__setattr__(self, name, value)
                if len(value) != len(self.shells):
                    raise ValueError(
                        f'{self.symbol}: {name} has {len(value)} entries for {len(self.shells)} shells'
                    )

    @property
    def number(self) -> int:
        return atomic_numbers[self.symbol]

    @property
    def n_orbitals(self) -> int:
        return sum(2 * l + 1 for l in self.shells)

    @property
    def label(self) -> str:
        """Compact label such as ``'2s2p1d'``."""
        counts = [self.shells.count(l) for l in range(max(self.shells) + 1)]
        return ''.join(f'{n}{_SHELL_LETTERS[l]}' for l, n in enumerate(counts) if n)

    def orbital_l(self) -> np.ndarray:
        """Angular momentum of every orbital, shape (n_orbitals,)."""
        return np.repeat(self.shells, [2 * l + 1 for l in self.shells])

    def as_dict(self) -> dict:
        data = {'symbol': self.symbol, 'shells': list(self.shells)}
        if self.shell_names is not None:
            data['shell_names'] = list(self.shell_names)
        if self.radii is not None:
            data['radii'] = list(self.radii)
        return data


@dataclass(frozen=True)
class Basis:
    """A basis for several elements, plus where it came from.

    :param elements: mapping atomic number -> :class:`ElementBasis`.
    :param name: basis-set name, e.g. ``'gth-szv'`` or ``'Si_gga_8au_60Ry_2s2p1d'``.
    :param code: the code that defined the orbitals, e.g. ``'pyscf'``, ``'abacus'``, ``'openmx'``.
    """

    elements: dict[int, ElementBasis]
    name: str = ''
    code: str = ''
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for number, element in self.elements.items():
            if element.number != number:
                raise ValueError(f'basis for Z={number} describes {element.symbol}')

    @classmethod
    def from_shells(cls, shells: dict[str | int, list[int]], name: str = '', code: str = '') -> Basis:
        """Build from ``{'Si': [0, 0, 1, 1, 2], ...}`` (keys may be symbols or atomic numbers)."""
        elements = {}
        for key, element_shells in shells.items():
            symbol = chemical_symbols[key] if isinstance(key, int | np.integer) else key
            element = ElementBasis(symbol, tuple(element_shells))
            elements[element.number] = element
        return cls(elements, name=name, code=code)

    def __getitem__(self, number: int) -> ElementBasis:
        try:
            return self.elements[int(number)]
        except KeyError:
            raise KeyError(f'the basis has no shells for {chemical_symbols[int(number)]}') from None

    def n_orbitals(self, numbers: np.ndarray) -> np.ndarray:
        """Number of orbitals of each atom, shape (n_atoms,)."""
        missing = sorted(set(int(z) for z in numbers) - set(self.elements))
        if missing:
            names = ', '.join(chemical_symbols[z] for z in missing)
            raise ValueError(f'the basis has no shells for element(s) {names}')
        return np.array([self.elements[int(z)].n_orbitals for z in numbers], dtype=np.int64)

    @property
    def label(self) -> str:
        """Short human label, e.g. ``'Mo:4s2p2d1f S:2s2p1d'``."""
        return ' '.join(f'{e.symbol}:{e.label}' for _, e in sorted(self.elements.items()))

    def to_json(self) -> str:
        return json.dumps(
            {
                'name': self.name,
                'code': self.code,
                'elements': [e.as_dict() for _, e in sorted(self.elements.items())],
                'extra': self.extra,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Basis:
        data = json.loads(text)
        elements = {}
        for item in data['elements']:
            element = ElementBasis(
                item['symbol'], tuple(item['shells']), item.get('shell_names'), item.get('radii')
            )
            elements[element.number] = element
        return cls(
            elements, name=data.get('name', ''), code=data.get('code', ''), extra=data.get('extra', {})
        )
