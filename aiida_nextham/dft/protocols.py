"""Named engine settings (``fast``, ``balanced``, ``stringent``) from ``protocols.yaml``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .config import DftConfig
from .errors import DftConfigError

__all__ = ['PROTOCOLS', 'get_protocol', 'protocol_settings']

_FILE = Path(__file__).with_name('protocols.yaml')
PROTOCOLS = ('fast', 'balanced', 'stringent')


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return yaml.safe_load(_FILE.read_text())


def protocol_settings(name: str | None = None) -> dict[str, Any]:
    """The raw settings of protocol ``name`` (default: the file's default), without the description."""
    data = _load()
    name = name or data['default']
    if name not in data['protocols']:
        raise DftConfigError(f'unknown protocol {name!r}; choose from {sorted(data["protocols"])}')
    return {k: v for k, v in data['protocols'][name].items() if k != 'description'}


def get_protocol(name: str | None = None, overrides: dict[str, Any] | None = None) -> DftConfig:
    """A validated :class:`DftConfig` of protocol ``name`` with ``overrides`` applied on top.

    ``None`` values in ``overrides`` are ignored (convenient for unset command-line options).
    """
    settings = protocol_settings(name)
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return DftConfig.from_dict(settings)
