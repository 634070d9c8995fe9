"""A whole ``nextham train`` run from a :class:`~aiida_nextham.ml.run_config.RunConfig`.

Split, scales, batches by (seed, epoch), validation, early stopping, atomic checkpoints with exact
resume, NaN-guard reloads with a lower learning rate, a JSONL metrics log, learning curves and the
final model with provenance. DDP-aware: every rank runs it, only rank 0 writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_folder,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
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
from .inference import is_pseudo_file
from .loss import real_space_terms
from .model import NexthamModel
from .predictor import fit_scales, predict_batch
from .training import (
    StructureSource,
    Trainer,
    TrainingDiverged,
    injected_faults,
    rank_and_world_size,
    resolve_device,
)
from .training_log import CURVES, METRICS, STATUS, MetricsLog, json_safe, plot_learning_curves, write_status

if TYPE_CHECKING:
    from .run_config import RunConfig

__all__ = ['CHECKPOINT_DIR', 'MODEL_DIR', 'TrainingRun']

#: train settings that may differ between a checkpoint and the run resuming it
RESUMABLE_CHANGES = frozenset(
    {'steps', 'val_every', 'checkpoint_every', 'keep_checkpoints', 'patience', 'min_delta', 'device', 'amp'}
    | {'progress', 'nan_patience', 'max_nan_reloads'}
)
MODEL_DIR, CHECKPOINT_DIR = 'model', 'checkpoints'
#: the learning curves are redrawn at a checkpoint only if this many seconds passed since the last drawing
CURVES_INTERVAL = 60.0


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
            record['sha256'] = _sha256(path)
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
            if value is None or (key == 'pseudo' and is_pseudo_file(value)):
                continue  # a pseudopotential file of the run (AiiDA sandbox): its name says nothing
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


def _comparable(config: dict, model_config: dict, allowed: frozenset[str] = frozenset()) -> dict:
    """What a resumed run must share with its checkpoint: data and train settings, the built model config.

    :param allowed: train settings the resuming config deliberately changes (``resume.allow_changes``).
    """
    where = ('folder', 'paths', 'cache_dir', 'cache_size')
    data = {k: v for k, v in config['data'].items() if k not in where}
    skip = RESUMABLE_CHANGES | allowed
    train = {k: v for k, v in config['train'].items() if k not in skip}
    return json.loads(json.dumps({'data': data, 'model': model_config, 'train': train}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


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
        self.rank, self.world_size = rank_and_world_size()
        self.main = self.rank == 0
        self.output = Path(config.output)
        self.checkpoints = self.output / CHECKPOINT_DIR
        self.log = MetricsLog(self.output / METRICS, enabled=self.main)
        self.faults = injected_faults()
        self.best: dict = {'val_mae': None, 'step': None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale_validations = 0
        self.bad_steps = 0
        self.nan_reloads = 0
        self.skipped_steps = 0
        self.last_validation: dict | None = None
        self.last_checkpoint: Path | None = None
        self._orders: dict[int, list[int]] = {}
        self.parent: dict | None = None
        self.resume_changes: list[str] = []
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
        if self.config.model.init_from is not None:
            self.model_config = self._parent_config()
        else:
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

    def _parent_config(self):
        """The architecture of the model named by ``model.init_from`` (fine-tuning)."""
        from .config import ModelConfig
        from .serialization import ModelFileError, read_model_metadata

        folder = Path(self.config.model.init_from)
        try:
            return ModelConfig.from_dict(read_model_metadata(folder)['config'])
        except (ModelFileError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f'model.init_from: {exc}') from None

    def _init_from_parent(self, model: NexthamModel) -> None:
        """Start from the weights and scales of the ``model.init_from`` model (safetensors only)."""
        from safetensors.torch import load_file

        from .serialization import WEIGHTS

        folder = Path(self.config.model.init_from)
        try:
            tensors = load_file(str(folder / WEIGHTS))
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        except Exception as exc:  # safetensors raises its own types for a bad file, torch for bad shapes
            raise CheckpointError(f'model.init_from: {folder / WEIGHTS}: {exc}') from None
        if missing or unexpected:
            raise CheckpointError(
                f'model.init_from: {folder / WEIGHTS} does not match its config '
                f'(missing {missing[:5]}, unexpected {unexpected[:5]})'
            )
        self.parent = {'path': str(folder), 'sha256': _sha256(folder / WEIGHTS)}
        self._event('init_from', f'starting from the weights of {folder}', sha256=self.parent['sha256'])

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
        allowed = frozenset(self.config.resume.allow_changes)
        try:
            old = _comparable(checkpoint.metadata['config'], checkpoint.metadata['model_config'], allowed)
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f'{latest}: the checkpoint metadata lacks {exc}') from None
        new = _comparable(self.config.as_dict(), self.model_config.as_dict(), allowed)
        changes = _config_changes(old, new)
        if changes:
            raise CheckpointError(
                f'{latest}: the checkpoint was written with another config ({"; ".join(changes[:5])}); '
                'resume with the same data, model and train settings (only '
                f'{", ".join(sorted(RESUMABLE_CHANGES))} may change, and what resume.allow_changes names)'
            )
        self.resume_changes = _config_changes(
            {k: checkpoint.metadata['config']['train'].get(k) for k in allowed},
            {k: self.config.train.as_dict().get(k) for k in allowed},
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
        if checkpoint is None and self.config.model.init_from is not None:
            self._init_from_parent(model)  # fine-tuning keeps the parent's scales
        elif checkpoint is None:  # scales of the training split only (a checkpoint carries its own)
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
            if self.resume_changes:
                changes = '; '.join(self.resume_changes)
                message = f'settings changed on resume (resume.allow_changes): {changes}'
                self._event('resume_changes', message, changes=self.resume_changes)
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
        self.parent = meta.get('init_from', self.parent)

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
            if self.parent is not None:
                metadata['init_from'] = self.parent
            fault = None
            if self.faults.get('kill_in_checkpoint') == step:
                fault = _kill_self
            path = write_checkpoint(self.checkpoints, Checkpoint(tensors, json_safe(metadata)), fault=fault)
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
            **({'init_from': self.parent} if self.parent is not None else {}),
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
