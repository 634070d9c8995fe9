"""Band energies, Fermi level, band gap, DOS, the sparse path, plots, and DeepH MoTe2 real data."""

import json
import warnings

import numpy as np
import pytest
import scipy.sparse
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from aiida_nextham.hamiltonian import bloch
from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.block import BlockHamiltonian
from aiida_nextham.hamiltonian.kpath import band_path, explicit_kpath, read_deeph_kpath
from aiida_nextham.hamiltonian.plotting import plot_bands, plot_dos
from aiida_nextham.hamiltonian.sparse import eigenvalues_auto, eigenvalues_near, overlap_min_eigenvalue
from aiida_nextham.hamiltonian.spectra import (
    band_energies,
    band_gap,
    density_of_states,
    electron_count,
    fermi_level,
    monkhorst_pack,
)
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

T = 1.0  # hopping, eV
S_BASIS = Basis.from_shells({'H': [0]})


def chain(onsite: float = 0.0) -> BlockHamiltonian:
    """One s orbital per cell, nearest-neighbour hopping along a1: ε(k) = onsite − 2t cos(2πk₁)."""
    pairs = [(0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (-1, 0, 0, 0, 0)]
    return BlockHamiltonian(
        np.diag([2.0, 10.0, 10.0]), [[0, 0, 0]], [1], S_BASIS, pairs, np.array([onsite, -T, -T])
    )


def dimer_chain(gap_half: float, centre: float) -> BlockHamiltonian:
    """Two sites per cell (ε = centre ∓ Δ), hopping t between neighbours.

    ε±(k) = centre ± sqrt(Δ² + 4t² cos²(πk₁)): gap 2Δ at k₁ = 1/2, VBM = centre − Δ, CBM = centre + Δ.
    """
    pairs = [
        (0, 0, 0, 0, 0),
        (0, 0, 0, 1, 1),
        (0, 0, 0, 0, 1),
        (0, 0, 0, 1, 0),
        (-1, 0, 0, 0, 1),
        (1, 0, 0, 1, 0),
    ]
    values = np.array([centre - gap_half, centre + gap_half, -T, -T, -T, -T])
    return BlockHamiltonian(
        np.diag([2.0, 10.0, 10.0]), [[0, 0, 0], [1, 0, 0]], [1, 1], S_BASIS, pairs, values
    )


def cubic_energies(mesh: int) -> tuple[np.ndarray, np.ndarray]:
    """Simple-cubic s band ε = −2t Σ cos(2πk) on an MP mesh: (nk, 1) energies and weights."""
    kpoints, weights = monkhorst_pack((mesh,) * 3)
    return -2 * T * np.cos(2 * np.pi * kpoints).sum(axis=1)[:, None], weights


# ------------------------------------------------------------------------------------ meshes
def test_monkhorst_pack():
    kpoints, weights = monkhorst_pack((4, 3, 1))
    assert kpoints.shape == (12, 3) and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.unique(kpoints[:, 0]), [-0.375, -0.125, 0.125, 0.375])
    np.testing.assert_allclose(np.unique(kpoints[:, 1]), [-1 / 3, 0, 1 / 3])
    gamma, _ = monkhorst_pack((4, 4, 1), gamma_centered=True)
    assert np.any(np.all(gamma == 0, axis=1)) and np.all((gamma > -0.5) & (gamma <= 0.5))
    with pytest.raises(ValueError):
        monkhorst_pack((0, 1, 1))


# ------------------------------------------------------------------------------- Fermi level
@pytest.mark.parametrize('smearing', [None, 'gaussian', 'methfessel-paxton', 'fermi-dirac'])
def test_fermi_level_insulator_is_mid_gap(smearing):
    bh = dimer_chain(gap_half=0.4, centre=1.3)
    kpoints, weights = monkhorst_pack((12, 1, 1), gamma_centered=True)  # contains k = 1/2
    energies = band_energies(bh, kpoints)
    assert fermi_level(energies, weights, 2, smearing=smearing) == pytest.approx(1.3, abs=1e-12)
    gap = band_gap(energies, 2)
    assert gap['gap'] == pytest.approx(0.8) and gap['direct_gap'] == pytest.approx(0.8)
    assert gap['vbm'] == pytest.approx(0.9) and gap['cbm'] == pytest.approx(1.7)
    assert kpoints[gap['k_vbm'], 0] == 0.5 and kpoints[gap['k_cbm'], 0] == 0.5 and not gap['is_metal']


def test_fermi_level_metal_chain():
    """Quarter filling of a cosine band: k_F = 1/8, E_F = −2t cos(π/4) = −√2 t."""
    bh = chain()
    kpoints, weights = monkhorst_pack((2000, 1, 1))
    energies = band_energies(bh, kpoints)
    np.testing.assert_allclose(energies[:, 0], -2 * T * np.cos(2 * np.pi * kpoints[:, 0]), atol=1e-12)
    exact = -np.sqrt(2) * T
    for smearing, width in [
        (None, 0.0),
        ('gaussian', 0.01),
        ('methfessel-paxton', 0.01),
        ('fermi-dirac', 0.005),
    ]:
        mu = fermi_level(energies, weights, 0.5, smearing=smearing, width=width)
        assert mu == pytest.approx(exact, abs=3e-3), smearing
        if smearing:
            assert electron_count(energies, weights, mu, smearing, width) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize('smearing', [None, 'gaussian', 'methfessel-paxton', 'fermi-dirac'])
def test_fermi_level_half_filled_cubic_band_is_zero(smearing):
    """Particle–hole symmetry of the simple-cubic band on an even MP mesh: E_F = 0 exactly."""
    energies, weights = cubic_energies(16)
    assert fermi_level(energies, weights, 1.0, smearing=smearing, width=0.1) == pytest.approx(0.0, abs=1e-9)


def test_fermi_level_counting_matches_partition():
    """Without smearing: midpoint of the N-th and (N+1)-th state (DeepH-dock's counting method)."""
    energies, weights = cubic_energies(8)
    spinless = np.concatenate([energies, energies + 0.37], axis=1)
    n_electrons = 1.3
    flat = np.sort(spinless, axis=None)
    n_states = int(len(spinless) * n_electrons / 2)
    expected = 0.5 * (flat[n_states - 1] + flat[n_states])
    assert fermi_level(spinless, weights, n_electrons, smearing=None) == pytest.approx(expected)


def test_fermi_level_spinor_degeneracy():
    """The same band counted once per spin (spinor): twice the electrons per degenerate pair."""
    energies, weights = cubic_energies(10)
    spinor = np.repeat(energies, 2, axis=1)
    mu_spinless = fermi_level(energies, weights, 0.6, width=0.05)
    assert fermi_level(spinor, weights, 0.6, width=0.05, spin_degeneracy=1) == pytest.approx(mu_spinless)
    with pytest.raises(ValueError, match='do not fit'):
        fermi_level(energies, weights, 2.5)


def test_mp_and_gaussian_agree_for_small_width():
    kpoints, weights = monkhorst_pack((4000, 1, 1))
    energies = -2 * T * np.cos(2 * np.pi * kpoints[:, :1])
    mu = {
        s: fermi_level(energies, weights, 0.7, smearing=s, width=0.01)
        for s in ('gaussian', 'methfessel-paxton')
    }
    assert mu['gaussian'] == pytest.approx(mu['methfessel-paxton'], abs=1e-3)
    grid = np.linspace(-1.5, 1.5, 61)
    exact = 2 / (np.pi * np.sqrt(4 * T**2 - grid**2))  # 1D DOS with spin
    for smearing in ('gaussian', 'methfessel-paxton'):
        dos = density_of_states(energies, weights, grid, smearing, width=0.01)
        np.testing.assert_allclose(dos, exact, rtol=2e-3)


# ----------------------------------------------------------------------------------- band gap
def test_band_gap_cases():
    indirect = np.array([[0.0, 2.0], [1.0, 2.5], [0.5, 1.8]])
    gap = band_gap(indirect, 2)
    assert gap == {
        'gap': pytest.approx(0.8),
        'vbm': 1.0,
        'cbm': 1.8,
        'direct_gap': pytest.approx(1.3),
        'k_vbm': 1,
        'k_cbm': 2,
        'is_metal': False,
    }
    semimetal = band_gap(np.array([[0.0, 1.0], [2.0, 3.0]]), 2)
    assert semimetal['is_metal'] and semimetal['gap'] == 0.0 and semimetal['vbm'] == 2.0
    partial = band_gap(indirect, 3)  # 1.5 bands
    assert partial['is_metal'] and partial['gap'] == 0.0 and partial['vbm'] is None
    assert band_gap(indirect, 1, spin_degeneracy=1)['gap'] == pytest.approx(0.8)
    with pytest.raises(ValueError, match='no gap'):
        band_gap(indirect, 4)


# ---------------------------------------------------------------------------------------- DOS
@pytest.mark.parametrize(
    ('smearing', 'spin_degeneracy', 'tolerance'),
    [('gaussian', 2, 1e-9), ('methfessel-paxton', 2, 1e-9), ('fermi-dirac', 2, 1e-9), ('gaussian', 1, 1e-9)],
)
def test_dos_integrates_to_number_of_states(smearing, spin_degeneracy, tolerance):
    bh = dimer_chain(gap_half=0.4, centre=0.0)
    kpoints, weights = monkhorst_pack((30, 1, 1))
    energies = band_energies(bh, kpoints)
    width = 0.1
    grid = np.linspace(energies.min() - 50 * width, energies.max() + 50 * width, 20001)
    dos = density_of_states(energies, weights, grid, smearing, width, spin_degeneracy)
    assert np.trapezoid(dos, grid) == pytest.approx(2 * spin_degeneracy, abs=tolerance)
    # inside the gap (|E| < Δ, far from the edges) the Gaussian DOS vanishes
    if smearing == 'gaussian':
        assert dos[np.abs(grid) < 0.4 - 8 * width].size == 0 or np.all(
            dos[np.abs(grid) < 0.4 - 8 * width] < 1e-12
        )


def test_dos_validates():
    with pytest.raises(ValueError, match='unknown smearing'):
        density_of_states(np.zeros((1, 1)), [1.0], np.zeros(3), 'lorentzian')
    with pytest.raises(ValueError, match='weights'):
        density_of_states(np.zeros((2, 1)), [1.0], np.zeros(3))


# --------------------------------------------------------------------- synthetic crystals, sparse
@pytest.fixture(scope='module')
def si54() -> BlockHamiltonian:
    atoms = bulk('Si', 'diamond', a=5.431).repeat((3, 3, 3))  # 54 atoms
    return random_block_hamiltonian(atoms, Basis.from_shells({'Si': [0, 1, 2]}), 5.0, seed=7)


@pytest.mark.parametrize('kpoint', [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.1, 0.23, -0.31]])
def test_sparse_matches_dense(si54, kpoint):
    dense = bloch.eigenvalues(si54, [kpoint])[0]
    for sigma in (0.0, 0.37):
        nearest = np.sort(dense[np.argsort(np.abs(dense - sigma))[:10]])
        np.testing.assert_allclose(eigenvalues_near(si54, kpoint, sigma, 10), nearest, atol=1e-8)


def test_sparse_spinor_and_auto():
    atoms = bulk('Si', 'diamond', a=5.431, cubic=True)
    bh = random_block_hamiltonian(atoms, Basis.from_shells({'Si': [0, 1]}), 4.0, seed=3, spin='spinor')
    kpoints = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    dense = bloch.eigenvalues(bh, kpoints)
    sparse = eigenvalues_auto(bh, kpoints, sigma=0.1, n=6, dense_limit=0)
    small = eigenvalues_auto(bh, kpoints, sigma=0.1, n=6)
    for row, values in enumerate(dense):
        expected = np.sort(values[np.argsort(np.abs(values - 0.1))[:6]])
        np.testing.assert_allclose(sparse[row], expected, atol=1e-8)
        np.testing.assert_allclose(small[row], expected, atol=1e-12)
    np.testing.assert_allclose(eigenvalues_auto(bh, kpoints), dense)


def _shift_onsite_overlap(bh: BlockHamiltonian, shift: float) -> BlockHamiltonian:
    """S(R) − shift·δ(R=0, i=j)·1: every S(k) eigenvalue moves down by ``shift``."""
    shifted = bh.replace(overlap=bh.overlap.copy())
    for pair in np.flatnonzero((bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)):
        block = shifted.block('S', pair)
        block[np.diag_indices(len(block))] -= shift
    return shifted


def test_ill_conditioned_overlap(si54):
    k = np.array([0.1, 0.2, 0.3])
    s_min = np.linalg.eigvalsh(bloch.bloch_sum(si54, 'S', k))[0]
    assert overlap_min_eigenvalue(bloch.bloch_sum(si54, 'S', k, sparse=True)) == pytest.approx(s_min)
    singular = _shift_onsite_overlap(si54, s_min + 1e-3)
    with pytest.raises(bloch.IllConditionedOverlapError):
        bloch.eigenvalues(singular, [k])
    with pytest.raises(bloch.IllConditionedOverlapError):
        eigenvalues_near(singular, k, 0.0, 10)
    nearly = _shift_onsite_overlap(si54, s_min - 1e-6)
    with pytest.warns(bloch.OverlapWarning):
        bloch.eigenvalues(nearly, [k])
    with pytest.warns(bloch.OverlapWarning):
        eigenvalues_near(nearly, k, 0.0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        eigenvalues_near(si54, k, 0.0, 4)


def test_overlap_exactly_singular_matrix():
    s = scipy.sparse.csr_matrix(np.diag([1.0, 2.0, 0.0, 3.0]))
    assert overlap_min_eigenvalue(s) == 0.0


@pytest.mark.parametrize('spin', ['none', 'spinor'])
def test_bloch_matrices_hermitian_along_path(spin):
    atoms = bulk('Si', 'diamond', a=5.431)
    bh = random_block_hamiltonian(atoms, Basis.from_shells({'Si': [0, 1, 2]}), 6.0, seed=11, spin=spin)
    kpath = band_path(bh.lattice, 'auto', 40, positions=bh.positions, numbers=bh.numbers)
    for k in kpath.kpoints:
        for name in ('H', 'S'):
            m = bloch.bloch_sum(bh, name, k)
            assert np.abs(m - m.conj().T).max() < 1e-12


def test_rotation_invariance_of_bands():
    atoms = Atoms(
        'Si2', cell=bulk('Si', 'diamond', a=5.431).cell, scaled_positions=[[0, 0, 0], [0.26, 0.24, 0.25]]
    )
    atoms.pbc = True
    bh = random_block_hamiltonian(atoms, Basis.from_shells({'Si': [0, 0, 1, 1, 2]}), 6.0, seed=5)
    rotation = Rotation.from_euler('zxz', [0.7, 1.9, -2.4]).as_matrix()
    rotated = bh.rotated(rotation)
    assert not np.allclose(rotated.hamiltonian, bh.hamiltonian)
    kpath = band_path(bh.lattice, 'auto', 60)
    np.testing.assert_allclose(band_energies(rotated, kpath), band_energies(bh, kpath), atol=1e-10)


# ---------------------------------------------------------------------------------------- plots
def test_plots(tmp_path):
    bh = dimer_chain(gap_half=0.4, centre=1.3)
    kpath = explicit_kpath(np.linspace([0, 0, 0], [0.5, 0, 0], 21), bh.lattice, [(0, 'G'), (20, 'X_1')])
    energies = band_energies(bh, kpath)
    figure = plot_bands(kpath, energies, 1.3, tmp_path / 'bands.png', title='dimer', emin=-3, emax=3)
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ['Γ', 'X$_{1}$'] and 'E_' in figure.axes[0].get_ylabel()
    assert (tmp_path / 'bands.png').stat().st_size > 1000
    grid = np.linspace(-3, 4, 200)
    plot_dos(grid, density_of_states(energies, np.ones(len(energies)), grid), 1.3, tmp_path / 'dos.png')
    assert (tmp_path / 'dos.png').stat().st_size > 1000
    with pytest.raises(ValueError, match='k-points'):
        plot_bands(kpath, energies[:-1])


# ------------------------------------------------------------------------------------ real data
MOTE2 = 'deeph_new_MoTe2_bands_deephdock/tests/compute/eigen/eigen.bak/MoTe2'


@pytest.mark.realdata
def test_deeph_mote2_bands_and_fermi_level(realdata):
    """DeepH-dock's MoTe2 bands (band.h5) and Fermi level (fermi_energy.json) from the imported H, S.

    DeepH-dock's Fermi level ("counting" method, deepx_dock/compute/eigen/fermi_dos.py) is the
    midpoint of the N-th and (N+1)-th state of a Γ-centred mesh, N = occupation/2 per k-point:
    mid-gap for this insulator, as ``fermi_level(..., smearing=None)``. Its band.h5 re-centres
    the gap on the path (band.py ``_correct_fermi_energy``); VBM and CBM are both at K here.
    """
    import h5py

    from aiida_nextham.hamiltonian.importers.deeph import read_deeph

    folder = realdata / MOTE2
    bh = read_deeph(folder)
    n_electrons = json.loads((folder / 'info.json').read_text())['occupation']
    reference_fermi = json.loads((folder / 'fermi_energy.json').read_text())['fermi_energy_eV']
    with h5py.File(folder / 'band.h5', 'r') as handle:
        reference = {key: handle[key][()] for key in handle}

    kpath = read_deeph_kpath(folder / 'K_PATH', bh.lattice)
    np.testing.assert_allclose(kpath.kpoints, reference['kpoints_frac_list'], atol=1e-12)
    np.testing.assert_allclose(kpath.distances / (2 * np.pi), reference['kpoints_distance_list'], atol=1e-12)

    kpoints, weights = monkhorst_pack((6, 6, 1), gamma_centered=True)  # contains Γ, M and K
    mesh_energies = band_energies(bh, kpoints)
    fermi = fermi_level(mesh_energies, weights, n_electrons, smearing=None)
    assert abs(fermi - reference_fermi) < 1e-6  # measured: 1e-13 eV
    assert fermi_level(mesh_energies, weights, n_electrons, smearing='gaussian') == pytest.approx(
        fermi, abs=1e-12
    )

    energies = band_energies(bh, kpath)
    assert energies.shape == reference['band_data'].T.shape == (140, 57)
    np.testing.assert_allclose(energies - fermi, reference['band_data'].T, atol=1e-3)  # measured: 2e-10 eV
    gap = band_gap(energies, n_electrons)
    assert gap['gap'] == pytest.approx(reference['band_gap'], abs=1e-6)
    assert gap['is_metal'] == bool(reference['is_metal']) and gap['k_vbm'] == gap['k_cbm'] == 79  # K
    assert 0.5 * (gap['vbm'] + gap['cbm']) == pytest.approx(
        reference['fermi_energy_before_shift_eV'], abs=1e-9
    )

    # the sparse path on the real (non-orthogonal) overlap agrees with DeepH at K
    near = eigenvalues_near(bh, kpath.kpoints[79], fermi, 6)
    expected = reference['band_data'][:, 79] + fermi
    np.testing.assert_allclose(near, np.sort(expected[np.argsort(np.abs(expected - fermi))[:6]]), atol=1e-3)


def test_dense_overlap_check_by_cholesky(si54, monkeypatch):
    """The Cholesky + Lanczos overlap check of large S agrees with the exact smallest eigenvalue."""
    k = np.array([0.1, 0.2, 0.3])
    s = bloch.bloch_sum(si54, 'S', k)
    exact = np.linalg.eigvalsh(s)[0]
    monkeypatch.setattr(bloch, 'CHOLESKY_CHECK_SIZE', 10)
    assert bloch.smallest_overlap_eigenvalue(s) == pytest.approx(exact, rel=1e-8)
    shifted = s - (exact - 1e-6) * np.eye(len(s))
    assert bloch.smallest_overlap_eigenvalue(shifted) == pytest.approx(1e-6, rel=1e-4)
    indefinite = s - (exact + 1e-3) * np.eye(len(s))
    assert bloch.smallest_overlap_eigenvalue(indefinite) == pytest.approx(-1e-3, rel=1e-4)
    with pytest.raises(bloch.IllConditionedOverlapError):
        bloch.eigh_generalized(bloch.bloch_sum(si54, 'H', k), indefinite)


def test_ghost_filter_keeps_the_physics_of_a_nearly_dependent_basis():
    """A basis function duplicated up to a tiny independent part (S eigenvalue 5e-7) whose own energy
    is 40 eV. H0 and H are exact Kohn–Sham-like matrices of that basis; a 1e-4 eV error of the
    predicted H throws a ghost into the spectrum, the filtered H0 + P(H − H0)P does not, and with
    the exact H the filter changes nothing but the part of H − H0 along the dropped direction."""
    import scipy.linalg

    from aiida_nextham.hamiltonian.bloch import eigh_generalized, filter_correction

    rng = np.random.default_rng(0)
    t = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # the first function twice
    tiny = np.diag([1e-6, 0.0, 0.0])  # ... plus a tiny independent function on the first copy
    s = t @ t.T + tiny
    h0_2, h_2 = np.array([[-1.2, 0.2], [0.2, 1.8]]), np.array([[-1.0, 0.3], [0.3, 2.0]])
    h0, h_true = t @ h0_2 @ t.T + 40.0 * tiny, t @ h_2 @ t.T + 40.0 * tiny
    noise = rng.normal(size=(3, 3)) * 1e-4
    h_pred = h_true + (noise + noise.T) / 2
    physical = np.linalg.eigvalsh(h_2)
    exact = scipy.linalg.eigh(h_true, s, eigvals_only=True)
    np.testing.assert_allclose(exact[:2], physical, atol=1e-6)
    plain = scipy.linalg.eigh(h_pred, s, eigvals_only=True)
    assert np.abs(plain[:2] - physical).max() > 0.1 or np.abs(plain).max() > 100  # a ghost
    filtered = eigh_generalized(h_pred, s, h0=h0, ghost_filter=1e-5)
    np.testing.assert_allclose(filtered[:2], physical, atol=1e-3)
    assert filtered[2] > 10.0  # the tiny function keeps H0's energy, far above
    assert np.array_equal(filter_correction(h_pred, h0, s, 0.0), h_pred)
    w, u = np.linalg.eigh(s)
    dropped = u[:, 0]  # the near-null direction (w = 2.5e-7 of the largest)
    correction = filter_correction(h_pred, h0, s, 1e-5) - h0
    assert np.abs(correction @ dropped).max() < 1e-14
    with pytest.raises(ValueError, match='needs H0'):
        eigh_generalized(h_pred, s, ghost_filter=1e-5)
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        filter_correction(h_pred, h0, s, 1.0)


def test_ghost_filter_equals_the_full_projector():
    """H0 + P(H − H0)P from the few dropped eigenvectors of S equals the projector on all kept ones,
    for a complex S with a tenth of its spectrum below the threshold."""
    from aiida_nextham.hamiltonian.bloch import filter_correction

    rng = np.random.default_rng(3)
    n = 60
    unitary, _ = np.linalg.qr(rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))
    w = np.concatenate([np.logspace(-8, -5, 6), np.logspace(-2, 1, n - 6)])
    s = (unitary * w) @ unitary.conj().T
    s = (s + s.conj().T) / 2
    noise = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    h0 = (noise + noise.conj().T) / 2
    h = h0 + 1e-3 * (noise.T + noise.conj()) / 2
    values, vectors = np.linalg.eigh(s)
    kept = vectors[:, values > 1e-4 * values[-1]]
    assert kept.shape[1] == n - 6
    projector = kept @ kept.conj().T
    expected = h0 + projector @ (h - h0) @ projector
    np.testing.assert_allclose(filter_correction(h, h0, s, 1e-4), expected, atol=1e-13)
