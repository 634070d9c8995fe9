"""k-point paths for band structures: seekpath suggestions, explicit paths, files and DeepH ``K_PATH``.

k-points are fractional coordinates in the reciprocal basis of the lattice the caller gave (the
same convention as :mod:`~aiida_nextham.hamiltonian.bloch`). Distances along a path are Cartesian
and **include 2π**: |Δk| = |Δf · B| with B = 2π (L⁻¹)ᵀ, in Å⁻¹ (DeepH-dock divides by 2π; ARPES
and seekpath do not). The Γ point is labelled ``'GAMMA'`` (seekpath and AiiDA spelling).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    'KPath',
    'band_path',
    'explicit_kpath',
    'path_from_segments',
    'read_deeph_kpath',
    'read_kpoints_file',
    'reciprocal_lattice',
    'seekpath_points',
]

_GAMMA_ALIASES = {'G', 'GAMMA', 'Γ', 'GAMMA_0', r'\GAMMA'}


@dataclass
class KPath:
    """k-points along a path.

    :param kpoints: (nk, 3) fractional coordinates (reciprocal basis of the caller's lattice).
    :param distances: (nk,) cumulative Cartesian distance in Å⁻¹, 2π included; a break in the path
        (``'U|K'``) repeats the distance, so both points sit at the same abscissa.
    :param labels: ``(index, label)`` of the labelled points, in path order.
    """

    kpoints: np.ndarray
    distances: np.ndarray
    labels: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self):
        self.kpoints = np.asarray(self.kpoints, dtype=np.float64).reshape(-1, 3)
        self.distances = np.asarray(self.distances, dtype=np.float64).reshape(-1)
        if len(self.distances) != len(self.kpoints):
            raise ValueError(f'{len(self.kpoints)} k-points but {len(self.distances)} distances')
        self.labels = [(int(i), str(label)) for i, label in self.labels]

    def __len__(self) -> int:
        return len(self.kpoints)


def reciprocal_lattice(lattice: np.ndarray) -> np.ndarray:
    """Reciprocal vectors as rows, 2π included: B = 2π (L⁻¹)ᵀ, shape (3, 3), Å⁻¹."""
    return 2 * np.pi * np.linalg.inv(np.asarray(lattice, dtype=np.float64)).T


def _normalise_label(label: str) -> str:
    label = label.strip()
    return 'GAMMA' if label.upper() in _GAMMA_ALIASES else label


def _distances(
    lattice: np.ndarray | None, kpoints: np.ndarray, breaks: np.ndarray | None = None
) -> np.ndarray:
    """Cumulative |Δk| (Å⁻¹, 2π included); steps flagged in ``breaks`` (nk - 1,) count zero."""
    if len(kpoints) == 0:
        return np.zeros(0)
    if lattice is None:
        steps = np.ones(len(kpoints) - 1)
    else:
        steps = np.linalg.norm(np.diff(kpoints, axis=0) @ reciprocal_lattice(lattice), axis=1)
    if breaks is not None:
        steps = np.where(breaks, 0.0, steps)
    return np.concatenate([[0.0], np.cumsum(steps)])


# ------------------------------------------------------------------------------------- seekpath
def _spglib_cell(lattice: np.ndarray, positions: np.ndarray | None, numbers: np.ndarray | None):
    lattice = np.asarray(lattice, dtype=np.float64).reshape(3, 3)
    if positions is None:
        return lattice, np.zeros((1, 3)), np.array([1])
    fractional = np.asarray(positions, dtype=np.float64).reshape(-1, 3) @ np.linalg.inv(lattice)
    if numbers is None:
        raise ValueError('positions need numbers (atomic numbers or any integer species labels)')
    return lattice, fractional, np.asarray(numbers, dtype=np.int64).reshape(-1)


def seekpath_points(
    lattice: np.ndarray,
    positions: np.ndarray | None = None,
    numbers: np.ndarray | None = None,
    *,
    symprec: float = 1e-5,
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Seekpath's (HPKOT) special points and suggested path, in the basis of the ORIGINAL lattice.

    Seekpath works in spglib's standardised cell, which may be rotated and re-based with respect to
    ``lattice``. Its points are rotated back to the caller's Cartesian frame, then expressed in the
    reciprocal basis of ``lattice``.

    :param lattice: (3, 3) lattice vectors as rows, Å.
    :param positions: (n_atoms, 3) Cartesian positions, Å; None uses the lattice symmetry alone
        (one atom at the origin), which can be higher than the crystal's.
    :param numbers: (n_atoms,) species of the atoms.
    :return: ``({label: (3,) fractional}, [(start, end), ...])``.
    """
    import seekpath
    import spglib

    cell = _spglib_cell(lattice, positions, numbers)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        result = seekpath.get_path(cell, with_time_reversal=True, symprec=symprec)
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None:
        raise ValueError('spglib could not determine the symmetry of the cell')
    # spglib: standardised Cartesian = R @ original Cartesian (column vectors).
    rotation = np.asarray(dataset.std_rotation_matrix, dtype=np.float64)
    # seekpath keeps spglib's Cartesian frame (it may re-base the cell, e.g. Niggli for triclinic)
    _check_sublattice(np.asarray(dataset.std_lattice), np.asarray(result['conv_lattice']))
    primitive_back = np.asarray(result['primitive_lattice']) @ rotation  # rows, original frame
    _check_sublattice(primitive_back, cell[0])
    reciprocal_std = np.asarray(result['reciprocal_primitive_lattice'])
    to_original = reciprocal_std @ rotation @ cell[0].T / (2 * np.pi)  # fractional std -> fractional original
    points = {
        _normalise_label(label): np.asarray(coords, dtype=np.float64) @ to_original
        for label, coords in result['point_coords'].items()
    }
    path = [(_normalise_label(a), _normalise_label(b)) for a, b in result['path']]
    return points, path


def _check_sublattice(primitive: np.ndarray, lattice: np.ndarray) -> None:
    """The vectors of ``lattice`` must be (near) integer combinations of those of ``primitive``."""
    combination = lattice @ np.linalg.inv(primitive)
    if np.abs(combination - np.round(combination)).max() > 1e-3:
        raise RuntimeError(
            "seekpath's standardised cell, rotated back, does not generate the original lattice; "
            'the k-point transformation would be wrong (try a different symprec)'
        )


def _parse_path_string(path: str) -> list[list[str]]:
    """``'G-X-W|K-G'`` -> ``[['GAMMA', 'X', 'W'], ['K', 'GAMMA']]``."""
    pieces = []
    for piece in re.split(r'[|,]', path):
        labels = [_normalise_label(label) for label in piece.split('-') if label.strip()]
        if len(labels) < 2:
            raise ValueError(
                f'path {path!r}: every continuous piece needs at least two points, got {piece!r}'
            )
        pieces.append(labels)
    return pieces


def _pieces_from_segments(segments: list[tuple[str, str]]) -> list[list[str]]:
    pieces: list[list[str]] = []
    for start, end in segments:
        if pieces and pieces[-1][-1] == start:
            pieces[-1].append(end)
        else:
            pieces.append([start, end])
    return pieces


def _distribute(lengths: np.ndarray, n_intervals: int) -> np.ndarray:
    """Split ``n_intervals`` over segments in proportion to ``lengths``, at least one each."""
    if n_intervals < len(lengths):
        raise ValueError(f'too few points: {len(lengths)} segments need at least {len(lengths)} intervals')
    share = lengths / lengths.sum() * n_intervals if lengths.sum() > 0 else np.full(len(lengths), 1.0)
    counts = np.maximum(np.floor(share).astype(np.int64), 1)
    while counts.sum() < n_intervals:  # largest remainder first
        counts[np.argmax(share - counts)] += 1
    while counts.sum() > n_intervals:
        candidates = np.where(counts > 1, counts - share, -np.inf)
        counts[np.argmax(candidates)] -= 1
    return counts


def band_path(
    lattice: np.ndarray,
    path: str = 'auto',
    npoints: int = 100,
    *,
    positions: np.ndarray | None = None,
    numbers: np.ndarray | None = None,
    symprec: float = 1e-5,
    periodic: Sequence[bool] | None = None,
) -> KPath:
    """A band-structure path through high-symmetry points, ``npoints`` points in total.

    :param lattice: (3, 3) lattice vectors as rows, Å.
    :param path: ``'auto'`` for seekpath's suggested path, or labels such as ``'G-X-W-K-G-L'``
        (``|`` or ``,`` starts a new piece, e.g. ``'G-X-U|K-G'``), resolved from seekpath's special
        points of this cell (``G``, ``Gamma`` and ``Γ`` all mean ``GAMMA``).
    :param npoints: total number of k-points, spread over the segments in proportion to their
        length; the junction of two continuous segments is shared, a break repeats the abscissa.
    :param positions: optional (n_atoms, 3) Cartesian positions (Å) and ``numbers``: the crystal's
        symmetry. Without them the lattice symmetry is used.
    :param periodic: which lattice directions carry hopping (e.g. ``(True, True, False)`` for a
        slab with vacuum along a3). With ``'auto'``, segments leaving the plane k_i = 0 of a
        non-periodic direction are dropped, so a 2D material gets its in-plane path only.
    """
    points, suggested = seekpath_points(lattice, positions, numbers, symprec=symprec)
    if path == 'auto' and periodic is not None and not all(periodic):
        flat = ~np.asarray(periodic, dtype=bool)
        in_plane = {label for label, k in points.items() if np.allclose(np.asarray(k)[flat], 0.0)}
        suggested = [(a, b) for a, b in suggested if a in in_plane and b in in_plane]
        if not suggested:
            raise ValueError('no suggested segment lies in the periodic directions; pass an explicit path')
    pieces = _pieces_from_segments(suggested) if path == 'auto' else _parse_path_string(path)
    unknown = sorted({label for piece in pieces for label in piece} - set(points))
    if unknown:
        raise ValueError(f'unknown k-point label(s) {unknown} for this cell; seekpath knows {sorted(points)}')
    coords = [np.array([points[label] for label in piece]) for piece in pieces]
    reciprocal = reciprocal_lattice(lattice)
    lengths = np.concatenate([np.linalg.norm(np.diff(c, axis=0) @ reciprocal, axis=1) for c in coords])
    n_intervals = int(npoints) - 1 - (len(pieces) - 1)
    if n_intervals < len(lengths):
        raise ValueError(
            f'npoints={npoints} is too small for this path: use at least {len(lengths) + len(pieces)}'
        )
    counts = _distribute(lengths, n_intervals)

    kpoints, labels, breaks = [], [], []
    segment = 0
    for piece, piece_coords in zip(pieces, coords, strict=True):
        start = sum(len(k) for k in kpoints)
        labels.append((start, piece[0]))
        kpoints.append(piece_coords[:1])
        breaks.append(bool(start))
        for a, b, label in zip(piece_coords[:-1], piece_coords[1:], piece[1:], strict=True):
            t = np.arange(1, counts[segment] + 1)[:, None] / counts[segment]
            kpoints.append(a + t * (b - a))
            breaks.extend([False] * counts[segment])
            labels.append((sum(len(k) for k in kpoints) - 1, label))
            segment += 1
    kpoints = np.concatenate(kpoints)
    return KPath(kpoints, _distances(lattice, kpoints, np.array(breaks[1:], dtype=bool)), labels)


# ------------------------------------------------------------------------------- explicit paths
def explicit_kpath(
    kpoints: np.ndarray, lattice: np.ndarray | None = None, labels: Sequence[tuple[int, str]] = ()
) -> KPath:
    """A path through user-given fractional k-points, shape (nk, 3).

    Distances are Cartesian (Å⁻¹, 2π included) when ``lattice`` is given, else the point index.
    """
    kpoints = np.asarray(kpoints, dtype=np.float64)
    if kpoints.ndim != 2 or kpoints.shape[1] != 3:
        raise ValueError(f'k-points must have shape (nk, 3), got {kpoints.shape}')
    return KPath(kpoints, _distances(lattice, kpoints), [(i, _normalise_label(s)) for i, s in labels])


def read_kpoints_file(path: str | Path) -> np.ndarray:
    """Fractional k-points from a text file: three numbers per line, ``#`` starts a comment.

    :return: shape (nk, 3).
    :raises ValueError: naming the file and line of anything else.
    """
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split('#', 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        try:
            values = [float(x) for x in fields]
        except ValueError:
            values = []
        if len(values) != 3 or not np.all(np.isfinite(values)):
            raise ValueError(
                f'{path}:{number}: expected three numbers (fractional k-point), got {line.strip()!r}'
            )
        rows.append(values)
    if not rows:
        raise ValueError(f'{path}: no k-points found')
    return np.array(rows)


def path_from_segments(
    lattice: np.ndarray, segments: Sequence[tuple[int, Sequence[float], Sequence[float], str, str]]
) -> KPath:
    """DeepH-style path: each segment ``(n, k_start, k_end, label_start, label_end)`` has ``n``
    points including both ends (``k_start + i/(n-1) (k_end - k_start)``), so junctions repeat.
    """
    if not segments:
        raise ValueError('a path needs at least one segment')
    kpoints, labels, breaks = [], [], []
    for n, start, end, label_start, label_end in segments:
        n = int(n)
        if n < 2:
            raise ValueError(f'segment {label_start}-{label_end}: needs at least 2 points, got {n}')
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        offset = sum(len(k) for k in kpoints)
        kpoints.append(start + np.arange(n)[:, None] / (n - 1) * (end - start))
        # the first point of a segment sits at the previous end's abscissa (repeat or break)
        breaks.extend([offset > 0] + [False] * (n - 1))
        labels += [(offset, _normalise_label(label_start)), (offset + n - 1, _normalise_label(label_end))]
    kpoints = np.concatenate(kpoints)
    return KPath(kpoints, _distances(lattice, kpoints, np.array(breaks[1:], dtype=bool)), labels)


def read_deeph_kpath(path: str | Path, lattice: np.ndarray) -> KPath:
    """Read a DeepH(-dock) ``K_PATH`` file: ``n  k_start(3)  k_end(3)  label_start  label_end``."""
    path = Path(path)
    segments = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split('#', 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) != 9:
                raise ValueError
            n = int(fields[0])
            values = [float(x) for x in fields[1:7]]
        except ValueError:
            raise ValueError(
                f'{path}:{number}: expected "n  k_start(3)  k_end(3)  label_start  label_end", '
                f'got {line.strip()!r}'
            ) from None
        segments.append((n, values[:3], values[3:], fields[7], fields[8]))
    if not segments:
        raise ValueError(f'{path}: no path segments found')
    return path_from_segments(lattice, segments)
