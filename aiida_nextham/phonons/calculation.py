"""Finite-displacement phonons with phonopy: supercell, displacements, forces, force constants, spectra.

Steps of :func:`run_phonons`: phonopy's symmetry-reduced displacements of the supercell (0.01 Å by
default) -> forces of each displaced supercell from a :class:`~aiida_nextham.phonons.backends.ForceBackend`
-> force constants, symmetrised (translational invariance = acoustic sum rule, and index permutation)
-> frequencies along seekpath's path of the primitive cell, total DOS (tetrahedron method) and
harmonic thermal properties on a Γ-centred mesh -> dynamical-stability check.

Units: eV and Å in, THz for frequencies, states/THz per primitive cell for the DOS, eV per primitive
cell (and eV/K) for thermal properties. No non-analytic (LO-TO) correction: fine for elemental
crystals such as Si; polar crystals would need Born charges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from ..hamiltonian.kpath import KPath, band_path
from .backends import ForceBackend, describe_backend

__all__ = [
    'IMAGINARY_TOLERANCE',
    'PhononResult',
    'PhononSettings',
    'make_phonopy',
    'run_phonons',
    'stability',
    'supercell_matrix',
]

#: frequencies below this (THz, imaginary modes are negative) make a structure dynamically unstable
IMAGINARY_TOLERANCE = -0.05
#: kJ/mol per eV (phonopy's thermal properties are per mole of primitive cells)
_KJMOL_PER_EV = 96.48533212331002


def supercell_matrix(value) -> np.ndarray:
    """A (3, 3) integer supercell matrix from 1, 3 or 9 integers (diagonal for 1 or 3)."""
    array = np.asarray(value)
    if array.size in (1, 3):
        matrix = np.diag(np.broadcast_to(array.reshape(-1), (3,)).astype(float))
    elif array.size == 9:
        matrix = array.reshape(3, 3).astype(float)
    else:
        raise ValueError(f'supercell must be 1, 3 or 9 integers, got {value!r}')
    if not np.allclose(matrix, np.round(matrix)) or round(abs(np.linalg.det(matrix))) < 1:
        raise ValueError(f'supercell must be integers with a non-zero determinant, got {value!r}')
    return np.round(matrix).astype(int)


@dataclass(frozen=True)
class PhononSettings:
    """Settings of a finite-displacement phonon calculation.

    :param supercell: supercell of the input cell: 1, 3 (diagonal) or 9 integers.
    :param displacement: displacement amplitude, Å.
    :param plus_minus: displace in both directions: ``'auto'`` (only where symmetry needs it), True, False.
    :param primitive: phonopy's ``primitive_matrix`` (``'auto'``: found by symmetry; None: the input cell).
    :param symprec: symmetry tolerance, Å.
    :param path: band path: ``'auto'`` (seekpath) or labels such as ``'G-X-U|K-G-L'``.
    :param npoints: q-points along the path.
    :param mesh: Γ-centred q-mesh of the DOS and thermal properties (3 integers, or one number = phonopy's
        length-based density).
    :param tmin, tmax, tstep: temperatures of the thermal properties, K.
    :param imaginary_tolerance: THz; a mode below it (other than the acoustic modes at Γ) is unstable.
    """

    supercell: tuple = (2, 2, 2)
    displacement: float = 0.01
    plus_minus: str | bool = 'auto'
    primitive: str | None = 'auto'
    symprec: float = 1e-5
    path: str = 'auto'
    npoints: int = 101
    mesh: tuple | float = (20, 20, 20)
    tmin: float = 0.0
    tmax: float = 1000.0
    tstep: float = 10.0
    imaginary_tolerance: float = IMAGINARY_TOLERANCE

    def __post_init__(self):
        supercell_matrix(self.supercell)
        if not self.displacement > 0:
            raise ValueError(f'displacement must be positive, got {self.displacement!r}')
        if self.plus_minus not in ('auto', True, False):
            raise ValueError(f"plus_minus must be 'auto', True or False, got {self.plus_minus!r}")
        if self.npoints < 2:
            raise ValueError(f'npoints must be >= 2, got {self.npoints!r}')
        if not (0 <= self.tmin <= self.tmax and self.tstep > 0):
            raise ValueError('need 0 <= tmin <= tmax and tstep > 0')
        if self.imaginary_tolerance > 0:
            raise ValueError(f'imaginary_tolerance must be <= 0 THz, got {self.imaginary_tolerance!r}')

    def as_dict(self) -> dict:
        mesh = self.mesh if np.isscalar(self.mesh) else [int(n) for n in self.mesh]
        return {
            'supercell': supercell_matrix(self.supercell).tolist(),
            'displacement': self.displacement,
            'plus_minus': self.plus_minus,
            'primitive': self.primitive,
            'symprec': self.symprec,
            'path': self.path,
            'npoints': self.npoints,
            'mesh': mesh,
            'tmin': self.tmin,
            'tmax': self.tmax,
            'tstep': self.tstep,
            'imaginary_tolerance': self.imaginary_tolerance,
        }


def _to_phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.asarray(atoms.cell.array, dtype=float),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def _to_ase(cell) -> Atoms:
    return Atoms(
        symbols=list(cell.symbols),
        cell=np.asarray(cell.cell),
        scaled_positions=np.asarray(cell.scaled_positions),
        masses=np.asarray(cell.masses),
        pbc=True,
    )


def make_phonopy(atoms: Atoms, settings: PhononSettings | None = None):
    """A ``Phonopy`` object of ``atoms`` with its displacements generated."""
    from phonopy import Phonopy

    settings = settings or PhononSettings()
    if len(atoms) * round(abs(np.linalg.det(supercell_matrix(settings.supercell)))) < 2:
        raise ValueError('a one-atom supercell has no phonons to compute: use a larger supercell')
    if len(atoms) == 0 or not np.all(atoms.pbc) or abs(atoms.cell.volume) < 1e-6:
        raise ValueError(
            'phonons need a periodic structure (pbc in 3 directions, non-zero volume) with atoms'
        )
    phonon = Phonopy(
        _to_phonopy_atoms(atoms),
        supercell_matrix=supercell_matrix(settings.supercell),
        primitive_matrix=settings.primitive,
        symprec=settings.symprec,
    )
    phonon.generate_displacements(distance=settings.displacement, is_plusminus=settings.plus_minus)
    return phonon


def displaced_supercells(phonon) -> list[Atoms]:
    """The displaced supercells phonopy asks forces for, as ASE ``Atoms``."""
    return [_to_ase(cell) for cell in phonon.supercells_with_displacements]


def primitive_path(phonon, settings: PhononSettings) -> KPath:
    """The q-path of ``settings`` in the reciprocal basis of phonopy's primitive cell."""
    primitive = _to_ase(phonon.primitive)
    return band_path(
        np.asarray(primitive.cell.array),
        path=settings.path,
        npoints=settings.npoints,
        positions=primitive.positions,
        numbers=primitive.numbers,
        symprec=settings.symprec,
    )


def stability(
    kpath: KPath, frequencies: np.ndarray, tolerance: float = IMAGINARY_TOLERANCE, gamma_tol: float = 1e-8
) -> dict:
    """Dynamical stability from frequencies (THz) along a path (imaginary modes are negative).

    The three acoustic modes at Γ are excluded (they are zero up to numerical noise); every other mode
    below ``tolerance`` is imaginary.
    """
    frequencies = np.asarray(frequencies, dtype=float)
    mask = np.ones_like(frequencies, dtype=bool)
    at_gamma = np.linalg.norm(kpath.kpoints - np.round(kpath.kpoints), axis=1) < gamma_tol
    order = np.argsort(frequencies, axis=1)
    for iq in np.flatnonzero(at_gamma):
        mask[iq, order[iq, :3]] = False
    considered = np.where(mask, frequencies, np.inf)
    imaginary = np.argwhere(considered < tolerance)
    worst: dict[tuple, dict] = {}  # the ten lowest, each (q-point, band) once (paths revisit points)
    for iq, ib in sorted(imaginary.tolist(), key=lambda x: frequencies[x[0], x[1]]):
        key = (*np.round(kpath.kpoints[iq], 8).tolist(), ib)
        if key not in worst and len(worst) < 10:
            worst[key] = {
                'qpoint': kpath.kpoints[iq].tolist(),
                'band': int(ib),
                'frequency': float(frequencies[iq, ib]),
            }
    return {
        'dynamically_stable': bool(len(imaginary) == 0),
        'min_frequency': float(considered.min()),
        'n_imaginary': int(len(imaginary)),
        'imaginary_modes': list(worst.values()),
        'tolerance': float(tolerance),
        'acoustic_gamma_max_abs': float(np.abs(frequencies[at_gamma][:, :3]).max())
        if at_gamma.any()
        else None,
    }


@dataclass
class PhononResult:
    """Phonons of one structure (THz; DOS in states/THz per primitive cell; thermal in eV, eV/K).

    :param kpath: the q-path (fractional in the reciprocal basis of ``primitive``'s lattice; distances
        in Å⁻¹ with 2π).
    :param frequencies: (nq, 3 n_primitive) frequencies along the path, THz (imaginary: negative).
    :param dos_frequencies, dos: total DOS on the mesh.
    :param thermal: ``temperatures`` (K), ``free_energy`` (eV), ``entropy`` (eV/K),
        ``heat_capacity`` (eV/K), per primitive cell.
    :param stability: :func:`stability` of the path frequencies (also checked on the mesh).
    """

    primitive: Atoms
    kpath: KPath
    frequencies: np.ndarray
    dos_frequencies: np.ndarray
    dos: np.ndarray
    thermal: dict[str, np.ndarray]
    stability: dict
    settings: PhononSettings
    backend: dict
    n_displacements: int
    supercell_atoms: int
    timings: dict[str, float] = field(default_factory=dict)
    phonopy: object = None

    @property
    def dynamically_stable(self) -> bool:
        return bool(self.stability['dynamically_stable'])

    def frequencies_at(self, label: str) -> np.ndarray:
        """Frequencies (THz, ascending) at the first path point labelled ``label`` (``'GAMMA'``, ...)."""
        for index, name in self.kpath.labels:
            if name == label:
                return np.sort(self.frequencies[index])
        raise KeyError(f'no point {label!r} on the path; labels: {sorted({n for _, n in self.kpath.labels})}')

    def _labels(self) -> list[str]:
        return list(dict.fromkeys(label for _, label in self.kpath.labels))

    def band_dict(self) -> dict:
        """The path frequencies as JSON-ready data."""
        return {
            'units': {'frequencies': 'THz', 'distances': '1/Angstrom (2pi included)'},
            'qpoints': self.kpath.kpoints,
            'qpoints_basis': 'fractional, reciprocal basis of primitive_cell',
            'primitive_cell': np.asarray(self.primitive.cell.array),
            'distances': self.kpath.distances,
            'labels': [[int(i), str(label)] for i, label in self.kpath.labels],
            'frequencies': self.frequencies,
        }

    def dos_dict(self) -> dict:
        return {
            'units': {'frequencies': 'THz', 'dos': 'states/THz per primitive cell'},
            'frequencies': self.dos_frequencies,
            'dos': self.dos,
        }

    def thermal_dict(self) -> dict:
        return {
            'units': {'temperatures': 'K', 'free_energy': 'eV', 'entropy': 'eV/K', 'heat_capacity': 'eV/K'},
            'per': 'primitive cell',
            **{key: np.asarray(value) for key, value in self.thermal.items()},
        }

    def summary(self) -> dict:
        """JSON-ready summary: stability, Γ/path extremes, sizes, backend and timings."""
        return {
            'dynamically_stable': self.dynamically_stable,
            'stability': self.stability,
            'formula': self.primitive.get_chemical_formula(),
            'n_primitive_atoms': len(self.primitive),
            'supercell_atoms': self.supercell_atoms,
            'n_displacements': self.n_displacements,
            'max_frequency': float(self.frequencies.max()),
            'special_points': {label: self.frequencies_at(label).tolist() for label in self._labels()},
            'settings': self.settings.as_dict(),
            'backend': self.backend,
            'timings': self.timings,
        }

    def plot(self, path, title: str | None = None):
        """Phonon bands and DOS side by side (PNG, PDF, ... from the suffix of ``path``)."""
        from .plotting import plot_phonons

        return plot_phonons(self, path, title=title)


def run_phonons(
    atoms: Atoms,
    backend: ForceBackend,
    settings: PhononSettings | None = None,
    *,
    progress: Callable[[int, int, float], None] | None = None,
) -> PhononResult:
    """Finite-displacement phonons of ``atoms`` with forces from ``backend`` (see the module docstring).

    :param progress: called as ``progress(done, total, seconds)`` after each displaced supercell.
    """
    settings = settings or PhononSettings()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    phonon = make_phonopy(atoms, settings)
    supercells = displaced_supercells(phonon)
    kpath = primitive_path(phonon, settings)  # before the forces: a bad path fails in milliseconds
    timings['setup'] = time.perf_counter() - start

    tick = time.perf_counter()
    forces = []
    for index, supercell in enumerate(supercells):
        value = np.asarray(backend.forces(supercell), dtype=float)
        if value.shape != (len(supercell), 3) or not np.all(np.isfinite(value)):
            raise ValueError(
                f'backend {backend.name!r} returned forces of shape {value.shape} (or non-finite values) '
                f'for a supercell of {len(supercell)} atoms'
            )
        forces.append(value)
        if progress is not None:
            progress(index + 1, len(supercells), time.perf_counter() - tick)
    timings['forces'] = time.perf_counter() - tick
    return phonons_from_forces(
        phonon, forces, settings, backend=describe_backend(backend), timings=timings, kpath=kpath
    )


def phonons_from_forces(
    phonon,
    forces: Sequence[np.ndarray],
    settings: PhononSettings,
    *,
    backend: dict | None = None,
    timings: dict | None = None,
    kpath: KPath | None = None,
) -> PhononResult:
    """Force constants and spectra of a ``Phonopy`` object from the forces of its displaced supercells."""
    timings = dict(timings or {})
    tick = time.perf_counter()
    phonon.forces = np.asarray(forces, dtype=float)
    phonon.produce_force_constants(show_drift=False)
    phonon.symmetrize_force_constants(show_drift=False)  # translational invariance (ASR) + permutation
    timings['force_constants'] = time.perf_counter() - tick

    tick = time.perf_counter()
    primitive = _to_ase(phonon.primitive)
    kpath = kpath if kpath is not None else primitive_path(phonon, settings)
    phonon.run_qpoints(kpath.kpoints)
    frequencies = np.asarray(phonon.qpoints.frequencies, dtype=float)
    timings['bands'] = time.perf_counter() - tick

    tick = time.perf_counter()
    mesh = settings.mesh if np.isscalar(settings.mesh) else [int(n) for n in settings.mesh]
    phonon.run_mesh(mesh, is_gamma_center=True)
    mesh_frequencies = np.asarray(phonon.mesh.frequencies, dtype=float)
    low, high = min(0.0, float(mesh_frequencies.min())), float(mesh_frequencies.max())
    if high - low > 1e-6:
        span = high - low
        phonon.run_total_dos(freq_min=low - 0.05 * span, freq_max=high + 0.05 * span, freq_pitch=span / 200)
        dos_frequencies, dos = phonon.total_dos.frequency_points, phonon.total_dos.dos
    else:  # no dispersion at all (zero forces): phonopy's DOS cannot size its axis
        dos_frequencies, dos = np.linspace(-1.0, 1.0, 201), np.zeros(201)
    phonon.run_thermal_properties(
        t_min=settings.tmin, t_max=settings.tmax, t_step=settings.tstep, exclude_gamma_acoustic=True
    )
    raw = phonon.thermal_properties  # kJ/mol and J/K/mol of primitive cells
    thermal = {
        'temperatures': np.asarray(raw.temperatures, dtype=float),
        'free_energy': np.asarray(raw.free_energy, dtype=float) / _KJMOL_PER_EV,
        'entropy': np.asarray(raw.entropy, dtype=float) / _KJMOL_PER_EV / 1000,
        'heat_capacity': np.asarray(raw.heat_capacity, dtype=float) / _KJMOL_PER_EV / 1000,
    }
    timings['mesh'] = time.perf_counter() - tick

    check = stability(kpath, frequencies, settings.imaginary_tolerance)
    mesh_points = KPath(np.asarray(phonon.mesh.qpoints), np.zeros(len(mesh_frequencies)))
    mesh_check = stability(mesh_points, mesh_frequencies, settings.imaginary_tolerance)
    if not mesh_check['dynamically_stable']:  # an instability between the path's points
        check['dynamically_stable'] = False
    check['mesh_min_frequency'] = mesh_check['min_frequency']
    check['mesh_n_imaginary'] = mesh_check['n_imaginary']
    timings['total'] = sum(v for k, v in timings.items() if k != 'total')
    return PhononResult(
        primitive=primitive,
        kpath=kpath,
        frequencies=frequencies,
        dos_frequencies=np.asarray(dos_frequencies, dtype=float),
        dos=np.asarray(dos, dtype=float),
        thermal=thermal,
        stability=check,
        settings=settings,
        backend=backend or {},
        n_displacements=len(phonon.supercells_with_displacements),
        supercell_atoms=len(phonon.supercell),
        timings=timings,
        phonopy=phonon,
    )
