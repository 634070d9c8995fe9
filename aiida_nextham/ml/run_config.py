"""Typed configuration of a training run (``nextham train CONFIG``), read from YAML or JSON.

Sections::

    data:   folder or paths of label files, graph cutoff, split fractions and seed, caches
    model:  a preset name, or {preset: ..., <ModelConfig field>: value, ...}, or {init_from: MODEL_FOLDER}
            to fine-tune a trained model (its architecture and weights are the starting point)
    train:  TrainConfig fields (with a nested ``loss`` section of LossConfig fields)
    output: folder of checkpoints, logs and the final model
    resume: optional; {allow_changes: [lr, ...]}: train settings that may deliberately differ from the
            checkpoint's on --resume (e.g. a lower learning rate after a divergence)

Relative paths in a config file are relative to the file's folder. Unknown keys anywhere, values of
the wrong type and invalid settings raise :class:`ConfigError` naming the key and its section.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .config import PRESETS, ModelConfig
from .loss import LossConfig
from .training import TrainConfig

__all__ = ['ConfigError', 'DataConfig', 'ModelSection', 'ResumeConfig', 'RunConfig', 'load_run_config']

SECTIONS = ('data', 'model', 'train', 'output', 'resume')
#: train settings a resumed run may change when the config names them in ``resume.allow_changes``
#: (optimiser knobs: the model, the data and the batch order stay those of the checkpoint)
ALLOWED_RESUME_CHANGES = ('lr', 'grad_clip', 'weight_decay')


class ConfigError(ValueError):
    """A run configuration is unreadable, has unknown keys or invalid values."""


@dataclass
class DataConfig:
    """Where the labels are and how they are split.

    :param folder: folder of label files (``pattern`` selects them); or give ``paths``.
    :param paths: label files (block-Hamiltonian HDF5 with H0, H, S).
    :param pattern: glob of label files in ``folder``.
    :param cutoff: graph cutoff in Å (None: the model's cutoff; larger than it is useless).
    :param split: (train, val, test) fractions; test is never touched by training.
    :param seed: seed of the split.
    :param cache_dir: folder of the reciprocal-target cache (None: beside each label file).
    :param cache_size: structures (graph + loss tensors) kept in memory; the rest is re-read on demand.
    """

    folder: str | None = None
    paths: list[str] = field(default_factory=list)
    pattern: str = '*.h5'
    cutoff: float | None = None
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0
    cache_dir: str | None = None
    cache_size: int = 64

    def __post_init__(self):
        if (self.folder is None) == (not self.paths):
            raise ValueError('give exactly one of `folder` and `paths`')
        if len(self.split) != 3:
            raise ValueError(f'split must be [train, val, test] fractions, got {self.split}')
        if self.cutoff is not None and self.cutoff <= 0:
            raise ValueError(f'cutoff must be positive, got {self.cutoff}')
        if self.cache_size < 0 or self.seed < 0:
            raise ValueError('cache_size and seed must be >= 0')


@dataclass
class ModelSection:
    """A :class:`ModelConfig` preset plus overrides; ``shells`` default to the dataset's basis.

    :param init_from: folder of a trained model (``model.safetensors`` + ``model.json``) to fine-tune: the
        run starts from its weights and scales, and its config is the architecture (no preset/overrides).
    """

    preset: str = 'small'
    overrides: dict = field(default_factory=dict)
    init_from: str | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f'unknown preset {self.preset!r}; choose from {sorted(PRESETS)}')
        if self.init_from is not None and self.overrides:
            raise ValueError(
                f'init_from takes the architecture from the model it names; remove {sorted(self.overrides)}'
            )

    def build(self, shells: dict[int, tuple[int, ...]] | None = None) -> ModelConfig:
        """The model config; ``shells`` (from the dataset) are used unless the overrides set them."""
        overrides = dict(self.overrides)
        if 'shells' not in overrides and shells is not None:
            overrides['shells'] = shells
        return ModelConfig.preset(self.preset, **overrides)

    def as_dict(self) -> dict:
        overrides = dict(self.overrides)
        if 'shells' in overrides:
            overrides['shells'] = {str(z): list(ls) for z, ls in overrides['shells'].items()}
        if self.init_from is not None:
            overrides['init_from'] = self.init_from
        return {'preset': self.preset, **overrides}


@dataclass
class ResumeConfig:
    """What a resumed run may change deliberately.

    :param allow_changes: train settings (from :data:`ALLOWED_RESUME_CHANGES`) that may differ from the
        checkpoint's, e.g. ``['lr']`` to continue a diverged run with a lower learning rate.
    """

    allow_changes: list[str] = field(default_factory=list)

    def __post_init__(self):
        unknown = sorted(set(self.allow_changes) - set(ALLOWED_RESUME_CHANGES))
        if unknown:
            raise ValueError(
                f'allow_changes may name {", ".join(ALLOWED_RESUME_CHANGES)}; got {", ".join(unknown)}'
            )


@dataclass
class RunConfig:
    """A complete training run. Build with :meth:`from_dict` or :func:`load_run_config`."""

    data: DataConfig
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = 'nextham-train'
    resume: ResumeConfig = field(default_factory=ResumeConfig)

    @classmethod
    def from_dict(cls, data: dict, base: str | Path | None = None) -> RunConfig:
        """Check and build; relative paths are resolved against ``base`` (a folder) when given."""
        if not isinstance(data, dict):
            raise ConfigError(f'a run config must be a mapping with sections {list(SECTIONS)}')
        _unknown(data, SECTIONS, 'top level')
        if 'data' not in data:
            raise ConfigError("the run config has no 'data' section (where are the labels?)")
        data_section = _build(DataConfig, data['data'], 'data')
        model = _model_section(data.get('model', {}))
        train_data = _mapping(data.get('train', {}), 'train')
        loss = _build(LossConfig, train_data.get('loss', {}), 'train.loss')
        train = _build(TrainConfig, {**train_data, 'loss': loss}, 'train')
        output = data.get('output', 'nextham-train')
        if not isinstance(output, str) or not output:
            raise ConfigError(f"'output' must be a folder name, got {output!r}")
        resume = _build(ResumeConfig, data.get('resume', {}), 'resume')
        config = cls(data=data_section, model=model, train=train, output=output, resume=resume)
        return config.resolved(base) if base is not None else config

    def resolved(self, base: str | Path) -> RunConfig:
        """A copy with relative paths made absolute against the folder ``base``."""
        base = Path(base)

        def absolute(path):
            return None if path is None else str((base / Path(path).expanduser()).resolve())

        data = dataclasses.replace(
            self.data,
            folder=absolute(self.data.folder),
            paths=[absolute(p) for p in self.data.paths],
            cache_dir=absolute(self.data.cache_dir),
        )
        model = dataclasses.replace(self.model, init_from=absolute(self.model.init_from))
        return dataclasses.replace(self, data=data, model=model, output=absolute(self.output))

    def as_dict(self) -> dict:
        """JSON form (what checkpoints and model provenance record; dict keys are strings)."""
        data = {
            'data': dataclasses.asdict(self.data),
            'model': self.model.as_dict(),
            'train': self.train.as_dict(),
            'output': self.output,
        }
        if self.resume.allow_changes:
            data['resume'] = dataclasses.asdict(self.resume)
        return json.loads(json.dumps(data))


def load_run_config(path: str | Path) -> RunConfig:
    """Read a YAML or JSON run config; relative paths are relative to the file's folder."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f'{path}: cannot read the config ({exc.strerror or exc})') from None
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML/JSON ({" ".join(str(exc).split())})') from None
    try:
        return RunConfig.from_dict(data or {}, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f'{path}: {exc}') from None


# ---------------------------------------------------------------------------------------- checking
def _mapping(value, section: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"section '{section}' must be a mapping, got {type(value).__name__}")
    return value


def _unknown(data: dict, known, section: str) -> None:
    unknown = sorted(str(key) for key in set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in section '{section}'; "
            f'known keys: {", ".join(sorted(known))}'
        )


def _model_section(value) -> ModelSection:
    if isinstance(value, str):
        value = {'preset': value}
    value = dict(_mapping(value, 'model'))
    preset = value.pop('preset', 'small')
    init_from = value.pop('init_from', None)
    if init_from is not None and (not isinstance(init_from, str) or not init_from):
        raise ConfigError(f"'init_from' in section 'model' must be the folder of a model, got {init_from!r}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    _unknown(value, known | {'init_from'}, 'model')
    hints = typing.get_type_hints(ModelConfig)
    for key, item in value.items():
        value[key] = _check_type(item, hints[key], key, 'model')
    try:
        section = ModelSection(preset=preset, overrides=value, init_from=init_from)
        section.build({1: (0,)} if 'shells' not in value else None)  # validate the sizes now
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"section 'model': {exc}") from None
    return section


def _build(cls, value, section: str):
    """``cls(**value)`` after checking keys and simple types; errors name the section."""
    if isinstance(value, cls):
        return value
    value = dict(_mapping(value, section))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown(value, fields, section)
    hints = typing.get_type_hints(cls)
    for key, item in value.items():
        if not dataclasses.is_dataclass(hints[key]):
            value[key] = _check_type(item, hints[key], key, section)
    try:
        return cls(**value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"section '{section}': {exc}") from None


def _check_type(value, hint, key: str, section: str):
    """``value`` if it fits ``hint`` (ints are accepted for floats, lists for tuples), else ConfigError."""
    ok, converted = _fits(value, hint)
    if not ok:
        raise ConfigError(f"'{key}' in section '{section}' must be {_describe(hint)}, got {value!r}")
    return converted


def _fits(value, hint) -> tuple[bool, object]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            ok, converted = _fits(value, option)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in args, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        item_hint = args[0] if args else typing.Any
        converted = []
        for item in value:
            ok, item = _fits(item, item_hint)
            if not ok:
                return False, value
            converted.append(item)
        return True, converted if origin is list or hint is list else tuple(converted)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return ' or '.join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return 'one of ' + ', '.join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return 'null'
    return getattr(hint, '__name__', str(hint))
