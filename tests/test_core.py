"""Block-Hamiltonian core: conventions, data model, HDF5 round trips, Bloch sums."""

import h5py
import numpy as np
import pytest
from ase.build import bulk

from aiida_nextham.hamiltonian import Basis, BlockHamiltonian, HamiltonianError, read_hdf5, write_hdf5
from aiida_nextham.hamiltonian.bloch import IllConditionedOverlapError, bloch_sum, eigenvalues
from aiida_nextham.hamiltonian.conventions import CONVENTIONS, Convention, e3nn_harmonics, wigner_d
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

SPD_BASIS = Basis.from_shells({'Ga': [0, 1, 2], 'As': [0, 0, 1, 1, 2, 3]}, name='test-spdf', code='synthetic')
KPOINTS = np.array([[0.0, 0.0, 0.0], [0.1, 0.27, -0.33], [0.5, 0.5, 0.0], [0.31, -0.12, 0.44]])


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope='module', params=['none', 'spinor'])
def gaas(request) -> BlockHamiltonian:
    atoms = bulk('GaAs', 'zincblende', 5.65)
    return random_block_hamiltonian(atoms, SPD_BASIS, 5.0, seed=3, spin=request.param)


@pytest.mark.parametrize('l', [0, 1, 2, 3, 4])
def test_wigner_d_rotates_e3nn_harmonics(l):
    rotation = random_rotation(l)
    xyz = np.random.default_rng(1).normal(size=(20, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    d = wigner_d(l, rotation)
    np.testing.assert_allclose(e3nn_harmonics(l, xyz @ rotation.T), e3nn_harmonics(l, xyz) @ d.T, atol=1e-12)


@pytest.mark.parametrize('l', [0, 1, 2, 3, 4, 5, 6])
def test_numpy_e3nn_harmonics_equal_e3nn(l):
    """The torch-free ``e3nn_harmonics`` is e3nn's own convention (poles, axes, unnormalised input)."""
    import torch
    from e3nn import o3

    special = [[1e-9, -2e-9, 1.0], [3.0, -2.0, 0.5]]  # next to a pole; not a unit vector
    xyz = np.concatenate([np.random.default_rng(5).normal(size=(50, 3)), np.eye(3), -np.eye(3), special])
    expected = o3.spherical_harmonics(l, torch.as_tensor(xyz, dtype=torch.float64), normalize=True).numpy()
    np.testing.assert_allclose(e3nn_harmonics(l, xyz), expected, rtol=0, atol=1e-13)


def test_wigner_d_rejects_improper_rotation():
    with pytest.raises(ValueError, match='proper rotation'):
        wigner_d(1, -np.eye(3))


def test_internal_l1_order_is_xyz():
    """The design fixes p orbitals as (x, y, z) internally; the standard z-polar order is (y, z, x)."""
    expected = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(CONVENTIONS['standard'].matrix(1), expected)


@pytest.mark.parametrize('l', [1, 2, 3])
def test_convention_matrices_are_orthogonal_and_sign_aware(l):
    flipped = Convention('flip-test', order={l: tuple((m, -1 if m == 0 else 1) for m in range(-l, l + 1))})
    t_standard, t_flipped = CONVENTIONS['standard'].matrix(l), flipped.matrix(l)
    np.testing.assert_allclose(t_flipped @ t_flipped.T, np.eye(2 * l + 1), atol=1e-12)
    np.testing.assert_allclose(t_flipped[:, l], -t_standard[:, l], atol=1e-12)


def test_block_layout_and_hermiticity(gaas):
    assert gaas.hermiticity_error('H') == 0.0
    assert gaas.hermiticity_error('S') == 0.0
    spin = (2, 2) if gaas.spin == 'spinor' else ()
    pair = int(np.flatnonzero((gaas.pairs[:, 3] == 0) & (gaas.pairs[:, 4] == 1))[0])
    assert gaas.block('H', pair).shape == spin + (9, 20)
    assert gaas.block('S', pair).shape == (9, 20)
    assert gaas.n_states == gaas.n_orbitals * (2 if gaas.spin == 'spinor' else 1)


def test_bloch_sum_is_hermitian_everywhere(gaas):
    for k in np.random.default_rng(0).uniform(-1, 1, size=(10, 3)):
        for name in ('H', 'S'):
            m = bloch_sum(gaas, name, k)
            np.testing.assert_allclose(m, m.conj().T, atol=1e-13)


def test_bloch_sum_sparse_equals_dense(gaas):
    k = KPOINTS[1]
    np.testing.assert_allclose(
        bloch_sum(gaas, 'H', k, sparse=True).toarray(), bloch_sum(gaas, 'H', k), atol=1e-14
    )


def test_bloch_sum_matches_explicit_sum():
    """Independent reference: loop over pairs and add e^{2πik·R} H_ij(R) into the (i, j) block."""
    bh = random_block_hamiltonian(
        bulk('Si', 'diamond', 5.43), Basis.from_shells({'Si': [0, 1, 2]}), 4.5, seed=2
    )
    k = KPOINTS[3]
    reference = np.zeros((bh.n_orbitals, bh.n_orbitals), dtype=complex)
    o = bh.orbital_offsets
    for p, (r1, r2, r3, i, j) in enumerate(bh.pairs):
        phase = np.exp(2j * np.pi * np.dot(k, [r1, r2, r3]))
        reference[o[i] : o[i + 1], o[j] : o[j + 1]] += phase * bh.block('H', p)
    np.testing.assert_allclose(bloch_sum(bh, 'H', k), reference, atol=1e-13)


def test_hdf5_round_trip_is_bit_exact(gaas, tmp_path):
    gaas = gaas.replace(fermi_level=1.25, n_electrons=18.0, h0=gaas.hamiltonian * 0.5)
    path = write_hdf5(gaas, tmp_path / 'x.h5')
    back = read_hdf5(path)
    for name in ('H', 'S', 'H0'):
        assert back.matrix(name).dtype == gaas.matrix(name).dtype
        assert np.array_equal(back.matrix(name), gaas.matrix(name))
    for field in ('lattice', 'positions', 'numbers', 'pairs'):
        assert np.array_equal(getattr(back, field), getattr(gaas, field))
    assert back.basis == gaas.basis and back.spin == gaas.spin
    assert (back.fermi_level, back.n_electrons) == (1.25, 18.0)
    assert back.metadata == gaas.metadata


def test_hdf5_stores_flat_chunked_arrays(gaas, tmp_path):
    path = write_hdf5(gaas, tmp_path / 'x.h5')
    with h5py.File(path) as handle:
        assert handle['blocks/H'].ndim == 1 and handle['blocks/H'].chunks is not None
        assert set(handle['blocks']) == {'H', 'S'}


def test_hdf5_half_storage_completes_to_same_bands(gaas, tmp_path):
    path = write_hdf5(gaas, tmp_path / 'half.h5', half=True)
    with h5py.File(path) as handle:
        assert handle.attrs['hermitian_storage'] == 'half'
        assert len(handle['pairs']) < gaas.n_pairs
    back = read_hdf5(path)
    assert back.n_pairs == gaas.n_pairs
    np.testing.assert_allclose(eigenvalues(back, KPOINTS), eigenvalues(gaas, KPOINTS), atol=1e-12)


def test_hdf5_rejects_unknown_schema_version(gaas, tmp_path):
    path = write_hdf5(gaas, tmp_path / 'x.h5')
    with h5py.File(path, 'a') as handle:
        handle.attrs['schema_version'] = 99
    with pytest.raises(HamiltonianError, match='schema_version 99 is not supported'):
        read_hdf5(path)


def test_hdf5_rejects_other_and_truncated_files(gaas, tmp_path):
    other = tmp_path / 'other.h5'
    with h5py.File(other, 'w') as handle:
        handle['x'] = np.arange(3)
    with pytest.raises(HamiltonianError, match='not a nextham block-Hamiltonian file'):
        read_hdf5(other)
    good = write_hdf5(gaas, tmp_path / 'good.h5')
    truncated = tmp_path / 'truncated.h5'
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(HamiltonianError, match='truncated.h5'):
        read_hdf5(truncated)


def test_failed_write_leaves_no_file(gaas, tmp_path, monkeypatch):
    target = tmp_path / 'x.h5'
    monkeypatch.setattr(gaas, 'metadata', {'bad': object()})
    with pytest.raises(TypeError):
        write_hdf5(gaas, target)
    assert list(tmp_path.iterdir()) == []


def test_rotation_leaves_band_energies_unchanged():
    bh = random_block_hamiltonian(bulk('GaAs', 'zincblende', 5.65), SPD_BASIS, 5.0, seed=5)
    rotation = random_rotation(7)
    rotated = bh.rotated(rotation)
    np.testing.assert_allclose(rotated.positions, bh.positions @ rotation.T)
    np.testing.assert_allclose(eigenvalues(rotated, KPOINTS), eigenvalues(bh, KPOINTS), atol=1e-10)
    # on-site blocks transform as D H D^T: their spectrum is invariant, the blocks themselves are not
    assert not np.allclose(rotated.block('H', 0), bh.block('H', 0))


def test_complete_hermitian_restores_dropped_partners(gaas):
    partner = gaas.partner_index()
    drop = np.flatnonzero(partner > np.arange(gaas.n_pairs))[:5]
    reduced = gaas.select_pairs(np.setdiff1d(np.arange(gaas.n_pairs), partner[drop]))
    completed = reduced.complete_hermitian()
    assert completed.n_pairs == gaas.n_pairs
    np.testing.assert_allclose(
        eigenvalues(completed, KPOINTS[:2]), eigenvalues(gaas, KPOINTS[:2]), atol=1e-12
    )


def test_truncate_keeps_onsite_and_short_pairs(gaas):
    short = gaas.truncate(2.5)
    assert short.distances().max() <= 2.5
    assert short.n_pairs == 2 + 8  # two on-site blocks + 4 nearest neighbours each
    assert short.metadata['cutoff'] == 2.5


def test_near_singular_overlap_raises():
    bh = random_block_hamiltonian(bulk('Si', 'diamond', 5.43), Basis.from_shells({'Si': [0, 1]}), 3.0, seed=1)
    onsite = np.flatnonzero((bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1))
    s = bh.overlap.copy()
    offsets = bh.block_offsets('S')
    block = s[offsets[onsite[0]] : offsets[onsite[0] + 1]].reshape(4, 4)
    block[1, 1] = -1.0  # negative-norm orbital: S(k) cannot be positive definite
    with pytest.raises(IllConditionedOverlapError, match='smallest eigenvalue'):
        eigenvalues(bh.replace(overlap=s), KPOINTS[:1])


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'spin': 'collinear-ish'}, 'spin must be one of'),
        ({'pairs': np.array([[0, 0, 0, 0, 5]])}, 'pair atom indices'),
        ({'hamiltonian': np.zeros(3)}, 'H has 3 entries'),
        ({'numbers': np.array([14, 6])}, 'no shells for element'),
    ],
)
def test_inconsistent_input_is_rejected(changes, message):
    bh = random_block_hamiltonian(bulk('Si', 'diamond', 5.43), Basis.from_shells({'Si': [0, 1]}), 3.0, seed=1)
    with pytest.raises(HamiltonianError, match=message):
        bh.replace(**changes)
