"""Training the ΔH model on real PySCF labels: gradients reach every parameter, the loss goes down."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aiida_nextham.ml.config import ModelConfig
from aiida_nextham.ml.dataset import HamiltonianDataset
from aiida_nextham.ml.loss import LossConfig
from aiida_nextham.ml.metrics import hamiltonian_mae
from aiida_nextham.ml.model import NexthamModel
from aiida_nextham.ml.predictor import SCALE_FLOOR, fit_scales, predict_hamiltonian
from aiida_nextham.ml.training import TrainConfig, Trainer, cosine_schedule

LABELS = sorted((Path(__file__).parent / 'data' / 'ml').glob('si2_rattled_*.h5'))
CUTOFF = 5.0


@pytest.fixture(scope='module')
def samples():
    assert len(LABELS) == 3, 'run tests/data/ml/generate.py'
    dataset = HamiltonianDataset(LABELS, cutoff=CUTOFF)
    return [dataset[i] for i in range(len(dataset))]


def _model(samples, seed=0, **overrides) -> NexthamModel:
    torch.manual_seed(seed)
    model = NexthamModel(ModelConfig(shells={14: (0, 1)}, cutoff=CUTOFF, **overrides))
    fit_scales(model, samples)
    return model


def test_fitted_scales_are_positive_and_floored(samples):
    model = _model(samples)
    for name in ('node_h0_scale', 'edge_h0_scale', 'node_out_scale', 'edge_out_scale'):
        scale = getattr(model, name)
        assert (scale >= SCALE_FLOOR).all()
    # on-site H0 of Si is eV-scale, the on-site correction meV- to 0.1 eV-scale
    assert model.node_h0_scale.max() > 1.0
    assert 1e-3 < model.node_out_scale.max() < 0.5


def test_gradients_reach_every_parameter(samples):
    model = _model(samples)
    config = TrainConfig(steps=1, batch_size=2, n_kpoints=2, dtype='float64')
    trainer = Trainer(model, samples[:2], config)
    loss, terms = trainer.batch_loss([0, 1])
    assert {'real_l1', 'real_mse', 'recip_pp', 'recip_pq', 'trace'} <= set(terms)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().max() == 0]
    assert not zero


def test_training_lowers_the_error_and_beats_h0(samples):
    model = _model(samples, seed=1)
    config = TrainConfig(
        steps=40, batch_size=1, lr=5e-3, warmup_steps=5, loss=LossConfig(reciprocal_weight=0)
    )
    trainer = Trainer(model, samples[:1], config)
    history = trainer.fit(progress=False)
    first = np.mean([h['real_l1'] for h in history[:3]])
    last = np.mean([h['real_l1'] for h in history[-3:]])
    assert last < 0.6 * first
    bh = samples[0].hamiltonian
    inside = bh.distances() <= CUTOFF
    true = bh.select_pairs(inside)
    predicted = predict_hamiltonian(model, bh).select_pairs(inside)
    assert (
        hamiltonian_mae(predicted, true)['mae']
        < hamiltonian_mae(true.replace(hamiltonian=true.h0), true)['mae']
    )


def test_schedule_and_config_validation():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine_schedule(0, config) == pytest.approx(0.1)
    assert cosine_schedule(9, config) == pytest.approx(1.0)
    assert cosine_schedule(10, config) == pytest.approx(1.0)
    assert cosine_schedule(100, config) == pytest.approx(0.1)
    with pytest.raises(ValueError, match='dtype'):
        TrainConfig(dtype='float16')
    with pytest.raises(ValueError, match='positive'):
        TrainConfig(steps=0)
