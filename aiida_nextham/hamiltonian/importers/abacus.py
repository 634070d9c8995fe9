"""ABACUS real-space H(R), S(R) (``out_mat_hs2`` / ``out_hsr 1`` CSR text files) -> BlockHamiltonian.

Two layouts of the same CSR content are read:

* old (ABACUS <= 3.10): ``data-HR-sparse_SPIN0.csr``, ``data-SR-sparse_SPIN0.csr``. Header
  ``STEP: 0`` / ``Matrix Dimension of H(R): n`` / ``Matrix number of H(R): m``; then for every R
  (also those without non-zeros) a line ``R1 R2 R3 nnz`` and, when nnz > 0, one line each of
  values, column indices and row pointers.
* new (ABACUS >= 3.11): ``hrs1_nao.csr`` (``hrs2_nao.csr`` for spin down) and ``srs1_nao.csr`` or
  ``sr_nao.csr``. Header ``--- Ionic Step 1 ---`` with the basis size and the number of R, then
  the unit cell (lattice constant in Å, printed to 6 digits), then blocks ``R1 R2 R3 nnz`` with
  ``# CSR values`` / ``# CSR column indices`` / ``# CSR row pointers`` sections wrapped over lines.
  Blocks without non-zeros are not written.

Row = orbital of the home cell, column = orbital of cell R: ``H(R)[μ, ν] = <μ, 0|H|ν, R>``.
Orbitals: atoms in STRU order; per atom l ascending, then zeta, then m in ABACUS's order
(0, 1, -1, 2, -2, ...; see :data:`ABACUS_CONVENTION`). For nspin = 4 the spin index is innermost
(matrix index = 2·orbital + spin) and values are written ``(re,im)``. H is in Rydberg, S is
dimensionless, LATTICE_CONSTANT is in Bohr. Units are converted with ABACUS's own constants (not CODATA).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
from ase.data import atomic_numbers

from ..basis import Basis, ElementBasis
from ..block import BlockHamiltonian, HamiltonianError
from ..conventions import Convention, atom_transform, register_convention
from . import Format, register_format

__all__ = ['ABACUS_CONVENTION', 'BOHR_ANGSTROM', 'RYDBERG_EV', 'detect', 'read_abacus', 'read_abacus_csr']

# ABACUS's own constants (source_base/constants.h): the eV and Å values it prints itself (EFERMI,
# band energies, STRU.cif) are made with these, so converting with them reproduces its output.
RYDBERG_EV: float = 13.605698
BOHR_ANGSTROM: float = 0.529177


def _abacus_order(l: int) -> tuple[tuple[int, int], ...]:
    """ABACUS storage order of shell l: m = 0, 1, -1, 2, -2, ..., each with sign (-1)^m."""
    order = [(0, 1)]
    for m in range(1, l + 1):
        order += [(m, (-1) ** m), (-m, (-1) ** m)]
    return tuple(order)


#: ABACUS real harmonics (``ModuleBase::Ylm::sph_harm`` / ``get_ylm_real``): the standard ones
#: times the Condon-Shortley phase (-1)^m, stored as m = 0, +1, -1, +2, -2, ...
#: l=1: (z, -x, -y); l=2: (3z²-r², -xz, -yz, x²-y², xy).
ABACUS_CONVENTION = register_convention(
    Convention(
        'abacus',
        order={l: _abacus_order(l) for l in range(6)},
        description='ABACUS Ylm: m = 0, 1, -1, 2, -2, ..., standard real harmonics times (-1)^m',
    )
)

_SUFFIXES = ('.csr', '.csr.ref')
_OLD_H = re.compile(r'^data-HR-sparse_SPIN(\d)$')
_NEW_H = re.compile(r'^hrs(\d)((?:g\d+)?)_nao$')
_OLD_DIM = re.compile(r'Matrix Dimension of\s+(\S+?)\(R\)\s*:\s*(\S+)')
_OLD_NUM = re.compile(r'Matrix number of\s+(\S+?)\(R\)\s*:\s*(\S+)')
_NEW_FIELDS = {
    'number of spin directions': 'nspin',
    'spin index': 'spin_index',
    'number of localized basis': 'dimension',
    'number of Bravais lattice vector R': 'declared',
}
_LABEL = re.compile(
    r'^\s*Matrix Dimension of\s+(\S+?)\(R\)|^\s*# print\s+(\S+)\s+matrix in real', re.MULTILINE
)
_PARENS = str.maketrans('(,)', '   ')


# ---------------------------------------------------------------------------------------- CSR files
@dataclass
class _Header:
    layout: str  # 'old' or 'new'
    label: str  # matrix name in the header: 'H', 'S', ...
    dimension: int
    declared: int  # number of R blocks the header announces
    data_start: int  # index of the first line after the header
    nspin: int | None = None
    cell: dict | None = None
    folded: bool = False


@dataclass
class _CsrFile:
    path: Path
    header: _Header
    matrices: dict[tuple[int, int, int], scipy.sparse.csr_matrix] = field(default_factory=dict)


def read_abacus_csr(path: str | Path) -> tuple[int, dict[tuple[int, int, int], scipy.sparse.csr_matrix]]:
    """Read one ABACUS CSR file (H, S, any layout) exactly as written: no unit or order conversion.

    :return: the matrix dimension and ``{(R1, R2, R3): sparse matrix}`` (float64, or complex128
        for ``(re,im)`` values, i.e. nspin = 4).
    :raises HamiltonianError: naming the file (and line) when it is not a complete ABACUS CSR file.
    """
    csr = _read_csr(Path(path))
    return csr.header.dimension, csr.matrices


def _read_csr(path: Path) -> _CsrFile:
    lines = _read_text(path).splitlines()
    header = _parse_header(lines, path)
    if header.folded:
        raise HamiltonianError(
            f'{path}: a gamma-only calculation wrote a folded matrix (all R summed into R = 0); '
            'it is not a real-space H(R). Rerun with gamma_only 0 and a Gamma-only KPT file.'
        )
    tokens, where = _data_tokens(lines, header.data_start, path)
    matrices = _parse_blocks(tokens, header, path, where)
    return _CsrFile(path, header, matrices)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HamiltonianError(f'{path}: cannot read the file ({exc.strerror or exc})') from None
    _check_text(raw[:4096], path)
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as exc:
        raise HamiltonianError(f'{path}: not a text file (undecodable byte at offset {exc.start})') from None


def _check_text(head: bytes, path: Path) -> None:
    if head.startswith(b'\x89HDF') or b'\x00' in head:
        raise HamiltonianError(
            f'{path}: a binary file (e.g. HDF5 or Fortran records), not an ABACUS CSR text file'
        )


def _sniff_label(path: Path) -> str:
    """Matrix label (``'H'``, ``'S'``, ...) of a CSR file from its first 4 kB; raises if it is none."""
    with path.open('rb') as handle:
        head = handle.read(4096)
    _check_text(head, path)
    match = _LABEL.search(head.decode('utf-8', errors='replace'))
    if match is None:
        raise HamiltonianError(
            f'{path}: not an ABACUS CSR file (no "Matrix Dimension of X(R)" or "# print X matrix" header)'
        )
    return match[1] or match[2]


def _parse_header(lines: list[str], path: Path) -> _Header:
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise HamiltonianError(f'{path}: the file is empty')
    head = lines[first].strip()
    if head.startswith(('STEP:', 'Matrix Dimension')):
        return _old_header(lines, first, path)
    if head.startswith('--- Ionic Step'):
        return _new_header(lines, first, path)
    raise HamiltonianError(
        f'{path}: not an ABACUS CSR file: line {first + 1} is {head[:60]!r}, expected "STEP: 0" / '
        '"Matrix Dimension of H(R): n" (old layout) or "--- Ionic Step 1 ---" (new layout)'
    )


def _old_header(lines: list[str], n: int, path: Path) -> _Header:
    if lines[n].strip().startswith('STEP:'):
        n += 1
    dim = _OLD_DIM.search(lines[n]) if n < len(lines) else None
    num = _OLD_NUM.search(lines[n + 1]) if n + 1 < len(lines) else None
    if dim is None or num is None:
        raise HamiltonianError(
            f'{path}: line {n + 1}: expected "Matrix Dimension of X(R): n" and "Matrix number of X(R): m"; '
            'the header is incomplete or garbled'
        )
    dimension = _header_int(dim[2], path, n + 1, 'matrix dimension')
    declared = _header_int(num[2], path, n + 2, 'number of R')
    return _Header('old', dim[1], dimension, declared, n + 2)


def _new_header(lines: list[str], n: int, path: Path) -> _Header:
    values, label, k = {}, '?', n + 1
    while k < len(lines) and len(values) < len(_NEW_FIELDS):
        text = lines[k].strip()
        if text.startswith('# print'):
            match = re.search(r'print\s+(\S+)\s+matrix', text)
            label = match[1] if match else '?'
        elif '#' in text and not text.startswith('#'):
            value, _, name = text.partition('#')
            if name.strip() in _NEW_FIELDS:
                values[_NEW_FIELDS[name.strip()]] = _header_int(value.strip(), path, k + 1, name.strip())
        k += 1
    missing = sorted(set(_NEW_FIELDS.values()) - set(values))
    if missing:
        raise HamiltonianError(
            f'{path}: the header lacks {", ".join(missing)}: the file is truncated or garbled'
        )
    cell_lines = []
    while k < len(lines) and not lines[k].lstrip().startswith('#'):
        if lines[k].strip():
            cell_lines.append((k + 1, lines[k].split()))
        k += 1
    folded = k < len(lines) and 'gamma-only folded' in lines[k]
    cell = _new_cell(cell_lines, path) if cell_lines else None
    return _Header('new', label, values['dimension'], values['declared'], k, values['nspin'], cell, folded)


def _new_cell(cell_lines: list[tuple[int, list[str]]], path: Path) -> dict:
    """The unit cell of a new-layout header (lattice constant in Å, 6 significant digits)."""
    try:
        scale = float(cell_lines[1][1][0])
        vectors = np.array([[float(x) for x in cell_lines[i][1][:3]] for i in (2, 3, 4)])
        labels = cell_lines[5][1]
        counts = [int(x) for x in cell_lines[6][1]]
        rows = cell_lines[8 : 8 + sum(counts)]
        fractional = np.array([[float(x) for x in row[:3]] for _, row in rows])
    except (IndexError, ValueError):
        line = cell_lines[0][0] if cell_lines else '?'
        raise HamiltonianError(
            f'{path}: the unit-cell header starting at line {line} is garbled or incomplete'
        ) from None
    if len(fractional) != sum(counts) or len(labels) != len(counts):
        raise HamiltonianError(
            f'{path}: the unit-cell header lists {len(fractional)} positions for counts {counts}'
        )
    return {
        'lattice': vectors * scale,
        'labels': [lab for lab, c in zip(labels, counts, strict=True) for _ in range(c)],
        'fractional': fractional,
    }


def _header_int(text: str, path: Path, line: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HamiltonianError(f'{path}: line {line}: {what} {text!r} is not an integer') from None
    if value < 0:
        raise HamiltonianError(f'{path}: line {line}: {what} {value} is negative')
    return value


def _data_tokens(lines: list[str], start: int, path: Path):
    """All numbers after the header, and a function mapping a token index to its line number."""
    kept = []
    for n in range(start, len(lines)):
        text = lines[n].lstrip()
        if not text or text[0] == '#':
            continue
        if text.startswith(('STEP:', '--- Ionic Step', 'Matrix Dimension')):
            raise HamiltonianError(
                f'{path}: line {n + 1}: a second ionic step starts here; files with several steps '
                '(out_app_flag) are not supported, split them first'
            )
        kept.append(n)
    tokens = ' '.join(lines[n] for n in kept).split()

    def where(index: int) -> str:
        counts = np.cumsum([len(lines[n].split()) for n in kept])
        row = int(np.searchsorted(counts, index, side='right'))
        return f'line {kept[row] + 1}' if row < len(kept) else 'end of file'

    return tokens, where


def _parse_blocks(tokens: list[str], header: _Header, path: Path, where) -> dict:
    dim, matrices, pos = header.dimension, {}, 0
    while pos < len(tokens):
        if header.layout == 'old' and len(matrices) == header.declared:
            raise HamiltonianError(
                f'{path}: {where(pos)}: data after the {header.declared} R blocks the header declares'
            )
        if pos + 4 > len(tokens):
            raise HamiltonianError(f'{path}: the file ends inside an R-block header: the file is truncated')
        r1, r2, r3, nnz = _integers(tokens, pos, 4, path, where, 'R-block header "R1 R2 R3 nnz"')
        if nnz < 0 or nnz > dim * dim:
            raise HamiltonianError(f'{path}: {where(pos)}: {nnz} non-zeros for a {dim}x{dim} matrix')
        cell = (int(r1), int(r2), int(r3))
        if cell in matrices:
            raise HamiltonianError(f'{path}: {where(pos)}: R = {cell} appears twice')
        matrices[cell], pos = _parse_block(tokens, pos + 4, int(nnz), dim, path, where, cell)
    _check_block_count(len(matrices), header, path)
    return matrices


def _check_block_count(found: int, header: _Header, path: Path) -> None:
    if found >= header.declared:
        return
    message = f'{path}: the header declares {header.declared} R blocks but the file holds {found}'
    if header.layout == 'old':
        raise HamiltonianError(message + ': the file is truncated')
    # the new layout omits blocks without non-zeros, so fewer blocks can be legitimate
    warnings.warn(message + ' (blocks without non-zeros are omitted, or the file is truncated)', stacklevel=4)


def _parse_block(tokens, pos: int, nnz: int, dim: int, path: Path, where, cell):
    if nnz == 0:
        return scipy.sparse.csr_matrix((dim, dim)), pos
    end = pos + 2 * nnz + dim + 1
    if end > len(tokens):
        raise HamiltonianError(
            f'{path}: the file ends inside the block R = {cell} ({end - len(tokens)} numbers missing): '
            'the file is truncated'
        )
    values = _values(tokens, pos, nnz, path, where)
    columns = _integers(tokens, pos + nnz, nnz, path, where, 'column index')
    pointers = _integers(tokens, pos + 2 * nnz, dim + 1, path, where, 'row pointer')
    if pointers[0] != 0 or pointers[-1] != nnz or np.any(np.diff(pointers) < 0):
        raise HamiltonianError(
            f'{path}: {where(pos + 2 * nnz)}: row pointers of R = {cell} are not 0..{nnz} ascending '
            '(wrong counts or garbled numbers)'
        )
    if columns.min() < 0 or columns.max() >= dim:
        raise HamiltonianError(
            f'{path}: {where(pos + nnz)}: a column index of R = {cell} is outside 0..{dim - 1}'
        )
    return scipy.sparse.csr_matrix((values, columns, pointers), shape=(dim, dim)), end


def _values(tokens, pos: int, count: int, path: Path, where) -> np.ndarray:
    chunk = tokens[pos : pos + count]
    try:
        if chunk[0].startswith('('):
            numbers = ' '.join(chunk).translate(_PARENS).split()
            if len(numbers) != 2 * count:
                raise ValueError
            pairs = np.array(numbers, dtype=np.float64).reshape(-1, 2)
            values = pairs[:, 0] + 1j * pairs[:, 1]
        else:
            values = np.array(chunk, dtype=np.float64)
    except ValueError:
        raise HamiltonianError(f'{path}: {_bad_token(chunk, pos, where, _is_value)}: not a number') from None
    if not np.all(np.isfinite(values)):
        raise HamiltonianError(f'{path}: {where(pos)}: non-finite matrix element (nan or inf)')
    return values


def _integers(tokens, pos: int, count: int, path: Path, where, what: str) -> np.ndarray:
    chunk = tokens[pos : pos + count]
    try:
        return np.array(chunk, dtype=np.int64)
    except ValueError:
        raise HamiltonianError(
            f'{path}: {_bad_token(chunk, pos, where, _is_int)}: expected an integer ({what})'
        ) from None


def _is_value(token: str) -> bool:
    parts = token.translate(_PARENS).split() if token.startswith('(') else [token]
    try:
        [float(part) for part in parts]
    except ValueError:
        return False
    return len(parts) in (1, 2)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _bad_token(chunk: list[str], pos: int, where, valid) -> str:
    index = next((i for i, token in enumerate(chunk) if not valid(token)), 0)
    return f'{where(pos + index)}: {chunk[index][:40]!r}' if chunk else where(pos)


# ------------------------------------------------------------------------------- STRU, INPUT, logs
_STRU_SECTIONS = (
    'ATOMIC_SPECIES',
    'NUMERICAL_ORBITAL',
    'LATTICE_CONSTANT',
    'LATTICE_VECTORS',
    'LATTICE_PARAMETERS',
    'ATOMIC_POSITIONS',
    'NUMERICAL_DESCRIPTOR',
    'ABFS_ORBITAL',
    'PAW_FILES',
)
_CENTERS = {'xy': (0.5, 0.5, 0.0), 'xz': (0.5, 0.0, 0.5), 'yz': (0.0, 0.5, 0.5), 'xyz': (0.5, 0.5, 0.5)}


@dataclass
class _Structure:
    labels: list[str]  # species labels as in STRU
    orbitals: list[str | None]  # orbital file of each species
    lattice: np.ndarray  # Å, rows
    positions: np.ndarray  # Å, Cartesian
    species: np.ndarray  # species index of every atom


def _strip_comment(line: str) -> str:
    return re.split(r'#|//', line, maxsplit=1)[0].strip()


def _read_input(path: Path) -> dict[str, str]:
    """``key value`` pairs of an ABACUS INPUT file (keys lower case); empty when absent."""
    if not path.is_file():
        return {}
    params = {}
    for line in _read_text(path).splitlines():
        words = _strip_comment(line).split()
        if len(words) >= 2:
            params[words[0].lower()] = words[1]
    return params


def _stru_sections(path: Path) -> dict[str, list[tuple[int, list[str]]]]:
    sections, current = {}, None
    for number, raw in enumerate(_read_text(path).splitlines(), 1):
        words = _strip_comment(raw).split()
        if not words:
            continue
        if words[0] in _STRU_SECTIONS:
            current = sections.setdefault(words[0], [])
            words = words[1:]
        if words and current is not None:
            current.append((number, words))
    return sections


def _read_stru(path: Path, params: dict[str, str]) -> _Structure:
    sections = _stru_sections(path)
    for name in ('ATOMIC_SPECIES', 'LATTICE_CONSTANT', 'ATOMIC_POSITIONS'):
        if not sections.get(name):
            raise HamiltonianError(f'{path}: no {name} section; is this an ABACUS STRU file?')
    labels = [words[0] for _, words in sections['ATOMIC_SPECIES']]
    orbitals = [words[0] for _, words in sections.get('NUMERICAL_ORBITAL', [])]
    if orbitals and len(orbitals) != len(labels):
        raise HamiltonianError(f'{path}: {len(orbitals)} NUMERICAL_ORBITAL files for {len(labels)} species')
    lat0 = _stru_floats(sections['LATTICE_CONSTANT'][:1], 1, path)[0] * BOHR_ANGSTROM
    lattice = _lattice_vectors(sections, params, path) * lat0
    species, coords, kind = _atomic_positions(sections['ATOMIC_POSITIONS'], labels, path)
    positions = _cartesian(coords, kind, lattice, lat0, path)
    return _Structure(labels, orbitals or [None] * len(labels), lattice, positions, species)


def _stru_floats(rows: list[tuple[int, list[str]]], count: int, path: Path) -> np.ndarray:
    if not rows:
        raise HamiltonianError(f'{path}: a section ends early: the STRU file is incomplete')
    number, words = rows[0]
    try:
        values = np.array(words[:count], dtype=np.float64)
    except ValueError:
        raise HamiltonianError(
            f'{path}: line {number}: expected {count} number(s), got {" ".join(words)!r}'
        ) from None
    if len(values) < count:
        raise HamiltonianError(f'{path}: line {number}: expected {count} numbers, got {len(values)}')
    return values


def _lattice_vectors(sections: dict, params: dict[str, str], path: Path) -> np.ndarray:
    """Lattice vectors in units of LATTICE_CONSTANT (explicit or from ``latname``)."""
    latname = params.get('latname', 'none').lower()
    if sections.get('LATTICE_VECTORS'):
        rows = sections['LATTICE_VECTORS']
        return np.array([_stru_floats(rows[i : i + 1], 3, path) for i in range(3)])
    if latname in ('none', 'user_defined_lattice'):
        raise HamiltonianError(f'{path}: no LATTICE_VECTORS and no latname in INPUT: the cell is unknown')
    if latname not in _LATNAMES:
        raise HamiltonianError(f'{path}: latname {latname!r} is not supported; known: {", ".join(_LATNAMES)}')
    needed = _LATNAMES[latname][0]
    rows = sections.get('LATTICE_PARAMETERS', [])
    if needed and not rows:
        raise HamiltonianError(f'{path}: latname {latname} needs LATTICE_PARAMETERS ({needed} numbers)')
    parameters = _stru_floats(rows[:1], needed, path) if needed else np.zeros(0)
    return np.asarray(_LATNAMES[latname][1](*parameters), dtype=np.float64)


def _trigonal(cos_g: float) -> list:
    t1, t2 = np.sqrt(1 + 2 * cos_g), np.sqrt(1 - cos_g)
    x, y, z = t2 / np.sqrt(2), -t2 / np.sqrt(6), t1 / np.sqrt(3)
    return [[x, y, z], [0, -2 * y, z], [-x, y, z]]


def _triclinic(b: float, c: float, cos_ab: float, cos_ac: float, cos_bc: float) -> list:
    sin_ab = np.sqrt(1 - cos_ab**2)
    term = 1 + 2 * cos_ab * cos_ac * cos_bc - cos_ab**2 - cos_ac**2 - cos_bc**2
    return [
        [1, 0, 0],
        [b * cos_ab, b * sin_ab, 0],
        [c * cos_ac, c * (cos_bc - cos_ac * cos_ab) / sin_ab, c * np.sqrt(term) / sin_ab],
    ]


#: ABACUS ``latname`` -> (number of LATTICE_PARAMETERS, vectors in units of the lattice constant)
_LATNAMES = {
    'sc': (0, lambda: np.eye(3)),
    'fcc': (0, lambda: [[-0.5, 0, 0.5], [0, 0.5, 0.5], [-0.5, 0.5, 0]]),
    'bcc': (0, lambda: [[0.5, 0.5, 0.5], [-0.5, 0.5, 0.5], [-0.5, -0.5, 0.5]]),
    'hexagonal': (1, lambda c: [[1, 0, 0], [-0.5, np.sqrt(3) / 2, 0], [0, 0, c]]),
    'trigonal': (1, _trigonal),
    'st': (1, lambda c: [[1, 0, 0], [0, 1, 0], [0, 0, c]]),
    'bct': (1, lambda c: [[0.5, -0.5, c / 2], [0.5, 0.5, c / 2], [-0.5, -0.5, c / 2]]),
    'so': (2, lambda b, c: np.diag([1, b, c])),
    'baco': (2, lambda b, c: [[0.5, b / 2, 0], [-0.5, b / 2, 0], [0, 0, c]]),
    'fco': (2, lambda b, c: [[0.5, 0, c / 2], [0.5, b / 2, 0], [0, b / 2, c / 2]]),
    'bco': (2, lambda b, c: [[0.5, b / 2, c / 2], [-0.5, b / 2, c / 2], [-0.5, -b / 2, c / 2]]),
    'sm': (3, lambda b, c, g: [[1, 0, 0], [b * g, b * np.sqrt(1 - g * g), 0], [0, 0, c]]),
    'bacm': (3, lambda b, c, g: [[0.5, 0, -c / 2], [b * g, b * np.sqrt(1 - g * g), 0], [0.5, 0, c / 2]]),
    'triclinic': (5, _triclinic),
}


def _atomic_positions(rows, labels: list[str], path: Path):
    """Species index and raw coordinates of every atom, and the coordinate type."""
    kind, k, species, coords = rows[0][1][0], 1, [], []
    try:
        while k < len(rows):
            number, words = rows[k]
            if words[0] not in labels:
                raise HamiltonianError(
                    f'{path}: line {number}: species {words[0]!r} is not in ATOMIC_SPECIES'
                )
            count = int(rows[k + 2][1][0])
            block = rows[k + 3 : k + 3 + count]
            if len(block) < count:
                raise IndexError
            coords += [_stru_floats([row], 3, path) for row in block]
            species += [labels.index(words[0])] * count
            k += 3 + count
    except IndexError:
        raise HamiltonianError(f'{path}: ATOMIC_POSITIONS ends early: the STRU file is incomplete') from None
    except ValueError:
        raise HamiltonianError(
            f'{path}: line {rows[k + 2][0]}: the number of atoms is not an integer'
        ) from None
    if not coords:
        raise HamiltonianError(f'{path}: ATOMIC_POSITIONS lists no atoms')
    return np.array(species), np.array(coords), kind


def _cartesian(coords: np.ndarray, kind: str, lattice: np.ndarray, lat0: float, path: Path) -> np.ndarray:
    """Cartesian positions in Å from STRU coordinates of type ``kind``."""
    if kind == 'Direct':
        return coords @ lattice
    if kind == 'Cartesian':
        return coords * lat0
    if kind == 'Cartesian_au':
        return coords * BOHR_ANGSTROM
    if kind == 'Cartesian_angstrom':
        return coords
    center = kind.removeprefix('Cartesian_angstrom_center_')
    if center in _CENTERS:
        return coords + np.array(_CENTERS[center]) @ lattice
    raise HamiltonianError(f'{path}: unknown ATOMIC_POSITIONS coordinate type {kind!r}')


# --------------------------------------------------------------------------------- orbital basis
_ORB_SHELL = re.compile(r'Number of\s*([SPDFGH])orbital-->\s*(\d+)', re.IGNORECASE)
_NAME_SHELLS = re.compile(r'(?:\d+[spdfgh])+')
_LOG_TYPE = re.compile(
    r'READING ATOM TYPE\s+\d+\s*\n\s*atom label\s*=\s*(\S+)\s*\n'
    r'((?:\s*L=\d+, number of zeta\s*=\s*\d+\s*\n)+)'
)


@dataclass
class _SpeciesBasis:
    symbol: str
    shells: tuple[int, ...]
    rcut: float | None  # Bohr
    source: str


def _shells(counts: dict[int, int]) -> tuple[int, ...]:
    """Shells in ABACUS order (l ascending, then zeta) from the number of zetas per l."""
    return tuple(l for l in sorted(counts) for _ in range(counts[l]))


def _orbital_header(path: Path) -> tuple[str | None, dict[int, int], float | None]:
    """Element, zetas per l and cutoff radius (Bohr) from an ABACUS .orb file header."""
    head = []
    with path.open(errors='replace') as handle:
        for line in handle:
            if line.strip().startswith(('SUMMARY', 'Mesh')) or len(head) > 60:
                break
            head.append(line)
    text = ''.join(head)
    element = re.search(r'^\s*Element\s+(\S+)', text, re.MULTILINE)
    radius = re.search(r'Radius Cutoff\(a\.u\.\)\s+(\S+)', text)
    counts = {'SPDFGH'.index(m[1].upper()): int(m[2]) for m in _ORB_SHELL.finditer(text)}
    return (element[1] if element else None), counts, (float(radius[1]) if radius else None)


def _name_shells(name: str) -> tuple[dict[int, int], float | None]:
    """Zetas per l and cutoff (Bohr) from an orbital file name like ``Si_gga_8au_60Ry_2s2p1d.orb``."""
    matches = _NAME_SHELLS.findall(Path(name).name)
    counts = (
        {'spdfgh'.index(l): int(n) for n, l in re.findall(r'(\d+)([spdfgh])', matches[-1])} if matches else {}
    )
    radius = re.search(r'_(\d+(?:\.\d+)?)au', name)
    return counts, (float(radius[1]) if radius else None)


def _symbol(label: str, fallback: str | None, path: Path) -> str:
    for candidate in (label, fallback or ''):
        match = re.match(r'[A-Za-z][a-z]?', candidate)
        for symbol in [match[0], match[0][0]] if match else []:
            symbol = symbol.capitalize()
            if symbol in atomic_numbers and symbol != 'X':
                return symbol
    raise HamiltonianError(f'{path}: cannot tell the element of species {label!r}')


def _species_basis(structure: _Structure, files: _Files, params: dict[str, str]) -> list[_SpeciesBasis]:
    """Shells of every species: from its .orb file, else running_scf.log, else the file name."""
    logged = _log_shells(files.log)
    result = []
    for label, orbital in zip(structure.labels, structure.orbitals, strict=True):
        element, counts, rcut, source = None, {}, None, ''
        path = _find_orbital(orbital, files, params)
        if path is not None:
            element, counts, rcut = _orbital_header(path)
            source = str(path)
        if not counts and label in logged:
            counts, source = logged[label], str(files.log)
        name_counts, name_rcut = _name_shells(orbital) if orbital else ({}, None)
        if not counts and name_counts:
            counts, source = name_counts, f'file name {orbital}'
        rcut = rcut or name_rcut
        if not counts:
            raise HamiltonianError(
                f'{files.stru}: no orbital shells for species {label!r}: the orbital file {orbital!r} is not '
                'found (orbital_dir in INPUT, run folder) and neither running_scf.log nor the name tells them'
            )
        result.append(_SpeciesBasis(_symbol(label, element, files.stru), _shells(counts), rcut, source))
    return result


def _find_orbital(name: str | None, files: _Files, params: dict[str, str]) -> Path | None:
    if not name:
        return None
    folders = [Path(params['orbital_dir'])] if 'orbital_dir' in params else []
    folders = [f if f.is_absolute() else files.run_dir / f for f in folders] + [files.run_dir, files.csr_dir]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate.resolve()
    return None


def _log_shells(log: Path | None) -> dict[str, dict[int, int]]:
    if log is None:
        return {}
    text = log.read_text(errors='replace')
    shells = {}
    for label, body in _LOG_TYPE.findall(text):
        shells[label] = {int(l): int(n) for l, n in re.findall(r'L=(\d+), number of zeta\s*=\s*(\d+)', body)}
    return shells


def _make_basis(species: list[_SpeciesBasis], structure: _Structure, path: Path) -> Basis:
    elements = {}
    for label, item in zip(structure.labels, species, strict=True):
        radii = (item.rcut * BOHR_ANGSTROM,) * len(item.shells) if item.rcut else None
        element = ElementBasis(item.symbol, item.shells, radii=radii)
        previous = elements.setdefault(element.number, element)
        if previous.shells != element.shells:
            raise HamiltonianError(
                f'{path}: species {label!r} is {item.symbol} with shells {element.label}, but another '
                f'{item.symbol} species has {previous.label}; one basis per element is supported'
            )
    names = sorted({Path(o).name for o in structure.orbitals if o})
    return Basis(elements, name=' '.join(names), code='abacus')


# ----------------------------------------------------------------------------------- file finding
@dataclass
class _Files:
    h: Path
    s: Path | None
    h_down: Path | None  # second spin channel (nspin = 2)
    stru: Path
    run_dir: Path
    csr_dir: Path
    inputs: list[Path]
    log: Path | None


def _split_name(name: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def _siblings(h: Path) -> tuple[Path | None, Path | None]:
    """Overlap file and second-spin H file that belong to the H file ``h``."""
    stem, suffix = _split_name(h.name) or (h.stem, h.suffix)
    if _OLD_H.match(stem):
        s_names, down = ['data-SR-sparse_SPIN0'], 'data-HR-sparse_SPIN1'
    elif match := _NEW_H.match(stem):
        s_names, down = [f'srs1{match[2]}_nao', f'sr{match[2]}_nao'], f'hrs2{match[2]}_nao'
    else:
        s_names, down = [stem.replace('HR', 'SR').replace('hr', 'sr')], None
    overlap = next((h.with_name(n + suffix) for n in s_names if h.with_name(n + suffix).is_file()), None)
    down_path = h.with_name(down + suffix) if down and h.with_name(down + suffix).is_file() else None
    return overlap, down_path


def _primary_h(folder: Path) -> Path | None:
    for stem in ('data-HR-sparse_SPIN0', 'hrs1_nao'):
        for suffix in _SUFFIXES:
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def _find_h(folder: Path) -> Path | None:
    """The H file of a run folder: in the folder itself or in its OUT.* folder."""
    found = _primary_h(folder)
    if found is not None:
        return found
    candidates = [h for h in (_primary_h(d) for d in sorted(folder.glob('OUT.*')) if d.is_dir()) if h]
    if len(candidates) > 1:
        suffix = _read_input(folder / 'INPUT').get('suffix', 'ABACUS')
        chosen = [h for h in candidates if h.parent.name == f'OUT.{suffix}']
        if len(chosen) != 1:
            names = ', '.join(h.parent.name for h in candidates)
            raise HamiltonianError(
                f'{folder}: several OUT.* folders hold H(R) files ({names}); pass one of them'
            )
        return chosen[0]
    return candidates[0] if candidates else None


def _locate(path: Path) -> _Files:
    if not path.exists():
        raise HamiltonianError(f'{path}: no such file or folder')
    if path.is_file() and (label := _sniff_label(path)) != 'H':
        raise HamiltonianError(f'{path}: holds {label}(R), not H(R); pass the H(R) file or the run folder')
    h = path if path.is_file() else _find_h(path)
    if h is None:
        raise HamiltonianError(
            f'{path}: no ABACUS H(R) file (data-HR-sparse_SPIN0.csr or hrs1_nao.csr) here or in OUT.*; '
            'run ABACUS with out_mat_hs2 1 (or out_hsr 1)'
        )
    h = _primary_spin(h)
    csr_dir = h.parent
    inputs = [p for p in (csr_dir / 'INPUT', csr_dir.parent / 'INPUT') if p.is_file()]
    stru_name = _merged_input(inputs).get('stru_file', 'STRU')
    stru = next((d / stru_name for d in (csr_dir, csr_dir.parent) if (d / stru_name).is_file()), None)
    if stru is None:
        raise HamiltonianError(
            f'{h}: no {stru_name} in {csr_dir} or {csr_dir.parent}; the STRU of the run is needed '
            '(structure and orbital files)'
        )
    s, down = _siblings(h)
    logs = [csr_dir / 'running_scf.log'] + sorted(stru.parent.glob('OUT.*/running_scf.log'))
    log = next((p for p in logs if p.is_file()), None)
    return _Files(h, s, down, stru, stru.parent, csr_dir, inputs, log)


def _primary_spin(h: Path) -> Path:
    """Map a spin-down H file to its spin-up partner (which the reader starts from)."""
    stem, suffix = _split_name(h.name) or (h.stem, h.suffix)
    if (m := _OLD_H.match(stem)) and m[1] == '1':
        return h.with_name('data-HR-sparse_SPIN0' + suffix)
    if (m := _NEW_H.match(stem)) and m[1] == '2':
        return h.with_name(f'hrs1{m[2]}_nao' + suffix)
    return h


def _merged_input(inputs: list[Path]) -> dict[str, str]:
    """INPUT parameters: the copy in OUT.* (all defaults) updated by the user's INPUT."""
    params = {}
    for path in inputs:
        params.update(_read_input(path))
    return params


def _read_log(log: Path | None) -> dict:
    """Fermi level (eV), electron count and ABACUS version from running_scf.log."""
    if log is None:
        return {}
    text = log.read_text(errors='replace')
    info = {}
    if version := re.search(r'ABACUS\s+v?(\d[\w.\-]*)', text[:4000]):
        info['abacus_version'] = version[1]
    if fermi := re.findall(r'^\s*E_Fermi\s+(\S+)\s+\S+', text, re.MULTILINE):
        info['fermi_level'] = _float_or_none(fermi[-1], RYDBERG_EV)
    elif fermi := re.findall(r'EFERMI\s*=\s*(\S+)\s*eV', text):
        info['fermi_level'] = _float_or_none(fermi[-1], 1.0)
    if electrons := re.search(r'number of electrons[^=\n]*=\s*([-+0-9.eE]+)', text):
        info['n_electrons'] = _float_or_none(electrons[1], 1.0)
    return {k: v for k, v in info.items() if v is not None}


def _float_or_none(text: str, scale: float) -> float | None:
    try:
        return float(text) * scale
    except ValueError:
        return None


# ------------------------------------------------------------------------------------ assembling
@dataclass
class _Entries:
    """Every stored number of one file, as atom pair, local orbitals and spin indices."""

    cells: np.ndarray
    i: np.ndarray
    j: np.ndarray
    a: np.ndarray
    b: np.ndarray
    spin_a: np.ndarray
    spin_b: np.ndarray
    values: np.ndarray


def _entries(matrices: dict, offsets: np.ndarray, npol: int) -> _Entries:
    parts = [(cell, m.tocoo()) for cell, m in matrices.items() if m.nnz]
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Entries(np.zeros((0, 3), dtype=np.int64), *[empty] * 6, np.zeros(0))
    cells = np.repeat(np.array([c for c, _ in parts], dtype=np.int64), [m.nnz for _, m in parts], axis=0)
    rows = np.concatenate([m.row for _, m in parts]).astype(np.int64)
    cols = np.concatenate([m.col for _, m in parts]).astype(np.int64)
    values = np.concatenate([m.data for _, m in parts])
    atom_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    i, j = atom_of[rows // npol], atom_of[cols // npol]
    a, b = rows // npol - offsets[i], cols // npol - offsets[j]
    return _Entries(cells, i, j, a, b, rows % npol, cols % npol, values)


def _pair_keys(entries: list[_Entries], n_atoms: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique (R1, R2, R3, i, j) over all files, and every entry's row in that list."""
    cells = np.concatenate([e.cells for e in entries])
    low = int(cells.min()) if len(cells) else 0
    span = int(cells.max()) - low + 1 if len(cells) else 1

    def key(e: _Entries) -> np.ndarray:
        c = e.cells - low
        return ((c[:, 0] * span + c[:, 1]) * span + c[:, 2]) * n_atoms * n_atoms + e.i * n_atoms + e.j

    keys = [key(e) for e in entries]
    unique = np.unique(np.concatenate(keys))
    atoms, cell = unique % (n_atoms * n_atoms), unique // (n_atoms * n_atoms)
    pairs = np.column_stack(
        [
            cell // (span * span) + low,
            cell // span % span + low,
            cell % span + low,
            atoms // n_atoms,
            atoms % n_atoms,
        ]
    )
    return pairs, [np.searchsorted(unique, k) for k in keys]


def _scatter(
    entries: _Entries, rows: np.ndarray, pairs, counts, n_spin: int, spin_index, dtype
) -> np.ndarray:
    """Flat blocks (pair order, row-major, spin blocks first) holding ``entries``."""
    ni, nj = counts[pairs[:, 3]], counts[pairs[:, 4]]
    offsets = np.concatenate([[0], np.cumsum(ni * nj * n_spin)])
    out = np.zeros(offsets[-1], dtype=dtype)
    index = offsets[rows] + (spin_index * ni[rows] + entries.a) * nj[rows] + entries.b
    out[index] = entries.values
    return out


def _overlap(entries: _Entries, rows, pairs, counts, npol: int, path: Path) -> np.ndarray:
    """Spinless S; for nspin = 4 check S ⊗ 1₂ (no spin mixing, ↑↑ = ↓↓, real) and reduce it."""
    if npol == 1:
        return _scatter(entries, rows, pairs, counts, 1, 0, np.float64).real
    same = entries.spin_a == entries.spin_b
    mixing = np.abs(entries.values[~same]).max(initial=0.0)
    up, down = (
        _scatter(_select(entries, mask), rows[mask], pairs, counts, 1, 0, np.complex128)
        for mask in (same & (entries.spin_a == 0), same & (entries.spin_a == 1))
    )
    difference = np.abs(up - down).max(initial=0.0)
    imaginary = np.abs(up.imag).max(initial=0.0)
    if max(mixing, difference, imaginary) > 1e-8:
        raise HamiltonianError(
            f'{path}: the spinor overlap is not S ⊗ 1: spin-mixing elements up to {mixing:.3g}, '
            f'|S↑↑ - S↓↓| up to {difference:.3g}, imaginary parts up to {imaginary:.3g}'
        )
    return up.real.copy()


def _select(entries: _Entries, mask: np.ndarray) -> _Entries:
    return _Entries(*(getattr(entries, name)[mask] for name in _Entries.__dataclass_fields__))


# -------------------------------------------------------------------------------------- public API
def read_abacus(path: str | Path) -> BlockHamiltonian:
    """Import an ABACUS LCAO run: H(R), S(R), structure, basis, Fermi level and electron count.

    :param path: the run folder (with STRU and INPUT, the CSR files in it or in ``OUT.<suffix>``),
        an ``OUT.*`` folder, or the H(R) file itself (``data-HR-sparse_SPIN0.csr``, ``hrs1_nao.csr``;
        ``.csr.ref`` test files too). The S(R) file and STRU are looked up beside it.
    :return: the block Hamiltonian in eV, Å and the internal orbital convention; nspin = 4 gives
        ``spin='spinor'`` blocks, nspin = 2 gives spinor blocks with zero ↑↓ / ↓↑ parts.
    :raises HamiltonianError: naming the file and what is wrong.
    """
    files = _locate(Path(path))
    params = _merged_input(files.inputs)
    structure = _read_stru(files.stru, params)
    species = _species_basis(structure, files, params)
    basis = _make_basis(species, structure, files.stru)
    numbers = np.array([atomic_numbers[species[s].symbol] for s in structure.species])
    counts = basis.n_orbitals(numbers)
    h = _read_matrix(files.h, 'H')
    mode = _spin_mode(h, files, params, int(counts.sum()))
    if files.s is None:
        raise HamiltonianError(
            f'{files.h}: no overlap file (data-SR-sparse_SPIN0.csr, srs1_nao.csr, sr_nao.csr) beside it'
        )
    csrs = [h, _read_matrix(files.s, 'S')] + ([_read_matrix(files.h_down, 'H')] if mode == 2 else [])
    _check_dimensions(csrs, counts, mode)
    _check_cell(h, structure, numbers)
    bh = _assemble(files, csrs, structure, numbers, basis, counts, mode)
    bh.metadata['basis_source'] = dict(zip(structure.labels, [item.source for item in species], strict=True))
    transforms = {int(z): atom_transform(basis[z].shells, ABACUS_CONVENTION) for z in set(numbers.tolist())}
    return bh.transform_orbitals(transforms)


def _read_matrix(path: Path, label: str) -> _CsrFile:
    csr = _read_csr(path)
    if csr.header.label not in (label, '?'):
        raise HamiltonianError(f'{path}: holds {csr.header.label}(R), expected {label}(R)')
    return csr


def _spin_mode(h: _CsrFile, files: _Files, params: dict[str, str], n_orbitals: int) -> int:
    """ABACUS nspin (1, 2 or 4) from the H dimension, INPUT and the files present."""
    requested = params.get('nspin')
    dimension = h.header.dimension
    if dimension == 2 * n_orbitals and requested in (None, '4'):
        return 4
    if dimension == n_orbitals and requested in (None, '1', '2'):
        if requested == '2' and files.h_down is None:
            raise HamiltonianError(f'{files.h}: nspin 2 but the spin-down file is missing beside it')
        return 2 if requested == '2' or (requested is None and files.h_down is not None) else 1
    raise HamiltonianError(
        f'{files.h}: matrix dimension {dimension} does not fit {files.stru} ({n_orbitals} orbitals'
        f'{", nspin " + requested if requested else ""}; expected {n_orbitals}, '
        f'or {2 * n_orbitals} for nspin 4)'
    )


def _check_dimensions(csrs: list[_CsrFile], counts: np.ndarray, mode: int) -> None:
    expected = int(counts.sum()) * (2 if mode == 4 else 1)
    for csr in csrs:
        if csr.header.dimension != expected:
            raise HamiltonianError(
                f'{csr.path}: matrix dimension {csr.header.dimension}, but STRU and the orbital files give '
                f'{expected} (orbitals per atom {counts.tolist()}, nspin {mode})'
            )


def _check_cell(csr: _CsrFile, structure: _Structure, numbers: np.ndarray) -> None:
    """Compare the (rounded) unit cell of a new-layout header with STRU."""
    cell = csr.header.cell
    if cell is None:
        return
    same_count = len(cell['labels']) == len(numbers)
    close = same_count and np.allclose(cell['lattice'], structure.lattice, rtol=1e-4, atol=1e-4)
    if close:
        fractional = structure.positions @ np.linalg.inv(structure.lattice)
        shift = cell['fractional'] - fractional
        close = np.allclose(shift - np.round(shift), 0.0, atol=1e-4)
    if not close:
        raise HamiltonianError(
            f'{csr.path}: its header describes a different cell or atoms than the STRU beside it'
        )


def _assemble(files, csrs, structure, numbers, basis, counts, mode) -> BlockHamiltonian:
    """Blocks of the union of the atom pairs of all files (H, S and spin-down H), in ABACUS order."""
    npol = 2 if mode == 4 else 1
    offsets = np.concatenate([[0], np.cumsum(counts)])
    sets = [_entries(csr.matrices, offsets, npol) for csr in csrs]
    pairs, rows = _pair_keys(sets, len(numbers))
    overlap = _overlap(sets[1], rows[1], pairs, counts, npol, files.s)
    hamiltonian = _hamiltonian(sets, rows, pairs, counts, mode) * RYDBERG_EV
    log = _read_log(files.log)
    return BlockHamiltonian(
        lattice=structure.lattice,
        positions=structure.positions,
        numbers=numbers,
        basis=basis,
        pairs=pairs,
        hamiltonian=hamiltonian,
        overlap=overlap,
        spin='none' if mode == 1 else 'spinor',
        fermi_level=log.get('fermi_level'),
        n_electrons=log.get('n_electrons'),
        metadata=_metadata(files, csrs[0], mode, log),
    )


def _hamiltonian(sets: list[_Entries], rows: list[np.ndarray], pairs, counts, mode: int) -> np.ndarray:
    h = sets[0]
    if mode == 1:
        return _scatter(h, rows[0], pairs, counts, 1, 0, h.values.dtype)
    if mode == 4:
        return _scatter(h, rows[0], pairs, counts, 4, 2 * h.spin_a + h.spin_b, np.complex128)
    up = _scatter(h, rows[0], pairs, counts, 4, 0, np.float64)
    return up + _scatter(sets[2], rows[2], pairs, counts, 4, 3, np.float64)


def _metadata(files: _Files, h: _CsrFile, mode: int, log: dict) -> dict:
    down = files.h_down if mode == 2 else None
    names = {'H': files.h, 'S': files.s, 'H_down': down, 'STRU': files.stru, 'log': files.log}
    data = {
        'source_code': 'abacus',
        'source_files': {k: str(v) for k, v in names.items() if v is not None},
        'csr_layout': h.header.layout,
        'nspin': mode,
        'units': f'H converted from Ry with {RYDBERG_EV!r} eV/Ry, lengths from Bohr with {BOHR_ANGSTROM!r} Å',
        'orbital_convention_in': 'abacus',
    }
    if 'abacus_version' in log:
        data['abacus_version'] = log['abacus_version']
    return data


def detect(path: str | Path) -> bool:
    """True for an ABACUS H(R) CSR file or a folder holding one (or an OUT.* with one). Never raises."""
    try:
        path = Path(path)
        if path.is_file():
            return _sniff_label(path) == 'H'
        return path.is_dir() and _find_h(path) is not None
    except Exception:  # noqa: BLE001 - detection must never raise
        return False


register_format(
    Format(
        name='abacus',
        description='ABACUS out_mat_hs2 H(R)/S(R) CSR text files (data-HR-sparse or hrs1_nao) with STRU',
        detect=detect,
        read=read_abacus,
    )
)
