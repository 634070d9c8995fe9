"""PySCF back end: cell, SCF object, SCF run, unit conversion. Hartree stays in here.

The matrices at arbitrary k-points are built in :mod:`aiida_nextham.dft.pyscf_matrices`.

Every PySCF computation runs inside :func:`~aiida_nextham.dft.openmp.openmp_guard` (see that module
for why: OpenMP runtimes of torch and PySCF in one process).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from ase import Atoms
from pyscf.data.nist import HARTREE2EV

from .config import DftConfig
from .openmp import openmp_guard  # importing it loads all of PySCF's libraries on one OpenMP runtime

__all__ = [
    'HARTREE',
    'band_energies',
    'build_cell',
    'fractional_to_absolute',
    'initial_density',
    'make_scf',
    'run_scf',
]


#: eV per Hartree, PySCF's CODATA value (every energy PySCF returns is converted with it). Lengths
#: need no conversion: the cell is built from the structure's Å (``unit='A'``), and positions and
#: lattice are stored from the structure itself.
HARTREE: float = float(HARTREE2EV)


def build_cell(atoms: Atoms, config: DftConfig):
    """A built ``pyscf.pbc.gto.Cell`` of ``atoms`` (Å in, PySCF converts with its own Bohr)."""
    from pyscf.pbc import gto

    cell = gto.Cell()
    cell.a = np.asarray(atoms.cell.array, dtype=np.float64)
    cell.atom = [
        (symbol, tuple(map(float, xyz)))
        for symbol, xyz in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
    ]
    cell.unit = 'A'
    cell.basis = config.basis
    cell.pseudo = config.pseudo
    cell.precision = config.precision
    cell.verbose = config.verbose
    cell.max_memory = config.max_memory
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        cell.build(dump_input=False, parse_arg=False)
    return cell


def make_scf(cell, kmesh: tuple[int, int, int], config: DftConfig):
    """A KRKS object on the Γ-centred ``kmesh`` with the configured integrator and SCF options."""
    from pyscf.pbc import dft

    mf = dft.KRKS(cell, cell.make_kpts(list(kmesh)), xc=config.xc)
    if config.density_fit == 'multigrid':
        mf = mf.multigrid_numint()
    if config.smearing is not None:
        method = 'fermi' if config.smearing == 'fermi-dirac' else 'gaussian'
        mf = mf.smearing(sigma=config.smearing_width / HARTREE, method=method)
    mf.conv_tol = config.conv_tol / HARTREE
    if config.conv_tol_grad is not None:
        mf.conv_tol_grad = config.conv_tol_grad / HARTREE
    mf.max_cycle = config.max_cycles
    mf.level_shift = config.level_shift / HARTREE
    mf.damp = config.damping
    mf.diis_start_cycle = config.diis_start()
    mf.init_guess = config.init_guess
    mf.verbose = config.verbose
    mf.max_memory = config.max_memory
    return mf


def initial_density(mf, key: str) -> np.ndarray:
    """Superposition-of-atoms density matrices on the SCF mesh, (nk, nao, nao)."""
    with warnings.catch_warnings():  # PySCF's own atomic guess calls its deprecated remove_linear_dep_
        warnings.filterwarnings(
            'ignore', message='remove_linear_dep_ is deprecated', category=DeprecationWarning
        )
        with openmp_guard():
            return np.asarray(mf.get_init_guess(mf.cell, key=key))


def run_scf(mf, dm0: np.ndarray) -> dict:
    """Run the SCF from ``dm0``; returns convergence facts and energies (eV)."""
    with openmp_guard():
        mf.kernel(dm0=dm0)
    summary = getattr(mf, 'scf_summary', {}) or {}
    energies = {'total': float(mf.e_tot) * HARTREE}
    for key, name in (('e1', 'one_electron'), ('coul', 'hartree'), ('exc', 'xc'), ('nuc', 'ion_ion')):
        if key in summary:
            energies[name] = float(np.real(summary[key])) * HARTREE
    if getattr(mf, 'e_free', None) is not None:
        energies['free'] = float(mf.e_free) * HARTREE
    return {
        'converged': bool(mf.converged),
        'cycles': int(getattr(mf, 'cycles', -1)),
        'energies': energies,
        'mu': float(mf.mu) * HARTREE if getattr(mf, 'mu', None) is not None else None,
    }


def band_energies(fock: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """Generalised eigenvalues of (nk, n, n) H(k), S(k), ascending, same units as ``fock``."""
    return np.array([scipy.linalg.eigh(h, s, eigvals_only=True) for h, s in zip(fock, overlap, strict=True)])


def fractional_to_absolute(cell, kpts_fractional: np.ndarray) -> np.ndarray:
    """Absolute k (Bohr⁻¹) of fractional k-points."""
    return cell.get_abs_kpts(np.asarray(kpts_fractional, dtype=np.float64).reshape(-1, 3))
