"""Training of the ΔH model: per-structure loss terms and the optimisation step.

A training structure is a :class:`~aiida_nextham.ml.dataset.Sample` (graph + block Hamiltonian with
H0, H, S). Its loss is the :class:`~aiida_nextham.ml.loss.HamiltonianLoss` of H_pred = H0 + ΔH
against H on the blocks within the model's cutoff (the others keep H0 and are not the model's to
learn), with the reciprocal-space terms at the structure's cached k-points, plus the TraceGrad
supervision: the invariant head predicts the normalised squared norm of the true ΔH block. The loss
of a batch is the mean over its structures, so the gradient averaged by DistributedDataParallel over
ranks equals the gradient of the same global batch in one process.

:class:`Trainer`: model, AdamW, cosine schedule with warm-up, EMA weights, gradient clipping, AMP on
GPU, and a NaN/Inf guard (a non-finite loss or gradient skips the step, leaving weights and optimizer
state untouched). Works on in-memory samples or on a lazy
:class:`~aiida_nextham.ml.dataset.HamiltonianDataset` (bounded cache, targets cached on disk). A whole
``nextham train`` run is :class:`~aiida_nextham.ml.training_run.TrainingRun`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import (
    Checkpoint,
    restore_trainer_state,
    trainer_state,
)
from .dataset import (
    HamiltonianDataset,
)
from .graph import collate
from .loss import HamiltonianLoss, LossConfig, ReciprocalTensors, element_mask
from .model import NexthamModel
from .predictor import Prediction, predict_batch, spinless, structure_layout
from .targets import ReciprocalTargets, cached_targets, targets_cache_path

if TYPE_CHECKING:
    pass

__all__ = [
    'FAULTS_ENV',
    'ModelEMA',
    'StructureSource',
    'StructureTerms',
    'TrainConfig',
    'Trainer',
    'TrainingDiverged',
    'cosine_schedule',
    'resolve_device',
]

#: test hook: JSON ``{"nan_steps": [k, ...], "kill_after_checkpoint": k, "kill_in_checkpoint": k}`` poisons
#: the loss at those steps (each once) or SIGKILLs the process after / in the middle of writing checkpoint k
FAULTS_ENV = 'NEXTHAM_TEST_FAULTS'


class TrainingDiverged(RuntimeError):
    """The NaN/Inf guard gave up: non-finite steps persisted after every allowed reload."""


@dataclass
class TrainConfig:
    """Optimisation settings (defaults train the small model on a laptop CPU).

    :param steps: optimiser steps (batches consumed, skipped ones included).
    :param batch_size: structures per step and rank (global batch = batch_size × world size).
    :param lr: peak learning rate (AdamW).
    :param warmup_steps: linear warm-up; then cosine decay to ``lr * min_lr_ratio``.
    :param grad_clip: maximum global gradient norm (0: no clipping).
    :param trace_weight: weight of the TraceGrad invariant supervision.
    :param dtype: ``'float32'`` or ``'float64'``.
    :param seed: seed of the parameter initialisation, the batch order and the target k-points.
    :param n_kpoints: k-points per structure of the reciprocal-space term (Γ plus random).
    :param window_above_fermi: bands up to this many eV above E_F belong to the subspace P.
    :param ema_decay: decay of the exponential moving average of the weights (0: no EMA); validation
        and the final model use the EMA weights.
    :param val_every: validate every this many steps (and at the end).
    :param checkpoint_every: write a checkpoint every this many steps (and at the end).
    :param keep_checkpoints: newest checkpoints kept on disk.
    :param patience: stop after this many validations without improvement (0: never stop early).
    :param min_delta: improvement (meV) that resets the patience.
    :param restore_best: the final model gets the EMA weights of the best validation.
    :param device: ``'auto'`` (CUDA if available), ``'cpu'`` or ``'cuda'``.
    :param amp: autocast dtype on GPU (``'bf16'``, ``'fp16'`` with loss scaling); ignored on CPU.
    :param nan_patience: consecutive non-finite steps before the last checkpoint is reloaded.
    :param nan_lr_factor: the learning rate is multiplied by this at every reload.
    :param max_nan_reloads: reloads before giving up (:class:`TrainingDiverged`).
    :param progress: show a progress bar.
    :param find_unused_parameters: passed to DistributedDataParallel.
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
    ema_decay: float = 0.999
    val_every: int = 50
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    patience: int = 0
    min_delta: float = 0.0
    restore_best: bool = True
    device: str = 'auto'
    amp: Literal['none', 'bf16', 'fp16'] = 'none'
    nan_patience: int = 3
    nan_lr_factor: float = 0.5
    max_nan_reloads: int = 3
    progress: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        if self.dtype not in ('float32', 'float64'):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError('steps and batch_size must be positive')
        if self.amp not in ('none', 'bf16', 'fp16'):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        if self.device not in ('auto', 'cpu', 'cuda') and not self.device.startswith('cuda:'):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f'ema_decay must be in [0, 1), got {self.ema_decay}')
        if not 0 < self.nan_lr_factor <= 1:
            raise ValueError(f'nan_lr_factor must be in (0, 1], got {self.nan_lr_factor}')
        positive = ('val_every', 'checkpoint_every', 'keep_checkpoints', 'nan_patience', 'n_kpoints')
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('lr', 'weight_decay', 'warmup_steps', 'grad_clip', 'patience', 'max_nan_reloads'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')

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


class CosineSchedule:
    """lr(step) = lr · lr_factor · :func:`cosine_schedule` (``lr_factor`` is lowered by the NaN guard)."""

    def __init__(self, config: TrainConfig):
        self.config, self.lr_factor = config, 1.0

    def lr(self, step: int) -> float:
        return self.config.lr * self.lr_factor * cosine_schedule(step, self.config)

    def state_dict(self) -> dict:
        keys = ('lr', 'warmup_steps', 'steps', 'min_lr_ratio')
        return {
            'kind': 'cosine-warmup',
            'lr_factor': self.lr_factor,
            **{k: getattr(self.config, k) for k in keys},
        }

    def load_state_dict(self, state: dict) -> None:
        self.lr_factor = float(state['lr_factor'])


def resolve_device(name: str = 'auto', local_rank: int = 0) -> torch.device:
    """``'auto'``: CUDA (device ``local_rank``) if available, else CPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('device cuda was requested but CUDA is not available')
        name = f'cuda:{local_rank}'
    return torch.device(name)


def injected_faults() -> dict:
    text = os.environ.get(FAULTS_ENV)
    return json.loads(text) if text else {}


# --------------------------------------------------------------------------------------- loss terms
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
    def build(
        cls, model: NexthamModel, sample, targets: ReciprocalTargets | None, dtype, device=None
    ) -> StructureTerms:
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
        node_scale = model._expand(model.node_out_scale).double().cpu() ** 2
        edge_scale = model._expand(model.edge_out_scale).double().cpu() ** 2
        node_trace = (normalised[graph.node_pair] / node_scale).mean(1)
        edge_trace = (normalised[graph.edge_pair] / edge_scale).mean(1)
        reciprocal = None
        if targets is not None:
            reciprocal = ReciprocalTensors.from_targets(targets, bh, dtype=dtype, device=device)
        return cls(
            h0=h0.to(device),
            h_true=h_true.to(device),
            overlap=torch.as_tensor(bh.overlap, dtype=dtype).to(device),
            mask=mask.to(device),
            node_trace=node_trace.to(device=device, dtype=dtype),
            edge_trace=edge_trace.to(device=device, dtype=dtype),
            reciprocal=reciprocal,
        )


class StructureSource:
    """Structures by index -> (:class:`Sample`, :class:`StructureTerms`), built on demand.

    :param data: in-memory samples (all kept) or a lazy :class:`HamiltonianDataset` (at most
        ``cache_size`` structures kept, least recently used first out; set the dataset's own cache to 0
        so nothing is held twice).
    :param targets: reciprocal targets per index (in-memory data); otherwise they are computed (samples)
        or read from / written to the on-disk cache of :func:`~aiida_nextham.ml.targets.cached_targets`.
    :param reciprocal: build reciprocal terms (False for validation, which is real-space only).
    """

    def __init__(
        self,
        model: NexthamModel,
        data,
        config: TrainConfig,
        *,
        targets=None,
        reciprocal: bool = True,
        cache_dir: str | Path | None = None,
        cache_size: int = 64,
        device=None,
    ):
        self.model, self.data, self.config = model, data, config
        self.lazy = isinstance(data, HamiltonianDataset)
        self.given_targets = targets
        self.reciprocal = reciprocal and config.loss.reciprocal_weight > 0
        self.cache_dir = cache_dir
        self.cache_size = cache_size if self.lazy else max(len(data), 1)
        self.device = device
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        self._target_paths: dict[int, Path] = {}

    def __len__(self) -> int:
        return len(self.data)

    def target_settings(self, index: int) -> dict:
        cfg = self.config
        return {
            'n_kpoints': cfg.n_kpoints,
            'seed': cfg.seed + index,
            'window_above_fermi': cfg.window_above_fermi,
        }

    def targets(self, index: int, sample=None) -> ReciprocalTargets | None:
        """The reciprocal targets of structure ``index`` (None when the loss has no reciprocal term)."""
        if not self.reciprocal:
            return None
        if self.given_targets is not None:
            return self.given_targets[index]
        if not self.lazy:
            sample = self.data[index] if sample is None else sample
            return ReciprocalTargets.from_hamiltonian(sample.hamiltonian, **self.target_settings(index))
        path = self.data.paths[index]
        if index not in self._target_paths:  # hashing the label file once per run is enough
            self._target_paths[index] = targets_cache_path(
                path, self.cache_dir, **self.target_settings(index)
            )
        if self._target_paths[index].is_file():
            return ReciprocalTargets.load(self._target_paths[index])
        return cached_targets(path, self.cache_dir, **self.target_settings(index))

    def prepare(self, indices) -> None:
        """Compute the on-disk targets of ``indices`` now (so that training steps only read them)."""
        if self.lazy and self.reciprocal and self.given_targets is None:
            for index in indices:
                self.targets(index)

    def get(self, index: int):
        index = int(index)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        sample = self.data[index]
        targets = self.targets(index, sample)
        terms = StructureTerms.build(self.model, sample, targets, self.config.torch_dtype, self.device)
        item = (sample, terms)
        if self.cache_size:
            self._cache[index] = item
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return item


# ----------------------------------------------------------------------------------------------- EMA
class ModelEMA:
    """Exponential moving average of a model's parameters (buffers copied), with the usual warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))`` so that early averages are not dominated by the init."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, parameter in zip(self.module.parameters(), model.parameters(), strict=True):
            average.lerp_(parameter.detach(), 1 - decay)
        for average, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            average.copy_(buffer)


class _DistributedView:
    """A DDP-wrapped model that still answers the attributes ``predict_batch`` reads (config, irreps)."""

    def __init__(self, ddp: torch.nn.parallel.DistributedDataParallel):
        self.ddp = ddp

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.ddp.module, name)


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Optimises a :class:`NexthamModel` on labelled structures.

    :param model: the model (its scales should already be fitted, see ``predictor.fit_scales``).
    :param samples: training structures (:class:`~aiida_nextham.ml.dataset.Sample` list) or a lazy
        :class:`HamiltonianDataset`; batches are lists of indices into it.
    :param config: optimisation settings.
    :param targets: reciprocal-space targets per sample (same order); computed when not given.
    :param device: overrides ``config.device``.
    :param cache_dir, cache_size: on-disk target cache and in-memory structure cache of a lazy dataset.
    :param distributed: wrap the model in DistributedDataParallel (needs an initialised process group).
    """

    def __init__(
        self,
        model: NexthamModel,
        samples,
        config: TrainConfig | None = None,
        targets=None,
        *,
        device=None,
        cache_dir: str | Path | None = None,
        cache_size: int = 64,
        distributed: bool = False,
    ):
        self.config = cfg = config or TrainConfig()
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self.model = model.to(device=self.device, dtype=cfg.torch_dtype)
        if not isinstance(samples, HamiltonianDataset):
            samples = list(samples)
        if not len(samples):
            raise ValueError('no training samples')
        self.source = StructureSource(
            self.model,
            samples,
            cfg,
            targets=targets,
            cache_dir=cache_dir,
            cache_size=cache_size,
            device=self.device,
        )
        self.rank, self.world_size = rank_and_world_size() if distributed else (0, 1)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.network = self.model
        if self.world_size > 1:
            # some grads come out transposed (e.g. of einsum weights): harmless, only slower bucketing
            warnings.filterwarnings('ignore', message='Grad strides do not match bucket view strides')
            ddp = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
            self.network = _DistributedView(ddp)
        self.loss = HamiltonianLoss(cfg.loss)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = CosineSchedule(cfg)
        use_amp = cfg.amp != 'none' and self.device.type == 'cuda'
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(cfg.amp) if use_amp else None
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype is torch.float16)
        self.generator = np.random.default_rng(cfg.seed)
        self.step = 0
        self.history: list[dict] = []
        self.poison_steps = {int(s) for s in injected_faults().get('nan_steps', [])}

    @property
    def samples(self):
        return self.source.data

    @property
    def eval_model(self) -> NexthamModel:
        """The weights validation and the final model use: the EMA copy, else the model itself."""
        return self.ema.module if self.ema is not None else self.model

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def predicted_h(self, prediction: Prediction, terms: StructureTerms) -> torch.Tensor:
        delta = prediction.delta.to(terms.h0.dtype)
        return terms.h0 + delta if self.model.config.use_h0 else delta

    def batch_loss(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of the structures ``indices`` and the mean of their logged terms."""
        items = [self.source.get(i) for i in indices]
        batch = collate([sample.graph for sample, _ in items]).to(self.device, self.config.torch_dtype)
        with self._autocast():
            predictions = predict_batch(self.network, batch)
        total = 0.0
        logged: dict[str, float] = {}
        for (_, terms), prediction in zip(items, predictions, strict=True):
            loss, values = self.structure_loss(prediction, terms)
            total = total + loss / len(indices)
            for key, value in values.items():
                logged[key] = logged.get(key, 0.0) + value / len(indices)
        return total, logged

    def structure_loss(self, prediction: Prediction, terms: StructureTerms) -> tuple[torch.Tensor, dict]:
        h_pred = self.predicted_h(prediction, terms)
        loss, logged = self.loss(
            h_pred, terms.h_true, terms.overlap, mask=terms.mask, reciprocal=terms.reciprocal
        )
        if self.model.config.tracegrad and self.config.trace_weight > 0:
            node, edge = prediction.node_trace.to(h_pred.dtype), prediction.edge_trace.to(h_pred.dtype)
            trace = (node - terms.node_trace).pow(2).mean() + (edge - terms.edge_trace).pow(2).mean()
            loss = loss + self.config.trace_weight * trace
            logged['trace'] = float(trace.detach())
            logged['total'] = float(loss.detach())
        return loss, logged

    def _all_ranks_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        value = torch.tensor([0.0 if flag else 1.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() == 0.0)

    def _average_logged(self, logged: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return logged
        keys = sorted(logged)
        values = torch.tensor([logged[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist(), strict=True))

    def train_step(self, indices: list[int] | None = None) -> dict[str, float]:
        """One optimiser step on ``indices`` (default: a random batch); returns the logged terms.

        A non-finite loss (on any rank) or gradient skips the step: weights, EMA and optimizer state are
        untouched, ``'skipped'`` is True in the result and the step still counts (its batch is consumed).
        """
        self.model.train()
        if indices is None:
            size = min(self.config.batch_size, len(self.source))
            indices = self.generator.choice(len(self.source), size=size, replace=False).tolist()
        loss, logged = self.batch_loss(indices)
        if self.step in self.poison_steps:  # test hook
            self.poison_steps.discard(self.step)
            loss = loss * float('nan')
            logged['total'] = float('nan')
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.schedule.lr(self.step)
        skipped = not self._all_ranks_true(bool(torch.isfinite(loss.detach())))
        if not skipped:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            logged['grad_norm'] = float(grad_norm)
            # with fp16 loss scaling, overflowing gradients are the scaler's business (it skips and rescales)
            skipped = not self.scaler.is_enabled() and not bool(torch.isfinite(grad_norm))
        if not skipped:
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        logged = self._average_logged(logged)
        logged.update(step=self.step + 1, lr=lr, skipped=skipped)
        self.step += 1
        self.history.append(logged)
        return logged

    def fit(self, progress: bool = True) -> list[dict]:
        """Run the remaining steps on random batches; returns the history of logged terms."""
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not progress, desc='training')
        while self.step < self.config.steps:
            logged = self.train_step()
            bar.set_postfix(loss=f'{logged["total"]:.3g}', l1=f'{logged.get("real_l1", float("nan")):.3g}')
            bar.update()
        bar.close()
        return self.history

    # ---------------------------------------------------------------------------------- state
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON of everything that determines the continuation (see :mod:`.checkpoint`)."""
        tensors, metadata = trainer_state(self)
        metadata['scaler'] = self.scaler.state_dict() if self.scaler.is_enabled() else None
        return tensors, metadata

    def load_state(self, checkpoint: Checkpoint) -> None:
        """Restore :meth:`state` (raises :class:`CheckpointError` when it does not fit this model)."""
        meta = restore_trainer_state(self, checkpoint)
        if meta.get('scaler') and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta['scaler'])
