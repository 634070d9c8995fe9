"""Total energy and analytic forces of a periodic structure with PySCF (eV and eV/Å out).

Two routes, both analytic gradients (PySCF 2.14; measured on a shared 2-core machine):

- ``'gamma-multigrid'`` (k-mesh 1×1×1 with ``density_fit='multigrid'``): Γ-point RKS with PySCF's
  second multigrid integrator (``MultiGridNumInt2``), which has complete analytic nuclear gradients
  (XC, Hartree, local and non-local GTH parts). Cost grows gently with the cell: Si 16 atoms
  gth-szv, SCF ~280 s and gradient ~70 s on a loaded machine. This is the route for phonon supercells.
- ``'krks-knumint'`` (any other k-mesh, or FFTDF): KRKS SCF (multigrid when configured), then PySCF's
  KRKS gradient on a copy whose ``_numint`` is the uniform-grid ``numint.KNumInt`` (the k-point
  multigrid integrator has no gradient code). The local-pseudopotential derivative evaluates every AO
  on the full FFT grid once per atom, so this route is for small cells only (Si 2 atoms gth-szv
  2×2×2 k: SCF ~30 s, gradient ~50 s; a 16-atom cell would take hours).

Both routes agree: a 2-atom Si cell with a 2×2×2 k-mesh (route 2) and its 2×2×2 repetition at Γ
(route 1, the same Bloch sampling) give forces equal to 1.5e-5 eV/Å; route 2 agrees with central
finite differences of the multigrid energy to 4e-5 eV/Å (see ``tests/test_dft_forces.py``).
Hartree/Bohr is converted to eV/Å here and nowhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from pyscf.data.nist import BOHR

from . import pyscf_engine as engine
from .checks import check_elements, check_structure
from .config import DftConfig
from .errors import ScfNotConvergedError
from .openmp import openmp_guard

__all__ = ['EV_PER_ANGSTROM', 'ForceResult', 'energy_and_forces']

#: (eV/Å) per (Hartree/Bohr), with PySCF's own constants
EV_PER_ANGSTROM: float = engine.HARTREE / float(BOHR)


@dataclass
class ForceResult:
    """Energy and forces of one structure.

    :param energy: total energy, eV per cell (PySCF's ``e_tot``; with smearing: its free energy).
    :param forces: (N, 3) forces −∂E/∂r, eV/Å, in the order of the input atoms.
    :param converged: whether the SCF converged.
    :param cycles: SCF cycles used.
    :param kmesh: the Γ-centred SCF k-mesh.
    :param route: ``'gamma-multigrid'`` or ``'krks-knumint'`` (see the module docstring).
    :param timings: wall times in s: ``setup``, ``scf``, ``gradient``, ``total``.
    """

    energy: float
    forces: np.ndarray
    converged: bool
    cycles: int
    kmesh: tuple[int, int, int] = (1, 1, 1)
    route: str = ''
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-serialisable form (units: eV, eV/Å, s)."""
        return {
            'energy': float(self.energy),
            'forces': np.asarray(self.forces, dtype=float).tolist(),
            'converged': bool(self.converged),
            'cycles': int(self.cycles),
            'kmesh': [int(n) for n in self.kmesh],
            'route': self.route,
            'timings': dict(self.timings),
            'units': {'energy': 'eV', 'forces': 'eV/Angstrom', 'timings': 's'},
        }


def energy_and_forces(
    atoms: Atoms,
    config: DftConfig | None = None,
    *,
    kmesh: tuple[int, int, int] | None = None,
    allow_unconverged: bool = False,
) -> ForceResult:
    """Self-consistent energy (eV) and analytic forces (eV/Å) of ``atoms`` with PySCF.

    :param config: engine settings; only the SCF-related ones are used (basis, pseudo, xc, k-mesh
        or k-spacing, smearing, SCF thresholds, density fit, init guess, precision, threads).
    :param kmesh: SCF k-mesh; default: ``config.scf_mesh(cell)``.
    :param allow_unconverged: return forces of an unconverged SCF (``converged=False``) instead of
        raising.
    :raises BadStructureError, UnsupportedElementError: before any integral.
    :raises ScfNotConvergedError: the SCF did not converge (unless ``allow_unconverged``).
    """
    config = config or DftConfig()
    start = time.perf_counter()
    timings: dict[str, float] = {}
    check_structure(atoms)
    check_elements(atoms.get_chemical_symbols(), config.basis, config.pseudo)
    mesh = tuple(kmesh) if kmesh is not None else config.scf_mesh(np.asarray(atoms.cell.array))
    route = 'gamma-multigrid' if mesh == (1, 1, 1) and config.density_fit == 'multigrid' else 'krks-knumint'
    with openmp_guard(config.threads):
        tick = time.perf_counter()
        cell = engine.build_cell(atoms, config)
        mf = _gamma_scf(cell, config) if route == 'gamma-multigrid' else engine.make_scf(cell, mesh, config)
        dm0 = engine.initial_density(mf, config.init_guess)
        timings['setup'] = time.perf_counter() - tick
        tick = time.perf_counter()
        scf = engine.run_scf(mf, dm0)
        timings['scf'] = time.perf_counter() - tick
        if not scf['converged'] and not allow_unconverged:
            raise ScfNotConvergedError(
                f'SCF not converged after {scf["cycles"]} cycles (max_cycles={config.max_cycles}, '
                f'conv_tol={config.conv_tol:g} eV); try more cycles, damping, a level shift or smearing',
                details={'scf_cycles': scf['cycles'], 'max_cycles': config.max_cycles},
            )
        tick = time.perf_counter()
        gradient = _nuclear_gradient(mf)
        timings['gradient'] = time.perf_counter() - tick
    timings['total'] = time.perf_counter() - start
    return ForceResult(
        energy=float(scf['energies']['total']),
        forces=-np.asarray(gradient, dtype=float) * EV_PER_ANGSTROM,
        converged=bool(scf['converged']),
        cycles=int(scf['cycles']),
        kmesh=tuple(int(n) for n in mesh),
        route=route,
        timings=timings,
    )


def _gamma_scf(cell, config: DftConfig):
    """A Γ-point RKS object on ``MultiGridNumInt2`` with the configured SCF options."""
    from pyscf.pbc import dft

    mf = dft.RKS(cell, xc=config.xc).multigrid_numint()
    if config.smearing is not None:
        method = 'fermi' if config.smearing == 'fermi-dirac' else 'gaussian'
        mf = mf.smearing(sigma=config.smearing_width / engine.HARTREE, method=method)
    mf.conv_tol = config.conv_tol / engine.HARTREE
    if config.conv_tol_grad is not None:
        mf.conv_tol_grad = config.conv_tol_grad / engine.HARTREE
    mf.max_cycle = config.max_cycles
    mf.level_shift = config.level_shift / engine.HARTREE
    mf.damp = config.damping
    mf.diis_start_cycle = config.diis_start()
    mf.init_guess = config.init_guess
    mf.verbose = config.verbose
    mf.max_memory = config.max_memory
    return mf


def _nuclear_gradient(mf) -> np.ndarray:
    """dE/dR of a converged RKS/KRKS object, Hartree/Bohr, (N, 3)."""
    from pyscf.pbc.dft import numint
    from pyscf.pbc.scf import khf

    if isinstance(mf, khf.KSCF) and not isinstance(mf._numint, numint.KNumInt):  # k-point multigrid
        mf = mf.copy()
        mf._numint = numint.KNumInt()
    grad = mf.nuc_grad_method()
    grad.verbose = 0
    return np.asarray(grad.kernel())
