"""``run_engine``: structure -> H0 (and H_scf, S) as real-space blocks, with a self-check.

Stages (each timed): input checks (no integrals) -> PySCF cell and superposition-of-atoms density
ρ0 -> [label: SCF] -> h_core, S, V_eff[ρ0] (and V_eff[ρ]) on half of the dense Γ-centred mesh ->
inverse Fourier transform to the pairs within the cutoff, orbital convention PySCF -> internal ->
Fermi level and gap from the dense-mesh bands -> self-check at random off-mesh k-points.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..hamiltonian.basis import Basis
from ..hamiltonian.bloch import IllConditionedOverlapError, eigenvalues
from ..hamiltonian.block import BlockHamiltonian
from ..hamiltonian.spectra import band_gap, fermi_level
from ..hamiltonian.synthetic import neighbour_pairs
from . import pyscf_engine as engine
from .checks import check_elements, check_structure
from .config import DftConfig
from .errors import DftConfigError, ScfNotConvergedError, SelfCheckError
from .openmp import openmp_guard
from .orbitals import basis_from_cell, internal_transforms
from .pyscf_matrices import matrices_at
from .realspace import check_pairs_resolved, gather_blocks, half_mesh, inverse_fourier
from .result import MODES, DftResult
from .selfcheck import SelfCheck, compare_bands, offmesh_kpoints

__all__ = ['run_engine']


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def run_engine(atoms: Atoms, config: DftConfig | None = None, mode: str = 'label') -> DftResult:
    """Compute H0 (``mode='h0'``) or H_scf, H0 and S (``mode='label'``) of a periodic structure.

    :raises BadStructureError, UnsupportedElementError, DftConfigError: before any integral.
    :raises ScfNotConvergedError: label mode, SCF not converged (details: cycles, energy).
    :raises SelfCheckError: deviation above ``config.selfcheck_tolerance``; ``.result`` holds the
        complete result so the caller can still inspect it.
    """
    config = config or DftConfig()
    if mode not in MODES:
        raise DftConfigError(f'mode must be one of {MODES}, got {mode!r}')
    timer = _Timer()
    start = time.perf_counter()
    with timer('checks'):
        check_structure(atoms)
        check_elements(atoms.get_chemical_symbols(), config.basis, config.pseudo)
        lattice = np.asarray(atoms.cell.array, dtype=np.float64)
        kmesh, dense = config.scf_mesh(lattice), config.band_mesh(lattice)
        pairs = neighbour_pairs(atoms, config.cutoff)
        check_pairs_resolved(pairs, dense)
    with openmp_guard(config.threads):
        result = _run(atoms, config, mode, timer, kmesh, dense, pairs)
    result.timings = {**timer.times, 'total': time.perf_counter() - start}
    result.timings['h0_build'] = sum(
        timer.times.get(k, 0.0) for k in ('guess', 'hcore', 'overlap', 'veff_h0')
    )
    if result.selfcheck is not None and not result.selfcheck.passed:
        check = result.selfcheck
        what = check.problem or (
            f'band energies of the stored {check.matrix}(R), S(R) deviate by {check.max_deviation:.3g} meV '
            f"from PySCF's at off-mesh k-points (tolerance {check.tolerance:g} meV)"
        )
        raise SelfCheckError(
            f'self-check failed: {what}; increase the cutoff or the dense k-mesh',
            details={'selfcheck_deviation': check.as_dict()['max_deviation'], 'tolerance': check.tolerance},
            result=result,
        )
    return result


@dataclass
class Prepared:
    """A PySCF cell and SCF object with the densities that define H0 (``dm0``) and H (``dm``)."""

    cell: object
    mf: object
    basis: Basis
    dm0: np.ndarray
    dm: np.ndarray | None = None
    scf: dict | None = None

    def densities(self) -> dict[str, np.ndarray]:
        return {'H0': self.dm0} if self.dm is None else {'H0': self.dm0, 'H': self.dm}


def prepare(atoms: Atoms, config: DftConfig, mode: str, kmesh, timer=None) -> Prepared:
    """Build the cell, the superposition-of-atoms density and, in label mode, run the SCF."""
    with openmp_guard():
        return _prepare(atoms, config, mode, kmesh, timer or _Timer())


def _prepare(atoms: Atoms, config: DftConfig, mode: str, kmesh, timer) -> Prepared:
    with timer('setup'):
        cell = engine.build_cell(atoms, config)
        mf = engine.make_scf(cell, kmesh, config)
        basis = basis_from_cell(cell, config.basis)
    with timer('guess'):
        dm0 = engine.initial_density(mf, config.init_guess)
    prepared = Prepared(cell, mf, basis, dm0)
    if mode == 'label':
        with timer('scf'):
            prepared.scf = scf = engine.run_scf(mf, dm0)
        if not scf['converged']:
            raise ScfNotConvergedError(
                f'SCF not converged after {scf["cycles"]} cycles (max_cycles={config.max_cycles}, '
                f'conv_tol={config.conv_tol:g} eV); try more cycles, damping, a level shift or smearing',
                details={
                    'scf_cycles': scf['cycles'],
                    'max_cycles': config.max_cycles,
                    'energies': scf['energies'],
                },
            )
        prepared.dm = np.asarray(mf.make_rdm1())
    return prepared


def kspace(prepared: Prepared, kpoint_sets: list[np.ndarray], timer=None) -> dict[str, list[np.ndarray]]:
    """S, H0 (and H) in eV at each set of fractional k-points: ``{name: [array per set]}``."""
    sets = [engine.fractional_to_absolute(prepared.cell, k) for k in kpoint_sets]
    return matrices_at(prepared.mf, prepared.densities(), sets, timer or _Timer())


def _run(atoms, config, mode, timer, kmesh, dense, pairs) -> DftResult:
    prepared = prepare(atoms, config, mode, kmesh, timer)
    kpoints, weights = half_mesh(dense)
    sets = [kpoints]
    if config.selfcheck:
        sets.append(offmesh_kpoints(config.selfcheck_kpoints, config.seed, [kmesh, dense]))
    matrices = kspace(prepared, sets, timer)
    main = 'H' if mode == 'label' else 'H0'
    with timer('realspace'):
        bh = realspace_blocks(
            atoms, prepared.basis, pairs, {k: v[0] for k, v in matrices.items()}, kpoints, weights, mode
        )
    n_electrons = float(prepared.cell.nelectron)
    with timer('bands'):
        bands = _band_summary(matrices[main][0], matrices['S'][0], kpoints, weights, n_electrons, config)
    bh.fermi_level, bh.n_electrons = bands['fermi_level'], n_electrons
    check = None
    if config.selfcheck:
        with timer('selfcheck'):
            check = selfcheck(bh, sets[1], matrices[main][1], matrices['S'][1], n_electrons, config, main)
    scf = prepared.scf
    bh.metadata = _metadata(config, mode, kmesh, dense, scf, check)
    return DftResult(
        mode=mode,
        hamiltonian=bh,
        config=config,
        kmesh=tuple(kmesh),
        dense_kmesh=tuple(dense),
        n_electrons=n_electrons,
        energies=scf['energies'] if scf else {},
        fermi_level=bands['fermi_level'],
        gap=bands['gap'],
        converged=scf['converged'] if scf else None,
        scf_cycles=scf['cycles'] if scf else None,
        selfcheck=check,
        versions=_versions(),
    )


def selfcheck(bh: BlockHamiltonian, kpoints, fock, overlap, n_electrons, config, matrix) -> SelfCheck:
    """Compare the bands of the stored blocks with PySCF's own H(k), S(k) at ``kpoints``."""
    try:
        ours = eigenvalues(bh, kpoints)
    except IllConditionedOverlapError as exc:
        problem = f'the stored (cutoff-truncated) S(k) is not positive definite: {exc}'
        return SelfCheck.failed(problem, kpoints, config.selfcheck_tolerance, matrix)
    return compare_bands(
        ours,
        engine.band_energies(fock, overlap),
        n_electrons,
        config.selfcheck_conduction_bands,
        config.selfcheck_tolerance,
        kpoints,
        matrix=matrix,
    )


def realspace_blocks(atoms, basis, pairs, matrices, kpoints, weights, mode) -> BlockHamiltonian:
    """Real-space blocks of every matrix, converted to the internal orbital convention."""
    cells = np.unique(pairs[:, :3], axis=0)
    counts = basis.n_orbitals(atoms.numbers)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = {
        name: gather_blocks(inverse_fourier(m, kpoints, weights, cells), cells, pairs, offsets)
        for name, m in matrices.items()
    }
    h0 = flat['H0']
    bh = BlockHamiltonian(
        lattice=atoms.cell.array,
        positions=atoms.positions,
        numbers=atoms.numbers,
        basis=basis,
        pairs=pairs,
        hamiltonian=flat['H'] if mode == 'label' else h0,
        overlap=flat['S'],
        h0=h0 if mode == 'label' else None,
    )
    bh = bh.transform_orbitals(internal_transforms(basis))
    if mode == 'h0':
        bh.h0 = bh.hamiltonian
    return bh


def _band_summary(h, s, kpoints, weights, n_electrons: float, config: DftConfig) -> dict:
    """Fermi level and gap from the bands of H(k), S(k) on the (half) dense mesh.

    The gap's ``k_vbm`` / ``k_cbm`` are fractional k-points (not indices).
    """
    energies = engine.band_energies(h, s)
    smearing = config.smearing
    options = {'smearing': smearing, 'width': config.smearing_width} if smearing else {'smearing': None}
    try:  # a basis with no empty band (e.g. a minimal basis of a closed shell) has neither
        gap = band_gap(energies, n_electrons)
        level = float(fermi_level(energies, weights, n_electrons, **options))
    except ValueError as exc:
        return {'fermi_level': None, 'gap': {'gap': None, 'problem': str(exc)}}
    for key in ('k_vbm', 'k_cbm'):
        if gap.get(key) is not None:
            gap[key] = np.asarray(kpoints[gap[key]], dtype=float).round(12).tolist()
    return {'fermi_level': level, 'gap': gap}


def _metadata(config: DftConfig, mode, kmesh, dense, scf, check) -> dict:
    return {
        'source': 'pyscf',
        'engine': 'aiida_nextham.dft',
        'mode': mode,
        'matrices': {'hamiltonian': 'H' if mode == 'label' else 'H0', 'h0': 'H0', 'overlap': 'S'},
        'cutoff': float(config.cutoff),
        'basis_set': config.basis,
        'pseudo': config.pseudo,
        'xc': config.xc,
        'kmesh': [int(n) for n in kmesh],
        'dense_kmesh': [int(n) for n in dense],
        'init_guess': config.init_guess,
        'density_fit': config.density_fit,
        'converged': None if scf is None else scf['converged'],
        'selfcheck_deviation_mev': None if check is None else check.as_dict()['max_deviation'],
        'config': config.as_dict(),
        'versions': _versions(),
    }


def _versions() -> dict[str, str]:
    import pyscf

    from .. import __version__

    return {'pyscf': pyscf.__version__, 'aiida_nextham': __version__}
