"""Orbital blocks <-> irreps: identity round trips, equivariance, the pair-type layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.linalg import block_diag
from scipy.spatial.transform import Rotation

from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.conventions import wigner_d
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian
from aiida_nextham.ml.irreps import BlockLayout, OrbitalIrreps, shell_pair_matrix

ROTATION = Rotation.random(random_state=3).as_matrix()


@pytest.mark.parametrize('l1', range(4))
@pytest.mark.parametrize('l2', range(4))
def test_shell_pair_map_is_orthogonal_and_equivariant(l1, l2):
    irreps, u = shell_pair_matrix(l1, l2)
    assert [ir.l for _, ir in irreps] == list(range(abs(l1 - l2), l1 + l2 + 1))
    assert all(ir.p == (-1) ** (l1 + l2) for _, ir in irreps)
    # block -> irreps -> block is the identity (and the other way round)
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[0]), atol=1e-13)
    np.testing.assert_allclose(u @ u.T, np.eye(u.shape[0]), atol=1e-13)
    block = np.random.default_rng(l1 * 4 + l2).normal(size=(2 * l1 + 1, 2 * l2 + 1))
    features = u.T @ block.ravel()
    rotated = wigner_d(l1, ROTATION) @ block @ wigner_d(l2, ROTATION).T
    d = block_diag(*[wigner_d(ir.l, ROTATION) for _, ir in irreps])
    np.testing.assert_allclose(u.T @ rotated.ravel(), d @ features, atol=1e-12)


def test_orbital_irreps_of_two_elements():
    oi = OrbitalIrreps({14: (0, 0, 1, 1, 2), 6: (0, 1)})
    assert oi.elements == (6, 14)
    # the largest need of every (L, p) over the pair types: Si-Si (2s2p1d)^2 dominates
    assert str(oi.irreps) == '9x0e+5x1e+12x1o+9x2e+4x2o+1x3e+4x3o+1x4e'
    assert oi.channel_mask(14, 14).sum() == 13 * 13
    assert oi.channel_mask(6, 14).sum() == 4 * 13
    blocks = torch.randn(7, 4 * 13, dtype=torch.float64)
    torch.testing.assert_close(oi.to_blocks(oi.to_features(blocks, 6, 14), 6, 14), blocks)
    with pytest.raises(ValueError, match='not covered'):
        oi.matrix(6, 8)
    assert OrbitalIrreps.from_dict(oi.as_dict()).shells == oi.shells


@pytest.fixture(scope='module')
def sic():
    atoms = bulk('SiC', 'zincblende', a=4.36)
    basis = Basis.from_shells({'Si': [0, 0, 1, 1, 2], 'C': [0, 1]})
    return random_block_hamiltonian(atoms, basis, cutoff=3.5, seed=5)


def test_block_layout_round_trip_and_hermitian_symmetrisation(sic):
    oi = OrbitalIrreps.from_basis(sic.basis)
    layout = BlockLayout(oi, sic.numbers, sic.pairs)
    flat = torch.from_numpy(sic.hamiltonian)
    features = layout.to_features(flat)
    assert features.shape == (sic.n_pairs, oi.irreps.dim)
    # a hermitian Hamiltonian comes back unchanged
    torch.testing.assert_close(layout.to_flat(features), flat, atol=1e-12, rtol=0)
    # arbitrary features give exactly hermitian blocks
    noise = torch.randn_like(features)
    blocks = layout.to_flat(noise).numpy()
    assert sic.replace(hamiltonian=blocks).hermiticity_error() == 0.0
    assert sic.replace(hamiltonian=layout.to_flat(noise, hermitian=False).numpy()).hermiticity_error() > 0.1


def test_block_layout_rejects_uncovered_elements_and_half_storage(sic):
    with pytest.raises(ValueError, match='outside the coverage'):
        BlockLayout(OrbitalIrreps({14: (0, 0, 1, 1, 2)}), sic.numbers, sic.pairs)
    upper = sic.pairs[:, 3] < sic.pairs[:, 4]
    with pytest.raises(ValueError, match='complete_hermitian'):
        BlockLayout(OrbitalIrreps.from_basis(sic.basis), sic.numbers, sic.pairs[upper])
