"""Losses, reciprocal targets, the differentiable Bloch sum and the accuracy metrics of aiida_nextham.ml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from ase.build import bulk

from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.bloch import bloch_matrices
from aiida_nextham.hamiltonian.hdf5 import read_hdf5, write_hdf5
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian
from aiida_nextham.ml.bloch import BlochIndex, bloch_sum
from aiida_nextham.ml.loss import (
    HamiltonianLoss,
    LossConfig,
    ReciprocalTensors,
    SpinorLayout,
    element_mask,
    real_space_terms,
    reciprocal_terms,
)
from aiida_nextham.ml.metrics import band_energy_error, count_ghost_bands, ghost_bands, hamiltonian_mae
from aiida_nextham.ml.targets import ReciprocalTargets, cached_targets, targets_cache_path

PYSCF_FILE = Path(__file__).parent / 'data' / 'dft_outputs' / 'success' / 'hamiltonian.h5'
SP = Basis.from_shells({'Si': [0, 1]}, name='synthetic-sp', code='synthetic')
MU = 0.37  # eV, the uniform gauge shift used throughout
EPS_S, EPS_P = -4.0, 4.0  # on-site energies of the gapped model


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.float64)


def _random_kpoints(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(n, 3))


def _element_orbitals(bh):
    """(row orbital, column orbital, pair) of every spinless flat element, numpy."""
    index = BlochIndex.from_hamiltonian(bh, 'S')
    rows, cols = np.divmod(index.flat.numpy(), index.size)
    return rows, cols, index.pair.numpy()


def _orbital_l(bh) -> np.ndarray:
    return np.concatenate([bh.basis[z].orbital_l() for z in bh.numbers])


def _onsite_pairs(bh) -> np.ndarray:
    return (bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)


@pytest.fixture(scope='module')
def gapped():
    """Si (s+p) with no s–p coupling in H and S: s bands near EPS_S, p bands near EPS_P, 4 electrons.

    P (occupied + 0.5 eV) is then exactly the s subspace and Q the p subspace.
    """
    bh = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), SP, cutoff=4.0, seed=3)
    rows, cols, pair = _element_orbitals(bh)
    l = _orbital_l(bh)
    same = l[rows] == l[cols]
    diagonal = (rows == cols) & _onsite_pairs(bh)[pair]
    levels = np.where(diagonal, np.where(l[rows] == 0, EPS_S, EPS_P), 0.0)
    return bh.replace(
        hamiltonian=0.3 * bh.hamiltonian * same + levels, overlap=bh.overlap * same, n_electrons=4.0
    )


@pytest.fixture(scope='module')
def gapped_targets(gapped):
    return ReciprocalTargets.from_hamiltonian(gapped, n_kpoints=6, seed=2, window_above_fermi=0.5)


def _hermitian_noise(bh, seed: int, select: np.ndarray | None = None) -> np.ndarray:
    """Random flat perturbation with M_ji(-R) = M_ij(R)^T, optionally restricted to elements ``select``."""
    other = random_block_hamiltonian(
        bulk('Si', 'diamond', a=5.43), bh.basis, cutoff=4.0, seed=seed
    )  # same pairs, hermitian H
    assert np.array_equal(other.pairs, bh.pairs)
    noise = 0.05 * other.hamiltonian
    return noise if select is None else noise * select


# ------------------------------------------------------------------------------------ Bloch sum
@pytest.mark.parametrize('spin', ['none', 'spinor'])
def test_torch_bloch_sum_matches_numpy(spin):
    bh = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), SP, cutoff=4.0, seed=5, spin=spin)
    kpoints = _random_kpoints(5)
    for name in ('H', 'S'):
        index = BlochIndex.from_hamiltonian(bh, name)
        ours = bloch_sum(torch.as_tensor(bh.matrix(name)), index, torch.as_tensor(kpoints)).numpy()
        expected = bloch_matrices(bh, name, kpoints)
        if name == 'S' and spin == 'spinor':  # numpy expands S to S ⊗ 1₂; the torch index stays spinless
            expected = expected[:, : bh.n_orbitals, : bh.n_orbitals]
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    single = bloch_sum(
        torch.as_tensor(bh.overlap, dtype=torch.float32), BlochIndex.from_hamiltonian(bh), kpoints
    )
    assert single.dtype == torch.complex64


def test_torch_bloch_sum_real_pyscf_file():
    bh = read_hdf5(PYSCF_FILE)
    kpoints = _random_kpoints(3, seed=4)
    ours = bloch_sum(_t(bh.hamiltonian), BlochIndex.from_hamiltonian(bh, 'H'), kpoints).numpy()
    np.testing.assert_allclose(ours, bloch_matrices(bh, 'H', kpoints), rtol=0, atol=1e-12)


def test_torch_bloch_sum_gradcheck():
    basis = Basis.from_shells({'Si': [0]})
    bh = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), basis, cutoff=2.5, seed=1)
    index = BlochIndex.from_hamiltonian(bh, 'H')
    values = _t(bh.hamiltonian).requires_grad_()
    kpoints = torch.as_tensor(_random_kpoints(2))
    assert torch.autograd.gradcheck(lambda v: bloch_sum(v, index, kpoints), (values,))


# ------------------------------------------------------------------------------------- targets
def test_targets_are_s_orthonormal_eigenvectors(gapped, gapped_targets):
    t = gapped_targets
    np.testing.assert_array_equal(t.kpoints[0], 0.0)
    assert t.n_kpoints == 6 and t.n_bands == gapped.n_orbitals
    h = bloch_matrices(gapped, 'H', t.kpoints)
    s = bloch_matrices(gapped, 'S', t.kpoints)
    c = t.eigenvectors
    eye = np.broadcast_to(np.eye(t.n_bands), s.shape)
    np.testing.assert_allclose(c.conj().transpose(0, 2, 1) @ s @ c, eye, atol=1e-10)
    a = c.conj().transpose(0, 2, 1) @ h @ c
    np.testing.assert_allclose(a, np.stack([np.diag(e) for e in t.energies]), atol=1e-10)
    # E_F mid-gap from the electron count: P is exactly the two s bands at every k
    assert EPS_S < t.fermi_level < EPS_P
    np.testing.assert_array_equal(t.p_mask.sum(axis=1), 2)
    np.testing.assert_array_equal(t.subspace(100.0), True)


@pytest.mark.parametrize('suffix', ['.h5', '.npz'])
def test_targets_save_load_round_trip(gapped_targets, tmp_path, suffix):
    path = gapped_targets.save(tmp_path / f'targets{suffix}')
    loaded = ReciprocalTargets.load(path)
    for name in ('kpoints', 'energies', 'eigenvectors', 'p_mask'):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gapped_targets, name))
        assert getattr(loaded, name).dtype == getattr(gapped_targets, name).dtype
    assert (loaded.fermi_level, loaded.window_above_fermi, loaded.seed) == (
        gapped_targets.fermi_level,
        gapped_targets.window_above_fermi,
        gapped_targets.seed,
    )


def test_cached_targets_computed_once(gapped, tmp_path, monkeypatch):
    dataset = write_hdf5(gapped, tmp_path / 'si.h5')
    settings = {'n_kpoints': 3, 'seed': 5, 'window_above_fermi': 0.5}
    first = cached_targets(dataset, **settings)
    path = targets_cache_path(dataset, **settings)
    assert path.is_file() and path.parent == tmp_path  # next to the dataset
    stamp = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError('targets recomputed although cached')

    monkeypatch.setattr(ReciprocalTargets, 'from_hamiltonian', fail)
    second = cached_targets(dataset, **settings)
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.eigenvectors, first.eigenvectors)
    # other settings, another cache directory, or other file content: another key
    assert targets_cache_path(dataset, **{**settings, 'seed': 6}) != path
    assert targets_cache_path(dataset, tmp_path / 'cache', **settings).parent == tmp_path / 'cache'
    write_hdf5(gapped.replace(hamiltonian=gapped.hamiltonian * 1.01), dataset)
    assert targets_cache_path(dataset, **settings) != path
    with pytest.raises(TypeError, match='unknown target settings'):
        targets_cache_path(dataset, n_kpoint=3)


# ---------------------------------------------------------------------------------------- losses
def _loss_terms(bh, h_pred, targets, **config):
    loss = HamiltonianLoss(LossConfig(**config))
    data = ReciprocalTensors.from_targets(targets, bh)
    return loss(h_pred, _t(bh.hamiltonian), _t(bh.overlap), reciprocal=data)


@pytest.mark.parametrize('gauge', [True, False])
def test_true_hamiltonian_gives_zero_loss(gapped, gapped_targets, gauge):
    total, terms = _loss_terms(gapped, _t(gapped.hamiltonian), gapped_targets, gauge=gauge)
    assert set(terms) >= {'real_l1', 'real_mse', 'recip_pp', 'recip_qq', 'recip_pq', 'total'}
    for name, value in terms.items():
        assert abs(value) <= 1e-9, (name, value)


def test_real_pyscf_labels_true_zero_h0_positive():
    bh = read_hdf5(PYSCF_FILE)
    # Γ only: this tiny fixture truncates S at 4 Å, so S(k) is not positive definite at some k
    targets = ReciprocalTargets.from_hamiltonian(bh, n_kpoints=1)
    _, zero = _loss_terms(bh, _t(bh.hamiltonian), targets)
    assert max(abs(v) for k, v in zero.items() if k != 'real_shift') <= 1e-9
    _, shifted = _loss_terms(bh, _t(bh.hamiltonian + MU * bh.overlap), targets)
    assert max(shifted[k] for k in ('real_l1', 'real_mse', 'recip_pp', 'recip_qq', 'recip_pq')) <= 1e-9
    _, h0 = _loss_terms(bh, _t(bh.h0), targets)
    assert h0['real_l1'] > 1.0 and h0['recip_pp'] > 1.0


def test_gauge_shift_is_free_only_with_gauge(gapped, gapped_targets):
    shifted = _t(gapped.hamiltonian + MU * gapped.overlap)
    _, aware = _loss_terms(gapped, shifted, gapped_targets, gauge=True)
    for name in ('real_l1', 'real_mse', 'recip_pp', 'recip_qq', 'recip_pq', 'total'):
        assert abs(aware[name]) <= 1e-9, (name, aware[name])
    assert aware['real_shift'] == pytest.approx(MU, abs=1e-12)
    assert aware['recip_shift'] == pytest.approx(MU, abs=1e-12)

    _, plain = _loss_terms(gapped, shifted, gapped_targets, gauge=False, normalize_columns=False)
    # known values: real space |μ S| averaged; in k space D = μ·1 (C is S-orthonormal)
    assert plain['real_l1'] == pytest.approx(1000 * MU * np.abs(gapped.overlap).mean(), rel=1e-12)
    assert plain['real_mse'] == pytest.approx(1e6 * MU**2 * np.square(gapped.overlap).mean(), rel=1e-12)
    p = gapped_targets.p_mask.sum(axis=1)
    q = gapped_targets.n_bands - p
    assert plain['recip_pp'] == pytest.approx(1e6 * MU**2 * p.sum() / np.square(p).sum(), rel=1e-10)
    assert plain['recip_qq'] == pytest.approx(1e6 * MU**2 * q.sum() / np.square(q).sum(), rel=1e-10)
    assert plain['recip_pq'] <= 1e-9


def test_perturbed_prediction_has_positive_loss_and_gradients(gapped, gapped_targets):
    h_pred = _t(gapped.hamiltonian + _hermitian_noise(gapped, seed=11)).requires_grad_()
    total, terms = _loss_terms(gapped, h_pred, gapped_targets)
    for name in ('real_l1', 'real_mse', 'recip_pp', 'recip_qq', 'recip_pq'):
        assert terms[name] > 1e-3, (name, terms[name])
    total.backward()
    grad = h_pred.grad
    assert torch.isfinite(grad).all() and (grad != 0).sum() > 0.9 * grad.numel()
    # μ* stays in the graph: no gradient along the gauge direction S
    overlap = _t(gapped.overlap)
    assert abs(float(grad @ overlap)) <= 1e-10 * float(grad.norm() * overlap.norm())


def test_pq_term_measures_p_q_coupling(gapped, gapped_targets):
    data = ReciprocalTensors.from_targets(gapped_targets, gapped)
    rows, cols, _ = _element_orbitals(gapped)
    l = _orbital_l(gapped)
    within_s = (l[rows] == 0) & (l[cols] == 0)
    s_p = (l[rows] == 0) != (l[cols] == 0)
    inside_s = _t(gapped.hamiltonian + _hermitian_noise(gapped, 12, within_s))
    inside = reciprocal_terms(inside_s, data, gauge=False)
    assert inside['pp'] > 1.0 and inside['pq'] <= 1e-9 and inside['qq'] <= 1e-9
    assert reciprocal_terms(inside_s, data)['pq'] <= 1e-9  # μ* moves diagonals only
    coupling = reciprocal_terms(_t(gapped.hamiltonian + _hermitian_noise(gapped, 12, s_p)), data)
    assert coupling['pq'] > 1.0
    # a wider window puts the p bands into P: the same coupling is then inside P
    wide = reciprocal_terms(
        _t(gapped.hamiltonian + _hermitian_noise(gapped, 12, s_p)), data, window_above_fermi=100.0
    )
    assert wide['pq'] == 0.0 and wide['pp'] > 1.0


def test_reciprocal_without_q_block(gapped, gapped_targets):
    """q_weight = 0 forms only the P columns: same PP and PQ terms, no QQ, still gauge-free."""
    data = ReciprocalTensors.from_targets(gapped_targets, gapped)
    pred = _t(gapped.hamiltonian + _hermitian_noise(gapped, seed=13))
    full = reciprocal_terms(pred, data, gauge=False)
    short = reciprocal_terms(pred, data, q_weight=0.0, gauge=False)
    assert 'qq' not in short and full['qq'] > 1.0
    for name in ('pp', 'pq'):
        assert float(short[name]) == pytest.approx(float(full[name]), rel=1e-12)
    shifted = _t(gapped.hamiltonian + MU * gapped.overlap)
    _, terms = HamiltonianLoss(LossConfig(q_weight=0.0))(
        shifted, _t(gapped.hamiltonian), _t(gapped.overlap), reciprocal=data
    )
    assert 'recip_qq' not in terms and terms['total'] <= 1e-9 and terms['recip_shift'] == pytest.approx(MU)


def test_real_space_mask_and_known_l1(gapped):
    far = gapped.distances() > 3.0
    mask = element_mask(gapped, far)
    assert mask.shape == gapped.hamiltonian.shape
    delta = np.where(mask, 0.0, 0.02)  # perturb only the near blocks
    pred, true, overlap = _t(gapped.hamiltonian + delta), _t(gapped.hamiltonian), _t(gapped.overlap)
    masked = real_space_terms(pred, true, overlap, mask=torch.as_tensor(mask), gauge=False)
    assert float(masked['l1']) == 0.0 and float(masked['mse']) == 0.0
    full = real_space_terms(pred, true, overlap, gauge=False)
    assert float(full['l1']) == pytest.approx(20.0 * (~mask).mean(), rel=1e-12)
    assert float(full['mse']) == pytest.approx(400.0 * (~mask).mean(), rel=1e-12)


def test_loss_config_validation_and_missing_targets(gapped):
    with pytest.raises(ValueError, match='real_kind'):
        LossConfig(real_kind='l3')
    with pytest.raises(ValueError, match='reciprocal targets'):
        HamiltonianLoss()(_t(gapped.hamiltonian), _t(gapped.hamiltonian), _t(gapped.overlap))
    _, terms = HamiltonianLoss(LossConfig(real_kind='l1', reciprocal_weight=0))(
        _t(gapped.hamiltonian), _t(gapped.hamiltonian), _t(gapped.overlap)
    )
    assert set(terms) == {'real_l1', 'real_shift', 'total'}


# ------------------------------------------------------------------------------------------ spin
def test_spinor_layout_expand_reduce_and_loss():
    spinor = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), SP, cutoff=4.0, seed=8, spin='spinor')
    layout = SpinorLayout.from_hamiltonian(spinor)
    assert layout.n_spinor == spinor.hamiltonian.size
    correction = np.random.default_rng(0).normal(size=spinor.overlap.size)
    expanded = layout.expand(correction, dtype=np.complex128)
    np.testing.assert_array_equal(layout.reduce(expanded), correction)
    # blocks: (2, 2, ni, nj) with the correction on ↑↑ and ↓↓ only
    corrected = spinor.replace(hamiltonian=spinor.hamiltonian + expanded)
    spinless = spinor.replace(spin='none', hamiltonian=correction)
    for pair in (0, spinor.n_pairs // 2, spinor.n_pairs - 1):
        difference = corrected.block('H', pair) - spinor.block('H', pair)
        np.testing.assert_allclose(difference[0, 0], spinless.block('H', pair), rtol=0, atol=1e-14)
        np.testing.assert_allclose(difference[1, 1], spinless.block('H', pair), rtol=0, atol=1e-14)
        np.testing.assert_array_equal(difference[[0, 1], [1, 0]], 0.0)
    # torch: differentiable and equal to numpy; reduce of a spinor target is the spin average
    as_torch = layout.expand(_t(correction).requires_grad_(), dtype=torch.complex128)
    np.testing.assert_array_equal(as_torch.detach().numpy(), expanded)
    as_torch.real.sum().backward()
    h = torch.as_tensor(spinor.hamiltonian)
    average = 0.5 * (spinor.hamiltonian[layout.up] + spinor.hamiltonian[layout.down]).real
    np.testing.assert_array_equal(layout.reduce(h).numpy(), average)

    # the spinor-layout loss: gauge-aware zero for H + μ (S ⊗ 1), reciprocal terms in the spinor basis
    spinor = spinor.replace(fermi_level=0.0)
    targets = ReciprocalTargets.from_hamiltonian(spinor, n_kpoints=3, window_above_fermi=0.5)
    data = ReciprocalTensors.from_targets(targets, spinor)
    overlap = torch.as_tensor(layout.expand(spinor.overlap, dtype=np.complex128))
    pred = torch.as_tensor(spinor.hamiltonian) + MU * overlap
    _, terms = HamiltonianLoss()(pred, h, overlap, reciprocal=data)
    for name in ('real_l1', 'real_mse', 'recip_pp', 'recip_qq', 'recip_pq'):
        assert abs(terms[name]) <= 1e-9, (name, terms[name])
    shifted = spinor.replace(hamiltonian=pred.numpy())
    assert hamiltonian_mae(shifted, spinor)['mae'] <= 1e-9
    assert hamiltonian_mae(shifted, spinor)['shift'] == pytest.approx(MU, abs=1e-12)
    _, off = HamiltonianLoss(LossConfig(gauge=False, normalize_columns=False))(
        pred, h, overlap, reciprocal=data
    )
    assert off['recip_pp'] == pytest.approx(
        1e6 * MU**2 * targets.p_mask.sum() / np.square(targets.p_mask.sum(1)).sum()
    )


# --------------------------------------------------------------------------------------- metrics
def test_hamiltonian_mae_known_values():
    basis = Basis.from_shells({'Ga': [0, 1], 'As': [0, 1]})
    bh = random_block_hamiltonian(bulk('GaAs', 'zincblende', a=5.65), basis, cutoff=4.5, seed=2)
    rows, cols, pair = _element_orbitals(bh)
    diagonal = (rows == cols) & _onsite_pairs(bh)[pair]
    result = hamiltonian_mae(
        bh.replace(hamiltonian=bh.hamiltonian + 0.01 * diagonal), bh, optimal_shift=False
    )
    onsite = _onsite_pairs(bh)[pair]
    assert result['mae'] == pytest.approx(10.0 * diagonal.sum() / diagonal.size, rel=1e-12)
    assert result['onsite'] == pytest.approx(10.0 * diagonal.sum() / onsite.sum(), rel=1e-12)
    assert result['offsite'] == 0.0 and result['shift'] == 0.0
    assert set(result['by_pair']) == {'Ga-Ga', 'Ga-As', 'As-As'}
    assert result['by_pair']['Ga-As'] == 0.0 and result['by_pair']['Ga-Ga'] > 0
    # a Ga–As perturbation shows up under Ga-As only
    zi, zj = bh.numbers[bh.pairs[pair, 3]], bh.numbers[bh.pairs[pair, 4]]
    hetero = zi != zj
    result = hamiltonian_mae(bh.replace(hamiltonian=bh.hamiltonian + 0.02 * hetero), bh, optimal_shift=False)
    assert result['by_pair']['Ga-As'] == pytest.approx(20.0, rel=1e-12)
    assert result['by_pair']['Ga-Ga'] == 0.0 == result['by_pair']['As-As']
    # a pure μS error vanishes after the optimal shift, and μ is reported
    shifted = bh.replace(hamiltonian=bh.hamiltonian + MU * bh.overlap)
    result = hamiltonian_mae(shifted, bh)
    assert result['mae'] <= 1e-9 and result['shift'] == pytest.approx(MU, abs=1e-12)
    plain = hamiltonian_mae(shifted, bh, optimal_shift=False)
    assert plain['mae'] == pytest.approx(1000 * MU * np.abs(bh.overlap).mean(), rel=1e-12)
    # fewer predicted pairs: compared on the predicted ones
    near = shifted.select_pairs(shifted.distances() < 3.0)
    assert hamiltonian_mae(near, bh, optimal_shift=False)['n_elements'] == near.hamiltonian.size


def test_band_energy_error_alignment(gapped):
    kpoints = _random_kpoints(4, seed=9)
    shifted = gapped.replace(hamiltonian=gapped.hamiltonian + MU * gapped.overlap)
    window = (-10.0, 10.0)
    aligned = band_energy_error(shifted, gapped, kpoints, window)
    assert aligned['mae'] <= 1e-8 and aligned['n_values'] == 4 * gapped.n_orbitals
    assert aligned['shift'] == pytest.approx(MU)
    assert band_energy_error(shifted, gapped, kpoints, window, align='fermi')['max'] <= 1e-8
    raw = band_energy_error(shifted, gapped, kpoints, window, align='none')
    assert raw['mae'] == pytest.approx(1000 * MU, rel=1e-9) and raw['max'] == pytest.approx(
        1000 * MU, rel=1e-9
    )
    # the window selects bands relative to E_F: only the s bands lie within 10 eV below it
    below = band_energy_error(shifted, gapped, kpoints, (-10.0, 0.0), align='none')
    assert below['n_values'] == 4 * 2


def test_ghost_bands_on_arrays():
    true = np.array([[-1.0, 0.0, 2.0], [-1.1, 0.1, 2.1]])
    # k=0: the band at 0.0 is misplaced to 0.5 (a band error, no extra state); k=1: 1.0 is an extra state
    pred = np.array([[-1.01, 0.5, 2.0, 3.0], [-1.1, 0.1, 1.0, 2.1]])
    result = ghost_bands(pred, true, window=(-2.0, 1.5), tolerance=0.05)
    assert result['count'] == 1 and result['n_kpoints_affected'] == 1
    assert result['where'] == [(1, 2, 1.0)]
    assert ghost_bands(pred, true, window=(-2.0, 0.8), tolerance=0.05)['count'] == 0
    # a state pushed out of the window by a shift larger than the tolerance is not counted either
    assert ghost_bands(true + 0.3, true, window=(-5.0, 5.0), tolerance=0.1)['count'] == 0
    assert ghost_bands(true, true, window=(-5.0, 5.0), tolerance=1e-6)['count'] == 0
    # two extra states at one k, both reported
    extra = np.array([[-1.0, -0.5, 0.0, 0.7, 2.0]])
    assert ghost_bands(extra, true[:1], window=(-2.0, 1.5))['where'] == [(0, 1, -0.5), (0, 3, 0.7)]


def test_ghost_state_in_gap_is_flagged(gapped):
    kpoints = _random_kpoints(5, seed=3)
    rows, cols, pair = _element_orbitals(gapped)
    l = _orbital_l(gapped)
    # move atom 0's s level from EPS_S to mid-gap: one spurious band in the gap at every k
    s_level = (rows == cols) & (rows == 0) & _onsite_pairs(gapped)[pair] & (l[rows] == 0)
    assert s_level.sum() == 1
    ghost = gapped.replace(hamiltonian=gapped.hamiltonian - EPS_S * s_level)
    flagged = count_ghost_bands(ghost, gapped, kpoints, window=(-2.0, 2.0), tolerance=0.1)
    assert flagged['count'] >= len(kpoints) and flagged['n_kpoints_affected'] == len(kpoints)
    assert all(abs(energy - flagged['fermi_level']) < 2.0 for _, _, energy in flagged['where'])
    assert count_ghost_bands(gapped, gapped, kpoints, window=(-2.0, 2.0))['count'] == 0
    # neither a gauge shift nor a small error is a ghost
    shifted = gapped.replace(
        hamiltonian=gapped.hamiltonian + MU * gapped.overlap + _hermitian_noise(gapped, 4) / 50
    )
    assert count_ghost_bands(shifted, gapped, kpoints, window=(-20.0, 20.0), tolerance=0.1)['count'] == 0
    # unaligned, the shift is a band error, not a ghost
    assert count_ghost_bands(shifted, gapped, kpoints, window=(-20.0, 20.0), align='none')['count'] == 0
    assert band_energy_error(shifted, gapped, kpoints, (-20.0, 20.0), align='none')['mae'] > 500 * MU


def test_reciprocal_float32(gapped, gapped_targets):
    data = ReciprocalTensors.from_targets(gapped_targets, gapped, dtype=torch.float32)
    pred = torch.as_tensor(gapped.hamiltonian + MU * gapped.overlap, dtype=torch.float32)
    terms = reciprocal_terms(pred, data)
    assert terms['pp'].dtype == torch.float32
    assert float(terms['pp']) < 1e-2 and float(terms['shift']) == pytest.approx(MU, abs=1e-5)
    # sanity of the float64 reference eigenvectors used above
    h = bloch_matrices(gapped, 'H', gapped_targets.kpoints[:1])[0]
    s = bloch_matrices(gapped, 'S', gapped_targets.kpoints[:1])[0]
    np.testing.assert_allclose(
        scipy.linalg.eigh(h, s, eigvals_only=True), gapped_targets.energies[0], atol=1e-10
    )


def _mapped(bh, name, t):
    """Flat blocks T B T^T of every pair (one map T for every atom)."""
    offsets = bh.block_offsets(name)
    blocks = [t @ bh.block(name, k) @ t.T for k in range(bh.n_pairs)]
    assert len(blocks) == len(offsets) - 1
    return np.concatenate([b.ravel() for b in blocks])


def _onsite_identity(bh):
    """Flat blocks with the identity on every on-site block and zero elsewhere."""
    onsite = (bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)
    return np.concatenate([np.eye(*bh.block_shape('S', k)).ravel() * onsite[k] for k in range(bh.n_pairs)])


@pytest.mark.filterwarnings('ignore::aiida_nextham.hamiltonian.bloch.OverlapWarning')
def test_normalised_band_terms_are_bounded_by_the_error_in_a_near_dependent_basis():
    """Two almost identical s orbitals per atom: S(k) nearly singular, C has huge coefficients. The raw
    band terms blow a small real-space error up by ~1/s_min; the normalised ones stay below ||δH||²."""
    atoms = bulk('Si', 'diamond', a=5.43)
    bh = random_block_hamiltonian(atoms, Basis.from_shells({'Si': [0, 1]}), cutoff=4.0, seed=3)
    bh = bh.replace(n_electrons=8.0)
    # the s orbital twice (plus 1e-6 on the diagonal of S): a nearly linearly dependent basis
    twin = Basis.from_shells({'Si': [0, 0, 1]})
    expand = np.zeros((5, 4))
    expand[0, 0] = expand[1, 0] = 1.0
    expand[2:, 1:] = np.eye(3)
    doubled = bh.replace(basis=twin, hamiltonian=_mapped(bh, 'H', expand), overlap=_mapped(bh, 'S', expand))
    doubled = doubled.replace(overlap=doubled.overlap + 1e-6 * _onsite_identity(doubled))
    targets = ReciprocalTargets.from_hamiltonian(doubled, n_kpoints=3, window_above_fermi=1.0)
    data = ReciprocalTensors.from_targets(targets, doubled)
    assert float(np.abs(targets.eigenvectors).max()) > 30  # the ill-conditioning this is about
    noise = _hermitian_noise(doubled, seed=4) * 1e-3  # ~1 meV per element
    pred = _t(doubled.hamiltonian + noise)
    raw = reciprocal_terms(pred, data)
    normalised = reciprocal_terms(pred, data, normalize_columns=True)
    bound = 1e6 * float(np.linalg.norm(noise)) ** 2  # meV², a (loose) bound on every |δH|_2²
    assert max(raw['pp'], raw['pq']) > 10 * max(normalised['pp'], normalised['pq'])
    assert max(float(normalised[k]) for k in ('pp', 'qq', 'pq')) < bound
    # and the normalised terms stay exactly gauge-free and zero for the truth
    shifted = reciprocal_terms(_t(doubled.hamiltonian + MU * doubled.overlap), data, normalize_columns=True)
    assert max(float(shifted[k]) for k in ('pp', 'qq', 'pq')) <= 1e-9
    assert float(shifted['shift']) == pytest.approx(MU, abs=1e-9)
