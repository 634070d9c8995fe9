"""Cheap input checks that run before any expensive work (milliseconds, no integrals)."""

from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from .errors import BadStructureError, UnsupportedElementError

__all__ = ['MIN_DISTANCE', 'MIN_VOLUME', 'check_elements', 'check_structure']

#: atoms closer than this (Å) are treated as overlapping
MIN_DISTANCE = 0.5
#: smallest accepted cell volume per atom, Å³
MIN_VOLUME = 1.0


def check_structure(atoms: Atoms) -> None:
    """Reject empty structures, non-periodic or degenerate cells and overlapping atoms.

    :raises BadStructureError: naming what is wrong (and the offending atoms).
    """
    if len(atoms) == 0:
        raise BadStructureError('the structure has no atoms', details={'reason': 'empty'})
    if not np.all(atoms.pbc):
        raise BadStructureError(
            f'the structure must be periodic in all three directions (pbc={atoms.pbc.tolist()}); '
            'add vacuum and set pbc=True for molecules, slabs and wires',
            details={'reason': 'non_periodic'},
        )
    volume = abs(float(np.linalg.det(atoms.cell.array)))
    if not np.isfinite(volume) or volume < MIN_VOLUME * len(atoms):
        raise BadStructureError(
            f'the cell volume {volume:.3g} Å³ is zero or too small for {len(atoms)} atoms',
            details={'reason': 'zero_volume', 'volume': volume},
        )
    i, j, d = neighbor_list('ijd', atoms, MIN_DISTANCE, self_interaction=False)
    if len(d):
        k = int(np.argmin(d))
        raise BadStructureError(
            f'atoms {int(i[k])} and {int(j[k])} (0-based) are {d[k]:.3f} Å apart '
            f'(closer than {MIN_DISTANCE} Å, periodic images included)',
            details={'reason': 'overlapping_atoms', 'atoms': [int(i[k]), int(j[k])], 'distance': float(d[k])},
        )


def check_elements(symbols: list[str], basis: str, pseudo: str) -> None:
    """Every element must have a ``basis`` and a ``pseudo`` in PySCF's bundled libraries.

    :raises UnsupportedElementError: listing every element that lacks one or the other.
    """
    from pyscf.pbc.gto import basis as basis_library
    from pyscf.pbc.gto import pseudo as pseudo_library

    missing = {}
    for symbol in sorted(set(symbols)):
        for kind, loader, name in (
            ('basis', basis_library.load, basis),
            ('pseudo', pseudo_library.load, pseudo),
        ):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    found = bool(loader(name, symbol))
            except Exception:  # PySCF raises BasisNotFoundError, KeyError or RuntimeError by version
                found = False
            if not found:
                missing.setdefault(symbol, []).append(f'{kind} {name!r}')
    if missing:
        text = '; '.join(f'{symbol}: no {" and no ".join(what)}' for symbol, what in missing.items())
        raise UnsupportedElementError(
            f'unsupported element(s) for this basis/pseudopotential: {text}',
            details={'elements': sorted(missing), 'basis': basis, 'pseudo': pseudo},
        )
