"""The PySCF label engine: conventions, real-space transform, self-check, named errors, CLI.

PySCF runs are kept tiny (gth-szv, 2-atom Si, small meshes) and shared through module fixtures;
the d-shell rotation test uses gth-dzvp with a Γ-only SCF and a loose cell precision, which is
enough to prove that the transforms are consistent (it does not need converged physics).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from click.testing import CliRunner

from aiida_nextham.dft import (
    BadStructureError,
    DftConfig,
    DftConfigError,
    ScfNotConvergedError,
    SelfCheckError,
    UnsupportedElementError,
    get_protocol,
    run_engine,
)
from aiida_nextham.dft import pyscf_engine as engine
from aiida_nextham.dft.config import dense_mesh, shortest_superlattice_vector
from aiida_nextham.dft.orbitals import PYSCF_CONVENTION, internal_transforms
from aiida_nextham.dft.realspace import gather_blocks, half_mesh, inverse_fourier
from aiida_nextham.dft.selfcheck import offmesh_kpoints
from aiida_nextham.engine.dft_command import dft
from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.bloch import bloch_sum
from aiida_nextham.hamiltonian.conventions import Convention, atom_transform, real_harmonics
from aiida_nextham.hamiltonian.hdf5 import read_hdf5
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

#: tiny settings: single-zeta basis, 2x2x2 SCF mesh
TINY = DftConfig(basis='gth-szv', kmesh=(2, 2, 2), conv_tol=1e-7)


def silicon() -> Atoms:
    return bulk('Si', 'diamond', a=5.43)


# ------------------------------------------------------------------------------ pure-python parts
def test_config_validation_and_protocols():
    assert get_protocol('fast').basis == 'gth-szv'
    assert get_protocol('balanced').basis == 'gth-dzvp'
    assert get_protocol('balanced', {'cutoff': 5.0, 'basis': None}).cutoff == 5.0
    assert DftConfig(kmesh=[3, 3, 3]).kmesh == (3, 3, 3)
    # PySCF damps only before DIIS starts: damping alone must delay DIIS to act at all
    assert DftConfig().diis_start() == 1 and DftConfig(damping=0.5).diis_start() > 1
    for bad in ({'smearing': 'cold'}, {'density_fit': 'magic'}, {'cutoff': -1}, {'kmesh': (0, 1, 1)}):
        with pytest.raises(DftConfigError):
            DftConfig(**bad)
    with pytest.raises(DftConfigError, match='unknown DFT setting'):
        get_protocol('fast', {'cutof': 3.0})
    with pytest.raises(DftConfigError, match='GDF'):
        DftConfig(density_fit='gdf')
    with pytest.raises(DftConfigError, match='unknown protocol'):
        get_protocol('sloppy')


def test_config_numbers_from_yaml_strings():
    """YAML 1.1 reads ``1e-6`` as a string: numeric strings become numbers, anything else is named."""
    import yaml

    config = DftConfig.from_dict(yaml.safe_load('conv_tol: 1e-6\nmax_cycles: 60\ncutoff: 6'))
    assert config.conv_tol == 1e-6 and config.max_cycles == 60 and config.cutoff == 6.0
    assert isinstance(config.conv_tol, float) and isinstance(config.cutoff, float)
    for bad, message in (
        ({'conv_tol': 'tight'}, "conv_tol must be a number, got 'tight'"),
        ({'max_cycles': 2.5}, 'max_cycles must be an integer, got 2.5'),
        ({'cutoff': True}, 'cutoff must be a number, got True'),
    ):
        with pytest.raises(DftConfigError, match=message):
            DftConfig.from_dict(bad)


def test_dense_mesh_is_the_smallest_that_resolves_the_length():
    lattice = silicon().cell.array
    mesh = dense_mesh(lattice, 24.0)
    assert mesh == (7, 7, 7)
    assert shortest_superlattice_vector(lattice, mesh) >= 24.0
    assert shortest_superlattice_vector(lattice, (6, 6, 6)) < 24.0
    assert dense_mesh(np.diag([3.0, 3.0, 30.0]), 20.0) == (7, 7, 1)


def test_half_mesh_and_inverse_fourier_roundtrip():
    """Bloch sums of a synthetic H(R) on a half mesh transform back to the same blocks."""
    atoms = silicon()
    basis = Basis.from_shells({'Si': [0, 1, 2]})
    bh = random_block_hamiltonian(atoms, basis, cutoff=4.5, seed=3)
    mesh = (5, 5, 5)
    kpoints, weights = half_mesh(mesh)
    assert weights.sum() == 125 and set(np.unique(weights)) == {1, 2}
    matrices = np.stack([bloch_sum(bh, 'H', k) for k in kpoints])
    cells = np.unique(bh.pairs[:, :3], axis=0)
    offsets = bh.orbital_offsets
    blocks = gather_blocks(inverse_fourier(matrices, kpoints, weights, cells), cells, bh.pairs, offsets)
    assert np.abs(blocks - bh.hamiltonian).max() < 1e-12


def test_offmesh_kpoints_avoid_every_mesh():
    kpoints = offmesh_kpoints(5, seed=1, meshes=[(2, 2, 2), (5, 5, 5), (6, 6, 6)])
    assert kpoints.shape == (5, 3) and len(np.unique(kpoints, axis=0)) == 5
    for n in (2, 5, 6):
        scaled = kpoints * n
        assert np.all(np.abs(scaled - np.round(scaled)) > 1e-3)
    assert np.array_equal(kpoints, offmesh_kpoints(5, seed=1, meshes=[(2, 2, 2), (5, 5, 5), (6, 6, 6)]))


@pytest.mark.parametrize('l', [0, 1, 2, 3])
def test_pyscf_convention_matches_evaluated_gtos(l):
    """PySCF's spherical GTOs on a sphere are exactly the harmonics the 'pyscf' convention names."""
    from pyscf import gto

    mol = gto.M(atom='He 0 0 0', basis={'He': [[l, [1.0, 1.0]]]}, spin=None, verbose=0)
    xyz = np.random.default_rng(0).normal(size=(60, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    values = mol.eval_gto('GTOval_sph', xyz)  # the radial factor is constant on the unit sphere
    expected = PYSCF_CONVENTION.harmonics(l, xyz)
    scale = values[0] / expected[0]
    assert np.allclose(scale, scale[0]) and np.allclose(values, scale[0] * expected, atol=1e-12)


# ------------------------------------------------------------------------------------ named errors
BAD_INPUTS = {
    'empty': (Atoms(cell=[4, 4, 4], pbc=True), BadStructureError),
    'overlapping': (Atoms('Si2', [[0, 0, 0], [0.3, 0, 0]], cell=[5, 5, 5], pbc=True), BadStructureError),
    'image-overlap': (Atoms('Si', [[0, 0, 0]], cell=[0.4, 5, 5], pbc=True), BadStructureError),
    'non-periodic': (Atoms('Si2', [[0, 0, 0], [2, 2, 2]], cell=[6, 6, 6], pbc=False), BadStructureError),
    'zero-volume': (Atoms('Si2', [[0, 0, 0], [2, 2, 0]], cell=[4, 4, 0], pbc=True), BadStructureError),
    'no-basis': (Atoms('Au2', [[0, 0, 0], [2, 2, 0]], cell=[5, 5, 5], pbc=True), UnsupportedElementError),
}


@pytest.mark.parametrize('name', sorted(BAD_INPUTS))
def test_bad_inputs_fail_fast_with_named_errors(name):
    atoms, error = BAD_INPUTS[name]
    start = time.perf_counter()
    with pytest.raises(error) as info:
        run_engine(atoms, TINY, 'label')
    assert time.perf_counter() - start < 2.0
    data = info.value.as_dict()
    assert data['error'] in ('BadStructure', 'UnsupportedElement') and data['message']


def test_dense_mesh_too_coarse_for_cutoff_is_a_config_error():
    with pytest.raises(DftConfigError, match='too coarse'):
        run_engine(silicon(), TINY.replace(dense_kmesh=(2, 2, 2), cutoff=8.0), 'h0')


# ------------------------------------------------------------------------------------- PySCF runs
@pytest.fixture(scope='module')
def si_label():
    """Si, gth-szv, label mode, 12 Å cutoff (the szv self-check needs it: 10 Å gives ~50 meV)."""
    return run_engine(
        silicon(), TINY.replace(cutoff=12.0, alias_margin=2.0, selfcheck_tolerance=5.0), 'label'
    )


def test_label_result(si_label):
    result = si_label
    bh = result.hamiltonian
    assert result.converged and result.scf_cycles > 0 and result.mode == 'label'
    assert bh.h0 is not None and bh.overlap is not None and bh.basis.code == 'pyscf'
    assert bh.basis[14].shells == (0, 1) and bh.basis[14].shell_names == ('3s', '3p')
    assert result.n_electrons == 8 and bh.n_electrons == 8
    assert result.gap['gap'] > 0.3 and not result.gap['is_metal']
    assert result.gap['vbm'] < result.fermi_level < result.gap['cbm']
    assert result.energies['total'] < 0
    for key in ('setup', 'guess', 'scf', 'hcore', 'veff_h0', 'veff_scf', 'realspace', 'selfcheck', 'total'):
        assert result.timings[key] >= 0
    assert bh.metadata['mode'] == 'label' and bh.metadata['cutoff'] == 12.0


def test_selfcheck_within_tolerance(si_label):
    check = si_label.selfcheck
    assert check.passed and check.max_deviation < 5.0 and check.n_bands == 5
    assert len(check.kpoints) == 5 and check.matrix == 'H'


def test_stored_blocks_are_hermitian_and_complete(si_label):
    bh = si_label.hamiltonian
    assert np.all(bh.partner_index() >= 0)
    for name in ('H', 'S', 'H0'):
        assert bh.hermiticity_error(name) < 1e-10


def test_overlap_blocks_equal_direct_shifted_cell_overlaps(si_label):
    """S(R) from the Fourier transform equals <φ_i0|φ_jR> computed directly (no k-points)."""
    from pyscf import gto

    bh = si_label.hamiltonian
    cell = engine.build_cell(silicon(), TINY)
    mol = cell.to_mol()
    transform = internal_transforms(bh.basis)[14]
    offsets = cell.aoslice_by_atom()[:, 2:]
    distances = bh.distances()
    for pair in np.flatnonzero((distances > 0) & (distances < 6.0))[:12]:
        r1, r2, r3, i, j = bh.pairs[pair]
        shifted = mol.copy()
        shifted.set_geom_(mol.atom_coords() + np.array([r1, r2, r3]) @ cell.lattice_vectors(), unit='Bohr')
        direct = gto.intor_cross('int1e_ovlp', mol, shifted)
        block = direct[offsets[i, 0] : offsets[i, 1], offsets[j, 0] : offsets[j, 1]]
        assert np.abs(transform @ block @ transform.T - bh.block('S', pair)).max() < 1e-7


def test_h0_is_close_to_scf_up_to_a_uniform_shift(si_label):
    from aiida_nextham.dft.analysis import h0_correction_stats

    stats = h0_correction_stats(si_label.hamiltonian)
    assert stats['onsite']['max_abs'] > 10  # meV: H0 and H differ ...
    assert abs(stats['mu']) > 0.01  # ... mostly by a uniform shift μS (eV) ...
    for where in ('onsite', 'offsite'):  # ... and the rest is much smaller
        assert stats[f'{where}_shifted']['rms'] < 0.5 * stats[where]['rms']


@pytest.mark.parametrize(('xc', 'chunked'), [('pbe', False), ('lda,vwn', False), ('pbe', True)])
def test_single_pass_matrices_equal_pyscf_get_bands_route(xc, chunked, monkeypatch):
    """The one-pass local potential (the whole local pseudopotential on the grid) + analytic kinetic
    and non-local terms equal ``mf.get_hcore + mf.get_veff``, also with G vectors in chunks."""
    from contextlib import nullcontext

    from aiida_nextham.dft import pyscf_matrices
    from aiida_nextham.dft.pyscf_matrices import matrices_at, single_pass_supported

    if chunked:
        monkeypatch.setattr(pyscf_matrices, 'G_CHUNK', 999)

    config = TINY.replace(xc=xc)
    cell = engine.build_cell(silicon(), config)
    mf = engine.make_scf(cell, (2, 2, 2), config)
    assert single_pass_supported(mf)
    dm0 = engine.initial_density(mf, 'atom')
    kpoints = engine.fractional_to_absolute(cell, np.array([[1, 2, 3], [4, 1, 2], [0, 0, 0]]) / 5)
    fast = matrices_at(mf, {'H0': dm0}, [kpoints], lambda stage: nullcontext())['H0'][0]
    reference = np.asarray(mf.get_hcore(cell, kpoints)) + mf.get_veff(
        cell, dm0, kpts=mf.kpts, kpts_band=kpoints
    )
    # PySCF integrates the short-range local part analytically, we on the grid: 3e-7 eV apart here
    assert np.abs(fast - reference * engine.HARTREE).max() < 2e-6


def test_nonlocal_pseudopotential_equals_pyscf():
    """One matrix product per k-point gives PySCF's ``get_pp_nl``, at Γ alone and on a mesh."""
    from pyscf.pbc.gto.pseudo import pp_int

    from aiida_nextham.dft.pyscf_matrices import nonlocal_pseudopotential

    cell = engine.build_cell(silicon(), TINY)
    for kpts in (np.zeros((1, 3)), cell.make_kpts([2, 1, 3])):
        ours = nonlocal_pseudopotential(cell, kpts)
        theirs = np.asarray(pp_int.get_pp_nl(cell, kpts)).reshape(ours.shape)
        assert np.abs(theirs).max() > 0.1
        assert np.abs(ours - theirs).max() < 1e-12


def test_selfcheck_failure_is_named_and_keeps_the_result():
    config = TINY.replace(kmesh=(1, 1, 1), dense_kmesh=(3, 3, 3), cutoff=4.0, selfcheck_tolerance=1.0)
    with pytest.raises(SelfCheckError) as info:
        run_engine(silicon(), config, 'h0')
    result = info.value.result
    assert result.selfcheck.max_deviation > 1.0 and not result.selfcheck.passed
    assert info.value.as_dict()['error'] == 'SelfCheckFailed'
    assert result.hamiltonian.h0 is result.hamiltonian.hamiltonian  # h0 mode: H0 in both fields


@pytest.mark.slow
def test_smearing_and_fftdf_options_reach_pyscf():
    """Smearing (free energy reported) and the FFTDF integrator run through the generic path."""
    config = TINY.replace(kmesh=(1, 1, 1), dense_kmesh=(2, 2, 2), cutoff=3.0, selfcheck=False)
    smeared = run_engine(silicon(), config.replace(smearing='fermi-dirac', smearing_width=0.2), 'label')
    assert smeared.converged and 'free' in smeared.energies and smeared.selfcheck is None
    fftdf = run_engine(silicon(), config.replace(density_fit='fftdf'), 'h0')
    multigrid = run_engine(silicon(), config, 'h0')
    assert np.abs(fftdf.hamiltonian.hamiltonian - multigrid.hamiltonian.hamiltonian).max() < 1e-5


def _rotated(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    return rotated


@pytest.mark.slow
def test_rotation_covariance_dzvp():
    """H0, H_scf and S of a rotated rattled Si cell (s, p, d shells) equal the Wigner-D-rotated blocks."""
    from scipy.spatial.transform import Rotation

    atoms = silicon()
    atoms.rattle(0.1, seed=4)
    strain = np.eye(3) + 0.02 * np.random.default_rng(3).normal(size=(3, 3))
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    rotation = Rotation.random(random_state=7).as_matrix()
    config = DftConfig(
        basis='gth-dzvp', kmesh=(1, 1, 1), dense_kmesh=(2, 2, 2), cutoff=3.0, precision=1e-5, selfcheck=False
    )
    original = run_engine(atoms, config, 'label').hamiltonian
    rotated = run_engine(_rotated(atoms, rotation), config, 'label').hamiltonian
    assert original.basis[14].shells == (0, 0, 1, 1, 2)
    expected = original.rotated(rotation)
    assert np.array_equal(expected.pairs, rotated.pairs)
    for name, tolerance in (('H', 1e-6), ('H0', 1e-6), ('S', 1e-8)):
        assert np.abs(expected.matrix(name) - rotated.matrix(name)).max() < tolerance, name
    # negative control: the same blocks in a convention that swaps the d harmonics fail the test
    swapped_d = ((2, 1), (-1, 1), (0, 1), (1, 1), (-2, 1))
    wrong = Convention('pyscf-wrong-d', order={**PYSCF_CONVENTION.order, 2: swapped_d})

    undo = {14: internal_transforms(original.basis)[14].T}
    redo = {14: atom_transform(original.basis[14].shells, wrong)}
    bad = original.transform_orbitals(undo).transform_orbitals(redo).rotated(rotation)
    bad_rotated = rotated.transform_orbitals(undo).transform_orbitals(redo)
    assert np.abs(bad.matrix('H') - bad_rotated.matrix('H')).max() > 1e-3


def test_harmonics_reference_is_standard():
    """Guard: the reference harmonics the convention is defined against (z polar, no CS phase)."""
    xyz = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    p = real_harmonics(1, xyz)  # m = -1, 0, 1 -> y, z, x
    assert np.allclose(p / p.max(), [[0, 0, 1], [1, 0, 0], [0, 1, 0]])


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_h0_writes_hdf5_and_summary(tmp_path):
    structure = tmp_path / 'si.cif'
    silicon().write(structure)
    out, summary = tmp_path / 'h0.h5', tmp_path / 'summary.json'
    options = (
        '--mode h0 --protocol fast --kmesh 2 2 2 --cutoff 5 --dense-kmesh 3 3 3 --selfcheck-tolerance 1e6'
    )
    args = [str(structure), *options.split(), '-o', str(out), '--summary', str(summary)]
    result = CliRunner().invoke(dft, args)
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    keys = ('energies', 'fermi_level', 'gap', 'selfcheck_deviation', 'timings', 'scf_cycles', 'converged')
    assert all(key in data for key in keys)
    assert data['mode'] == 'h0' and data['converged'] is None and data['dense_kmesh'] == [3, 3, 3]
    bh = read_hdf5(out)
    assert bh.h0 is not None and bh.metadata['mode'] == 'h0'
    assert bh.fermi_level == pytest.approx(data['fermi_level'])


def test_cli_scf_not_converged_exit_path(tmp_path):
    structure = tmp_path / 'si.cif'
    silicon().write(structure)
    out, summary = tmp_path / 'label.h5', tmp_path / 'summary.json'
    options = '--protocol fast --kmesh 1 1 1 --max-cycles 1 --conv-tol 1e-9'
    args = [str(structure), *options.split(), '-o', str(out), '--summary', str(summary)]
    result = CliRunner().invoke(dft, args)
    assert result.exit_code == ScfNotConvergedError.exit_status
    assert 'Error: ScfNotConvergedError:' in result.output
    data = json.loads(summary.read_text())
    assert data['error'] == 'ScfNotConverged' and data['scf_cycles'] == 1
    assert not out.exists()


def test_cli_bad_structure_exit_path(tmp_path):
    structure = tmp_path / 'mol.xyz'
    Atoms('Si2', [[0, 0, 0], [2, 2, 2]]).write(structure)
    summary = tmp_path / 'summary.json'
    result = CliRunner().invoke(
        dft, [str(structure), '-o', str(tmp_path / 'x.h5'), '--summary', str(summary)]
    )
    assert result.exit_code == BadStructureError.exit_status
    assert result.output.strip().splitlines()[-1].startswith('Error: BadStructureError:')
    assert json.loads(summary.read_text())['error'] == 'BadStructure'
