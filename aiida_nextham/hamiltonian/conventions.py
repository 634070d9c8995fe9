"""Orbital conventions: real-spherical-harmonic order and sign of each code, mapped to the internal one.

The internal convention is e3nn's real spherical harmonics (``e3nn.o3.spherical_harmonics``, y is
the polar axis; l=1 is (x, y, z)). Every other code is described by the order and sign in which it
stores the standard real harmonics Y_lm (z polar axis, no Condon-Shortley phase, m = -l..l:
for l=1, m=-1 is y, m=0 is z, m=1 is x; for l=2: xy, yz, 3z²-r², xz, x²-y²).

For a shell of angular momentum l, :meth:`Convention.matrix` returns the orthogonal matrix T with
``Y_internal(r) = T @ Y_code(r)``, so a block converts as ``H_int = T_l1 @ H_code @ T_l2.T``.
T is obtained by fitting the two sets of functions at fixed sample directions; it is a signed
permutation for l <= 1 and mixes components for l >= 2 (the polar axes differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.linalg import block_diag
from scipy.special import sph_harm_y

__all__ = [
    'CONVENTIONS',
    'Convention',
    'atom_transform',
    'e3nn_harmonics',
    'real_harmonics',
    'register_convention',
    'wigner_d',
]


def _sample_directions(n: int = 96) -> np.ndarray:
    rng = np.random.default_rng(20260101)
    xyz = rng.normal(size=(n, 3))
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def real_harmonics(l: int, xyz: np.ndarray) -> np.ndarray:
    """Orthonormal real harmonics Y_lm, z polar axis, no Condon-Shortley phase, m = -l..l.

    :param xyz: unit vectors, shape (n, 3).
    :return: shape (n, 2l+1).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    theta = np.arctan2(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2])  # better than arccos(z) near the poles
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    out = np.empty((len(xyz), 2 * l + 1))
    for m in range(-l, l + 1):
        y = sph_harm_y(l, abs(m), theta, phi)  # includes the Condon-Shortley phase (-1)^m
        if m > 0:
            out[:, l + m] = np.sqrt(2) * (-1) ** m * y.real
        elif m < 0:
            out[:, l + m] = np.sqrt(2) * (-1) ** m * y.imag
        else:
            out[:, l] = y.real
    return out


def e3nn_harmonics(l: int, xyz: np.ndarray) -> np.ndarray:
    """e3nn's real spherical harmonics, ``o3.spherical_harmonics(l, xyz, normalize=True)``, in float64.

    e3nn (0.6, integral normalisation) takes y as the polar axis; its harmonics are exactly the
    standard ones of :func:`real_harmonics` at the cyclically relabelled vector (z, x, y), in the same
    m = -l..l order and signs (l=1: x, y, z). Evaluated in numpy, so the conventions need no torch at
    run time; ``tests/test_core.py`` checks the identity against e3nn itself.

    :param xyz: directions, shape (n, 3); normalised here.
    :return: shape (n, 2l+1).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    xyz = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    return real_harmonics(l, xyz[:, [2, 0, 1]])


def _fit(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Matrix T with target ≈ source @ T.T, checked to be orthogonal and exact."""
    t_transposed, *_ = np.linalg.lstsq(source, target, rcond=None)
    matrix = t_transposed.T
    for exact in (0.0, 1.0, -1.0, 0.5, -0.5):  # snap so signed permutations are exact
        matrix[np.abs(matrix - exact) < 1e-12] = exact
    residual = np.abs(source @ matrix.T - target).max()
    if residual > 1e-10 or not np.allclose(matrix @ matrix.T, np.eye(len(matrix)), atol=1e-10):
        raise RuntimeError(f'harmonics are not related by an orthogonal map (residual {residual:.2e})')
    return matrix


@dataclass(frozen=True)
class Convention:
    """How one code orders and signs the real harmonics of each l.

    :param name: registry name.
    :param order: for each l, the code's storage order as a list of ``(m, sign)`` referring to the
        standard harmonics of :func:`real_harmonics`. Missing l default to m = -l..l, all positive.
    """

    name: str
    order: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    description: str = ''
    _cache: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def harmonics(self, l: int, xyz: np.ndarray) -> np.ndarray:
        """This code's harmonics of angular momentum l at unit vectors ``xyz``, shape (n, 2l+1)."""
        if self.name == 'e3nn':
            return e3nn_harmonics(l, xyz)
        standard = real_harmonics(l, xyz)
        order = self.order.get(l, tuple((m, 1) for m in range(-l, l + 1)))
        if sorted(m for m, _ in order) != list(range(-l, l + 1)):
            raise ValueError(f'convention {self.name!r}: l={l} order {order} is not a permutation of m')
        return np.stack([sign * standard[:, l + m] for m, sign in order], axis=1)

    def matrix(self, l: int) -> np.ndarray:
        """T_l with ``Y_internal = T_l @ Y_code``; a block converts as ``T_l1 @ H @ T_l2.T``."""
        if l not in self._cache:
            xyz = _sample_directions()
            self._cache[l] = _fit(e3nn_harmonics(l, xyz), self.harmonics(l, xyz))
        return self._cache[l].copy()


CONVENTIONS: dict[str, Convention] = {}


def register_convention(convention: Convention) -> Convention:
    """Add a convention to the registry (names are unique)."""
    if convention.name in CONVENTIONS and CONVENTIONS[convention.name] != convention:
        raise ValueError(f'a different convention named {convention.name!r} is already registered')
    CONVENTIONS[convention.name] = convention
    return convention


register_convention(Convention('e3nn', description='internal: e3nn real spherical harmonics'))
register_convention(Convention('standard', description='real Y_lm, z polar axis, m=-l..l, no CS phase'))


def _get(convention: str | Convention) -> Convention:
    if isinstance(convention, Convention):
        return convention
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f'unknown orbital convention {convention!r}; known: {sorted(CONVENTIONS)}') from None


def atom_transform(shells: tuple[int, ...], convention: str | Convention) -> np.ndarray:
    """Block-diagonal code -> internal transform for an atom with the given shells."""
    conv = _get(convention)
    return block_diag(*[conv.matrix(l) for l in shells])


@lru_cache(maxsize=256)
def _wigner_d_cached(l: int, rotation_bytes: bytes) -> np.ndarray:
    rotation = np.frombuffer(rotation_bytes).reshape(3, 3)
    xyz = _sample_directions()
    # Y(R r) = D Y(r)
    return _fit(e3nn_harmonics(l, xyz @ rotation.T), e3nn_harmonics(l, xyz))


def wigner_d(l: int, rotation: np.ndarray) -> np.ndarray:
    """Wigner-D matrix of a proper rotation in the internal convention: ``Y(R r) = D Y(r)``.

    Agrees with ``e3nn.o3.Irrep(l, p).D_from_matrix`` but is computed to machine precision.
    """
    rotation = np.ascontiguousarray(rotation, dtype=np.float64)
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-10) or np.linalg.det(rotation) < 0:
        raise ValueError('wigner_d needs a proper rotation matrix (orthogonal, det +1)')
    return _wigner_d_cached(int(l), rotation.tobytes()).copy()
