"""A tight-binding model seeded by a block Hamiltonian (DFT or ML-predicted), refined against ARPES.

The model keeps the whole real-space H(R), S(R) of a block-Hamiltonian file and makes a few physical
knobs free, each initialised so that the model reproduces the file's bands *exactly*:

- ``e_<El>_<shell>``: the on-site energy of a shell (per element, eV relative to E_F, initial value the
  mean diagonal of the on-site blocks). A change δ of the orbital energies enters as ½(D S(k) + S(k) D),
  D = diag(δ): the non-orthogonal form of an orbital-energy shift (a common δ shifts every band by δ).
- ``s_<El1>_<El2>_<n>``: a scale factor of all blocks between atoms of the element pair in the n-th
  distance shell (1: nearest neighbours), applied to H(R) − E_F S(R), so the scaling does not depend on
  the arbitrary energy zero of the DFT code (a scale of 1.05 widens the bands near E_F by ~5 %).
- ``mu``: the chemical potential relative to the file's Fermi level (0 at the start); bands are E − E_F − μ.

H(k; θ) = Σ_R e^{ik·R} [H̃_fixed(R) + Σ_g s_g H̃_g(R)] + ½(D S(k) + S(k) D),   H̃ = H − E_F S,

with the periodic gauge of :mod:`.tightbinding` (lattice vectors only in the phase), k Cartesian in Å⁻¹.
Every (element, shell) on-site energy of the selected orbitals is free, except that when this would free
*all* shells of the basis the first one stays fixed (a common shift of all of them is the same as μ).

Orbital subsets. The basis is non-orthogonal, so rows of H(k) cannot simply be dropped. The model
Löwdin-orthogonalises in the full basis at every k, H_L(k) = S(k)^{-1/2} H(k) S(k)^{-1/2}, and keeps the
block of the selected orbitals; for the full set its eigenvalues are exactly those of H c = ε S c. For a
subset this neglects the coupling of the chosen Löwdin orbitals to the rest (no energy-dependent
downfolding): accurate when the chosen bands are separated from the others (e.g. Ni e_g vs O p) and
the simplest choice that keeps the model an ordinary Hermitian H(k), differentiable through
``eigvalsh``. Cost per k-point: one Bloch sum per parameter group (O(n_R n²)), one eigendecomposition
of S(k) (no gradient: S does not depend on θ) and two n × n products; memory O(n_groups n_R n²) for the
dense per-cell matrices, meant for primitive cells (up to ~100 orbitals).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from ..hamiltonian.block import BlockHamiltonian, HamiltonianError
from .tightbinding import Params, TightBindingModel

__all__ = ['HamiltonianModel', 'HamiltonianModelError', 'parse_orbitals']

#: default half width (eV) of the on-site energy bounds around their DFT values
ONSITE_RANGE = 1.0
#: default bounds of the hopping scale factors and of μ (eV)
SCALE_BOUNDS = (0.5, 1.5)
MU_BOUNDS = (-1.0, 1.0)
#: smallest eigenvalue of S(k) accepted by the Löwdin orthogonalisation
S_MIN = 1e-8
_LETTERS = 'spdfgh'


class HamiltonianModelError(ValueError):
    """A Hamiltonian-seeded model cannot be built: bad orbital selection, file or option."""


def parse_orbitals(text: str) -> list[str | int]:
    """``'Ni:d,O:p'`` or ``'0,1,2'`` (command line) -> ``['Ni:d', 'O:p']`` or ``[0, 1, 2]``."""
    items = [item.strip() for item in text.split(',') if item.strip()]
    if not items:
        raise HamiltonianModelError(f'no orbitals in {text!r}; e.g. "Ni:d", "Si:3p,Si:3s" or "0,1,2"')
    return [int(item) if item.lstrip('-').isdigit() else item for item in items]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open('rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _identifier(text: str) -> str:
    return re.sub(r'\W', '_', str(text))


class _Shells:
    """The shells of every element of a block Hamiltonian: names, orbital indices, selections."""

    def __init__(self, bh: BlockHamiltonian):
        self.bh = bh
        self.elements = {}  # symbol -> [(name, l, offset within the atom, size)]
        for z in sorted(set(bh.numbers.tolist())):
            element = bh.basis[z]
            letters = [_LETTERS[l] for l in element.shells]
            names = []
            for n, letter in enumerate(letters):
                if element.shell_names is not None:
                    names.append(str(element.shell_names[n]))
                elif letters.count(letter) > 1:
                    names.append(f'{letter}{letters[: n + 1].count(letter)}')
                else:
                    names.append(letter)
            offsets = np.concatenate([[0], np.cumsum([2 * l + 1 for l in element.shells])])
            self.elements[element.symbol] = [
                (name, l, int(offsets[n]), 2 * l + 1)
                for n, (name, l) in enumerate(zip(names, element.shells, strict=True))
            ]

    def symbol(self, atom: int) -> str:
        return chemical_symbols[int(self.bh.numbers[atom])]

    def orbitals(self, symbol: str, shell: str | None = None) -> list[int]:
        """Global (spinless) orbital indices of every atom of ``symbol``, optionally of one shell."""
        out = []
        for atom in range(self.bh.n_atoms):
            if self.symbol(atom) != symbol:
                continue
            start = int(self.bh.orbital_offsets[atom])
            for name, _, offset, size in self.elements[symbol]:
                if shell is None or name == shell:
                    out += range(start + offset, start + offset + size)
        return out

    def groups(self) -> list[tuple[str, str]]:
        """Every (element, shell name) of the basis, in element then storage order."""
        return [(symbol, name) for symbol, shells in self.elements.items() for name, *_ in shells]

    def match(self, selector) -> list[tuple[str, str]]:
        """The (element, shell) groups of a selector ``'Si'``, ``'Si:p'`` or ``'Si:3p'``."""
        text = str(selector)
        symbol, _, shell = text.partition(':')
        symbol, shell = symbol.strip(), shell.strip()
        if symbol not in atomic_numbers:
            raise HamiltonianModelError(f'unknown element {symbol!r} in orbital selector {text!r}')
        if symbol not in self.elements:
            raise HamiltonianModelError(
                f'orbital selector {text!r}: there is no {symbol} in {self.bh.formula} '
                f'(elements: {", ".join(self.elements)})'
            )
        shells = self.elements[symbol]
        if not shell:
            return [(symbol, name) for name, *_ in shells]
        found = [(symbol, name) for name, l, *_ in shells if name == shell or _LETTERS[l] == shell]
        if not found:
            known = ', '.join(name for name, *_ in shells)
            raise HamiltonianModelError(
                f'orbital selector {text!r} matches nothing: {symbol} has the shells {known} '
                f'(select by name or by l letter: {", ".join(sorted({_LETTERS[l] for _, l, *_ in shells}))})'
            )
        return found

    def select(self, selectors: Sequence) -> tuple[list[int], list[tuple[str, str]]]:
        """Sorted orbital indices and the (element, shell) groups they belong to."""
        if isinstance(selectors, str | int):
            selectors = [selectors]
        if not len(selectors):
            raise HamiltonianModelError('the orbital selection is empty')
        orbitals, groups = set(), []
        for selector in selectors:
            if isinstance(selector, int | np.integer) and not isinstance(selector, bool):
                index = int(selector)
                if not 0 <= index < self.bh.n_orbitals:
                    raise HamiltonianModelError(
                        f'orbital index {index} out of range: {self.bh.formula} has {self.bh.n_orbitals} '
                        'orbitals (0-based, spinless)'
                    )
                orbitals.add(index)
                group = self.group_of(index)
            elif isinstance(selector, str):
                for group in self.match(selector):
                    orbitals.update(self.orbitals(*group))
                    groups.append(group)
                continue
            else:
                raise HamiltonianModelError(
                    f'an orbital selector is an index or a string such as "Ni:d", got {selector!r}'
                )
            groups.append(group)
        order = {group: n for n, group in enumerate(self.groups())}
        return sorted(orbitals), sorted(set(groups), key=order.get)

    def group_of(self, orbital: int) -> tuple[str, str]:
        atom = int(np.searchsorted(self.bh.orbital_offsets, orbital, side='right') - 1)
        local = orbital - int(self.bh.orbital_offsets[atom])
        symbol = self.symbol(atom)
        for name, _, offset, size in self.elements[symbol]:
            if offset <= local < offset + size:
                return symbol, name
        raise AssertionError('orbital outside its atom')


def _distance_shells(distances: np.ndarray, tolerance: float) -> np.ndarray:
    """1-based shell index of every distance: sorted distances start a new shell after a gap > tolerance."""
    order = np.argsort(distances)
    gaps = np.diff(distances[order]) > tolerance
    shells = np.empty(len(distances), dtype=np.int64)
    shells[order] = np.concatenate([[1], 1 + np.cumsum(gaps)]) if len(distances) else []
    return shells


def _hopping_groups(
    bh: BlockHamiltonian, elements: set[str], n_shells: int, tolerance: float
) -> tuple[dict[str, tuple[int, int, int]], np.ndarray, dict[str, dict]]:
    """The free hopping groups: the first ``n_shells`` distance shells of every element pair involving one
    of ``elements``; every pair's group (0: fixed, on-site blocks included) and the groups' descriptions."""
    pairs = bh.pairs
    onsite = (pairs[:, 3] == pairs[:, 4]) & ~pairs[:, :3].any(axis=1)
    z_i, z_j = bh.numbers[pairs[:, 3]], bh.numbers[pairs[:, 4]]
    z_low, z_high = np.minimum(z_i, z_j), np.maximum(z_i, z_j)
    distances = bh.distances()
    shell_of = np.zeros(len(pairs), dtype=np.int64)  # 0: on-site
    for a, b in {(int(x), int(y)) for x, y in zip(z_low[~onsite], z_high[~onsite], strict=True)}:
        members = np.flatnonzero(~onsite & (z_low == a) & (z_high == b))
        shell_of[members] = _distance_shells(distances[members], tolerance)
    groups, info = {}, {}
    group_of_pair = np.zeros(len(pairs), dtype=np.int64)
    for a, b, n in sorted(
        {(int(x), int(y), int(s)) for x, y, s in zip(z_low, z_high, shell_of, strict=True)}
    ):
        symbols = chemical_symbols[a], chemical_symbols[b]
        if n == 0 or n > n_shells or not set(symbols) & elements:
            continue
        name = f's_{symbols[0]}_{symbols[1]}_{n}'
        members = (z_low == a) & (z_high == b) & (shell_of == n)
        groups[name] = (a, b, n)
        group_of_pair[members] = len(groups)
        info[name] = {'elements': list(symbols), 'shell': n, 'distance': float(distances[members].mean())}
    return groups, group_of_pair, info


def _cell_matrices(
    bh: BlockHamiltonian, group_of_pair: np.ndarray, n_groups: int, reference: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells R (n_R, 3) and the dense matrices of H − E_F S per group (1 + n_groups, n_R, n, n) and of S
    (n_R, n, n) in each cell; spinor states are all ↑ orbitals, then all ↓ (S ⊗ 1₂)."""
    pairs = bh.pairs
    onsite = (pairs[:, 3] == pairs[:, 4]) & ~pairs[:, :3].any(axis=1)
    cells, cell_index = np.unique(pairs[:, :3], axis=0, return_inverse=True)
    cell_index = cell_index.reshape(-1)
    n_orb, n_states = bh.n_orbitals, bh.n_states
    spinor = bh.spin == 'spinor'
    dtype = np.complex128 if (spinor or bh.hamiltonian.dtype.kind == 'c') else np.float64
    h_cells = np.zeros((n_groups + 1, len(cells), n_states, n_states), dtype=dtype)
    s_cells = np.zeros((len(cells), n_orb, n_orb))
    offsets = bh.orbital_offsets
    for p, (i, j) in enumerate(pairs[:, 3:]):
        if bh.overlap is not None:
            s = bh.block('S', p)
        else:  # an orthogonal basis
            s = np.eye(offsets[i + 1] - offsets[i]) if onsite[p] else 0.0
        s_cells[cell_index[p], offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = s
        h, target = bh.block('H', p), h_cells[group_of_pair[p], cell_index[p]]
        for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)) if spinor else ((0, 0),):
            block = h[a, b] if spinor else h
            rows = slice(a * n_orb + offsets[i], a * n_orb + offsets[i + 1])
            cols = slice(b * n_orb + offsets[j], b * n_orb + offsets[j + 1])
            target[rows, cols] = block - reference * s if a == b else block
    if spinor:
        s_cells = np.stack([np.kron(np.eye(2), s) for s in s_cells])
    return cells, h_cells, s_cells


class HamiltonianModel(TightBindingModel):
    """A tight-binding model from a block-Hamiltonian HDF5 file (see the module docstring).

    :param path: nextham block-Hamiltonian file (:func:`~aiida_nextham.hamiltonian.hdf5.write_hdf5`),
        H and S in eV; a Fermi level, or an electron count to compute it, must be known.
    :param orbitals: the orbitals whose bands are modelled: selectors ``'Ni'`` (all of an element),
        ``'Ni:d'`` (by l), ``'Ni:3d'`` (by shell name) or spinless orbital indices; default all.
    :param onsite: (element, shell) selectors whose on-site energies are free; default: those of the
        selected orbitals (see the module docstring for the reference shell); ``[]`` for none.
    :param hopping_shells: free scale factors for the first n distance shells of every element pair
        that involves a selected element (0: none).
    :param shell_tolerance: distances (Å) closer than this belong to the same shell.
    :param fermi_level: E_F of the file (eV); default the file's, else computed from its electron count.
    :param bounds: overrides of the default bounds, by parameter name.
    :param sha256: the file's SHA-256; when given (a model spec) the file must still have it.
    """

    name = 'hamiltonian'

    def __init__(
        self,
        path: str | Path,
        orbitals: Sequence[str | int] | None = None,
        onsite: Sequence[str] | None = None,
        hopping_shells: int = 2,
        shell_tolerance: float = 0.05,
        fermi_level: float | None = None,
        bounds: Mapping[str, Sequence[float]] | None = None,
        sha256: str | None = None,
    ):
        from ..hamiltonian.hdf5 import read_hdf5

        file = Path(path)
        if not file.is_file():
            raise HamiltonianModelError(f'no block-Hamiltonian file {str(path)!r}')
        digest = _sha256(file)
        if sha256 is not None and sha256 != digest:
            raise HamiltonianModelError(
                f'{path} has changed since the model was made '
                f'(SHA-256 {digest[:12]}…, expected {sha256[:12]}…)'
            )
        try:
            bh = read_hdf5(file).complete_hermitian()
        except HamiltonianError as exc:
            raise HamiltonianModelError(str(exc)) from None
        if int(hopping_shells) < 0 or not shell_tolerance > 0:
            raise HamiltonianModelError('hopping_shells must be >= 0 and shell_tolerance > 0 Å')
        reference = self._fermi_level(bh, fermi_level)
        shells = _Shells(bh)
        selected, selected_groups = shells.select(
            list(orbitals) if orbitals is not None else list(shells.elements)
        )
        if onsite is None:
            free_onsite = list(selected_groups)
            if len(free_onsite) == len(shells.groups()):
                free_onsite = free_onsite[1:]  # the reference: a shift of all of them is μ
        else:
            free_onsite = []
            for selector in [onsite] if isinstance(onsite, str) else onsite:
                free_onsite += [g for g in shells.match(selector) if g not in free_onsite]
            if free_onsite and len(free_onsite) == len(shells.groups()):
                raise HamiltonianModelError(
                    'freeing the on-site energies of every shell is degenerate with mu (a common shift): '
                    f'leave one of {[":".join(g) for g in free_onsite]} out'
                )

        hopping, group_of_pair, shell_info = _hopping_groups(
            bh, {symbol for symbol, _ in selected_groups}, int(hopping_shells), float(shell_tolerance)
        )
        cells, h_cells, s_cells = _cell_matrices(bh, group_of_pair, len(hopping), reference)
        n_orb, n_states = bh.n_orbitals, bh.n_states
        spinor = bh.spin == 'spinor'

        def states(orbital_list) -> list[int]:
            orbital_list = list(orbital_list)
            return orbital_list + ([o + n_orb for o in orbital_list] if spinor else [])

        # on-site parameters: initial value = mean diagonal of H - E_F S on the shell's on-site blocks
        onsite_values, onsite_columns = {}, []
        h_home = h_cells[0, int(np.flatnonzero(~cells.any(axis=1))[0])]
        for symbol, shell in free_onsite:
            index = states(shells.orbitals(symbol, shell))
            onsite_values[f'e_{symbol}_{_identifier(shell)}'] = float(np.real(np.diag(h_home)[index]).mean())
            column = np.zeros(n_states)
            column[index] = 1.0
            onsite_columns.append(column)

        values = {**onsite_values, **dict.fromkeys(hopping, 1.0), 'mu': 0.0}
        default_bounds = {name: (v - ONSITE_RANGE, v + ONSITE_RANGE) for name, v in onsite_values.items()}
        default_bounds |= dict.fromkeys(hopping, SCALE_BOUNDS)
        default_bounds['mu'] = MU_BOUNDS
        unknown = sorted(set(bounds or {}) - set(values))
        if unknown:
            raise HamiltonianModelError(
                f'bounds for unknown parameter(s) {unknown}; the model has {list(values)}'
            )
        fixed = {'path': str(path)}
        if orbitals is not None:
            fixed['orbitals'] = [int(o) if isinstance(o, int | np.integer) else str(o) for o in orbitals]
        if onsite is not None:
            fixed['onsite'] = [onsite] if isinstance(onsite, str) else [str(o) for o in onsite]
        fixed.update(hopping_shells=int(hopping_shells), shell_tolerance=float(shell_tolerance))
        fixed.update(fermi_level=float(reference), sha256=digest)
        if bounds:
            fixed['bounds'] = {name: [float(b[0]), float(b[1])] for name, b in bounds.items()}
        super().__init__(values, {**default_bounds, **(bounds or {})}, fixed)

        self.formula = bh.formula
        self.n_bands = len(states(selected))
        self.fermi_level = float(reference)
        self.onsite_names = tuple(onsite_values)
        self.hopping_names = tuple(hopping)
        #: per hopping scale: the element pair, the shell number and its mean distance (Å)
        self.hopping_shells_info = shell_info
        cdtype = torch.complex128
        self.register_buffer('cell_vectors', torch.tensor(cells @ bh.lattice, dtype=torch.float64))
        self.register_buffer(
            'h_cells', torch.as_tensor(h_cells).to(cdtype).flatten(2).transpose(0, 1).flatten(1)
        )
        self.register_buffer('s_cells', torch.as_tensor(s_cells).to(cdtype).flatten(1))
        self.register_buffer(
            'onsite_initial', torch.tensor(list(onsite_values.values()), dtype=torch.float64)
        )
        self.register_buffer(
            'onsite_projector',
            torch.tensor(np.array(onsite_columns).reshape(-1, n_states), dtype=torch.float64),
        )
        self.register_buffer('selected', torch.tensor(states(selected), dtype=torch.int64))
        self._n_groups = len(hopping)
        self._n_states = n_states
        self._full = len(selected) == n_orb

    @staticmethod
    def _fermi_level(bh: BlockHamiltonian, fermi_level: float | None) -> float:
        if fermi_level is not None:
            return float(fermi_level)
        if bh.fermi_level is not None:
            return float(bh.fermi_level)
        if bh.n_electrons is None:
            raise HamiltonianModelError(
                f'{bh.formula}: the file has neither a Fermi level nor an electron count; give fermi_level'
            )
        from ..hamiltonian.bloch import eigenvalues
        from ..hamiltonian.spectra import fermi_level as compute
        from ..hamiltonian.spectra import monkhorst_pack

        kpoints, weights = monkhorst_pack([8 if p else 1 for p in bh.periodic])
        energies = eigenvalues(bh, kpoints)
        return compute(energies, weights, bh.n_electrons, spin_degeneracy=1 if bh.spin == 'spinor' else 2)

    def _bloch(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(H̃_g(k) for the fixed part and every group, (..., 1 + G, n, n); S(k), (..., n, n))."""
        phase = k @ self.cell_vectors.T
        phase = torch.polar(torch.ones_like(phase), phase)
        n = self._n_states
        h = (phase @ self.h_cells).unflatten(-1, (self._n_groups + 1, n, n))
        s = (phase @ self.s_cells).unflatten(-1, (n, n))
        return h, s

    def hamiltonian(self, k, params: Params | None = None) -> torch.Tensor:
        """The Löwdin-orthogonalised H(k) (eV, relative to the file's E_F) on the selected orbitals."""
        k, v = self._k(k), self.values(params)
        groups, s = self._bloch(k)
        h = groups[..., 0, :, :]
        if self.hopping_names:
            scale = torch.stack(
                torch.broadcast_tensors(
                    *[torch.as_tensor(v[name], dtype=self.dtype) for name in self.hopping_names]
                ),
                -1,
            )
            h = h + (scale.to(h.dtype)[..., :, None, None] * groups[..., 1:, :, :]).sum(-3)
        if self.onsite_names:
            energy = torch.stack(
                torch.broadcast_tensors(
                    *[torch.as_tensor(v[name], dtype=self.dtype) for name in self.onsite_names]
                ),
                -1,
            )
            delta = (energy - self.onsite_initial) @ self.onsite_projector  # (..., n) orbital-energy shifts
            h = h + 0.5 * (delta[..., :, None] + delta[..., None, :]).to(h.dtype) * s
        with torch.no_grad():
            w, u = torch.linalg.eigh(s)
            if bool((w[..., 0] < S_MIN).any()):
                raise HamiltonianModelError(
                    f'S(k) of {self.formula} is singular (smallest eigenvalue {float(w[..., 0].min()):.2e})'
                )
            x = (u * w.rsqrt().to(u.dtype)[..., None, :]) @ u.mH
        if not self._full:
            x = x[..., self.selected, :]
        return x @ h @ x.mH
