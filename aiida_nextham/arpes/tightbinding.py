"""Differentiable tight-binding models: named parameters → H(k) → bands, as torch modules.

Conventions shared by every model:

- ``k`` is Cartesian in Å⁻¹, shape (..., 3) (two-dimensional models ignore k_z); lengths in Å, energies
  in eV. Parameters are float64 scalar ``nn.Parameter``s; ``bands`` is differentiable with respect to
  them through ``torch.linalg.eigvalsh`` (eigenvalue gradients stay finite at degeneracies).
- A hopping *amplitude* t > 0 enters H as the matrix element −t, so a nearest-neighbour band is
  −2t cos(k·R) and its bottom lies at Γ.
- Bloch sums carry lattice vectors only (periodic gauge, orbital positions not in the phase), hence
  H(k + G) = H(k) exactly.
- ``bands(k)`` are the ascending eigenvalues of H(k) minus the chemical potential ``mu``, i.e. energies
  relative to E_F.
- Constructor arguments (lattice constants, hopping tables, which optional parameters are active,
  bound overrides) are kept in ``model.fixed``; with the parameter values they form a :class:`ModelSpec`
  that rebuilds the model from JSON.
- Optional parameters (further-neighbour hoppings, ...) are switched on with ``extra=('tp', ...)``; an
  inactive one is exactly zero and not trainable, so the default model has only its core parameters.

Models built from a file are registered in :data:`FILE_MODELS` and imported on first use: ``'hamiltonian'``
(:class:`~.hamiltonian_model.HamiltonianModel`, a block-Hamiltonian file with on-site energies and hopping
scales free; it keeps the overlap S(R), which a :class:`HoppingListModel` cannot represent).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

__all__ = [
    'FILE_MODELS',
    'MODELS',
    'GrapheneModel',
    'HoppingListModel',
    'ManganiteEgModel',
    'ModelSpec',
    'NickelateEgModel',
    'SingleBandModel',
    'TightBindingModel',
    'get_model',
]

Params = Mapping[str, 'torch.Tensor | float']
_SQRT3 = math.sqrt(3.0)


def _matrix(rows: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Nested rows of broadcastable tensors -> (..., n, n)."""
    n = len(rows)
    flat = torch.broadcast_tensors(*[x for row in rows for x in row])
    return torch.stack(flat, dim=-1).unflatten(-1, (n, n))


class TightBindingModel(nn.Module):
    """Base class: named scalar parameters with physical bounds, ``hamiltonian(k)`` and ``bands(k)``.

    :param values: initial value of every trainable parameter (eV unless stated); must include ``mu``.
    :param bounds: ``{name: (low, high)}`` for every trainable parameter (the box of multi-start fits).
    :param fixed: JSON-serialisable constructor arguments (stored in :class:`ModelSpec`).
    :param inactive: optional parameters that are switched off (exactly zero, not trainable).
    """

    name: ClassVar[str]
    n_bands: int

    def __init__(
        self,
        values: Mapping[str, float],
        bounds: Mapping[str, Sequence[float]],
        fixed: Mapping[str, Any],
        inactive: Sequence[str] = (),
    ):
        super().__init__()
        if 'mu' not in values:
            raise ValueError(f'{type(self).__name__}: every model needs the chemical potential "mu"')
        missing = [name for name in values if name not in bounds]
        if missing:
            raise ValueError(f'no bounds for parameter(s) {missing}')
        self.params = nn.ParameterDict()  # filled one by one: a dict argument would be sorted by name
        for name, v in values.items():
            self.params[name] = nn.Parameter(torch.tensor(float(v), dtype=torch.float64))
        self._bounds = {name: (float(bounds[name][0]), float(bounds[name][1])) for name in values}
        bad = {name: b for name, b in self._bounds.items() if not b[0] < b[1]}
        if bad:
            raise ValueError(f'bounds must satisfy low < high: {bad}')
        self._inactive = dict.fromkeys(inactive, 0.0)
        self.fixed = dict(fixed)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self.params.keys())

    @property
    def dtype(self) -> torch.dtype:
        return self.params['mu'].dtype

    def get_parameters(self) -> dict[str, float]:
        return {name: float(p.detach()) for name, p in self.params.items()}

    def set_parameters(self, values: Mapping[str, float]) -> None:
        """Overwrite some or all parameters in place (unknown names raise ``KeyError``)."""
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise KeyError(f'{self.name} has no parameter(s) {unknown}; it has {list(self.params)}')
        with torch.no_grad():
            for name, v in values.items():
                self.params[name].fill_(float(v))

    def bounds(self) -> dict[str, tuple[float, float]]:
        return dict(self._bounds)

    def values(self, params: Params | None = None) -> dict[str, torch.Tensor | float]:
        """All parameters, inactive ones as 0.0; ``params`` overrides any of them by tensors of shape
        broadcastable to k.shape[:-1] (a batch of parameter sets, or inputs of a functional gradient)."""
        out: dict[str, torch.Tensor | float] = {**self._inactive, **self.params}
        if params:
            unknown = sorted(set(params) - set(self.params))
            if unknown:
                raise KeyError(f'{self.name} has no parameter(s) {unknown}')
            out.update({name: torch.as_tensor(v, dtype=self.dtype) for name, v in params.items()})
        return out

    def _k(self, k) -> torch.Tensor:
        k = torch.as_tensor(k, dtype=self.dtype, device=self.params['mu'].device)
        if k.shape[-1:] != (3,):
            raise ValueError(f'k must have shape (..., 3) in Å⁻¹, got {tuple(k.shape)}')
        return k

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        """H(k) (eV), shape (..., n_orb, n_orb), real symmetric or complex Hermitian (without −μ)."""
        raise NotImplementedError

    def bands(self, k, params: Params | None = None) -> torch.Tensor:
        """Band energies relative to E_F (eV), ascending, shape (..., n_bands), for k (..., 3) in Å⁻¹."""
        mu = torch.as_tensor(self.values(params)['mu'], dtype=self.dtype)
        return torch.linalg.eigvalsh(self.hamiltonian(k, params)) - mu.unsqueeze(-1)

    def forward(self, k, params: Params | None = None) -> torch.Tensor:
        return self.bands(k, params)

    def spec(self) -> ModelSpec:
        return ModelSpec(self.name, copy.deepcopy(self.fixed), self.get_parameters())

    def extra_repr(self) -> str:
        return ', '.join(f'{name}={v:.6g}' for name, v in self.get_parameters().items())


class _NamedModel(TightBindingModel):
    """A model with class-level core/optional parameters, default values and default bounds."""

    core: ClassVar[dict[str, float]]
    optional: ClassVar[tuple[str, ...]] = ()
    default_bounds: ClassVar[dict[str, tuple[float, float]]]

    def __init__(
        self,
        fixed: dict[str, Any],
        extra: Sequence[str] = (),
        bounds: Mapping[str, Sequence[float]] | None = None,
        core: Mapping[str, float] | None = None,
    ):
        core = dict(self.core if core is None else core)
        extra = tuple(extra)
        unknown = sorted(set(extra) - set(self.optional))
        if unknown:
            raise ValueError(f'{self.name}: unknown optional parameter(s) {unknown}; known: {self.optional}')
        unknown = sorted(set(bounds or {}) - set(core) - set(self.optional))
        if unknown:
            raise ValueError(f'{self.name}: bounds for unknown parameter(s) {unknown}')
        values = {**core, **dict.fromkeys(extra, 0.0)}
        if extra:
            fixed['extra'] = list(extra)
        if bounds:
            fixed['bounds'] = {name: [float(b[0]), float(b[1])] for name, b in bounds.items()}
        inactive = [name for name in self.optional if name not in extra]
        super().__init__(values, {**self.default_bounds, **(bounds or {})}, fixed, inactive)


class SingleBandModel(_NamedModel):
    """One band on a square (2D) or tetragonal (3D) lattice, the t–t′–t″–μ model of cuprate ARPES:

    ε(k) = −2t [cos(k_x a) + cos(k_y a)] − 4t′ cos(k_x a) cos(k_y a) − 2t″ [cos(2k_x a) + cos(2k_y a)]
    − 2t_z cos(k_z c),   band = ε − μ,

    with t′ the (1,1) and t″ the (2,0) neighbour amplitude (t′ < 0 for hole-doped cuprates).
    ``lattice='square'`` has no k_z term; ``'tetragonal'`` adds the parameter ``tz`` (c = a: cubic).

    :param a: in-plane lattice constant (Å). :param c: out-of-plane lattice constant (Å), default a.
    """

    name = 'single-band'
    core = {'t': 0.36, 'tp': -0.1, 'tpp': 0.035, 'mu': -0.35}
    default_bounds = {
        't': (0.05, 1.0),
        'tp': (-0.5, 0.5),
        'tpp': (-0.3, 0.3),
        'tz': (-0.3, 0.3),
        'mu': (-2, 2),
    }
    n_bands = 1

    def __init__(
        self,
        a: float = 3.85,
        lattice: str = 'square',
        c: float | None = None,
        bounds: Mapping[str, Sequence[float]] | None = None,
    ):
        if lattice not in ('square', 'tetragonal'):
            raise ValueError(f"lattice must be 'square' or 'tetragonal', got {lattice!r}")
        fixed = {'a': float(a), 'lattice': lattice}
        core = dict(self.core)
        if lattice == 'tetragonal':
            fixed['c'] = float(a if c is None else c)
            core['tz'] = 0.05
        super().__init__(fixed, bounds=bounds, core=core)
        self.a, self.c, self.lattice = float(a), fixed.get('c'), lattice

    def dispersion(self, k, params: Params | None = None) -> torch.Tensor:
        """ε(k) (eV), shape (...), for k (..., 3) in Å⁻¹ (μ not subtracted)."""
        k, v = self._k(k), self.values(params)
        cx, cy = torch.cos(k[..., 0] * self.a), torch.cos(k[..., 1] * self.a)
        c2x, c2y = torch.cos(2 * k[..., 0] * self.a), torch.cos(2 * k[..., 1] * self.a)
        eps = -2 * v['t'] * (cx + cy) - 4 * v['tp'] * cx * cy - 2 * v['tpp'] * (c2x + c2y)
        if self.lattice == 'tetragonal':
            eps = eps - 2 * v['tz'] * torch.cos(k[..., 2] * self.c)
        return eps

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        return self.dispersion(k, params)[..., None, None]

    def bands(self, k, params: Params | None = None) -> torch.Tensor:
        mu = torch.as_tensor(self.values(params)['mu'], dtype=self.dtype)
        return (self.dispersion(k, params) - mu)[..., None]


class GrapheneModel(_NamedModel):
    """Graphene π bands: sublattices A, B, lattice a1 = a(1, 0, 0), a2 = a(1/2, √3/2, 0), B at (a1 + a2)/3.

    H(k) = [[Δ/2 − t′ g(k), −t f(k)], [−t f*(k), −Δ/2 − t′ g(k)]],
    f = 1 + e^{−ik·a1} + e^{−ik·a2},  g = 2[cos(k·a1) + cos(k·a2) + cos(k·(a2 − a1))] = |f|² − 3,

    i.e. E± = ±√(Δ²/4 + t²|f|²) − t′ g (Castro Neto et al., Rev. Mod. Phys. 81, 109 (2009), plus a
    sublattice potential ±Δ/2), bands E± − μ. The Dirac points are K = (4π/3a, 0, 0) and K′ = −K,
    where E± = ±Δ/2 + 3t′; Γ–K runs along k_x. ``t`` (≈ 2.7–3 eV) is the nearest-neighbour amplitude,
    ``tp`` the optional second-neighbour one, ``delta`` the gap at K, ``mu`` the Fermi level measured from
    the Dirac point (μ > 0: electron doping). Two-dimensional: k_z is ignored.

    :param a: lattice constant (Å), 2.46 for graphene (C–C distance a/√3).
    """

    name = 'graphene'
    core = {'t': 2.8, 'delta': 0.0, 'mu': 0.4}
    optional = ('tp',)
    default_bounds = {'t': (2.0, 3.5), 'tp': (-0.5, 0.5), 'delta': (0.0, 0.5), 'mu': (-1.0, 1.0)}
    n_bands = 2

    def __init__(
        self, a: float = 2.46, extra: Sequence[str] = (), bounds: Mapping[str, Sequence[float]] | None = None
    ):
        super().__init__({'a': float(a)}, extra, bounds)
        self.a = float(a)

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        k, v = self._k(k), self.values(params)
        x1 = k[..., 0] * self.a
        x2 = (k[..., 0] * 0.5 + k[..., 1] * (_SQRT3 / 2)) * self.a
        f = 1 + torch.polar(torch.ones_like(x1), -x1) + torch.polar(torch.ones_like(x2), -x2)
        g = 2 * (torch.cos(x1) + torch.cos(x2) + torch.cos(x2 - x1))
        diag = -v['tp'] * g
        hab = -v['t'] * f
        return _matrix(
            [
                [(v['delta'] / 2 + diag).to(f.dtype), hab],
                [hab.conj(), (-v['delta'] / 2 + diag).to(f.dtype)],
            ]
        )


class _EgModel(_NamedModel):
    """Two e_g orbitals, basis (d_x²−y², d_3z²−r²), on a simple cubic lattice of constant a.

    With c_i = cos(k_i a) and C_i = cos(2k_i a), the hopping part of H(k) is

    H11 = −(3/2)t(c_x + c_y) − (3/4)t′ c_z(c_x + c_y) − t′_π[4c_x c_y + c_z(c_x + c_y)] − (3/2)t″(C_x + C_y)
    H22 = −(1/2)t(c_x + c_y) − 2t c_z − t′[c_x c_y + (1/4)c_z(c_x + c_y)] − 3t′_π c_z(c_x + c_y)
          − (1/2)t″(C_x + C_y) − 2t″ C_z
    H12 = (√3/2)t(c_x − c_y) − (√3/4)t′ c_z(c_x − c_y) + √3 t′_π c_z(c_x − c_y) + (√3/2)t″(C_x − C_y)

    These are Slater–Koster two-centre sums (Slater & Koster, Phys. Rev. 94, 1498 (1954)) with
    (ddσ) = −t to the 6 nearest neighbours ⟨100⟩, (ddσ)′ = −t′ (``tp``) and (ddπ)′ = −t′_π (``tp_pi``) to
    the 12 second neighbours ⟨110⟩, and (ddσ)″ = −t″ (``tpp``) to the 6 neighbours ⟨200⟩; (ddδ) is
    neglected. t > 0 is the σ hopping magnitude: t is the amplitude between d_3z²−r² orbitals along z.
    The e_g band runs from −3t at Γ (both orbitals degenerate when Δ = 0, as cubic symmetry requires)
    to +3t at R = (π/a)(1, 1, 1); at X = (π/a, 0, 0) the orbitals mix through H12 = −√3 t.
    """

    optional = ('tp', 'tp_pi', 'tpp')

    def __init__(
        self, a: float, extra: Sequence[str] = (), bounds: Mapping[str, Sequence[float]] | None = None
    ):
        super().__init__({'a': float(a)}, extra, bounds)
        self.a = float(a)

    def hopping(self, k, v: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H11, H22, H12) of the hopping part (eV), each (...), for k (..., 3) in Å⁻¹."""
        cx, cy, cz = torch.cos(k * self.a).unbind(-1)
        c2x, c2y, c2z = torch.cos(2 * k * self.a).unbind(-1)
        t, tp, tpi, tpp = v['t'], v['tp'], v['tp_pi'], v['tpp']
        s, d, s2, d2 = cx + cy, cx - cy, c2x + c2y, c2x - c2y
        h11 = -1.5 * t * s - 0.75 * tp * cz * s - tpi * (4 * cx * cy + cz * s) - 1.5 * tpp * s2
        h22 = (
            -0.5 * t * s
            - 2 * t * cz
            - tp * (cx * cy + 0.25 * cz * s)
            - 3 * tpi * cz * s
            - 0.5 * tpp * s2
            - 2 * tpp * c2z
        )
        h12 = _SQRT3 * (0.5 * t * d - 0.25 * tp * cz * d + tpi * cz * d + 0.5 * tpp * d2)
        return h11, h22, h12


class NickelateEgModel(_EgModel):
    """Two-orbital e_g model of perovskite nickelates (RNiO3), see :class:`_EgModel` for the hopping:

    H(k) = hopping + diag(Δ/2, −Δ/2),   bands E± − μ,
    E± = (H11 + H22)/2 ± √(((H11 − H22)/2)² + H12²).

    ``delta`` = ε(x²−y²) − ε(3z²−r²) is the tetragonal crystal-field splitting (Δ > 0 lowers d_3z²−r²,
    as for octahedra elongated along z by in-plane compressive strain); at Γ the bands are −3t ± Δ/2.
    Parameters ``t``, ``delta``, ``mu`` (the default μ puts one e_g electron per Ni, i.e. a quarter
    filling), optionally ``tp``, ``tp_pi``, ``tpp`` (zero unless listed in ``extra``).

    :param a: pseudo-cubic lattice constant (Å), e.g. 3.83 for LaNiO3 films.
    """

    name = 'nickelate-eg'
    core = {'t': 0.4, 'delta': 0.1, 'mu': -0.6}
    default_bounds = {
        't': (0.1, 0.8),
        'delta': (-0.5, 0.5),
        'mu': (-2.0, 2.0),
        'tp': (-0.2, 0.2),
        'tp_pi': (-0.2, 0.2),
        'tpp': (-0.2, 0.2),
    }
    n_bands = 2

    def __init__(
        self, a: float = 3.83, extra: Sequence[str] = (), bounds: Mapping[str, Sequence[float]] | None = None
    ):
        super().__init__(a, extra, bounds)

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        k, v = self._k(k), self.values(params)
        h11, h22, h12 = self.hopping(k, v)
        return _matrix([[h11 + v['delta'] / 2, h12], [h12, h22 - v['delta'] / 2]])


class ManganiteEgModel(_EgModel):
    """Majority-spin e_g bands of a ferromagnetic double-exchange manganite (e.g. La1−xSrxMnO3).

    The two-orbital model of Mn e_g electrons (Dagotto, Hotta & Moreo, Phys. Rep. 344, 1 (2001);
    Ederer, Lin & Millis, Phys. Rev. B 76, 155105 (2007)) is H_hop (the cubic e_g hopping of
    :class:`_EgModel`) + a Hund's coupling −J_H S_i·σ to the t2g core spin + an on-site coupling to the
    Jahn–Teller modes ∝ Q2,i τx + Q3,i τz (τ: Pauli matrices in orbital space). In the fully polarised
    ferromagnet the core spins are parallel, so the double-exchange factor cos(θ_ij/2) is 1 and the
    majority e_g bands are H_hop shifted rigidly by −J_H|S| (absorbed into μ; the minority e_g bands lie
    ≈ 2J_H|S| higher and are empty). A uniform (ferro-orbital) Jahn–Teller distortion adds the on-site
    matrix (Δ/2)τz + (Δ2/2)τx in the basis (d_x²−y², d_3z²−r²):

    H(k) = hopping + [[Δ/2, Δ2/2], [Δ2/2, −Δ/2]],   bands E± − μ.

    ``delta`` is the Q3-type (tetragonal) splitting as in :class:`NickelateEgModel`, ``delta2`` the optional
    Q2-type (orthorhombic) one; a staggered, cell-doubling Jahn–Teller order (LaMnO3) is not included. In
    a paramagnetic or canted state the fitted t is the effective t·⟨cos(θ/2)⟩. The default μ holds 0.7
    majority e_g electrons per Mn (x = 0.3).

    :param a: pseudo-cubic lattice constant (Å), e.g. 3.87 for La0.7Sr0.3MnO3.
    """

    name = 'manganite-eg'
    core = {'t': 0.6, 'delta': 0.0, 'mu': -0.6}
    optional = ('delta2', 'tp', 'tp_pi', 'tpp')
    default_bounds = {
        't': (0.2, 1.0),
        'delta': (-0.5, 0.5),
        'delta2': (-0.5, 0.5),
        'mu': (-3.0, 3.0),
        'tp': (-0.2, 0.2),
        'tp_pi': (-0.2, 0.2),
        'tpp': (-0.2, 0.2),
    }
    n_bands = 2

    def __init__(
        self, a: float = 3.87, extra: Sequence[str] = (), bounds: Mapping[str, Sequence[float]] | None = None
    ):
        super().__init__(a, extra, bounds)

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        k, v = self._k(k), self.values(params)
        h11, h22, h12 = self.hopping(k, v)
        return _matrix(
            [[h11 + v['delta'] / 2, h12 + v['delta2'] / 2], [h12 + v['delta2'] / 2, h22 - v['delta'] / 2]]
        )


def _amplitude(spec) -> dict[str, float | list[float]]:
    """Normalise an amplitude to ``{name: coefficient}`` with the key ``'1'`` for a constant term.

    Accepted: a number (constant), ``[re, im]`` (complex constant), a parameter name (coefficient 1), or
    a mapping ``{name or '1': number or [re, im]}``.
    """
    if isinstance(spec, str):
        spec = {spec: 1.0}
    elif isinstance(spec, (int, float)) or (isinstance(spec, Sequence) and len(spec) == 2):
        spec = {'1': spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f'cannot read amplitude {spec!r}')
    out = {}
    for name, c in spec.items():
        if name != '1' and not str(name).isidentifier():
            raise ValueError(f'parameter names must be identifiers, got {name!r}')
        out[str(name)] = [float(c[0]), float(c[1])] if isinstance(c, Sequence) else float(c)
    return out


def _coefficient(c: float | list[float]) -> complex:
    return complex(c[0], c[1]) if isinstance(c, list) else complex(c)


class HoppingListModel(TightBindingModel):
    """Generic model from a hopping table; each amplitude is a linear combination of named parameters.

    H(k) = Σ_i ε_i |i⟩⟨i| + Σ_(R,i,j) [a_Rij e^{ik·R} |i⟩⟨j| + h.c.],   R = n1 a1 + n2 a2 + n3 a3,

    so H is Hermitian by construction: list each bond once (its partner (−R, j, i) is the h.c.).
    Amplitudes (see :func:`_amplitude`): ``-1.0``, ``[0, 0.1]`` (i·0.1), ``'t'``, ``{'t': -1}`` (−t),
    ``{'t1': -1, 'lam': [0, 1]}`` (−t1 + i·lam); several bonds may share (tie) one parameter.

    :param lattice: (3, 3) lattice vectors as rows (Å); for 2D models a3 is any out-of-plane vector.
    :param orbitals: orbital names, one per basis function.
    :param hoppings: ``{'R': [n1, n2, n3] or 'R_cart': [x, y, z] (Å), 'i', 'j': index or name,
        'amplitude': ...}`` per bond; R_cart must be a lattice vector.
    :param onsite: one real amplitude per orbital (``None``: zero), e.g. ``['e_d', {'e_d': 1, 'delta': 1}]``.
    :param bounds: ``{name: (low, high)}``; parameters without bounds get (−5, 5) eV.
    :param values: initial values (default 0); ``mu`` is always a parameter.
    """

    name = 'hopping-list'

    def __init__(
        self,
        lattice,
        orbitals: Sequence[str],
        hoppings: Sequence[Mapping],
        onsite: Sequence | None = None,
        bounds: Mapping[str, Sequence[float]] | None = None,
        values: Mapping[str, float] | None = None,
    ):
        lattice = np.asarray(lattice, dtype=float).reshape(3, 3)
        orbitals = [str(o) for o in orbitals]
        n = len(orbitals)
        index = {name: i for i, name in enumerate(orbitals)}
        onsite = [0.0 if a is None else a for a in (onsite if onsite is not None else [0.0] * n)]
        if len(onsite) != n:
            raise ValueError(f'onsite has {len(onsite)} entries for {n} orbitals')
        bonds, seen = [], set()
        for h in hoppings:
            if ('R' in h) == ('R_cart' in h):
                raise ValueError(f'give exactly one of R (lattice) or R_cart (Å) in hopping {dict(h)}')
            if 'R' in h:
                frac = np.asarray(h['R'], dtype=float)
            else:
                frac = np.linalg.solve(lattice.T, np.asarray(h['R_cart'], dtype=float))
            R = np.rint(frac).astype(int)
            if not np.allclose(frac, R, atol=1e-6):
                raise ValueError(f'R_cart {h["R_cart"]} is not a lattice vector')
            i, j = (int(index[x]) if isinstance(x, str) else int(x) for x in (h['i'], h['j']))
            if not (0 <= i < n and 0 <= j < n):
                raise ValueError(f'orbital index out of range in hopping {dict(h)}')
            key, partner = (*R, i, j), (*(-R), j, i)
            if key == partner:
                raise ValueError('an on-site term (R = 0, i = j) belongs in onsite, not in hoppings')
            if key in seen or partner in seen:
                raise ValueError(f'bond {key} listed twice (its Hermitian partner is added automatically)')
            seen.add(key)
            bonds.append({'R': [int(x) for x in R], 'i': i, 'j': j, 'amplitude': _amplitude(h['amplitude'])})
        onsite = [_amplitude(a) for a in onsite]
        if any(isinstance(c, list) and c[1] != 0 for a in onsite for c in a.values()):
            raise ValueError('on-site amplitudes must be real')

        names = sorted({name for a in [*onsite, *(b['amplitude'] for b in bonds)] for name in a} - {'1'})
        values = dict(values or {})
        unknown = sorted(set(values) - set(names) - {'mu'})
        if unknown:
            raise ValueError(f'values for parameter(s) {unknown} that no amplitude uses')
        unknown = sorted(set(bounds or {}) - set(names) - {'mu'})
        if unknown:
            raise ValueError(f'bounds for parameter(s) {unknown} that no amplitude uses')
        bounds = {name: (-5.0, 5.0) for name in [*names, 'mu']} | dict(bounds or {})
        fixed = {'lattice': lattice.tolist(), 'orbitals': orbitals, 'hoppings': bonds, 'onsite': onsite}
        super().__init__({name: values.get(name, 0.0) for name in [*names, 'mu']}, bounds, fixed)
        self.fixed['bounds'] = {name: list(b) for name, b in self._bounds.items()}
        self.n_bands = n
        self.register_buffer('lattice_vectors', torch.tensor(lattice, dtype=torch.float64))

        # Terms: bonds, then on-site terms as R = 0 bonds of half weight (H = M + M^H doubles them).
        terms = [(b['R'], b['i'], b['j'], b['amplitude'], 1.0) for b in bonds]
        terms += [([0, 0, 0], i, i, a, 0.5) for i, a in enumerate(onsite)]
        rows = ['1', *names]
        coef = torch.zeros(len(rows), len(terms), dtype=torch.complex128)
        select = torch.zeros(len(terms), n, n, dtype=torch.complex128)
        for t, (_, i, j, amp, weight) in enumerate(terms):
            for name, c in amp.items():
                coef[rows.index(name), t] = weight * _coefficient(c)
            select[t, i, j] = 1
        self.names = names
        self.register_buffer('coefficients', coef)
        self.register_buffer('select', select)
        self.register_buffer(
            'vectors', torch.tensor([r for r, *_ in terms], dtype=torch.float64) @ self.lattice_vectors
        )

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        k, v = self._k(k), self.values(params)
        cdtype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        theta = [torch.as_tensor(v[name], dtype=self.dtype) for name in self.names]
        theta = torch.stack(torch.broadcast_tensors(torch.ones((), dtype=self.dtype), *theta), -1)
        amplitude = theta.to(cdtype) @ self.coefficients.to(cdtype)  # (..., n_terms)
        phase = k @ self.vectors.to(k.dtype).T
        terms = amplitude * torch.polar(torch.ones_like(phase), phase)
        m = torch.einsum('...t,tij->...ij', terms, self.select.to(cdtype))
        return m + m.mH


MODELS: dict[str, type[TightBindingModel]] = {
    cls.name: cls
    for cls in (SingleBandModel, GrapheneModel, NickelateEgModel, ManganiteEgModel, HoppingListModel)
}


#: models built from a file, imported on first use: name -> (module, class)
FILE_MODELS: dict[str, tuple[str, str]] = {
    'hamiltonian': ('aiida_nextham.arpes.hamiltonian_model', 'HamiltonianModel'),
}


def get_model(name: str, **fixed) -> TightBindingModel:
    """A model by registry name (``MODELS`` or ``FILE_MODELS``) with its default parameters; ``fixed`` are
    constructor arguments, e.g. ``get_model('nickelate-eg', a=3.83, extra=['tp'])``."""
    if name in FILE_MODELS:
        import importlib

        module, attribute = FILE_MODELS[name]
        return getattr(importlib.import_module(module), attribute)(**fixed)
    try:
        cls = MODELS[name]
    except KeyError:
        known = sorted([*MODELS, *FILE_MODELS])
        raise ValueError(f'unknown tight-binding model {name!r}; known: {known}') from None
    return cls(**fixed)


@dataclass
class ModelSpec:
    """A model as JSON: registry ``name``, constructor arguments ``fixed`` and ``parameters`` (eV)."""

    name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, float] = field(default_factory=dict)

    def build(self) -> TightBindingModel:
        model = get_model(self.name, **self.fixed)
        model.set_parameters(self.parameters)
        return model

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(asdict(self), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        unknown = sorted(set(data) - {'name', 'fixed', 'parameters'})
        if unknown or 'name' not in data:
            raise ValueError(f'a model spec has keys name, fixed, parameters; got {sorted(data)}')
        return cls(
            data['name'],
            dict(data.get('fixed', {})),
            {k: float(v) for k, v in data.get('parameters', {}).items()},
        )
