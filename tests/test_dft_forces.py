"""Analytic PySCF forces (eV/Å): finite differences of the energy, Newton's third law, both routes agree."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from aiida_nextham.dft import BadStructureError, DftConfig
from aiida_nextham.dft.forces import EV_PER_ANGSTROM, ForceResult, energy_and_forces

#: loose but SCF-tight settings: 2-atom Si, single-zeta basis, coarse screening
CONFIG = DftConfig(basis='gth-szv', conv_tol=1e-10, precision=1e-6, max_cycles=80)


def _displaced_si():
    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.positions[0] += [0.05, -0.02, 0.03]
    return atoms


def _energy(atoms, kmesh) -> float:
    """SCF energy only (eV), through the same route as ``energy_and_forces``."""
    from aiida_nextham.dft import pyscf_engine as engine
    from aiida_nextham.dft.forces import _gamma_scf

    cell = engine.build_cell(atoms, CONFIG)
    mf = _gamma_scf(cell, CONFIG) if kmesh == (1, 1, 1) else engine.make_scf(cell, kmesh, CONFIG)
    return engine.run_scf(mf, engine.initial_density(mf, 'atom'))['energies']['total']


def test_unit_conversion():
    assert EV_PER_ANGSTROM == pytest.approx(51.4220862, rel=1e-6)  # Hartree/Bohr in eV/Å (CODATA)


def test_gamma_forces_match_finite_differences():
    """Γ-point multigrid route: F_y(atom 0) equals −dE/dy by central differences (h = 0.01 Å).

    Tolerance 1e-3 eV/Å: the O(h²) truncation error of the difference is a few 1e-4 eV/Å here, a
    wrong sign, a missing term (pseudopotential, XC) or a Hartree/Bohr conversion is ≥ 1e-2.
    """
    atoms = _displaced_si()
    result = energy_and_forces(atoms, CONFIG, kmesh=(1, 1, 1))
    assert isinstance(result, ForceResult)
    assert result.route == 'gamma-multigrid' and result.converged and result.forces.shape == (2, 3)
    assert set(result.timings) >= {'setup', 'scf', 'gradient', 'total'}
    h = 0.01
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[0, 1] += sign * h
        energies.append(_energy(moved, (1, 1, 1)))
    finite_difference = -(energies[0] - energies[1]) / (2 * h)
    assert abs(result.forces[0, 1]) > 0.3  # a real force, not a symmetric configuration
    assert result.forces[0, 1] == pytest.approx(finite_difference, abs=1e-3)
    # Newton's third law / acoustic sum rule: the forces of a periodic cell sum to zero
    np.testing.assert_allclose(result.forces.sum(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(result.forces[0], -result.forces[1], atol=1e-4)
    assert result.as_dict()['units']['forces'] == 'eV/Angstrom'


@pytest.mark.expensive
def test_kpoint_route_matches_gamma_supercell():
    """KRKS + KNumInt gradient on a 2×1×1 k-mesh equals the Γ route on the 2×1×1 repetition.

    Same Bloch sampling, two different integrators and gradient codes; they agree to ~3e-4 eV/Å.
    """
    atoms = _displaced_si()
    kpoints = energy_and_forces(atoms, CONFIG, kmesh=(2, 1, 1))
    supercell = energy_and_forces(atoms.repeat((2, 1, 1)), CONFIG, kmesh=(1, 1, 1))
    assert kpoints.route == 'krks-knumint' and supercell.route == 'gamma-multigrid'
    np.testing.assert_allclose(kpoints.forces, supercell.forces[:2], atol=1e-3)
    np.testing.assert_allclose(supercell.forces[:2], supercell.forces[2:], atol=1e-3)
    assert kpoints.energy == pytest.approx(supercell.energy / 2, abs=2e-3)


def test_bad_structure_fails_before_any_integral():
    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.positions[1] = atoms.positions[0] + [0.1, 0, 0]
    with pytest.raises(BadStructureError):
        energy_and_forces(atoms, CONFIG, kmesh=(1, 1, 1))
