"""Training of the force field on labelled structures (energies and forces), ``nextham train-ff``.

Data: extended-XYZ files as ASE writes them (``ase.io.write(path, frames, format='extxyz')`` with a
``SinglePointCalculator`` holding the energy in eV and forces in eV/Å). The frames are split into
train / val / test by a seeded permutation; the test frames are never seen before the final report.

Loss per batch, in units of the force scale ``s`` (RMS of the training force components):
``w_E · mean_b[((E_b - Ê_b) / N_b / s)²] + w_F · mean_{i,α}[((F - F̂)_{iα} / s)²]``.

The optimisation reuses the Hamiltonian trainer's machinery: AdamW, :class:`~aiida_nextham.ml.training.
CosineSchedule` (warm-up + cosine), :class:`~aiida_nextham.ml.training.ModelEMA`, atomic safetensors
checkpoints of :mod:`aiida_nextham.ml.checkpoint` with exact resume (weights, EMA, best weights,
optimizer, RNG states, batch order), the NaN guard (a non-finite loss or gradient skips the step;
``nan_patience`` skips in a row reload the last checkpoint with a lower learning rate; then
:class:`~aiida_nextham.ml.training.TrainingDiverged`), :class:`~aiida_nextham.ml.training_log.MetricsLog`
and ``status.json``. Validation and the final model use the EMA weights; early stopping keeps the best.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    restore_trainer_state,
    trainer_state,
    write_checkpoint,
)
from ..dataset import DatasetError
from ..run_config import ConfigError, _build, _mapping, _unknown
from ..training import CosineSchedule, ModelEMA, TrainingDiverged, injected_faults
from ..training_log import METRICS, MetricsLog, json_safe, write_status
from .model import AtomsGraph, ForceFieldConfig, ForceFieldModel, atoms_graph, collate_graphs, save_forcefield

__all__ = [
    'CURVES',
    'FFDataConfig',
    'FFRunConfig',
    'FFTrainConfig',
    'ForceFieldRun',
    'ForceFieldTrainer',
    'LabelledStructure',
    'fit_normalisation',
    'load_ff_config',
    'read_labelled',
]

CURVES = 'learning_curves.png'
MODEL_DIR, CHECKPOINT_DIR = 'model', 'checkpoints'
#: train settings a resumed run may change
RESUMABLE = frozenset(
    {'steps', 'val_every', 'checkpoint_every', 'keep_checkpoints', 'patience', 'min_delta', 'progress'}
    | {'nan_patience', 'max_nan_reloads'}
)


# ------------------------------------------------------------------------------------------- config
@dataclass
class FFDataConfig:
    """Labelled structures and their split.

    :param paths: extxyz files (energy in eV and forces in eV/Å per frame).
    :param split: (train, val, test) fractions of the frames (at least one train and one val frame).
    :param seed: seed of the split permutation.
    """

    paths: list[str] = field(default_factory=list)
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0

    def __post_init__(self):
        if not self.paths:
            raise ValueError('give the labelled structures in `paths` (extxyz files)')
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            raise ValueError(
                f'split must be three non-negative [train, val, test] fractions, got {self.split}'
            )
        if self.seed < 0:
            raise ValueError('seed must be >= 0')


@dataclass
class FFTrainConfig:
    """Optimisation settings of the force field (defaults: a small dataset on a laptop CPU).

    :param steps: optimiser steps; :param batch_size: structures per step.
    :param lr: peak AdamW learning rate; warm-up then cosine decay to ``lr * min_lr_ratio``.
    :param energy_weight, force_weight: weights of the per-atom energy and the force terms.
    :param ema_decay: EMA of the weights (0: none); validation and the final model use it.
    :param val_every, checkpoint_every: steps between validations / checkpoints (and at the end).
    :param patience: validations without an improvement of the validation loss by ``min_delta`` (relative)
        before stopping (0: never).
    :param restore_best: the final model gets the EMA weights of the best validation.
    :param dtype: ``'float64'`` (default; exact forces for phonons) or ``'float32'``.
    :param seed: weight initialisation and batch order.
    :param nan_patience, nan_lr_factor, max_nan_reloads: the NaN guard (see the module docstring).
    """

    steps: int = 1000
    batch_size: int = 4
    lr: float = 5e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.01
    grad_clip: float = 10.0
    energy_weight: float = 1.0
    force_weight: float = 10.0
    ema_decay: float = 0.99
    val_every: int = 25
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    patience: int = 0
    min_delta: float = 0.0
    restore_best: bool = True
    dtype: str = 'float64'
    seed: int = 0
    nan_patience: int = 3
    nan_lr_factor: float = 0.5
    max_nan_reloads: int = 3
    progress: bool = False

    def __post_init__(self):
        if self.dtype not in ('float32', 'float64'):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in (
            'steps',
            'batch_size',
            'val_every',
            'checkpoint_every',
            'keep_checkpoints',
            'nan_patience',
        ):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('lr', 'weight_decay', 'warmup_steps', 'grad_clip', 'patience', 'max_nan_reloads'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.energy_weight < 0 or self.force_weight < 0 or self.energy_weight + self.force_weight == 0:
            raise ValueError('energy_weight and force_weight must be >= 0, not both zero')
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f'ema_decay must be in [0, 1), got {self.ema_decay}')
        if not 0 < self.nan_lr_factor <= 1:
            raise ValueError(f'nan_lr_factor must be in (0, 1], got {self.nan_lr_factor}')

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: model settings a run config may give (elements come from the data; avg_neighbors is fitted)
MODEL_KEYS = ('cutoff', 'channels', 'sh_lmax', 'n_radial', 'radial_hidden', 'n_layers', 'readout_hidden')


@dataclass
class FFRunConfig:
    """A ``nextham train-ff`` run: sections ``data``, ``model`` (ForceFieldConfig fields), ``train``,
    ``output``. Relative paths in a config file are relative to its folder."""

    data: FFDataConfig
    model: dict = field(default_factory=dict)
    train: FFTrainConfig = field(default_factory=FFTrainConfig)
    output: str = 'nextham-train-ff'

    @classmethod
    def from_dict(cls, data: dict, base: str | Path | None = None) -> FFRunConfig:
        if not isinstance(data, dict):
            raise ConfigError(
                'a force-field run config must be a mapping with sections data, model, train, output'
            )
        _unknown(data, ('data', 'model', 'train', 'output'), 'top level')
        if 'data' not in data:
            raise ConfigError("the run config has no 'data' section (where are the labelled structures?)")
        data_section = _build(FFDataConfig, data['data'], 'data')
        model = dict(_mapping(data.get('model', {}), 'model'))
        _unknown(model, MODEL_KEYS, 'model')
        try:
            ForceFieldConfig(elements=[1], **model)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"section 'model': {exc}") from None
        train = _build(FFTrainConfig, data.get('train', {}), 'train')
        output = data.get('output', 'nextham-train-ff')
        if not isinstance(output, str) or not output:
            raise ConfigError(f"'output' must be a folder name, got {output!r}")
        config = cls(data=data_section, model=model, train=train, output=output)
        if base is not None:
            base = Path(base)
            config.data.paths = [str((base / Path(p).expanduser()).resolve()) for p in config.data.paths]
            config.output = str((base / Path(output).expanduser()).resolve())
        return config

    def as_dict(self) -> dict:
        return json.loads(
            json.dumps(
                {
                    'data': dataclasses.asdict(self.data),
                    'model': self.model,
                    'train': self.train.as_dict(),
                    'output': self.output,
                }
            )
        )


def load_ff_config(path: str | Path) -> FFRunConfig:
    """Read a YAML/JSON force-field run config (paths relative to the file's folder)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f'{path}: cannot read the config ({exc.strerror or exc})') from None
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML/JSON ({" ".join(str(exc).split())})') from None
    try:
        return FFRunConfig.from_dict(data or {}, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f'{path}: {exc}') from None


# --------------------------------------------------------------------------------------------- data
def read_labelled(paths) -> list:
    """All frames of the extxyz files ``paths`` (each with an energy and forces), as ``ase.Atoms``."""
    import ase.io

    frames = []
    for path in [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]:
        try:
            read = ase.io.read(path, index=':', format='extxyz')
        except FileNotFoundError:
            raise DatasetError(f'{path}: no such file') from None
        except Exception as exc:  # ASE raises many types for a malformed file
            raise DatasetError(f'{path}: not a readable extxyz file ({exc})') from None
        for k, atoms in enumerate(read):
            try:
                atoms.get_potential_energy()
                forces = atoms.get_forces()
            except Exception:
                raise DatasetError(f'{path}: frame {k} has no energy and forces') from None
            if not np.all(np.isfinite(forces)) or not np.isfinite(atoms.get_potential_energy()):
                raise DatasetError(f'{path}: frame {k} has non-finite labels')
            frames.append(atoms)
    if not frames:
        raise DatasetError('the dataset is empty')
    return frames


#: ``atoms.info`` keys describing how the labels were made, recorded in the model provenance
LABEL_KEYS = ('engine', 'protocol', 'basis', 'pseudo', 'xc', 'kmesh')


def label_settings(frames: list) -> dict:
    """The distinct values of :data:`LABEL_KEYS` found in the frames' ``info`` (e.g. the DFT settings)."""
    found: dict[str, list] = {}
    for atoms in frames:
        for key in LABEL_KEYS:
            if key in atoms.info:
                value = json.loads(json.dumps(np.asarray(atoms.info[key]).tolist()))
                if value not in found.setdefault(key, []):
                    found[key].append(value)
    return found


@dataclass(eq=False)
class LabelledStructure:
    """A frame ready for training: its neighbour graph, energy (eV) and forces (N, 3) (eV/Å)."""

    graph: AtomsGraph
    energy: torch.Tensor
    forces: torch.Tensor

    @classmethod
    def from_atoms(cls, atoms, cutoff: float, dtype: torch.dtype) -> LabelledStructure:
        return cls(
            graph=atoms_graph(atoms, cutoff, dtype),
            energy=torch.tensor([atoms.get_potential_energy()], dtype=dtype),
            forces=torch.as_tensor(np.asarray(atoms.get_forces()), dtype=dtype),
        )

    @property
    def n_atoms(self) -> int:
        return len(self.graph.numbers)


def split_frames(n: int, fractions, seed: int) -> dict[str, list[int]]:
    """Seeded (train, val, test) split of ``n`` frames; at least one train and one val frame."""
    if n < 2:
        raise DatasetError(f'{n} labelled structure(s): at least 2 are needed (train and validation)')
    total = float(sum(fractions))
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test = int(math.floor(fractions[2] / total * n + 1e-9))
    n_val = max(1, int(math.floor(fractions[1] / total * n + 1e-9)))
    n_test = min(n_test, n - n_val - 1)
    n_train = n - n_val - n_test
    return {
        'train': sorted(order[:n_train]),
        'val': sorted(order[n_train : n_train + n_val]),
        'test': sorted(order[n_train + n_val :]),
    }


def fit_normalisation(frames: list, elements: list[int]) -> dict:
    """Per-element reference energies (least squares of E on composition, eV/atom), the force scale
    (RMS force component, eV/Å) and the mean number of neighbours (set separately from the graphs)."""
    counts = np.array([[np.sum(a.numbers == z) for z in elements] for a in frames], dtype=float)
    energies = np.array([a.get_potential_energy() for a in frames])
    reference = np.linalg.lstsq(counts, energies, rcond=None)[0]
    forces = np.concatenate([np.asarray(a.get_forces()).ravel() for a in frames])
    scale = float(np.sqrt(np.mean(forces**2)))
    if not scale > 1e-6:
        residual = (energies - counts @ reference) / counts.sum(1)
        scale = float(np.std(residual)) if np.std(residual) > 1e-6 else 1.0
    return {'reference_energies': reference.tolist(), 'energy_scale': scale}


# ------------------------------------------------------------------------------------------ trainer
class ForceFieldTrainer:
    """Optimiser state, EMA and batch order of one force-field training (no files).

    :param model: the model (normalisation buffers already fitted).
    :param structures: training structures.
    """

    def __init__(self, model: ForceFieldModel, structures: list[LabelledStructure], config: FFTrainConfig):
        if not structures:
            raise DatasetError('no training structures')
        self.config = config
        self.model = model.to(dtype=config.torch_dtype)
        self.structures = structures
        self.ema = ModelEMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.schedule = CosineSchedule(config)  # reads lr, warmup_steps, steps, min_lr_ratio
        self.generator = np.random.default_rng(config.seed)
        self.batch_size = min(config.batch_size, len(structures))
        self.order: list[int] = []
        self.position = 0
        self.step = 0
        self.poison_steps = {int(s) for s in injected_faults().get('nan_steps', [])}

    @property
    def eval_model(self) -> ForceFieldModel:
        return self.ema.module if self.ema is not None else self.model

    def next_batch(self) -> list[int]:
        """The next ``batch_size`` indices of a seeded per-epoch permutation (a short tail is dropped)."""
        if self.position + self.batch_size > len(self.order):
            self.order = self.generator.permutation(len(self.structures)).tolist()
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def loss(self, model: ForceFieldModel, structures: list[LabelledStructure], create_graph: bool):
        """(weighted normalised loss, {'energy_mae' eV/atom, 'force_mae' eV/Å, ...}) of ``structures``."""
        graph = collate_graphs([s.graph for s in structures])
        energy = torch.cat([s.energy for s in structures])
        forces = torch.cat([s.forces for s in structures])
        n_atoms = torch.tensor([s.n_atoms for s in structures], dtype=energy.dtype)
        out = model(graph, forces=True, create_graph=create_graph)
        scale = model.energy_scale
        energy_error = (out['energy'] - energy) / n_atoms
        force_error = out['forces'] - forces
        e_term = (energy_error / scale).pow(2).mean()
        f_term = (force_error / scale).pow(2).mean()
        loss = self.config.energy_weight * e_term + self.config.force_weight * f_term
        metrics = {
            'loss': float(loss.detach()),
            'energy_mae': float(energy_error.detach().abs().mean()),
            'energy_rmse': float(energy_error.detach().pow(2).mean().sqrt()),
            'force_mae': float(force_error.detach().abs().mean()),
            'force_rmse': float(force_error.detach().pow(2).mean().sqrt()),
        }
        return loss, metrics

    def train_step(self) -> dict:
        """One optimiser step; a non-finite loss or gradient skips it (weights and state untouched)."""
        self.model.train()
        batch = self.next_batch()
        loss, metrics = self.loss(self.model, [self.structures[i] for i in batch], create_graph=True)
        if self.step in self.poison_steps:  # test hook of the NaN guard
            self.poison_steps.discard(self.step)
            loss = loss * float('nan')
        lr = self.schedule.lr(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        skipped = not bool(torch.isfinite(loss.detach()))
        if not skipped:
            loss.backward()
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            metrics['grad_norm'] = float(grad_norm)
            skipped = not bool(torch.isfinite(grad_norm))
        if not skipped:
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if skipped:
            metrics['loss'] = float('nan')
        return {**metrics, 'step': self.step, 'lr': lr, 'skipped': skipped}

    def evaluate(self, structures: list[LabelledStructure], model: ForceFieldModel | None = None) -> dict:
        """Metrics of ``structures`` (default: EMA weights), in batches of ``batch_size``; eV, eV/Å."""
        model = self.eval_model if model is None else model
        model.eval()
        sums: dict[str, float] = {}
        n_frames, n_components = 0, 0
        for start in range(0, len(structures), max(self.batch_size, 1)):
            chunk = structures[start : start + self.batch_size]
            _, metrics = self.loss(model, chunk, create_graph=False)
            components = 3 * sum(s.n_atoms for s in chunk)
            for key, weight in (('energy_mae', len(chunk)), ('force_mae', components)):
                sums[key] = sums.get(key, 0.0) + metrics[key] * weight
            sums['energy_se'] = sums.get('energy_se', 0.0) + metrics['energy_rmse'] ** 2 * len(chunk)
            sums['force_se'] = sums.get('force_se', 0.0) + metrics['force_rmse'] ** 2 * components
            n_frames += len(chunk)
            n_components += components
        cfg, scale = self.config, float(model.energy_scale)
        result = {
            'energy_mae': sums['energy_mae'] / n_frames,
            'energy_rmse': math.sqrt(sums['energy_se'] / n_frames),
            'force_mae': sums['force_mae'] / n_components,
            'force_rmse': math.sqrt(sums['force_se'] / n_components),
        }
        result['loss'] = (
            cfg.energy_weight * result['energy_rmse'] ** 2 + cfg.force_weight * result['force_rmse'] ** 2
        ) / scale**2
        return result

    # ------------------------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON of everything that determines the continuation."""
        tensors, metadata = trainer_state(self)
        metadata.update(order=self.order, position=self.position)
        return tensors, metadata

    def load_state(self, checkpoint: Checkpoint) -> None:
        meta = restore_trainer_state(self, checkpoint)
        self.order, self.position = list(meta['order']), int(meta['position'])


# ---------------------------------------------------------------------------------------------- run
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions() -> dict:
    import ase
    import e3nn

    from ... import __version__

    return {
        'aiida_nextham': __version__,
        'torch': torch.__version__,
        'e3nn': e3nn.__version__,
        'ase': ase.__version__,
    }


def _comparable(config: dict) -> dict:
    train = {k: v for k, v in config['train'].items() if k not in RESUMABLE}
    return {
        'data': {k: v for k, v in config['data'].items() if k != 'paths'},
        'model': config['model'],
        'train': train,
    }


def plot_ff_curves(records: list[dict], path: str | Path) -> Path:
    """PNG: train loss, validation energy/force MAE (EMA weights), learning rate against the step."""
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(13, 3.6))
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9, wspace=0.3)
    loss_axis, val_axis, lr_axis = figure.subplots(1, 3)
    train = [r for r in records if r.get('kind') == 'train' and not r.get('skipped') and r.get('loss')]
    if train:
        loss_axis.semilogy([r['step'] for r in train], [r['loss'] for r in train], lw=1)
    loss_axis.set(xlabel='step', ylabel='loss (normalised)', title='training loss')
    val = [r for r in records if r.get('kind') == 'val']
    if val:
        steps = [r['step'] for r in val]
        val_axis.semilogy(steps, [1e3 * r['force_mae'] for r in val], 'o-', ms=3, label='force MAE (meV/Å)')
        val_axis.semilogy(
            steps, [1e3 * r['energy_mae'] for r in val], 's-', ms=3, label='energy MAE (meV/atom)'
        )
        val_axis.legend(fontsize=7)
    val_axis.set(xlabel='step', title='validation (EMA weights)')
    if train:
        lr_axis.plot([r['step'] for r in train], [r['lr'] for r in train])
    lr_axis.set(xlabel='step', ylabel='learning rate', title='schedule')
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    figure.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


class ForceFieldRun:
    """One ``nextham train-ff`` run: data, split, normalisation, training loop, checkpoints, final model.

    :param resume: continue from the newest checkpoint in ``<output>/checkpoints`` (fresh start when there
        is none); without it, an output folder that already holds checkpoints is refused.
    """

    def __init__(self, config: FFRunConfig, *, resume: bool = False):
        self.config, self.cfg, self.resume = config, config.train, resume
        self.output = Path(config.output)
        self.checkpoints = self.output / CHECKPOINT_DIR
        self.log = MetricsLog(self.output / METRICS)
        self.faults = injected_faults()
        self.best: dict = {'loss': None, 'step': None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0
        self.bad_steps = 0
        self.nan_reloads = 0
        self.last_checkpoint: Path | None = None
        self.started = time.time()

    def _event(self, event: str, message: str, **data) -> None:
        self.log.write(
            {'kind': 'event', 'event': event, 'step': self.trainer.step, 'message': message, **data}
        )

    def setup(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        data = self.config.data
        frames = read_labelled(data.paths)
        self.n_frames = len(frames)
        self.data_hashes = [_sha256(Path(path)) for path in data.paths]
        self.label_settings = label_settings(frames)
        self.split = split_frames(len(frames), data.split, data.seed)
        elements = sorted({int(z) for atoms in frames for z in atoms.numbers})
        train_frames = [frames[i] for i in self.split['train']]
        dtype = self.cfg.torch_dtype
        cutoff = float(self.config.model.get('cutoff', ForceFieldConfig.cutoff))
        structures = [LabelledStructure.from_atoms(a, cutoff, dtype) for a in frames]
        train = [structures[i] for i in self.split['train']]
        neighbours = sum(len(s.graph.edge_src) for s in train) / sum(s.n_atoms for s in train)
        self.model_config = ForceFieldConfig(
            elements=elements, avg_neighbors=max(float(neighbours), 1.0), **self.config.model
        )
        torch.manual_seed(self.cfg.seed)
        model = ForceFieldModel(self.model_config).to(dtype=dtype)
        norm = fit_normalisation(train_frames, elements)
        model.reference_energies.copy_(torch.tensor(norm['reference_energies'], dtype=dtype))
        model.energy_scale.fill_(norm['energy_scale'])
        self.normalisation = norm
        self.trainer = ForceFieldTrainer(model, train, self.cfg)
        self.val = [structures[i] for i in self.split['val']]
        self.test = [structures[i] for i in self.split['test']]
        self.train_structures = train
        checkpoint = self._find_checkpoint()
        if checkpoint is not None:
            self._restore(checkpoint)
            self.log.truncate(self.trainer.step)
            self._event('resumed', f'resumed from {checkpoint.path.name}')
        elif self.log.path.is_file():
            self.log.path.unlink()

    def _find_checkpoint(self) -> Checkpoint | None:
        latest = latest_checkpoint(self.checkpoints)
        if latest is None:
            return None
        if not self.resume:
            raise ConfigError(
                f'{self.output} already holds checkpoints ({latest.name}); continue that run with --resume '
                'or choose another output folder'
            )
        checkpoint = read_checkpoint(latest)
        try:
            old = _comparable(checkpoint.metadata['config'])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f'{latest}: the checkpoint metadata lacks {exc}') from None
        same_data = checkpoint.metadata.get('data_sha256') == self.data_hashes
        if (
            old != _comparable(self.config.as_dict())
            or checkpoint.metadata.get('split') != self.split
            or not same_data
        ):
            raise CheckpointError(
                f'{latest}: the checkpoint was written with another config or dataset; resume with the same '
                f'data, model and train settings (only {", ".join(sorted(RESUMABLE))} may change)'
            )
        return checkpoint

    def _restore(self, checkpoint: Checkpoint) -> None:
        self.trainer.load_state(checkpoint)
        meta = checkpoint.metadata
        self.best, self.stale = dict(meta['best']), int(meta['stale'])
        best = checkpoint.group('best')
        self.best_state = best or None
        self.last_checkpoint = checkpoint.path

    def _checkpoint(self) -> None:
        tensors, metadata = self.trainer.state()
        if self.best_state is not None:
            tensors.update({f'best/{k}': v for k, v in self.best_state.items()})
        metadata.update(
            config=self.config.as_dict(),
            model_config=self.model_config.as_dict(),
            split=self.split,
            data_sha256=self.data_hashes,
            best=self.best,
            stale=self.stale,
        )
        kill_in = self.faults.get('kill_in_checkpoint')
        fault = None
        if kill_in is not None and int(kill_in) == self.trainer.step:
            fault = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731 (test hook)
        self.last_checkpoint = write_checkpoint(self.checkpoints, Checkpoint(tensors, metadata), fault=fault)
        prune_checkpoints(self.checkpoints, self.cfg.keep_checkpoints)
        write_status(self.output, {'status': 'running', 'step': self.trainer.step, 'steps': self.cfg.steps})
        if self.faults.get('kill_after_checkpoint') == self.trainer.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def _validate(self) -> bool:
        """Validate the EMA weights; True when early stopping says stop."""
        metrics = self.trainer.evaluate(self.val)
        self.log.write({'kind': 'val', 'step': self.trainer.step, **metrics})
        best = self.best['loss']
        if best is None or metrics['loss'] < best * (1 - self.cfg.min_delta):
            self.best = {'loss': metrics['loss'], 'step': self.trainer.step, **metrics}
            model = self.trainer.eval_model
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.stale = 0
        else:
            self.stale += 1
        return self.cfg.patience > 0 and self.stale >= self.cfg.patience

    def _nan_guard(self, logged: dict) -> None:
        if not logged['skipped']:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        self._event('nan_skip', f'non-finite loss or gradient at step {logged["step"]}: step skipped')
        if self.bad_steps < self.cfg.nan_patience:
            return
        if self.last_checkpoint is None or self.nan_reloads >= self.cfg.max_nan_reloads:
            raise TrainingDiverged(
                f'{self.bad_steps} non-finite steps in a row after {self.nan_reloads} reload(s) with a lower '
                'learning rate; check the labels or lower train.lr'
            )
        factor = self.trainer.schedule.lr_factor * self.cfg.nan_lr_factor
        self._restore(read_checkpoint(self.last_checkpoint))
        self.trainer.schedule.lr_factor = factor
        self.nan_reloads += 1
        self.bad_steps = 0
        self.log.truncate(self.trainer.step)
        self._event('nan_reload', f'reloaded {self.last_checkpoint.name}; learning-rate factor {factor:g}')

    def run(self) -> dict:
        self.setup()
        trainer, cfg = self.trainer, self.cfg
        if self.last_checkpoint is None:
            self._checkpoint()  # step 0: something to reload for the NaN guard
        stopped = False
        while trainer.step < cfg.steps and not stopped:
            logged = trainer.train_step()
            self.log.write({'kind': 'train', **logged})
            self._nan_guard(logged)
            step = trainer.step
            if step % cfg.val_every == 0 or step == cfg.steps:
                stopped = self._validate()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped:
                self._checkpoint()
        if stopped:
            self._event('early_stop', f'no improvement for {cfg.patience} validations: stopped')
        return self.finish('early_stopped' if stopped else 'finished')

    def finish(self, status: str) -> dict:
        model = copy.deepcopy(self.trainer.eval_model)
        if self.cfg.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
        metrics = {
            'train': self.trainer.evaluate(self.train_structures, model),
            'val': self.trainer.evaluate(self.val, model),
        }
        if self.test:
            metrics['test'] = self.trainer.evaluate(self.test, model)
        self.log.write({'kind': 'final', 'step': self.trainer.step, **{k: v for k, v in metrics.items()}})
        provenance = {
            'data': [
                {'path': p, 'sha256': h}
                for p, h in zip(self.config.data.paths, self.data_hashes, strict=True)
            ],
            'n_structures': self.n_frames,
            'label_settings': self.label_settings,
            'split': self.split,
            'seeds': {'split': self.config.data.seed, 'train': self.cfg.seed},
            'run_config': self.config.as_dict(),
            'normalisation': self.normalisation,
            'steps': self.trainer.step,
            'best': self.best,
            'metrics': metrics,
            'units': {'energy_mae': 'eV/atom', 'force_mae': 'eV/Å'},
            'versions': _versions(),
        }
        model_dir = save_forcefield(model, self.output / MODEL_DIR, json_safe(provenance))
        try:
            plot_ff_curves(self.log.read(), self.output / CURVES)
        except Exception as exc:  # a plotting problem must not lose a trained model
            self._event('plot_failed', f'learning curves not drawn ({exc})')
        summary = {
            'status': status,
            'output': str(self.output),
            'model': str(model_dir),
            'steps': self.trainer.step,
            'n_structures': {k: len(v) for k, v in self.split.items()},
            'metrics': metrics,
            'best_step': self.best['step'],
            'wall_time': time.time() - self.started,
        }
        write_status(self.output, summary)
        return json_safe(summary)
