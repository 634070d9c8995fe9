"""Model files: a folder with ``model.safetensors`` (weights and scales) and ``model.json`` (config,
coverage, provenance). Nothing is ever unpickled: safetensors holds only tensors, JSON only data.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import NexthamModel

__all__ = ['MODEL_FORMAT', 'ModelFileError', 'load_model', 'read_model_metadata', 'save_model']

MODEL_FORMAT = 'nextham-model'
FORMAT_VERSION = 1
WEIGHTS, METADATA = 'model.safetensors', 'model.json'


class ModelFileError(ValueError):
    """A model folder is missing, incomplete, of another format or inconsistent with its weights."""


def save_model(model: NexthamModel, folder: str | Path, provenance: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` (each atomically).

    :param provenance: JSON-serialisable training provenance (data, metrics, seeds, versions).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {
        'format': MODEL_FORMAT,
        'format_version': FORMAT_VERSION,
        'architecture': 'nextham-equivariant-transformer',
        'config': model.config.as_dict(),
        'elements': list(model.orbital_irreps.elements),
        'output_irreps': str(model.out_irreps),
        'n_parameters': model.n_parameters,
        'dtype': str(next(model.parameters()).dtype).removeprefix('torch.'),
        'provenance': provenance or {},
    }
    _atomic(folder / WEIGHTS, lambda path: save_file(tensors, str(path), metadata={'format': MODEL_FORMAT}))
    _atomic(folder / METADATA, lambda path: Path(path).write_text(json.dumps(metadata, indent=1)))
    return folder


def _atomic(target: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.')
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_model_metadata(
    folder: str | Path, file_format: str = MODEL_FORMAT, version: int = FORMAT_VERSION
) -> dict:
    """The JSON metadata of a model folder (checked: ``file_format`` and ``version``)."""
    folder = Path(folder)
    path = folder / METADATA
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise ModelFileError(f'{folder}: not a model folder (needs {WEIGHTS} and {METADATA})')
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f'{path}: not valid JSON ({exc})') from None
    if metadata.get('format') != file_format:
        raise ModelFileError(f'{path}: format {metadata.get("format")!r} is not {file_format!r}')
    if metadata.get('format_version') != version:
        raise ModelFileError(
            f'{path}: format version {metadata.get("format_version")} is not supported '
            f'(this version of aiida-nextham reads {version})'
        )
    return metadata


def load_model(folder: str | Path, device: str | torch.device = 'cpu') -> NexthamModel:
    """Rebuild the model from its config and load its weights (safetensors only)."""
    folder = Path(folder)
    metadata = read_model_metadata(folder)
    model = NexthamModel(ModelConfig.from_dict(metadata['config']))
    tensors = load_file(str(folder / WEIGHTS), device=str(device))
    dtype = getattr(torch, metadata.get('dtype', 'float32'))
    model = model.to(device=device, dtype=dtype)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            f'{folder}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})'
        )
    return model.eval()
