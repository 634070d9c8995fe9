"""What a training run leaves behind while it runs: status file, JSONL metrics, learning curves."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

__all__ = ['CURVES', 'METRICS', 'STATUS', 'MetricsLog', 'json_safe', 'plot_learning_curves', 'write_status']

METRICS, CURVES, STATUS = 'metrics.jsonl', 'learning_curves.png', 'status.json'


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def write_status(output: str | Path, data: dict) -> Path:
    """Write ``output/status.json`` atomically (what a parser reads, even after the process died)."""
    path = Path(output) / STATUS
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(json_safe({**data, 'time': time.time()}), indent=1) + '\n')
    return path


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (``kind`` = train, val or event); non-finite -> null."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, 'a') as handle:
                handle.write(json.dumps(json_safe(record), allow_nan=False) + '\n')

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
