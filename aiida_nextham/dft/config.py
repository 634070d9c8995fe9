"""Typed settings of the label engine (units: eV and Å, like the rest of the package)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DftConfigError

__all__ = [
    'DAMPED_CYCLES',
    'DENSITY_FITS',
    'GUESS_KEYS',
    'SMEARINGS',
    'DftConfig',
    'dense_mesh',
    'mesh_from_spacing',
    'shortest_superlattice_vector',
]

SMEARINGS = ('fermi-dirac', 'gaussian')
DENSITY_FITS = ('multigrid', 'fftdf')
GUESS_KEYS = ('atom', 'minao')
#: damped SCF cycles before DIIS takes over when ``damping`` is set and ``diis_start_cycle`` is not
DAMPED_CYCLES = 8
#: the numeric field types, with their conversions
_NUMBERS = {'float': float, 'int': int}


@dataclass(frozen=True)
class DftConfig:
    """Settings of one PySCF label or H0 run.

    :param basis: GTH basis family (``'gth-szv'`` fast, ``'gth-dzvp'`` balanced).
    :param pseudo: GTH pseudopotential family.
    :param xc: exchange-correlation functional (libxc name understood by PySCF).
    :param kmesh: SCF Γ-centred k-mesh; None: from ``kspacing``.
    :param kspacing: largest spacing between SCF k-points, Å⁻¹ with the 2π (VASP's KSPACING).
    :param dense_kmesh: mesh on which H, H0, S are rebuilt (non-self-consistently) before the
        inverse Fourier transform; None: the smallest mesh whose supercell has no lattice vector
        shorter than ``2 * cutoff + alias_margin`` (see :func:`dense_mesh`).
    :param alias_margin: Å; distance between a kept pair and its nearest alias beyond the cutoff.
    :param cutoff: neighbour cutoff of the stored blocks, Å.
    :param smearing: None (insulators), ``'fermi-dirac'`` or ``'gaussian'``.
    :param smearing_width: eV (k_B T for Fermi-Dirac).
    :param level_shift: virtual-orbital level shift, eV.
    :param damping: Fock damping factor. PySCF damps only the cycles before DIIS starts, so
        damping needs ``diis_start_cycle`` > 1 to act.
    :param diis_start_cycle: first cycle that uses DIIS; None: PySCF's 1 without damping and
        :data:`DAMPED_CYCLES` + 1 with damping.
    :param max_cycles: SCF cycle limit.
    :param conv_tol: SCF energy threshold, eV per cell.
    :param conv_tol_grad: SCF orbital-gradient threshold, eV; None: PySCF's default (√conv_tol in Ha).
    :param density_fit: ``'multigrid'`` (fastest, matches FFTDF to 1e-8 Ha) or ``'fftdf'``. GDF is
        rejected: it cannot build the matrices at the dense mesh's k-points at a sane cost.
    :param init_guess: superposition-of-atoms guess that defines H0 and starts the SCF
        (``'atom'`` or ``'minao'``; they coincide for single-zeta bases).
    :param seed: seed of the self-check k-points.
    :param selfcheck: compare band energies of the stored blocks with PySCF's at off-mesh k-points.
    :param selfcheck_kpoints: number of random off-mesh k-points.
    :param selfcheck_conduction_bands: conduction bands checked above the occupied ones.
    :param selfcheck_tolerance: largest accepted deviation, meV.
    :param precision: PySCF ``cell.precision`` (integral screening and grids).
    :param max_memory: PySCF memory limit, MB.
    :param threads: OpenMP threads for PySCF; None leaves the current setting.
    :param verbose: PySCF verbosity (0 silent, 4 SCF cycles).
    """

    basis: str = 'gth-szv'
    pseudo: str = 'gth-pbe'
    xc: str = 'pbe'
    kmesh: tuple[int, int, int] | None = None
    kspacing: float = 0.7
    dense_kmesh: tuple[int, int, int] | None = None
    alias_margin: float = 4.0
    cutoff: float = 8.0
    smearing: str | None = None
    smearing_width: float = 0.1
    level_shift: float = 0.0
    damping: float = 0.0
    diis_start_cycle: int | None = None
    max_cycles: int = 50
    conv_tol: float = 1e-6
    conv_tol_grad: float | None = None
    density_fit: str = 'multigrid'
    init_guess: str = 'atom'
    seed: int = 0
    selfcheck: bool = True
    selfcheck_kpoints: int = 5
    selfcheck_conduction_bands: int = 1
    selfcheck_tolerance: float = 5.0
    precision: float = 1e-8
    max_memory: int = 4000
    threads: int | None = None
    verbose: int = 0

    def __post_init__(self):
        self._check_numbers()
        for name in ('kmesh', 'dense_kmesh'):
            value = getattr(self, name)
            if value is not None:
                mesh = tuple(int(n) for n in np.atleast_1d(value))
                if len(mesh) == 1:
                    mesh = mesh * 3
                if len(mesh) != 3 or min(mesh) < 1:
                    raise DftConfigError(f'{name} must be three positive integers, got {value!r}')
                object.__setattr__(self, name, mesh)
        if self.smearing is not None and self.smearing not in SMEARINGS:
            raise DftConfigError(f'smearing must be None or one of {SMEARINGS}, got {self.smearing!r}')
        if self.density_fit == 'gdf':
            raise DftConfigError(
                "density_fit='gdf' is not supported by the label engine: PySCF's GDF needs new 3-index "
                'integrals for every band k-point of the dense mesh (tens of GB), and its Coulomb matrix '
                "differs from FFTDF's by ~1 mHa; use 'multigrid' (default) or 'fftdf'"
            )
        if self.density_fit not in DENSITY_FITS:
            raise DftConfigError(f'density_fit must be one of {DENSITY_FITS}, got {self.density_fit!r}')
        if self.init_guess not in GUESS_KEYS:
            raise DftConfigError(f'init_guess must be one of {GUESS_KEYS}, got {self.init_guess!r}')
        for name in ('kspacing', 'cutoff', 'smearing_width', 'conv_tol', 'selfcheck_tolerance', 'precision'):
            if not getattr(self, name) > 0:
                raise DftConfigError(f'{name} must be positive, got {getattr(self, name)!r}')
        for name in ('alias_margin', 'level_shift'):
            if getattr(self, name) < 0:
                raise DftConfigError(f'{name} must not be negative, got {getattr(self, name)!r}')
        if not 0 <= self.damping < 1:
            raise DftConfigError(f'damping must lie in [0, 1), got {self.damping!r}')
        if self.max_cycles < 1 or self.selfcheck_kpoints < 1 or self.selfcheck_conduction_bands < 0:
            raise DftConfigError('max_cycles and selfcheck_kpoints must be >= 1, conduction bands >= 0')
        if self.diis_start_cycle is not None and self.diis_start_cycle < 1:
            raise DftConfigError(f'diis_start_cycle must be >= 1, got {self.diis_start_cycle!r}')
        if self.conv_tol_grad is not None and not self.conv_tol_grad > 0:
            raise DftConfigError(f'conv_tol_grad must be positive, got {self.conv_tol_grad!r}')

    def _check_numbers(self) -> None:
        """Numeric settings as numbers: numeric strings are converted (YAML 1.1 reads ``1e-6`` as a
        string), anything else is an error that names the setting."""
        for field in dataclasses.fields(self):
            kind = str(field.type).removesuffix(' | None')
            value = getattr(self, field.name)
            if kind not in _NUMBERS or value is None:
                continue
            try:
                if isinstance(value, bool):
                    raise ValueError
                number = _NUMBERS[kind](float(value) if kind == 'float' else value)
                if kind == 'int' and number != float(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise DftConfigError(
                    f'{field.name} must be {"an integer" if kind == "int" else "a number"}, got {value!r}'
                ) from None
            object.__setattr__(self, field.name, number)

    # ------------------------------------------------------------------------------- conversion
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DftConfig:
        """Build from a mapping, rejecting unknown keys with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DftConfigError(f'unknown DFT setting(s) {unknown}; known: {sorted(known)}')
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (meshes as lists)."""
        data = dataclasses.asdict(self)
        for name in ('kmesh', 'dense_kmesh'):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    def replace(self, **changes) -> DftConfig:
        """A validated copy with some settings changed (``None`` values are ignored)."""
        return self.from_dict({**self.as_dict(), **{k: v for k, v in changes.items() if v is not None}})

    # ------------------------------------------------------------------------------------ meshes
    def diis_start(self) -> int:
        """The first DIIS cycle actually used (see ``diis_start_cycle``)."""
        if self.diis_start_cycle is not None:
            return self.diis_start_cycle
        return DAMPED_CYCLES + 1 if self.damping > 0 else 1

    def scf_mesh(self, lattice: np.ndarray) -> tuple[int, int, int]:
        """The SCF k-mesh for a lattice (rows are vectors, Å)."""
        return self.kmesh if self.kmesh is not None else mesh_from_spacing(lattice, self.kspacing)

    def band_mesh(self, lattice: np.ndarray) -> tuple[int, int, int]:
        """The dense mesh of the real-space transform for a lattice."""
        if self.dense_kmesh is not None:
            return self.dense_kmesh
        return dense_mesh(lattice, 2 * self.cutoff + self.alias_margin)


def _widths(lattice: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell along each lattice direction, Å."""
    return 1.0 / np.linalg.norm(np.linalg.inv(np.asarray(lattice, dtype=float)).T, axis=1)


def mesh_from_spacing(lattice: np.ndarray, spacing: float) -> tuple[int, int, int]:
    """Γ-centred mesh with at most ``spacing`` Å⁻¹ (2π included) between k-points."""
    lengths = 2 * np.pi / _widths(lattice)
    return tuple(max(1, math.ceil(length / spacing - 1e-9)) for length in lengths)


def shortest_superlattice_vector(lattice: np.ndarray, mesh: tuple[int, int, int]) -> float:
    """Length of the shortest non-zero vector of the Born-von Kármán supercell lattice of ``mesh``, Å."""
    lattice = np.asarray(lattice, dtype=float)
    widths = _widths(lattice) * np.asarray(mesh)
    # any supercell vector with |m_i| > reach_i is longer than the supercell's longest edge
    longest = float(np.linalg.norm(lattice * np.asarray(mesh)[:, None], axis=1).max())
    reach = [int(math.floor(longest / w + 1e-9)) for w in widths]
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing='ij'), -1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    return float(np.linalg.norm((grid * np.asarray(mesh)) @ lattice, axis=1).min())


def dense_mesh(lattice: np.ndarray, length: float) -> tuple[int, int, int]:
    """Mesh with the fewest k-points whose supercell has no lattice vector shorter than ``length`` Å.

    Inverse-transforming M(k) on such a mesh returns M(R) + Σ_L M(R + L) with |L| >= ``length``,
    so a pair within the cutoff c sees its first alias at least ``length - c`` away.
    """
    upper = [max(1, math.ceil(length / w - 1e-9)) for w in _widths(lattice)]  # face widths: always enough
    best = tuple(upper)
    best_key = (int(np.prod(upper)), -shortest_superlattice_vector(lattice, best))
    for mesh in itertools.product(*[range(1, n + 1) for n in upper]):
        if np.prod(mesh) > best_key[0]:
            continue
        shortest = shortest_superlattice_vector(lattice, mesh)
        if shortest >= length - 1e-9 and (int(np.prod(mesh)), -shortest) < best_key:
            best, best_key = tuple(int(n) for n in mesh), (int(np.prod(mesh)), -shortest)
    return best
