"""Training of the ΔH model on labelled structures: per-structure loss terms and the optimisation loop.

A training structure is a :class:`~aiida_nextham.ml.dataset.Sample` (graph + block Hamiltonian with
H0, H, S). Its loss is the :class:`~aiida_nextham.ml.loss.HamiltonianLoss` of H_pred = H0 + ΔH
against H on the blocks within the model's cutoff (the others keep H0 and are not the model's to
learn), with the reciprocal-space terms at the structure's cached k-points, plus the TraceGrad
supervision: the invariant head predicts the normalised squared norm of the true ΔH block.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .graph import collate
from .loss import HamiltonianLoss, LossConfig, ReciprocalTensors, element_mask
from .model import NexthamModel
from .predictor import Prediction, predict_batch, spinless, structure_layout
from .targets import ReciprocalTargets

__all__ = ['StructureTerms', 'TrainConfig', 'Trainer', 'cosine_schedule']


@dataclass
class TrainConfig:
    """Optimisation settings (defaults train the small model on a laptop CPU).

    :param steps: optimiser steps.
    :param batch_size: structures per step.
    :param lr: peak learning rate (AdamW).
    :param warmup_steps: linear warm-up; then cosine decay to ``lr * min_lr_ratio``.
    :param grad_clip: maximum global gradient norm (0: no clipping).
    :param trace_weight: weight of the TraceGrad invariant supervision.
    :param dtype: ``'float32'`` or ``'float64'``.
    :param seed: seed of the parameter initialisation and of the batch order.
    :param n_kpoints: k-points per structure of the reciprocal-space term (Γ plus random).
    :param window_above_fermi: bands up to this many eV above E_F belong to the subspace P.
    """

    steps: int = 500
    batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.02
    grad_clip: float = 100.0
    trace_weight: float = 0.1
    dtype: str = 'float32'
    seed: int = 0
    n_kpoints: int = 8
    window_above_fermi: float = 3.0
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        if self.dtype not in ('float32', 'float64'):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError('steps and batch_size must be positive')

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def cosine_schedule(step: int, config: TrainConfig) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, progress))
    )


@dataclass
class StructureTerms:
    """The tensors the loss of one structure needs, built once (flat spinless layout)."""

    h0: torch.Tensor
    h_true: torch.Tensor
    overlap: torch.Tensor
    mask: torch.Tensor
    node_trace: torch.Tensor
    edge_trace: torch.Tensor
    reciprocal: ReciprocalTensors | None

    @classmethod
    def build(cls, model: NexthamModel, sample, targets: ReciprocalTargets | None, dtype) -> StructureTerms:
        bh, graph = sample.hamiltonian, sample.graph
        if bh.overlap is None:
            raise ValueError(f'{sample.path}: training needs the overlap S')
        h_true = torch.as_tensor(spinless(bh, 'H'), dtype=dtype)
        h0 = (
            torch.as_tensor(spinless(bh, 'H0'), dtype=dtype)
            if bh.h0 is not None
            else torch.zeros_like(h_true)
        )
        within = np.zeros(bh.n_pairs, dtype=bool)
        within[graph.node_pair.numpy()] = within[graph.edge_pair.numpy()] = True
        mask = torch.as_tensor(element_mask(bh, within, 'S'))
        target = h_true - h0 if model.config.use_h0 else h_true
        features = structure_layout(model, bh).to_features(target.double())
        normalised = features.pow(2)
        node_trace = (normalised[graph.node_pair] / model._expand(model.node_out_scale).double() ** 2).mean(1)
        edge_trace = (normalised[graph.edge_pair] / model._expand(model.edge_out_scale).double() ** 2).mean(1)
        reciprocal = None
        if targets is not None:
            reciprocal = ReciprocalTensors.from_targets(targets, bh, dtype=dtype)
        return cls(
            h0=h0,
            h_true=h_true,
            overlap=torch.as_tensor(bh.overlap, dtype=dtype),
            mask=mask,
            node_trace=node_trace.to(dtype),
            edge_trace=edge_trace.to(dtype),
            reciprocal=reciprocal,
        )


class Trainer:
    """Trains a :class:`NexthamModel` on in-memory samples.

    :param model: the model (its scales should already be fitted, see ``predictor.fit_scales``).
    :param samples: training structures (:class:`~aiida_nextham.ml.dataset.Sample`).
    :param config: optimisation settings.
    :param targets: reciprocal-space targets per sample (same order); required when the loss has a
        reciprocal term, built with :meth:`ReciprocalTargets.from_hamiltonian` when not given.
    """

    def __init__(self, model: NexthamModel, samples, config: TrainConfig | None = None, targets=None):
        self.config = config or TrainConfig()
        self.model = model.to(self.config.torch_dtype)
        self.samples = list(samples)
        if not self.samples:
            raise ValueError('no training samples')
        self.loss = HamiltonianLoss(self.config.loss)
        if targets is None and self.config.loss.reciprocal_weight > 0:
            targets = [
                ReciprocalTargets.from_hamiltonian(
                    s.hamiltonian,
                    n_kpoints=self.config.n_kpoints,
                    seed=self.config.seed + k,
                    window_above_fermi=self.config.window_above_fermi,
                )
                for k, s in enumerate(self.samples)
            ]
        self.targets = targets or [None] * len(self.samples)
        self.terms = [
            StructureTerms.build(self.model, s, t, self.config.torch_dtype)
            for s, t in zip(self.samples, self.targets, strict=True)
        ]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_schedule(step, self.config)
        )
        self.generator = np.random.default_rng(self.config.seed)
        self.step = 0
        self.history: list[dict] = []

    def batch_loss(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of the structures ``indices`` and the mean of their logged terms."""
        batch = collate([self.samples[i].graph for i in indices]).to(dtype=self.config.torch_dtype)
        predictions = predict_batch(self.model, batch)
        total = 0.0
        logged: dict[str, float] = {}
        for index, prediction in zip(indices, predictions, strict=True):
            loss, terms = self.structure_loss(prediction, self.terms[index])
            total = total + loss / len(indices)
            for key, value in terms.items():
                logged[key] = logged.get(key, 0.0) + value / len(indices)
        return total, logged

    def structure_loss(self, prediction: Prediction, terms: StructureTerms) -> tuple[torch.Tensor, dict]:
        h_pred = terms.h0 + prediction.delta if self.model.config.use_h0 else prediction.delta
        loss, logged = self.loss(
            h_pred, terms.h_true, terms.overlap, mask=terms.mask, reciprocal=terms.reciprocal
        )
        if self.model.config.tracegrad and self.config.trace_weight > 0:
            trace = (prediction.node_trace - terms.node_trace).pow(2).mean()
            trace = trace + (prediction.edge_trace - terms.edge_trace).pow(2).mean()
            loss = loss + self.config.trace_weight * trace
            logged['trace'] = float(trace.detach())
            logged['total'] = float(loss.detach())
        return loss, logged

    def train_step(self) -> dict[str, float]:
        """One optimiser step on a random batch; returns the logged terms."""
        self.model.train()
        size = min(self.config.batch_size, len(self.samples))
        indices = self.generator.choice(len(self.samples), size=size, replace=False).tolist()
        loss, logged = self.batch_loss(indices)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            logged['grad_norm'] = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            )
        self.optimizer.step()
        self.scheduler.step()
        logged.update(step=self.step, lr=self.scheduler.get_last_lr()[0])
        self.step += 1
        self.history.append(logged)
        return logged

    def fit(self, progress: bool = True) -> list[dict]:
        """Run the remaining steps; returns the history of logged terms."""
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not progress, desc='training')
        while self.step < self.config.steps:
            logged = self.train_step()
            bar.set_postfix(loss=f'{logged["total"]:.3g}', l1=f'{logged.get("real_l1", float("nan")):.3g}')
            bar.update()
        bar.close()
        return self.history
