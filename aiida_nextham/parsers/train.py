"""Parser of ``nextham train``: status, metrics log, model and last checkpoint into nodes.

``status.json`` is the source of truth (under ``torchrun`` the exit code of the job is the launcher's):
``finished``/``early_stopped`` -> success; ``failed`` -> the exit code of the engine's named failure;
``running`` -> the process was killed (walltime, node failure, kill) and the last checkpoint is returned
so that the run can be resumed. What can be output is output in every case (metrics, learning curves and
the last checkpoint also for failed runs), and the parser never raises.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.engine import ExitCode

from .base import EngineParser, json_safe, last_line

__all__ = ('ENGINE_EXIT_CODES', 'NexthamTrainParser')

#: ``nextham train`` exit code (``status.json``) -> exit-code label of the CalcJob
ENGINE_EXIT_CODES = {
    30: 'ERROR_BAD_CONFIG',
    31: 'ERROR_BAD_DATA',
    32: 'ERROR_BAD_CHECKPOINT',
    33: 'ERROR_DIVERGED',
}
#: named engine errors (``status.json`` ``error``), for a status without a known exit code
ENGINE_ERRORS = {
    'BadConfig': 'ERROR_BAD_CONFIG',
    'BadData': 'ERROR_BAD_DATA',
    'BadCheckpoint': 'ERROR_BAD_CHECKPOINT',
    'Diverged': 'ERROR_DIVERGED',
}
#: scheduler exit codes of aiida-core after which a `running` status means "stopped from outside"
SCHEDULER_REASONS = {
    120: 'the scheduler reports the walltime was exceeded',
    140: 'the scheduler reports a node failure',
}
SCHEDULER_OUT_OF_MEMORY = 110
_STEP_FOLDER = re.compile(r'^step-(\d{8,})$')


class NexthamTrainParser(EngineParser):
    """Turn a training run's files into ``model``, ``metrics``, ``learning_curves`` and ``checkpoint``."""

    unexpected_exit_code = 'ERROR_OUTPUT_UNREADABLE'  # an unforeseen problem is an unreadable output

    # ---------------------------------------------------------------------------------------- main
    def _parse(self, temporary: str | None):
        calc = self.node.process_class
        try:
            retrieved = self.retrieved
        except NotExistent:
            return self.exit_codes.ERROR_NO_RETRIEVED_FOLDER
        names = retrieved.base.repository.list_object_names()
        temporary = Path(temporary) if temporary and temporary != 'None' else None

        records = self._read_metrics(calc._METRICS_FILE, names)
        if records:
            self.out('learning_curves', learning_curves(records))
        checkpoint = self._last_checkpoint(temporary, calc._CHECKPOINT_FOLDER)
        if checkpoint is not None:
            self.out('checkpoint', checkpoint_folder_data(checkpoint, records))

        if calc._STATUS_FILE not in names:
            reason = SCHEDULER_REASONS.get(self.node.exit_status)
            if reason and checkpoint is None:
                return self.exit_codes.ERROR_INTERRUPTED_WITHOUT_CHECKPOINT.format(reason=reason)
            stderr = self._read_text(calc._STDERR_FILE, names)
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=calc._STATUS_FILE, message=last_line(stderr)
            )
        try:
            status = json.loads(retrieved.base.repository.get_object_content(calc._STATUS_FILE))
            if not isinstance(status, dict) or 'status' not in status:
                raise ValueError('not a JSON object with a `status`')
        except (ValueError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                filename=calc._STATUS_FILE, message=str(exc)
            )

        metrics = self._metrics(status, records, checkpoint)
        self.out('metrics', orm.Dict(json_safe(metrics)))
        state = status['status']

        if state == 'failed':
            label = ENGINE_EXIT_CODES.get(status.get('exit_code'))
            label = label or ENGINE_ERRORS.get(str(status.get('error')), 'ERROR_ENGINE_FAILED')
            message = status.get('message') or status.get('error') or 'no message'
            return getattr(self.exit_codes, label).format(message=message)

        if state == 'running':  # status.json is rewritten at every checkpoint: the process was stopped
            if self.node.exit_status == SCHEDULER_OUT_OF_MEMORY:
                return self.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY
            reason = SCHEDULER_REASONS.get(
                self.node.exit_status, 'status.json still says running: the process was killed'
            )
            if checkpoint is None:
                return self.exit_codes.ERROR_INTERRUPTED_WITHOUT_CHECKPOINT.format(reason=reason)
            return self.exit_codes.ERROR_WALLTIME_WITH_CHECKPOINT.format(
                step=metrics['steps'], steps=metrics['target_steps'], reason=reason, checkpoint=checkpoint[0]
            )

        if state not in ('finished', 'early_stopped'):
            return self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(
                filename=calc._STATUS_FILE, message=f'unknown status {state!r}'
            )
        model_folder = temporary / calc._MODEL_FOLDER if temporary is not None else None
        if model_folder is None or not model_folder.is_dir():
            return self.exit_codes.ERROR_MODEL_MISSING
        try:
            from ..data.model import ModelData

            model = ModelData(model_folder)
        except Exception as exc:
            return self.exit_codes.ERROR_MODEL_UNREADABLE.format(message=f'{type(exc).__name__}: {exc}')
        self.out('model', model)
        # an explicit success overrides a scheduler exit code (e.g. a walltime hit while cleaning up)
        return ExitCode(0)

    # ------------------------------------------------------------------------------------- pieces
    def _metrics(self, status: dict, records: list[dict], checkpoint) -> dict:
        """The summary of the run (status.json, completed with the metrics log and the config)."""
        train = [r for r in records if r.get('kind') == 'train']
        validations = [r for r in records if r.get('kind') == 'val']
        events = [r for r in records if r.get('kind') == 'event']
        config = self.node.inputs.config.get_dict() if 'config' in self.node.inputs else {}
        target = (config.get('train') or {}).get('steps')
        if target is None:
            from dataclasses import fields

            from ..ml.training import TrainConfig

            target = next(f.default for f in fields(TrainConfig) if f.name == 'steps')
        finished = status['status'] in ('finished', 'early_stopped')
        steps = (
            status.get('steps') if finished else max([r['step'] for r in train], default=status.get('step'))
        )
        resumes = [e for e in events if e.get('event') == 'resume']
        best = min(
            (r for r in validations if r.get('val_mae') is not None), key=lambda r: r['val_mae'], default=None
        )
        metrics = {
            'status': status['status'],
            'steps': steps,
            'target_steps': target,
            'best_val_mae': status.get('best_val_mae', best['val_mae'] if best else None),
            'best_step': status.get('best_step', best['step'] if best else None),
            'final_val_mae': validations[-1]['val_mae'] if validations else None,
            'final_val_step': validations[-1]['step'] if validations else None,
            'final_train_loss': next((r.get('total') for r in reversed(train) if not r.get('skipped')), None),
            'skipped_steps': status.get('skipped_steps', sum(1 for r in train if r.get('skipped'))),
            'nan_reloads': status.get(
                'nan_reloads', sum(1 for e in events if e.get('event') == 'nan_reload')
            ),
            'wall_time': status.get('wall_time'),
            'world_size': status.get('world_size'),
            'device': status.get('device'),
            'resumed_from_step': resumes[-1].get('step') if resumes else None,
            'checkpoint_step': checkpoint[0] if checkpoint is not None else None,
            'units': {'val_mae': 'meV', 'train_loss': 'meV (+ meV² terms)', 'wall_time': 's'},
        }
        if 'checkpoint' in self.node.inputs and not resumes:
            self.logger.warning('a checkpoint was given but the run started afresh (no checkpoint found)')
            metrics['resume_failed'] = True
        if status['status'] == 'failed':
            metrics.update({key: status.get(key) for key in ('error', 'exit_code', 'message')})
        return metrics

    def _read_metrics(self, name: str, names: list[str]) -> list[dict]:
        records = []
        for line in self._read_text(name, names).splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if isinstance(record, dict) and isinstance(record.get('step'), int):
                records.append(record)
        return records

    @staticmethod
    def _last_checkpoint(temporary: Path | None, name: str) -> tuple[int, Path] | None:
        """``(step, folder)`` of the newest complete checkpoint retrieved (None if there is none)."""
        root = temporary / name if temporary is not None else None
        if root is None or not root.is_dir():
            return None
        found = []
        for folder in root.iterdir():
            match = _STEP_FOLDER.match(folder.name)
            files = ('checkpoint.json', 'checkpoint.safetensors')
            if match and all((folder / name).is_file() for name in files):
                found.append((int(match.group(1)), folder))
        return max(found, default=None)


def learning_curves(records: list[dict]) -> orm.ArrayData:
    """ArrayData of the metrics log: ``train_step``, ``train_loss`` (NaN for skipped steps), ``lr``,
    ``val_step``, ``val_mae`` and ``val_rmse`` (meV)."""
    train = [r for r in records if r.get('kind') == 'train']
    validations = [r for r in records if r.get('kind') == 'val']

    def column(rows, key, dtype=float):
        values = [r.get(key) for r in rows]
        if dtype is int:
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)

    curves = orm.ArrayData()
    curves.set_array('train_step', column(train, 'step', int))
    curves.set_array(
        'train_loss', np.array([math.nan if r.get('skipped') else r.get('total', math.nan) for r in train])
    )
    curves.set_array('lr', column(train, 'lr'))
    curves.set_array('val_step', column(validations, 'step', int))
    curves.set_array('val_mae', column(validations, 'val_mae'))
    curves.set_array('val_rmse', column(validations, 'val_rmse'))
    units = {'train_loss': 'meV (+ meV² terms)', 'lr': '1', 'val_mae': 'meV', 'val_rmse': 'meV'}
    curves.base.attributes.set('units', units)
    return curves


def checkpoint_folder_data(checkpoint: tuple[int, Path], records: list[dict]) -> orm.FolderData:
    """FolderData with the two checkpoint files and the metrics log up to the checkpoint's step."""
    step, folder = checkpoint
    node = orm.FolderData()
    for name in ('checkpoint.json', 'checkpoint.safetensors'):
        node.base.repository.put_object_from_file(str(folder / name), name)
    kept = [r for r in records if r.get('step', 0) <= step]
    if kept:
        import io

        text = ''.join(json.dumps(r) + '\n' for r in kept)
        node.base.repository.put_object_from_filelike(io.BytesIO(text.encode()), 'metrics.jsonl')
    node.base.attributes.set('step', step)
    return node
