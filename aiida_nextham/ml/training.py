"""Training of the ΔH model: per-structure loss terms, the optimisation step and a complete run.

A training structure is a :class:`~aiida_nextham.ml.dataset.Sample` (graph + block Hamiltonian with
H0, H, S). Its loss is the :class:`~aiida_nextham.ml.loss.HamiltonianLoss` of H_pred = H0 + ΔH
against H on the blocks within the model's cutoff (the others keep H0 and are not the model's to
learn), with the reciprocal-space terms at the structure's cached k-points, plus the TraceGrad
supervision: the invariant head predicts the normalised squared norm of the true ΔH block. The loss
of a batch is the mean over its structures, so the gradient averaged by DistributedDataParallel over
ranks equals the gradient of the same global batch in one process.

- :class:`Trainer`: model, AdamW, cosine schedule with warm-up, EMA weights, gradient clipping, AMP on
  GPU, and a NaN/Inf guard (a non-finite loss or gradient skips the step, leaving weights and
  optimizer state untouched). Works on in-memory samples or on a lazy
  :class:`~aiida_nextham.ml.dataset.HamiltonianDataset` (bounded cache, targets cached on disk).
- :class:`TrainingRun`: a whole ``nextham train`` run from a
  :class:`~aiida_nextham.ml.run_config.RunConfig`: split, scales, batches by (seed, epoch), validation,
  early stopping, atomic checkpoints with exact resume, NaN-guard reloads with a lower learning rate,
  a JSONL metrics log, learning curves and the final model with provenance. DDP-aware: every rank runs
  it, only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
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
    CheckpointError,
    checkpoint_folder,
    flatten_optimizer,
    get_rng_state,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    set_rng_state,
    unflatten_optimizer,
    write_checkpoint,
)
from .dataset import (
    DatasetError,
    EpochSampler,
    HamiltonianDataset,
    coverage,
    describe_split,
    split_from_description,
    split_indices,
)
from .graph import collate
from .loss import HamiltonianLoss, LossConfig, ReciprocalTensors, element_mask, real_space_terms
from .model import NexthamModel
from .predictor import Prediction, fit_scales, predict_batch, spinless, structure_layout
from .targets import ReciprocalTargets, cached_targets, targets_cache_path

if TYPE_CHECKING:
    from .run_config import RunConfig

__all__ = [
    'FAULTS_ENV',
    'MetricsLog',
    'ModelEMA',
    'StructureSource',
    'StructureTerms',
    'TrainConfig',
    'Trainer',
    'TrainingDiverged',
    'TrainingRun',
    'cosine_schedule',
    'plot_learning_curves',
    'resolve_device',
    'write_status',
]

#: test hook: JSON ``{"nan_steps": [k, ...], "kill_after_checkpoint": k, "kill_in_checkpoint": k}`` poisons
#: the loss at those steps (each once) or SIGKILLs the process after / in the middle of writing checkpoint k
FAULTS_ENV = 'NEXTHAM_TEST_FAULTS'
#: train settings that may differ between a checkpoint and the run resuming it
RESUMABLE_CHANGES = frozenset(
    {'steps', 'val_every', 'checkpoint_every', 'keep_checkpoints', 'patience', 'min_delta', 'device', 'amp'}
    | {'progress', 'nan_patience', 'max_nan_reloads'}
)
METRICS, CURVES, STATUS, MODEL_DIR, CHECKPOINT_DIR = (
    'metrics.jsonl',
    'learning_curves.png',
    'status.json',
    'model',
    'checkpoints',
)


#: the learning curves are redrawn at a checkpoint only if this many seconds passed since the last drawing
CURVES_INTERVAL = 60.0


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


def _faults() -> dict:
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


def _world() -> tuple[int, int]:
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
        self.rank, self.world_size = _world() if distributed else (0, 1)
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
        self.poison_steps = {int(s) for s in _faults().get('nan_steps', [])}

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
    def parameter_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters()]

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON of everything that determines the continuation (see :mod:`.checkpoint`)."""
        tensors = {f'model/{k}': v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f'ema/{k}': v for k, v in self.ema.module.state_dict().items()})
        optimizer_tensors, optimizer = flatten_optimizer(self.optimizer, self.parameter_names())
        rng_tensors, rng = get_rng_state()
        tensors.update(optimizer_tensors)
        tensors.update(rng_tensors)
        metadata = {
            'step': self.step,
            'optimizer': optimizer,
            'scheduler': self.schedule.state_dict(),
            'ema': None if self.ema is None else {'decay': self.ema.decay, 'updates': self.ema.updates},
            'rng': rng,
            'generator': self.generator.bit_generator.state,
            'scaler': self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        return tensors, metadata

    def load_state(self, checkpoint: Checkpoint) -> None:
        """Restore :meth:`state` (raises :class:`CheckpointError` when it does not fit this model)."""
        meta = checkpoint.metadata
        try:
            self.model.load_state_dict(checkpoint.group('model'))
            if self.ema is not None:
                if meta.get('ema') is None:
                    raise CheckpointError('the checkpoint has no EMA weights but this run uses EMA')
                self.ema.module.load_state_dict(checkpoint.group('ema'))
                self.ema.updates = int(meta['ema']['updates'])
        except RuntimeError as exc:
            first = ' '.join(str(exc).split())[:300]
            raise CheckpointError(f'the checkpoint weights do not fit the model ({first})') from None
        unflatten_optimizer(
            self.optimizer, checkpoint.group('optimizer'), meta['optimizer'], self.parameter_names()
        )
        self.schedule.load_state_dict(meta['scheduler'])
        set_rng_state(checkpoint.tensors, meta['rng'])
        self.generator.bit_generator.state = meta['generator']
        if meta.get('scaler') and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta['scaler'])
        self.step = int(meta['step'])


# ----------------------------------------------------------------------------------------- logging
def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def write_status(output: str | Path, data: dict) -> Path:
    """Write ``output/status.json`` atomically (what a parser reads, even after the process died)."""
    path = Path(output) / STATUS
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(_json_safe({**data, 'time': time.time()}), indent=1) + '\n')
    return path


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (``kind`` = train, val or event); non-finite -> null."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, 'a') as handle:
                handle.write(json.dumps(_json_safe(record), allow_nan=False) + '\n')

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return records

    def truncate(self, step: int) -> None:
        """Drop the records after ``step`` (written by a run killed after its last checkpoint)."""
        if self.enabled and self.path.is_file():
            kept = [r for r in self.read() if r.get('step', 0) <= step]
            _write_atomic(self.path, ''.join(json.dumps(r) + '\n' for r in kept))


def plot_learning_curves(records: list[dict], path: str | Path) -> Path:
    """PNG of the train loss terms, the validation MAE and the learning rate against the step."""
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(13, 3.6))
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.92, wspace=0.28)
    loss_axis, val_axis, lr_axis = figure.subplots(1, 3)
    train = [r for r in records if r.get('kind') == 'train' and not r.get('skipped')]
    for key in ('total', 'real_l1', 'real_mse', 'recip_pp', 'recip_pq', 'recip_qq', 'trace'):
        points = [(r['step'], r[key]) for r in train if isinstance(r.get(key), float | int) and r[key] > 0]
        if points:
            loss_axis.semilogy(*zip(*points, strict=True), label=key, lw=1)
    loss_axis.set(xlabel='step', ylabel='train loss terms (meV, meV²)', title='training loss')
    if loss_axis.lines:
        loss_axis.legend(fontsize=7)
    val = [(r['step'], r['val_mae']) for r in records if r.get('kind') == 'val' and r.get('val_mae')]
    if val:
        val_axis.semilogy(*zip(*val, strict=True), 'o-', ms=3)
    val_axis.set(xlabel='step', ylabel='MAE (meV, after optimal shift)', title='validation (EMA weights)')
    lrs = [(r['step'], r['lr']) for r in train if r.get('lr') is not None]
    if lrs:
        lr_axis.plot(*zip(*lrs, strict=True))
    lr_axis.set(xlabel='step', ylabel='learning rate', title='schedule')
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    figure.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------- provenance
def _versions() -> dict:
    import e3nn

    from .. import __version__

    return {
        'aiida_nextham': __version__,
        'torch': torch.__version__,
        'e3nn': e3nn.__version__,
        'numpy': np.__version__,
        'python': platform.python_version(),
    }


#: label files are hashed for the provenance up to this total size (larger datasets record sizes only)
HASH_LIMIT = 4 << 30


def _file_records(paths: list[Path]) -> list[dict]:
    sizes = [p.stat().st_size for p in paths]
    records = [{'name': p.name, 'size': s} for p, s in zip(paths, sizes, strict=True)]
    if sum(sizes) <= HASH_LIMIT:
        for record, path in zip(records, paths, strict=True):
            digest = hashlib.sha256()
            with open(path, 'rb') as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b''):
                    digest.update(chunk)
            record['sha256'] = digest.hexdigest()
    return records


#: settings of the label engine that the H0 of a prediction must reproduce
H0_SETTINGS = ('basis_set', 'pseudo', 'xc', 'init_guess')


def _label_engine(paths: list[Path]) -> dict:
    """H0 settings shared by the label files (from their metadata); a conflict between files raises."""
    import h5py

    found: dict[str, tuple[str, Path]] = {}
    for path in paths:
        with h5py.File(path, 'r') as handle:
            metadata = json.loads(handle.attrs.get('metadata', '{}'))
        for key in H0_SETTINGS:
            value = metadata.get(key)
            if value is None:
                continue
            if key in found and found[key][0] != value:
                raise DatasetError(
                    f'{path}: {key} is {value!r} but {found[key][1]} has {found[key][0]!r}; '
                    'the H0 of one model must come from one engine setting'
                )
            found.setdefault(key, (value, path))
    engine = {key: value for key, (value, _) in found.items()}
    if 'basis_set' in engine:
        engine['basis'] = engine.pop('basis_set')
    return engine


def _config_changes(old: dict, new: dict, prefix: str = '') -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f'{prefix}{key}.')
        elif a != b:
            changes.append(f'{prefix}{key}: {a!r} -> {b!r}')
    return changes


def _comparable(config: dict, model_config: dict) -> dict:
    """What a resumed run must share with its checkpoint: data and train settings, the built model config."""
    where = ('folder', 'paths', 'cache_dir', 'cache_size')
    data = {k: v for k, v in config['data'].items() if k not in where}
    train = {k: v for k, v in config['train'].items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps({'data': data, 'model': model_config, 'train': train}))


# ---------------------------------------------------------------------------------------------- run
class TrainingRun:
    """One ``nextham train`` run (every DDP rank builds one; only rank 0 writes files).

    :param config: the run config (paths absolute, see :meth:`RunConfig.resolved`).
    :param resume: continue from the newest checkpoint in ``<output>/checkpoints`` (a fresh start when
        there is none); without it, an output folder that already holds checkpoints is refused.
    """

    def __init__(self, config: RunConfig, *, resume: bool = False):
        self.config = config
        self.cfg = config.train
        self.resume = resume
        self.rank, self.world_size = _world()
        self.main = self.rank == 0
        self.output = Path(config.output)
        self.checkpoints = self.output / CHECKPOINT_DIR
        self.log = MetricsLog(self.output / METRICS, enabled=self.main)
        self.faults = _faults()
        self.best: dict = {'val_mae': None, 'step': None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale_validations = 0
        self.bad_steps = 0
        self.nan_reloads = 0
        self.skipped_steps = 0
        self.last_validation: dict | None = None
        self.last_checkpoint: Path | None = None
        self._orders: dict[int, list[int]] = {}
        self._started = time.time()
        self._plotted = -math.inf

    # -------------------------------------------------------------------------------- setup
    def _event(self, event: str, message: str, **data) -> None:
        step = self.trainer.step if hasattr(self, 'trainer') else 0
        self.log.write({'kind': 'event', 'event': event, 'step': step, 'message': message, **data})
        if self.main:
            tqdm.write(f'[nextham train] {message}', file=sys.stderr)

    def _open_data(self):
        from .run_config import ConfigError

        data = self.config.data
        try:
            if data.folder is not None:
                headers = HamiltonianDataset.from_folder(data.folder, data.pattern)
            else:
                headers = HamiltonianDataset(data.paths)
            headers.validate()
            self.coverage = coverage(headers)
        except DatasetError:
            raise
        except (OSError, ValueError) as exc:
            raise DatasetError(str(exc)) from None
        shells = {e['number']: tuple(e['shells']) for e in self.coverage['elements'].values()}
        try:
            self.model_config = self.config.model.build(shells)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"section 'model': {exc}") from None
        for symbol, element in self.coverage['elements'].items():
            have = self.model_config.shells.get(element['number'])
            if have != tuple(element['shells']):
                raise DatasetError(
                    f"the dataset's basis {element['basis']!r} gives {symbol} the shells "
                    f'{element["shells"]}, but the model config has {list(have) if have else "none"}'
                )
        cutoff = data.cutoff if data.cutoff is not None else self.model_config.cutoff
        if cutoff > self.model_config.cutoff:
            raise ConfigError(
                f'data.cutoff {cutoff} Å exceeds the model cutoff {self.model_config.cutoff} Å '
                '(edges beyond it carry no correction)'
            )
        self.dataset = HamiltonianDataset(headers.paths, cutoff=cutoff, cache_size=0)

    def _find_checkpoint(self) -> Checkpoint | None:
        from .run_config import ConfigError

        latest = latest_checkpoint(self.checkpoints)
        if latest is None:
            if self.resume:
                self._event('resume_fresh', f'no checkpoint in {self.checkpoints}: starting afresh')
            return None
        if not self.resume:
            raise ConfigError(
                f'{self.output} already holds checkpoints ({latest.name}); continue that run with --resume '
                'or choose another output folder'
            )
        checkpoint = read_checkpoint(latest)
        try:
            old = _comparable(checkpoint.metadata['config'], checkpoint.metadata['model_config'])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f'{latest}: the checkpoint metadata lacks {exc}') from None
        changes = _config_changes(old, _comparable(self.config.as_dict(), self.model_config.as_dict()))
        if changes:
            raise CheckpointError(
                f'{latest}: the checkpoint was written with another config ({"; ".join(changes[:5])}); '
                'resume with the same data, model and train settings (only '
                f'{", ".join(sorted(RESUMABLE_CHANGES))} may change)'
            )
        return checkpoint

    def _batch_plan(self) -> None:
        n_train = len(self.split['train'])
        if n_train < self.world_size:
            raise DatasetError(f'{n_train} training structures cannot be shared by {self.world_size} ranks')
        self.batch_size = min(self.cfg.batch_size, n_train // self.world_size)
        if self.batch_size < self.cfg.batch_size:
            self._event(
                'batch_clamped',
                f'batch_size {self.cfg.batch_size} × {self.world_size} rank(s) exceeds the {n_train} '
                f'training structures; using {self.batch_size} per rank',
            )
        self.steps_per_epoch = n_train // (self.batch_size * self.world_size)

    def setup(self) -> None:
        """Data, split, model, trainer and (when resuming) the checkpoint's state."""
        if self.main:
            self.output.mkdir(parents=True, exist_ok=True)
        self._open_data()
        checkpoint = self._find_checkpoint()
        if checkpoint is None and self.main and self.log.path.is_file():
            self.log.path.unlink()  # a log of an earlier attempt that never reached a checkpoint
        names = self.dataset.names
        data = self.config.data
        if checkpoint is not None:
            try:
                self.split = split_from_description(checkpoint.metadata['split'], names)
            except DatasetError as exc:
                raise CheckpointError(f'{checkpoint.path}: {exc}') from None
        else:
            self.split = split_indices(len(self.dataset), data.split, data.seed)
        self.split_description = describe_split(self.split, seed=data.seed, fractions=data.split, names=names)
        self.val_indices = self.split['val']
        if not self.val_indices:
            self.val_indices = self.split['train']
            message = 'the validation split is empty: validating on the training split'
            self._event('no_validation_split', message)
        rank_device = int(os.environ.get('LOCAL_RANK', self.rank))
        try:
            device = resolve_device(self.cfg.device, rank_device)
        except ValueError as exc:
            from .run_config import ConfigError

            raise ConfigError(f"section 'train': {exc}") from None
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        if self.cfg.amp != 'none' and device.type != 'cuda':
            message = f'amp={self.cfg.amp} only applies on GPU; training in {self.cfg.dtype}'
            self._event('amp_ignored', message)
        torch.manual_seed(self.cfg.seed)
        model = NexthamModel(self.model_config).to(self.cfg.torch_dtype)
        if checkpoint is None:  # scales of the training split only (a checkpoint carries its own)
            fit_scales(model, (self.dataset[i] for i in self.split['train']))
        self.trainer = Trainer(
            model,
            self.dataset,
            self.cfg,
            device=device,
            cache_dir=data.cache_dir,
            cache_size=data.cache_size,
            distributed=self.world_size > 1,
        )
        self.val_source = StructureSource(
            self.trainer.model,
            self.dataset,
            self.cfg,
            reciprocal=False,
            cache_size=data.cache_size,
            device=device,
        )
        self._batch_plan()
        if self.main:  # rank 0 fills the target cache, the others then read it
            self.trainer.source.prepare(self.split['train'])
        self._barrier()
        if checkpoint is not None:
            self._load(checkpoint)
            self.log.truncate(self.trainer.step)
            self._event('resume', f'resumed from {checkpoint.path} at step {self.trainer.step}')
            if checkpoint.metadata.get('world_size') != self.world_size:
                self._event(
                    'world_size_changed',
                    f'the checkpoint was written by {checkpoint.metadata.get("world_size")} rank(s), '
                    f'this run has {self.world_size}: batches continue in a different order',
                )

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # -------------------------------------------------------------------------------- state
    def _load(self, checkpoint: Checkpoint) -> None:
        meta = checkpoint.metadata
        self.trainer.load_state(checkpoint)
        best = checkpoint.group('best')
        self.best_state = best or None
        run = meta.get('run', {})
        self.best = dict(meta.get('best', self.best))
        self.stale_validations = int(run.get('stale_validations', 0))
        self.nan_reloads = max(self.nan_reloads, int(run.get('nan_reloads', 0)))
        self.skipped_steps = int(run.get('skipped_steps', 0))
        self.last_validation = run.get('last_validation')
        self.last_checkpoint = checkpoint.path

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0), prune old ones, refresh curves and status."""
        step = self.trainer.step
        path = None
        if self.main:
            tensors, metadata = self.trainer.state()
            if self.best_state is not None:
                tensors.update({f'best/{k}': v for k, v in self.best_state.items()})
            epoch, position = divmod(step, self.steps_per_epoch)
            metadata.update(
                config=self.config.as_dict(),
                model_config=self.model_config.as_dict(),
                epoch=epoch,
                position=position,
                steps_per_epoch=self.steps_per_epoch,
                batch_size=self.batch_size,
                world_size=self.world_size,
                split=self.split_description,
                best=self.best,
                run={
                    'stale_validations': self.stale_validations,
                    'nan_reloads': self.nan_reloads,
                    'skipped_steps': self.skipped_steps,
                    'last_validation': self.last_validation,
                },
                versions=_versions(),
            )
            fault = None
            if self.faults.get('kill_in_checkpoint') == step:
                fault = _kill_self
            path = write_checkpoint(self.checkpoints, Checkpoint(tensors, _json_safe(metadata)), fault=fault)
            prune_checkpoints(self.checkpoints, self.cfg.keep_checkpoints)
            self.plot()
            write_status(self.output, self._status('running'))
            if self.faults.get('kill_after_checkpoint') == step:
                _kill_self()
        self.last_checkpoint = checkpoint_folder(self.checkpoints, step)  # the same on every rank
        self._barrier()
        return path

    def _status(self, status: str, **extra) -> dict:
        return {
            'status': status,
            'step': self.trainer.step,
            'steps': self.cfg.steps,
            'best_val_mae': self.best['val_mae'],
            'best_step': self.best['step'],
            'checkpoint': str(latest_checkpoint(self.checkpoints) or '') or None,
            'world_size': self.world_size,
            'pid': os.getpid(),
            **extra,
        }

    def plot(self, force: bool = False) -> None:
        """Redraw the learning curves (at most every :data:`CURVES_INTERVAL` s unless ``force``)."""
        if self.main and (force or time.time() - self._plotted >= CURVES_INTERVAL):
            plot_learning_curves(self.log.read(), self.output / CURVES)
            self._plotted = time.time()

    # ---------------------------------------------------------------------------- training
    def batch_indices(self, step: int) -> list[int]:
        """This rank's structures of global step ``step``: fixed by (seed, epoch, rank, world size)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._orders:
            sampler = EpochSampler(
                self.split['train'],
                True,
                self.cfg.seed,
                epoch=epoch,
                rank=self.rank,
                world_size=self.world_size,
            )
            self._orders = {epoch: sampler.order()}
        return self._orders[epoch][position * self.batch_size : (position + 1) * self.batch_size]

    @torch.no_grad()
    def validate(self) -> dict:
        """Real-space MAE (meV, within the cutoff, after the optimal shift μS) of the EMA weights."""
        model = self.trainer.eval_model
        model.eval()
        mine = self.val_indices[self.rank :: self.world_size]
        sums = torch.zeros(3, dtype=torch.float64, device=self.trainer.device)
        for start in range(0, len(mine), self.batch_size):
            items = [self.val_source.get(i) for i in mine[start : start + self.batch_size]]
            batch = collate([s.graph for s, _ in items]).to(self.trainer.device, self.cfg.torch_dtype)
            with self.trainer._autocast():
                predictions = predict_batch(model, batch)
            for (_, terms), prediction in zip(items, predictions, strict=True):
                h_pred = self.trainer.predicted_h(prediction, terms)
                terms_ = real_space_terms(h_pred, terms.h_true, terms.overlap, mask=terms.mask)
                sums += torch.stack([terms_['l1'], terms_['mse'], torch.ones_like(terms_['l1'])]).double()
        if self.world_size > 1:
            dist.all_reduce(sums)
        total, squares, count = sums.tolist()
        record = {
            'kind': 'val',
            'step': self.trainer.step,
            'val_mae': total / count,
            'val_rmse': math.sqrt(squares / count),
            'n_structures': int(count),
        }
        best = self.best['val_mae']
        improved = best is None or record['val_mae'] < best - self.cfg.min_delta
        if improved:
            self.best = {'val_mae': record['val_mae'], 'step': self.trainer.step}
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.stale_validations = 0
        else:
            self.stale_validations += 1
        record.update(best_val_mae=self.best['val_mae'], best_step=self.best['step'])
        self.log.write(record)
        self.last_validation = record
        return record

    def _recover(self) -> None:
        """K consecutive non-finite steps: reload the last checkpoint and lower the learning rate."""
        self.nan_reloads += 1
        if self.nan_reloads > self.cfg.max_nan_reloads:
            raise TrainingDiverged(
                f'{self.bad_steps} consecutive non-finite steps at step {self.trainer.step} after '
                f'{self.cfg.max_nan_reloads} reload(s) with a lowered learning rate; the training diverged'
            )
        latest = latest_checkpoint(self.checkpoints)
        if latest is None:
            raise TrainingDiverged('non-finite steps and no checkpoint to reload')
        factor = self.trainer.schedule.lr_factor * self.cfg.nan_lr_factor
        reloads, skipped, failed_at = self.nan_reloads, self.skipped_steps, self.trainer.step
        self._load(read_checkpoint(latest))
        self.nan_reloads, self.skipped_steps = reloads, skipped  # counters of the whole run
        self.trainer.schedule.lr_factor = factor
        self.bad_steps = 0
        self._event(
            'nan_reload',
            f'{self.cfg.nan_patience} consecutive non-finite steps up to step {failed_at}: reloaded '
            f'{latest.name} (step {self.trainer.step}) and lowered the learning rate by '
            f'{self.cfg.nan_lr_factor} (lr factor {factor:g}, reload {reloads}/{self.cfg.max_nan_reloads})',
            failed_at=failed_at,
            lr_factor=factor,
            reload=reloads,
        )

    def run(self) -> dict:
        """Train to ``train.steps`` (or early stopping); returns the summary."""
        self.setup()
        trainer = self.trainer
        if self.main:
            write_status(self.output, self._status('running'))
        if self.last_checkpoint is None:
            self.save_checkpoint()  # step 0: the NaN guard always has a checkpoint to go back to
        bar = tqdm(
            total=self.cfg.steps,
            initial=trainer.step,
            disable=not (self.main and self.cfg.progress),
            desc='training',
            file=sys.stderr,
        )
        stopped_early = False
        while trainer.step < self.cfg.steps:
            epoch = trainer.step // self.steps_per_epoch
            logged = trainer.train_step(self.batch_indices(trainer.step))
            self.log.write({'kind': 'train', 'epoch': epoch, **logged})
            if logged['skipped']:
                self.bad_steps += 1
                self.skipped_steps += 1
                self._event('nan_skip', f'non-finite loss or gradient at step {logged["step"]}: step skipped')
                if self.bad_steps >= self.cfg.nan_patience:
                    self._recover()
                    bar.n = trainer.step
                    bar.refresh()
                    continue
            else:
                self.bad_steps = 0
            bar.update()
            bar.set_postfix(loss=f'{logged.get("total", float("nan")):.3g}', lr=f'{logged["lr"]:.2g}')
            if trainer.step % self.cfg.val_every == 0:
                record = self.validate()
                bar.set_postfix(val_mae=f'{record["val_mae"]:.3g}')
                if self.cfg.patience and self.stale_validations >= self.cfg.patience:
                    stopped_early = True
                    self._event(
                        'early_stop',
                        f'no validation improvement in {self.cfg.patience} validations; best '
                        f'{self.best["val_mae"]:.4g} meV at step {self.best["step"]}',
                    )
            if stopped_early or trainer.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if stopped_early:
                break
        bar.close()
        if (self.last_validation or {}).get('step') != trainer.step:
            self.validate()
        if self.last_checkpoint is None or self.last_checkpoint.name != f'step-{trainer.step:08d}':
            self.save_checkpoint()
        return self.finish(stopped_early)

    # -------------------------------------------------------------------------------- finish
    def final_model(self) -> NexthamModel:
        """The EMA model, with the weights of the best validation when ``restore_best``."""
        model = copy.deepcopy(self.trainer.eval_model).cpu()
        if self.cfg.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()

    def provenance(self) -> dict:
        return {
            'dataset': {'files': _file_records(self.dataset.paths)},
            'coverage': self.coverage,
            'dft': _label_engine(self.dataset.paths),
            'split': self.split_description,
            'seeds': {'split': self.config.data.seed, 'train': self.cfg.seed},
            'run_config': self.config.as_dict(),
            'metrics': {
                'best_val_mae': self.best['val_mae'],
                'best_step': self.best['step'],
                'final_validation': self.last_validation,
                'steps': self.trainer.step,
                'skipped_steps': self.skipped_steps,
                'nan_reloads': self.nan_reloads,
            },
            'weights': 'ema-best' if self.cfg.restore_best and self.best_state is not None else 'ema-final',
            'training': {'world_size': self.world_size, 'device': str(self.trainer.device)},
            'versions': _versions(),
        }

    def finish(self, stopped_early: bool) -> dict:
        from .serialization import save_model

        summary = {
            'status': 'early_stopped' if stopped_early else 'finished',
            'steps': self.trainer.step,
            'best_val_mae': self.best['val_mae'],
            'best_step': self.best['step'],
            'final_val_mae': (self.last_validation or {}).get('val_mae'),
            'skipped_steps': self.skipped_steps,
            'nan_reloads': self.nan_reloads,
            'world_size': self.world_size,
            'device': str(self.trainer.device),
            'wall_time': time.time() - self._started,
            'output': str(self.output),
            'model': str(self.output / MODEL_DIR),
            'checkpoint': str(self.last_checkpoint),
            'metrics': str(self.output / METRICS),
            'curves': str(self.output / CURVES),
            'status_file': str(self.output / STATUS),
        }
        if self.main:
            save_model(self.final_model(), self.output / MODEL_DIR, self.provenance())
            self.plot(force=True)
        self._barrier()
        return summary


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
