"""The NextHAM model: E(3) equivariance, permutation and periodic-image invariance, hermiticity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial.transform import Rotation

from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.bloch import bloch_matrices
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian
from aiida_nextham.ml.config import ModelConfig
from aiida_nextham.ml.graph import build_graph, collate
from aiida_nextham.ml.model import NexthamModel
from aiida_nextham.ml.predictor import predict_batch, predict_hamiltonian
from aiida_nextham.ml.serialization import ModelFileError, load_model, read_model_metadata, save_model

SHELLS = {'Si': [0, 0, 1, 1, 2], 'C': [0, 1]}


@pytest.fixture(scope='module')
def sic():
    """Rattled zincblende SiC, Si with s, s, p, p, d shells and C with s, p; H0 = H plus a perturbation."""
    atoms = bulk('SiC', 'zincblende', a=4.36) * (1, 1, 2)
    atoms.rattle(0.1, seed=4)
    bh = random_block_hamiltonian(atoms, Basis.from_shells(SHELLS), cutoff=4.0, seed=2)
    return bh.replace(h0=0.8 * bh.hamiltonian)


def _model(seed: int = 0, **overrides) -> NexthamModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        shells={14: tuple(SHELLS['Si']), 6: tuple(SHELLS['C'])}, **{'cutoff': 4.0, **overrides}
    )
    model = NexthamModel(config)
    # non-trivial scales, so that the scaling code paths are exercised too
    for name in ('node_h0_scale', 'edge_h0_scale', 'node_out_scale', 'edge_out_scale'):
        getattr(model, name).uniform_(0.5, 2.0)
    return model.eval()


def _delta(model, bh, dtype) -> np.ndarray:
    model = model.to(dtype)
    batch = collate([build_graph(bh, model.config.cutoff, dtype=dtype)])
    with torch.no_grad():
        return predict_batch(model, batch)[0].delta.double().numpy()


def _inverted(bh):
    """r -> -r: blocks pick up (-1)^(l1 + l2)."""
    signs = {
        z: np.diag(
            np.repeat([(-1.0) ** l for l in bh.basis[z].shells], [2 * l + 1 for l in bh.basis[z].shells])
        )
        for z in set(bh.numbers.tolist())
    }
    out = bh.transform_orbitals(signs)
    out.positions, out.lattice = -bh.positions, -bh.lattice
    return out


@pytest.mark.parametrize(('dtype', 'tolerance'), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_rotation_and_inversion_equivariance(sic, dtype, tolerance):
    model = _model()
    delta = sic.replace(hamiltonian=_delta(model, sic, dtype))
    scale = np.abs(delta.hamiltonian).max()
    assert scale > 1e-2  # a non-trivial prediction
    for seed in range(2):
        rotation = Rotation.random(random_state=seed).as_matrix()
        expected = delta.rotated(rotation).hamiltonian
        got = _delta(model, sic.rotated(rotation), dtype)
        assert np.abs(got - expected).max() < tolerance * scale
    # parity: the inverted crystal, and an improper rotation (rotation x inversion)
    expected = _inverted(delta).hamiltonian
    assert np.abs(_delta(model, _inverted(sic), dtype) - expected).max() < tolerance * scale
    rotation = Rotation.random(random_state=7).as_matrix()
    expected = _inverted(delta.rotated(rotation)).hamiltonian
    assert np.abs(_delta(model, _inverted(sic.rotated(rotation)), dtype) - expected).max() < tolerance * scale


def _permuted(bh, order):
    """Atoms relabelled: new atom k is old atom order[k]; pairs and blocks follow."""
    new_index = np.argsort(order)
    pairs = bh.pairs.copy()
    pairs[:, 3:] = new_index[bh.pairs[:, 3:]]
    return bh.replace(positions=bh.positions[order], numbers=bh.numbers[order], pairs=pairs)


def _moved_atom(bh, atom, cells):
    positions = bh.positions.copy()
    positions[atom] += cells @ bh.lattice
    pairs = bh.pairs.copy()
    pairs[pairs[:, 4] == atom, :3] -= cells
    pairs[pairs[:, 3] == atom, :3] += cells
    return bh.replace(positions=positions, pairs=pairs)


def test_permutation_translation_and_periodic_images(sic):
    model = _model(1)
    reference = _delta(model, sic, torch.float64)
    # the blocks keep their place in the flat array when only the labels change
    permuted = _permuted(sic, np.random.default_rng(0).permutation(sic.n_atoms))
    np.testing.assert_allclose(_delta(model, permuted, torch.float64), reference, atol=1e-12)
    shifted = sic.replace(positions=sic.positions + np.array([0.3, -1.7, 2.9]))
    np.testing.assert_allclose(_delta(model, shifted, torch.float64), reference, atol=1e-12)
    moved = _moved_atom(sic, 2, np.array([1, -2, 1]))
    np.testing.assert_allclose(_delta(model, moved, torch.float64), reference, atol=1e-12)


def test_predicted_hamiltonian_is_hermitian_and_shifts_far_blocks_with_the_near_ones(sic):
    model = _model(2, cutoff=3.0).double()
    predicted = predict_hamiltonian(model, sic, dtype=torch.float64)
    assert predicted.hermiticity_error() < 1e-14
    kpoints = np.random.default_rng(1).random((4, 3))
    hk = bloch_matrices(predicted, 'H', kpoints)
    assert np.abs(hk - np.conj(np.swapaxes(hk, 1, 2))).max() < 1e-12
    far = np.repeat(sic.distances() > 3.0, np.diff(sic.block_offsets('H')))
    assert far.any() and (sic.overlap[far] != 0).any()
    delta, overlap = predicted.hamiltonian - sic.h0, sic.overlap
    shift = (overlap[~far] * delta[~far]).sum() / (overlap[~far] ** 2).sum()
    assert abs(shift) > 1e-4
    np.testing.assert_allclose(delta[far], shift * overlap[far], rtol=0, atol=1e-13)
    assert np.abs(delta[~far]).max() > 1e-3
    model.config.far_field_shift = False
    np.testing.assert_array_equal(
        predict_hamiltonian(model, sic, dtype=torch.float64).hamiltonian[far], sic.h0[far]
    )


def test_structure_only_mode_needs_no_h0_and_rejects_uncovered_elements(sic):
    model = _model(3, use_h0=False).double()
    predicted = predict_hamiltonian(model, sic.replace(h0=None), dtype=torch.float64)
    assert predicted.hermiticity_error() < 1e-14
    only_si = NexthamModel(ModelConfig(shells={14: tuple(SHELLS['Si'])}, cutoff=4.0))
    with pytest.raises(ValueError, match='outside the coverage'):
        predict_hamiltonian(only_si, sic)
    with pytest.raises(ValueError, match='takes H0 as input'):
        predict_hamiltonian(_model(), sic.replace(h0=None))


def test_spinor_h0_gets_the_spinless_correction_on_both_spin_diagonals():
    atoms = bulk('Si', 'diamond', a=5.43)
    bh = random_block_hamiltonian(atoms, Basis.from_shells({'Si': [0, 1]}), cutoff=3.0, seed=1)
    model = NexthamModel(ModelConfig(shells={14: (0, 1)}, cutoff=3.0)).double().eval()
    spinless = predict_hamiltonian(model, bh.replace(h0=bh.hamiltonian), dtype=torch.float64)
    delta = spinless.hamiltonian - bh.hamiltonian
    soc = np.random.default_rng(0).normal(size=bh.overlap.size) * 1e-2
    spinor_h0 = _to_spinor(bh, bh.hamiltonian, soc)
    spinor = bh.replace(spin='spinor', hamiltonian=spinor_h0, h0=spinor_h0)
    predicted = predict_hamiltonian(model, spinor, dtype=torch.float64)
    expected = _to_spinor(bh, bh.hamiltonian + delta, soc)
    np.testing.assert_allclose(predicted.hamiltonian, expected, atol=1e-12)


def _to_spinor(bh, diagonal, coupling):
    """Spinor flat blocks with ``diagonal`` on ↑↑ and ↓↓ and ``coupling`` (times i) on ↑↓ = -↓↑."""
    parts = []
    offsets = bh.block_offsets('H')
    for k in range(bh.n_pairs):
        ni, nj = bh.block_shape('H', k)
        block = np.zeros((2, 2, ni, nj), dtype=np.complex128)
        block[0, 0] = block[1, 1] = diagonal[offsets[k] : offsets[k + 1]].reshape(ni, nj)
        block[0, 1] = 1j * coupling[offsets[k] : offsets[k + 1]].reshape(ni, nj)
        block[1, 0] = -block[0, 1]
        parts.append(block.ravel())
    return np.concatenate(parts)


def test_model_folder_round_trip_and_refusals(sic, tmp_path):
    model = _model(4).double()
    save_model(model, tmp_path / 'model', provenance={'seed': 4})
    loaded = load_model(tmp_path / 'model')
    np.testing.assert_array_equal(_delta(loaded, sic, torch.float64), _delta(model, sic, torch.float64))
    assert read_model_metadata(tmp_path / 'model')['provenance'] == {'seed': 4}
    # a pickled checkpoint is refused without being opened, and so is a folder of another format
    torch.save(model.state_dict(), tmp_path / 'model.pt')
    with pytest.raises(ModelFileError, match='not a model folder'):
        load_model(tmp_path)
    metadata = tmp_path / 'model' / 'model.json'
    metadata.write_text(metadata.read_text().replace('"nextham-model"', '"other"'))
    with pytest.raises(ModelFileError, match="is not 'nextham-model'"):
        load_model(tmp_path / 'model')
