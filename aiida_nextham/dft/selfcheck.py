"""Self-check of a label: bands of the stored H(R), S(R) versus the DFT code's own, off the meshes."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ['SelfCheck', 'compare_bands', 'offmesh_kpoints']


@dataclass(frozen=True)
class SelfCheck:
    """Outcome of the self-check (energies in meV).

    :param matrix: the Hamiltonian checked, ``'H'`` (label) or ``'H0'``.
    :param kpoints: fractional k-points used.
    :param n_bands: bands compared (occupied plus the requested conduction bands).
    :param max_deviation: max |ΔE| over the compared bands and k-points, meV.
    :param max_deviation_all: the same over all bands (not subject to the tolerance), meV.
    :param deviations: max |ΔE| of the compared bands per k-point, meV.
    :param tolerance: largest accepted ``max_deviation``, meV.
    :param problem: why the comparison could not be made (then ``max_deviation`` is infinite),
        e.g. a truncated overlap that is not positive definite.
    """

    matrix: str
    kpoints: list[list[float]]
    n_bands: int
    max_deviation: float
    max_deviation_all: float
    deviations: list[float]
    tolerance: float
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.max_deviation <= self.tolerance)

    def as_dict(self) -> dict:
        """JSON-safe form (infinite deviations become None)."""
        data = {**asdict(self), 'passed': self.passed}
        for key in ('max_deviation', 'max_deviation_all'):
            if not np.isfinite(data[key]):
                data[key] = None
        data['deviations'] = [d if np.isfinite(d) else None for d in data['deviations']]
        return data

    @classmethod
    def failed(cls, problem: str, kpoints, tolerance: float, matrix: str = 'H') -> SelfCheck:
        """A check that could not compare bands at all."""
        kpoints = np.asarray(kpoints, dtype=float)
        return cls(
            matrix, kpoints.round(12).tolist(), 0, np.inf, np.inf, [np.inf] * len(kpoints), tolerance, problem
        )


def _coprime_from(start: int, sizes: np.ndarray) -> int:
    """Smallest q >= start sharing no factor with any of ``sizes``."""
    q = start
    while any(math.gcd(q, int(n)) != 1 for n in sizes if n > 1):
        q += 1
    return q


def offmesh_kpoints(count: int, seed: int, meshes: list[tuple[int, int, int]]) -> np.ndarray:
    """``count`` random fractional k-points that lie on none of ``meshes`` (nor on their -k images).

    Coordinate i is m/q_i with 0 < m < q_i and q_i >= 2 coprime to every mesh size along i, so it
    is at least 1/q_i of a spacing away from every mesh plane. The q_i are kept as small as the
    number of distinct points allows: PySCF's analytic pseudopotential integrals build a
    q1×q2×q3 Born-von Kármán cell for these points, and its cost grows fast with q.
    """
    sizes = np.asarray(meshes, dtype=np.int64).reshape(-1, 3)
    q = [_coprime_from(2, sizes[:, i]) for i in range(3)]
    while True:
        candidates = {}
        for m in itertools.product(*[range(1, n) for n in q]):
            partner = tuple(n - x for n, x in zip(q, m, strict=True))  # -k folded into [0, 1)
            candidates.setdefault(min(m, partner), None)
        if len(candidates) >= 2 * count:  # leave the seed a real choice
            break
        axis = int(np.argmin(q))
        q[axis] = _coprime_from(q[axis] + 1, sizes[:, axis])
    chosen = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False)
    points = np.array(list(candidates), dtype=np.float64)[chosen]
    return points / np.asarray(q, dtype=np.float64)


def compare_bands(
    ours: np.ndarray,
    reference: np.ndarray,
    n_electrons: float,
    conduction_bands: int,
    tolerance: float,
    kpoints: np.ndarray,
    matrix: str = 'H',
) -> SelfCheck:
    """Compare two (nk, n_bands) arrays of band energies (eV) on the occupied + lowest empty bands."""
    width = min(ours.shape[1], reference.shape[1])
    n_bands = min(width, math.ceil(n_electrons / 2 - 1e-8) + conduction_bands)
    difference = np.abs(ours[:, :width] - reference[:, :width]) * 1e3
    per_k = difference[:, :n_bands].max(axis=1)
    return SelfCheck(
        matrix=matrix,
        kpoints=np.asarray(kpoints, dtype=float).round(12).tolist(),
        n_bands=int(n_bands),
        max_deviation=float(per_k.max()),
        max_deviation_all=float(difference.max()),
        deviations=per_k.tolist(),
        tolerance=float(tolerance),
    )
