"""DeepH folders, legacy and new layout: readers, writers and their orbital conventions.

Layouts (both in eV and Å; pair ``(R1, R2, R3, i, j)`` is ``<φ_i(0)|H|φ_j(R)>`` as internally)
---------------------------------------------------------------------------------------------
``'deeph-legacy'`` (DeepH-pack ``preprocess``): ``hamiltonians.h5`` and ``overlaps.h5`` with one
dataset per block named ``'[R1, R2, R3, i, j]'`` (1-based atoms); ``lat.dat`` (3×3, columns are
lattice vectors), ``site_positions.dat`` (3×N, columns are atoms), ``element.dat`` (atomic
numbers), ``orbital_types.dat`` (the l of every shell, one line per atom), ``info.json``
(``nsites``, ``isorthogonal``, ``isspinful``, ``fermi_level``) and optionally ``rlat.dat``
(= 2π·inv(lattice), columns are reciprocal vectors).

``'deeph'`` (DeepH-dock / current DeepH-pack): ``POSCAR``, ``info.json`` (``atoms_quantity``,
``orbits_quantity``, ``orthogonal_basis``, ``spinful``, ``fermi_energy_eV``,
``elements_orbital_map``, optional ``occupation`` = electrons per cell, optional ``split_hkb``),
``hamiltonian.h5`` and ``overlap.h5`` with ``atom_pairs`` (P×5, **0-based** atoms in POSCAR order),
``chunk_boundaries`` (P+1), ``chunk_shapes`` (P×2) and the flat row-major ``entries``. With
``split_hkb`` the Hamiltonian is ``1₂ ⊗ hamiltonian.h5 + hkb.h5`` (read only).

Spin: a spinful block is the (2ni, 2nj) matrix ``[[H↑↑, H↑↓], [H↓↑, H↓↓]]`` (spin-major: spin is
the outer index) in both layouts; it maps to the internal (2, 2, ni, nj) block by a reshape. The
overlap stays spinless (ni, nj); spin-diagonal (2ni, 2nj) overlaps are accepted on reading.

Orbital conventions (registered as conventions ``'deeph-legacy'`` and ``'deeph'``)
-------------------------------------------------------------------------------
Both layouts use the standard real harmonics with all signs positive (the Wikipedia table: no
Condon-Shortley phase, p = (x, y, z)-like, etc.); only the order differs:

* ``'deeph'``: m = -l..l, i.e. p = (y, z, x); d = (xy, yz, 3z²-r², xz, x²-y²); f = (m=-3..3).
* ``'deeph-legacy'``: OpenMX order: p = (x, y, z); d = (3z²-r², x²-y², xy, xz, yz);
  l >= 3: m = (0, +1, -1, +2, -2, +3, -3, ...), e.g. f = (z³, xz², yz², z(x²-y²), xyz, x³, y³-type).

Evidence: (1) DeepH-dock ``convert/deeph/translate_old_dataset_to_new.py`` converts legacy to new
by the pure permutation ``BASIS_TRANS_OPENMX2WIKI`` = [1, 2, 0] (p), [2, 4, 0, 3, 1] (d),
[6, 4, 2, 0, 1, 3, 5] (f) and its general l rule, with no sign change; DeepH-pack's e3nn rotation
code (``Rotate.Us_openmx2wiki``), HPRO and DeePTB use the same signless permutation. (2) DeepH-dock's
ABACUS converter documents "deeph basis: wiki basis" and undoes ABACUS's (-1)^m phases; DeepH-pack's
``abacus_get_data.py`` (ABACUS -> legacy) flips exactly the signs that map ABACUS onto OpenMX order
with positive signs, consistently. (3) Physics, on the real files (tests/test_deeph.py): overlaps are
exact two-centre integrals, so every off-site overlap block must be invariant under rotations about
its bond axis. With these conventions the residual is 2e-13 (MoTe2, OpenMX origin, both layouts),
3e-9 (Si, SIESTA origin) and 3e-7 (MoS2 with an f shell, ABACUS origin, 8-digit text input); with
the other layout's order it is ~0.6 (the full scale of S). The s-p and s-d overlaps of OpenMX
and SIESTA data also have the signs of p ∝ +(x, y, z) and d ∝ +Y_2 with positive radial parts
(this per-shell sign cannot be checked with ABACUS orbitals, whose radial parts have either sign).
The D3h Mo on-site d block of MoTe2 splits into 3z²-r² + (xz, yz) + (xy, x²-y²) as it must (the
doublets are degenerate to the DFT grid noise of ~20 meV, against splittings of ~1 eV).

The H0 blocks of a :class:`BlockHamiltonian` have no place in DeepH folders and are not written.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from ase.data import chemical_symbols

from ..basis import Basis, ElementBasis
from ..block import BlockHamiltonian, HamiltonianError
from ..conventions import Convention, atom_transform, register_convention
from . import Format, register_format

__all__ = [
    'LEGACY_CONVENTION',
    'NEW_CONVENTION',
    'is_deeph_legacy',
    'is_deeph_new',
    'read_deeph',
    'read_deeph_legacy',
    'read_deeph_new',
    'write_deeph_legacy',
    'write_deeph_new',
]

_MAX_L = 5
_LEGACY_H, _LEGACY_S = 'hamiltonians.h5', 'overlaps.h5'
_LEGACY_TEXT = ('element.dat', 'orbital_types.dat', 'site_positions.dat', 'lat.dat', 'info.json')
_NEW_H, _NEW_S, _NEW_HKB = 'hamiltonian.h5', 'overlap.h5', 'hkb.h5'
_CHUNK_KEYS = ('atom_pairs', 'chunk_boundaries', 'chunk_shapes', 'entries')
_OWN_FILES = {_LEGACY_H, _LEGACY_S, _NEW_H, _NEW_S, _NEW_HKB, 'POSCAR', *_LEGACY_TEXT}
_SPIN_TOLERANCE = 1e-8


# ------------------------------------------------------------------------------------------ conventions
def _openmx_order(l: int) -> tuple[tuple[int, int], ...]:
    """OpenMX storage order of the standard real harmonics, all signs positive."""
    if l == 1:
        return ((1, 1), (-1, 1), (0, 1))
    if l == 2:
        return ((0, 1), (2, 1), (-2, 1), (1, 1), (-1, 1))
    return ((0, 1),) + tuple((sign * m, 1) for m in range(1, l + 1) for sign in (1, -1))


LEGACY_CONVENTION = register_convention(
    Convention(
        'deeph-legacy',
        order={l: _openmx_order(l) for l in range(_MAX_L + 1)},
        description='DeepH legacy folders: OpenMX order (p: x y z; d: z2 x2-y2 xy xz yz), no CS phase',
    )
)
NEW_CONVENTION = register_convention(
    Convention(
        'deeph',
        order={l: tuple((m, 1) for m in range(-l, l + 1)) for l in range(_MAX_L + 1)},
        description='DeepH new layout: real harmonics m=-l..l (Wikipedia table), no CS phase',
    )
)


# ---------------------------------------------------------------------------------------- small helpers
def _error(path: Path, what: str) -> HamiltonianError:
    return HamiltonianError(f'{path}: {what}')


def _require(folder: Path, name: str, layout: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise _error(path, f'file is missing (needed in a DeepH {layout} folder)')
    return path


def _folder_of(path: str | Path) -> Path:
    """The DeepH folder meant by ``path`` (the folder itself, or one of its files)."""
    path = Path(path)
    if path.is_file() and path.name in _OWN_FILES:
        return path.parent
    if not path.exists():
        raise _error(path, 'no such folder')
    if not path.is_dir():
        raise _error(path, 'is a file, not a DeepH folder')
    return path


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Report low-level failures while reading ``path`` as HamiltonianError naming the file."""
    try:
        yield
    except HamiltonianError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise _error(path, f'cannot be read ({type(exc).__name__}: {exc}); truncated or corrupt?') from None


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, 'r')
    except OSError as exc:
        raise _error(path, f'not a readable HDF5 file ({exc}); truncated or of another kind?') from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(path, f'not valid JSON ({exc})') from None
    if not isinstance(data, dict):
        raise _error(path, 'expected a JSON object')
    return data


def _read_table(path: Path) -> np.ndarray:
    """A whitespace-separated numeric table, always 2-D."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)  # numpy warns on empty files
            table = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _error(path, f'not a numeric table ({exc})') from None
    if not table.size:
        raise _error(path, 'is empty')
    return table


def _optional_float(path: Path, info: dict, key: str) -> float | None:
    value = info.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _error(path, f'{key} = {value!r} is not a number') from None


def _block_index(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For blocks of ``sizes`` stored one after the other: block and position within it of every entry."""
    starts = np.cumsum(sizes) - sizes
    block = np.repeat(np.arange(len(sizes)), sizes)
    return block, np.arange(int(sizes.sum())) - starts[block]


# ----------------------------------------------------------------------------- DeepH blocks <-> internal
@dataclass
class _Blocks:
    """Blocks of one matrix in internal layout (spin outer: (2, 2, ni, nj)) but DeepH orbital order."""

    pairs: np.ndarray
    data: np.ndarray
    n_spin: int


def _spin_gather(ni: np.ndarray, nj: np.ndarray) -> np.ndarray:
    """Index ``g`` with ``internal = deeph[g]`` for spinful blocks: (2ni, 2nj) -> (2, 2, ni, nj)."""
    area = ni * nj
    block, within = _block_index(4 * area)
    a, b, n = ni[block], nj[block], area[block]
    s1, s2 = within // (2 * n), (within // n) % 2
    row, col = s1 * a + (within // b) % a, s2 * b + within % b
    return 4 * (np.cumsum(area) - area)[block] + row * 2 * b + col


def _check_shapes(path: Path, pairs: np.ndarray, shapes: np.ndarray, expected: np.ndarray) -> None:
    bad = np.flatnonzero((shapes != expected).any(axis=1))
    if len(bad):
        p = bad[0]
        raise _error(
            path,
            f'block (R, i, j) = {pairs[p].tolist()} (0-based atoms) has shape {tuple(shapes[p].tolist())} '
            f'but the orbitals of the structure need {tuple(expected[p].tolist())} '
            f'({len(bad)} block(s) disagree)',
        )


def _from_deeph(path: Path, pairs, shapes, entries, counts, *, spinful: bool, overlap: bool) -> _Blocks:
    """Validate block shapes and reorder spinful blocks into the internal spin layout."""
    ni, nj = counts[pairs[:, 3]], counts[pairs[:, 4]]
    spinless = np.column_stack([ni, nj])
    if not spinful or (overlap and np.array_equal(shapes, spinless)):
        _check_shapes(path, pairs, shapes, spinless)
        return _Blocks(pairs, _real_overlap(path, entries) if overlap else entries, 1)
    _check_shapes(path, pairs, shapes, 2 * spinless)
    data = entries[_spin_gather(ni, nj)]
    if overlap:
        return _Blocks(pairs, _spinless_overlap(path, data, ni * nj), 1)
    return _Blocks(pairs, data, 4)


def _real_overlap(path: Path, data: np.ndarray) -> np.ndarray:
    if data.dtype.kind != 'c':
        return data
    if np.abs(data.imag).max(initial=0.0) > _SPIN_TOLERANCE * max(np.abs(data).max(initial=0.0), 1.0):
        raise _error(path, 'the overlap has a non-zero imaginary part')
    return data.real.copy()


def _spinless_overlap(path: Path, data: np.ndarray, area: np.ndarray) -> np.ndarray:
    """The ↑↑ part of a spin-diagonal overlap, checked to be 1₂ ⊗ S."""
    block, within = _block_index(area)
    start = 4 * (np.cumsum(area) - area)[block] + within
    up, down = data[start], data[start + 3 * area[block]]
    mixed = np.concatenate([data[start + area[block]], data[start + 2 * area[block]]])
    scale = _SPIN_TOLERANCE * max(np.abs(up).max(initial=0.0), 1.0)
    if np.abs(mixed).max(initial=0.0) > scale or np.abs(up - down).max(initial=0.0) > scale:
        raise _error(path, 'the spinful overlap is not spin-diagonal (1₂ ⊗ S)')
    return _real_overlap(path, up)


def _to_deeph(bh: BlockHamiltonian, name: str) -> np.ndarray:
    """Flat blocks of matrix ``name`` in DeepH layout (spinor blocks as (2ni, 2nj))."""
    data = bh.matrix(name)
    if bh.spin_shape(name) == ():
        return data
    ni, nj = bh.orbital_counts[bh.pairs[:, 3]], bh.orbital_counts[bh.pairs[:, 4]]
    out = np.empty_like(data)
    out[_spin_gather(ni, nj)] = data
    return out


def _chunk_shapes(bh: BlockHamiltonian, name: str) -> np.ndarray:
    factor = 2 if bh.spin_shape(name) else 1
    counts = bh.orbital_counts
    return factor * np.column_stack([counts[bh.pairs[:, 3]], counts[bh.pairs[:, 4]]]).astype(np.int64)


def _on_pairs(blocks: _Blocks, pairs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The blocks laid out on ``pairs`` (a superset of theirs), zero where they have none."""
    if np.array_equal(blocks.pairs, pairs):
        return blocks.data
    src_sizes = counts[blocks.pairs[:, 3]] * counts[blocks.pairs[:, 4]] * blocks.n_spin
    dst_sizes = counts[pairs[:, 3]] * counts[pairs[:, 4]] * blocks.n_spin
    row = {tuple(r): n for n, r in enumerate(blocks.pairs.tolist())}
    source = np.array([row.get(tuple(r), -1) for r in pairs.tolist()], dtype=np.int64)
    block, within = _block_index(dst_sizes)
    out = np.zeros(int(dst_sizes.sum()), dtype=blocks.data.dtype)
    present = source[block] >= 0
    src_start = np.cumsum(src_sizes) - src_sizes
    out[present] = blocks.data[src_start[source[block[present]]] + within[present]]
    return out


def _union(*pairs: np.ndarray) -> np.ndarray:
    if all(np.array_equal(pairs[0], p) for p in pairs[1:]):
        return pairs[0]
    return np.unique(np.concatenate(pairs), axis=0)


# ---------------------------------------------------------------------------------------------- assembly
@dataclass
class _Structure:
    lattice: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    shells: dict[int, tuple[int, ...]]

    def counts(self) -> np.ndarray:
        return np.array([sum(2 * l + 1 for l in self.shells[int(z)]) for z in self.numbers], dtype=np.int64)

    def basis(self, path: Path) -> Basis:
        try:
            elements = {z: ElementBasis(chemical_symbols[z], shells) for z, shells in self.shells.items()}
        except ValueError as exc:
            raise _error(path, f'bad orbital types: {exc}') from None
        return Basis(elements, code='deeph')


def _assemble(
    folder: Path,
    structure: _Structure,
    h: _Blocks,
    s: _Blocks | None,
    convention: Convention,
    **fields,
) -> BlockHamiltonian:
    """Build the Hamiltonian on the union of H and S pairs and convert it to the internal convention."""
    pairs = _union(h.pairs, s.pairs) if s is not None else h.pairs
    counts = structure.counts()
    try:
        bh = BlockHamiltonian(
            lattice=structure.lattice,
            positions=structure.positions,
            numbers=structure.numbers,
            basis=structure.basis(folder),
            pairs=pairs,
            hamiltonian=_on_pairs(h, pairs, counts),
            overlap=None if s is None else _on_pairs(s, pairs, counts),
            spin='spinor' if h.n_spin == 4 else 'none',
            **fields,
        )
    except HamiltonianError as exc:
        raise _error(folder, str(exc)) from None
    transforms = {z: atom_transform(e.shells, convention) for z, e in bh.basis.elements.items()}
    return bh.transform_orbitals(transforms, names=('H', 'S'))


def _shells_by_element(path: Path, numbers: np.ndarray, per_atom: list[tuple[int, ...]]) -> dict:
    shells: dict[int, tuple[int, ...]] = {}
    for n, (z, atom_shells) in enumerate(zip(numbers.tolist(), per_atom, strict=True)):
        if not atom_shells or any(l < 0 or l > _MAX_L for l in atom_shells):
            raise _error(
                path, f'atom {n + 1} has orbital types {list(atom_shells)}; expected l values 0..{_MAX_L}'
            )
        if shells.setdefault(z, atom_shells) != atom_shells:
            raise _error(
                path,
                f'atom {n + 1} ({chemical_symbols[z]}) has shells {list(atom_shells)} but an earlier '
                f'{chemical_symbols[z]} atom has {list(shells[z])}; one basis per element is required',
            )
    return shells


def _check_pairs(path: Path, pairs: np.ndarray, n_atoms: int) -> None:
    atoms = pairs[:, 3:]
    if atoms.min() < 0 or atoms.max() >= n_atoms:
        raise _error(
            path, f'atom indices {atoms.min()}..{atoms.max()} outside the {n_atoms} atoms of the structure'
        )
    if len(np.unique(pairs, axis=0)) != len(pairs):
        raise _error(path, 'contains the same (R, i, j) block twice')


# ------------------------------------------------------------------------------------------------ legacy
def is_deeph_legacy(path: str | Path) -> bool:
    """True for a folder (or a file in one) that looks like a legacy DeepH folder. Never raises."""
    try:
        path = Path(path)
        folder = path.parent if path.is_file() and path.name in _OWN_FILES else path
        names = {'element.dat', 'orbital_types.dat', 'lat.dat', 'site_positions.dat'}
        return all((folder / n).is_file() for n in names) and (
            (folder / _LEGACY_H).is_file() or (folder / _LEGACY_S).is_file()
        )
    except (OSError, ValueError):
        return False


def _legacy_structure(folder: Path, info: dict) -> _Structure:
    lattice = _read_table(folder / 'lat.dat')
    positions = _read_table(folder / 'site_positions.dat')
    numbers = _read_table(folder / 'element.dat').reshape(-1)
    if lattice.shape != (3, 3):
        raise _error(
            folder / 'lat.dat', f'expected 3×3 numbers (columns are lattice vectors), got {lattice.shape}'
        )
    if positions.shape[0] != 3 or positions.shape[1] != len(numbers):
        raise _error(
            folder / 'site_positions.dat',
            f'expected 3×{len(numbers)} numbers (columns are the atoms), got {positions.shape}',
        )
    if np.any(numbers != np.round(numbers)) or numbers.min() < 1 or numbers.max() >= len(chemical_symbols):
        raise _error(folder / 'element.dat', 'expected atomic numbers')
    nsites = info.get('nsites', len(numbers))
    if nsites != len(numbers):
        raise _error(folder / 'info.json', f'nsites = {nsites} but element.dat lists {len(numbers)} atoms')
    numbers = numbers.astype(np.int64)
    return _Structure(lattice.T.copy(), positions.T.copy(), numbers, _legacy_shells(folder, numbers))


def _legacy_shells(folder: Path, numbers: np.ndarray) -> dict[int, tuple[int, ...]]:
    path = folder / 'orbital_types.dat'
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        per_atom = [tuple(int(x) for x in line) for line in lines]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _error(path, f'expected one line of integer l values per atom ({exc})') from None
    if len(per_atom) != len(numbers):
        raise _error(path, f'{len(per_atom)} lines for the {len(numbers)} atoms of element.dat')
    return _shells_by_element(path, numbers, per_atom)


def _parse_key(path: Path, key: str) -> list[int]:
    try:
        values = json.loads(key)
        if len(values) != 5 or not all(isinstance(v, int) for v in values):
            raise ValueError
    except (ValueError, TypeError):
        raise _error(path, f'dataset name {key!r} is not a block key "[R1, R2, R3, i, j]"') from None
    return values[:3] + [values[3] - 1, values[4] - 1]


def _read_legacy_h5(path: Path, counts: np.ndarray, *, spinful: bool, overlap: bool) -> _Blocks:
    with _reading(path), _open_h5(path) as handle:
        keys = list(handle.keys())
        if not keys:
            raise _error(path, 'contains no blocks')
        pairs = np.array([_parse_key(path, key) for key in keys], dtype=np.int64)
        _check_pairs(path, pairs, len(counts))
        order = np.lexsort(pairs.T[::-1])
        blocks = [np.asarray(handle[keys[n]][()]) for n in order]
    pairs = pairs[order]
    if any(b.ndim != 2 for b in blocks):
        raise _error(path, 'every block must be a 2-D matrix')
    shapes = np.array([b.shape for b in blocks], dtype=np.int64)
    entries = np.concatenate([b.reshape(-1) for b in blocks])
    return _from_deeph(path, pairs, shapes, entries, counts, spinful=spinful, overlap=overlap)


def read_deeph_legacy(folder: str | Path) -> BlockHamiltonian:
    """Read a legacy DeepH folder (``hamiltonians.h5``, ``overlaps.h5``, ``*.dat``, ``info.json``)."""
    folder = _folder_of(folder)
    for name in (_LEGACY_H, *_LEGACY_TEXT):
        _require(folder, name, 'legacy')
    info = _read_json(folder / 'info.json')
    structure = _legacy_structure(folder, info)
    counts = structure.counts()
    spinful = bool(info.get('isspinful', False))
    orthogonal = bool(info.get('isorthogonal', False))
    h = _read_legacy_h5(folder / _LEGACY_H, counts, spinful=spinful, overlap=False)
    s = None
    if not orthogonal:
        _require(folder, _LEGACY_S, 'legacy')
        s = _read_legacy_h5(folder / _LEGACY_S, counts, spinful=spinful, overlap=True)
    return _assemble(
        folder,
        structure,
        h,
        s,
        LEGACY_CONVENTION,
        fermi_level=_optional_float(folder / 'info.json', info, 'fermi_level'),
        metadata=_metadata('deeph-legacy', folder, info),
    )


def _metadata(fmt: str, folder: Path, info: dict) -> dict:
    return {'source_format': fmt, 'source_path': str(folder.resolve()), 'deeph_info': info}


# --------------------------------------------------------------------------------------------- new layout
def is_deeph_new(path: str | Path) -> bool:
    """True for a folder (or a file in one) that looks like a new-layout DeepH folder. Never raises."""
    try:
        path = Path(path)
        folder = path.parent if path.is_file() and path.name in _OWN_FILES else path
        if not ((folder / 'POSCAR').is_file() and (folder / 'info.json').is_file()):
            return False
        return (folder / _NEW_H).is_file() or (folder / _NEW_S).is_file()
    except (OSError, ValueError):
        return False


def _read_poscar(path: Path):
    from ase.io import read

    try:
        return read(path, format='vasp')
    except Exception as exc:  # ase raises many kinds of errors on malformed input
        raise _error(path, f'not a readable POSCAR ({type(exc).__name__}: {exc})') from None


def _new_structure(folder: Path, info: dict) -> _Structure:
    atoms = _read_poscar(folder / 'POSCAR')
    info_path = folder / 'info.json'
    orbital_map = info.get('elements_orbital_map')
    if not isinstance(orbital_map, dict):
        raise _error(info_path, 'elements_orbital_map (element -> list of l) is missing')
    per_atom = []
    for symbol in atoms.get_chemical_symbols():
        if symbol not in orbital_map:
            raise _error(info_path, f'elements_orbital_map has no entry for {symbol} (present in POSCAR)')
        try:
            per_atom.append(tuple(int(l) for l in orbital_map[symbol]))
        except (TypeError, ValueError):
            raise _error(info_path, f'elements_orbital_map[{symbol!r}] is not a list of l values') from None
    structure = _Structure(
        atoms.cell.array.copy(), atoms.positions.copy(), atoms.numbers.astype(np.int64), {}
    )
    structure.shells = _shells_by_element(info_path, structure.numbers, per_atom)
    _check_quantities(info_path, info, structure)
    return structure


def _check_quantities(path: Path, info: dict, structure: _Structure) -> None:
    n_atoms, n_orbitals = len(structure.numbers), int(structure.counts().sum())
    if info.get('atoms_quantity', n_atoms) != n_atoms:
        raise _error(path, f'atoms_quantity = {info["atoms_quantity"]} but POSCAR has {n_atoms} atoms')
    if info.get('orbits_quantity', n_orbitals) != n_orbitals:
        raise _error(
            path, f'orbits_quantity = {info["orbits_quantity"]} but the orbital map gives {n_orbitals}'
        )


def _read_chunks(path: Path, n_atoms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``atom_pairs``, ``chunk_shapes`` and ``entries`` of a new-layout file, checked for consistency."""
    with _reading(path), _open_h5(path) as handle:
        missing = [key for key in _CHUNK_KEYS if key not in handle]
        if missing:
            raise _error(path, f'not a DeepH block file: no dataset(s) {", ".join(missing)}')
        pairs, bounds, shapes, entries = (np.asarray(handle[key][()]) for key in _CHUNK_KEYS)
    p = len(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 5 or not p:
        raise _error(path, f'atom_pairs must be a non-empty P×5 array, got shape {pairs.shape}')
    if bounds.shape != (p + 1,) or shapes.shape != (p, 2) or entries.ndim != 1:
        raise _error(
            path,
            f'inconsistent shapes: atom_pairs {pairs.shape}, chunk_boundaries {bounds.shape}, '
            f'chunk_shapes {shapes.shape}, entries {entries.shape} (expected P×5, P+1, P×2, flat)',
        )
    pairs, bounds, shapes = (a.astype(np.int64) for a in (pairs, bounds, shapes))
    if bounds[0] != 0 or np.any(np.diff(bounds) != shapes.prod(axis=1)) or bounds[-1] != len(entries):
        raise _error(path, f'chunk_boundaries do not match chunk_shapes and the {len(entries)} entries')
    _check_pairs(path, pairs, n_atoms)
    return pairs, shapes, entries


def _split_hkb(path: Path, info: dict) -> bool:
    split = info.get('split_hkb')
    if split is None:
        return info.get('hamiltonian_storage', 'full') not in (None, 'full')
    if not isinstance(split, bool):
        raise _error(path, f'split_hkb must be true or false, got {split!r}')
    return split


def _new_hamiltonian(folder: Path, info: dict, counts: np.ndarray) -> _Blocks:
    """H of a new-layout folder; with ``split_hkb`` it is 1₂ ⊗ hamiltonian.h5 + hkb.h5."""
    info_path, path = folder / 'info.json', folder / _NEW_H
    spinful, split = bool(info.get('spinful', False)), _split_hkb(info_path, info)
    if split and not spinful:
        raise _error(info_path, 'split_hkb = true needs spinful = true')
    h = _from_deeph(
        path, *_read_chunks(path, len(counts)), counts, spinful=spinful and not split, overlap=False
    )
    if not split:
        return h
    path = _require(folder, _NEW_HKB, 'split-HKB')
    kb = _from_deeph(path, *_read_chunks(path, len(counts)), counts, spinful=True, overlap=False)
    pairs = _union(h.pairs, kb.pairs)
    full = _on_pairs(kb, pairs, counts).astype(np.complex128)
    base = _on_pairs(h, pairs, counts)
    area = counts[pairs[:, 3]] * counts[pairs[:, 4]]
    block, within = _block_index(area)
    start = 4 * (np.cumsum(area) - area)[block] + within
    full[start] += base
    full[start + 3 * area[block]] += base
    return _Blocks(pairs, full, 4)


def read_deeph_new(folder: str | Path) -> BlockHamiltonian:
    """Read a new-layout DeepH folder (``POSCAR``, ``info.json``, ``hamiltonian.h5``, ``overlap.h5``)."""
    folder = _folder_of(folder)
    for name in ('POSCAR', 'info.json', _NEW_H):
        _require(folder, name, 'new-layout')
    info = _read_json(folder / 'info.json')
    structure = _new_structure(folder, info)
    counts = structure.counts()
    h = _new_hamiltonian(folder, info, counts)
    s = None
    if not info.get('orthogonal_basis', False):
        path = _require(folder, _NEW_S, 'new-layout')
        spinful = bool(info.get('spinful', False))
        s = _from_deeph(path, *_read_chunks(path, len(counts)), counts, spinful=spinful, overlap=True)
    info_path = folder / 'info.json'
    return _assemble(
        folder,
        structure,
        h,
        s,
        NEW_CONVENTION,
        fermi_level=_optional_float(info_path, info, 'fermi_energy_eV'),
        n_electrons=_optional_float(info_path, info, 'occupation'),
        metadata=_metadata('deeph', folder, info),
    )


def read_deeph(folder: str | Path) -> BlockHamiltonian:
    """Read a DeepH folder of either layout (the new layout wins when both are present)."""
    folder = _folder_of(folder)
    if is_deeph_new(folder):
        return read_deeph_new(folder)
    if is_deeph_legacy(folder):
        return read_deeph_legacy(folder)
    raise _error(
        folder,
        'not a DeepH folder: expected POSCAR, info.json and hamiltonian.h5 (new layout) or '
        'hamiltonians.h5, overlaps.h5, element.dat, orbital_types.dat, lat.dat, site_positions.dat '
        'and info.json (legacy layout)',
    )


# ------------------------------------------------------------------------------------------------ writers
def _prepare(
    bh: BlockHamiltonian, folder: str | Path, convention: Convention
) -> tuple[BlockHamiltonian, Path]:
    """``bh`` in the code's orbital convention (identity S if it has none), and the created folder.

    A folder holding the other layout's block files is refused: readers would pick the stale layout.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise _error(folder, 'exists and is not a folder')
    other = (_NEW_H, _NEW_S) if convention is LEGACY_CONVENTION else (_LEGACY_H, _LEGACY_S)
    stale = [name for name in other if (folder / name).exists()]
    if stale:
        raise _error(
            folder, f'already holds {", ".join(stale)} of the other DeepH layout; use another folder'
        )
    folder.mkdir(parents=True, exist_ok=True)
    if bh.overlap is None:
        bh = bh.replace(overlap=_identity_overlap(bh))
    transforms = {z: atom_transform(e.shells, convention).T for z, e in bh.basis.elements.items()}
    return bh.transform_orbitals(transforms, names=('H', 'S')), folder


def _identity_overlap(bh: BlockHamiltonian) -> np.ndarray:
    """S of an orthogonal basis: identity on-site blocks, zero elsewhere."""
    counts = bh.orbital_counts
    sizes = counts[bh.pairs[:, 3]] * counts[bh.pairs[:, 4]]
    block, within = _block_index(sizes)
    n = counts[bh.pairs[:, 3]][block]
    onsite = ((bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1))[block]
    return (onsite & (within // n == within % n)).astype(np.float64)


def _element_shells(bh: BlockHamiltonian) -> dict[str, list[int]]:
    """Symbol -> shells, in order of first appearance in the structure."""
    order = dict.fromkeys(int(z) for z in bh.numbers)
    return {chemical_symbols[z]: list(bh.basis[z].shells) for z in order}


def _dump_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def write_deeph_legacy(bh: BlockHamiltonian, folder: str | Path) -> Path:
    """Write ``bh`` as a legacy DeepH folder (OpenMX orbital order, 1-based atoms); returns the folder.

    The legacy ``info.json`` has no electron count: ``n_electrons`` is not written.
    """
    orthogonal = bh.overlap is None
    out, folder = _prepare(bh, folder, LEGACY_CONVENTION)
    np.savetxt(folder / 'lat.dat', bh.lattice.T, fmt='%.17g')
    np.savetxt(folder / 'rlat.dat', 2 * np.pi * np.linalg.inv(bh.lattice), fmt='%.17g')
    np.savetxt(folder / 'site_positions.dat', bh.positions.T, fmt='%.17g')
    np.savetxt(folder / 'element.dat', bh.numbers, fmt='%d')
    lines = ['  '.join(str(l) for l in bh.basis[z].shells) for z in bh.numbers]
    (folder / 'orbital_types.dat').write_text('\n'.join(lines) + '\n')
    info = {
        'nsites': bh.n_atoms,
        'isorthogonal': orthogonal,
        'isspinful': bh.spin == 'spinor',
        'fermi_level': bh.fermi_level,
    }
    _dump_json(folder / 'info.json', info)
    for name, filename in (('H', _LEGACY_H), ('S', _LEGACY_S)):
        _write_legacy_h5(out, name, folder / filename)
    return folder


def _write_legacy_h5(bh: BlockHamiltonian, name: str, path: Path) -> None:
    data, shapes = _to_deeph(bh, name), _chunk_shapes(bh, name)
    offsets = bh.block_offsets(name)
    with h5py.File(path, 'w') as handle:
        for p, (r1, r2, r3, i, j) in enumerate(bh.pairs.tolist()):
            key = f'[{r1}, {r2}, {r3}, {i + 1}, {j + 1}]'
            handle.create_dataset(key, data=data[offsets[p] : offsets[p + 1]].reshape(shapes[p]))


def write_deeph_new(bh: BlockHamiltonian, folder: str | Path) -> Path:
    """Write ``bh`` as a new-layout DeepH folder (m = -l..l order, 0-based atoms); returns the folder."""
    orthogonal = bh.overlap is None
    out, folder = _prepare(bh, folder, NEW_CONVENTION)
    (folder / 'POSCAR').write_text(_poscar_text(bh))
    info = {
        'atoms_quantity': bh.n_atoms,
        'orbits_quantity': bh.n_orbitals,
        'orthogonal_basis': orthogonal,
        'spinful': bh.spin == 'spinor',
        'fermi_energy_eV': bh.fermi_level,
        'elements_orbital_map': _element_shells(bh),
    }
    if bh.n_electrons is not None:
        count = float(bh.n_electrons)
        info['occupation'] = int(count) if count.is_integer() else count
    _dump_json(folder / 'info.json', info)
    for name, filename in (('H', _NEW_H), ('S', _NEW_S)):
        _write_chunks(out, name, folder / filename)
    return folder


def _write_chunks(bh: BlockHamiltonian, name: str, path: Path) -> None:
    shapes = _chunk_shapes(bh, name)
    bounds = np.concatenate([[0], np.cumsum(shapes.prod(axis=1))]).astype(np.int64)
    with h5py.File(path, 'w') as handle:
        handle.create_dataset('atom_pairs', data=bh.pairs.astype(np.int64))
        handle.create_dataset('chunk_boundaries', data=bounds)
        handle.create_dataset('chunk_shapes', data=shapes)
        handle.create_dataset('entries', data=_to_deeph(bh, name))


def _poscar_text(bh: BlockHamiltonian) -> str:
    """A Cartesian POSCAR keeping the atom order (repeated species runs) and every bit of the floats."""
    runs = [
        (symbol, len(list(group)))
        for symbol, group in itertools.groupby(chemical_symbols[z] for z in bh.numbers)
    ]
    rows = [' '.join(f'{float(x)!r:>24}' for x in row) for row in (*bh.lattice, *bh.positions)]
    lines = [
        f'{bh.formula} written by aiida-nextham',
        '1.0',
        *rows[:3],
        ' '.join(symbol for symbol, _ in runs),
        ' '.join(str(count) for _, count in runs),
        'Cartesian',
        *rows[3:],
    ]
    return '\n'.join(lines) + '\n'


register_format(
    Format(
        name='deeph-legacy',
        description='DeepH legacy folder: hamiltonians.h5, overlaps.h5 (dataset per block), *.dat, info.json',
        detect=is_deeph_legacy,
        read=read_deeph_legacy,
        write=write_deeph_legacy,
    )
)
register_format(
    Format(
        name='deeph',
        description='DeepH folder, new layout: POSCAR, info.json, hamiltonian.h5, overlap.h5 (chunked)',
        detect=is_deeph_new,
        read=read_deeph_new,
        write=write_deeph_new,
    )
)
