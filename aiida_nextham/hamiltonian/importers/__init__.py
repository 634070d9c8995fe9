"""Readers and writers of block Hamiltonians written by other codes, with format auto-detection.

Each format module registers a :class:`Format` here: a name, a ``detect(path)`` predicate that is
cheap and never raises, a ``read(path)`` that returns a :class:`BlockHamiltonian` in the internal
convention (eV, Å, e3nn orbital order) and optionally a ``write(bh, path)``. Readers raise
:class:`~aiida_nextham.hamiltonian.block.HamiltonianError` naming the file and what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..block import BlockHamiltonian, HamiltonianError

__all__ = ['FORMATS', 'Format', 'detect_format', 'read', 'register_format', 'write']


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], BlockHamiltonian] | None = None
    write: Callable[[BlockHamiltonian, Path], Path] | None = None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def _load_builtin_formats() -> None:
    from . import abacus, deeph, nextham  # noqa: F401  (registration on import)


def detect_format(path: str | Path) -> str:
    """Name of the format of ``path`` (a file or a folder).

    :raises HamiltonianError: when no known format matches, or the path does not exist.
    """
    _load_builtin_formats()
    path = Path(path)
    if not path.exists():
        raise HamiltonianError(f'{path}: no such file or folder')
    for fmt in FORMATS.values():
        if fmt.read is not None and fmt.detect(path):
            return fmt.name
    raise HamiltonianError(
        f'{path}: not a recognised block-Hamiltonian file or folder; '
        f'known formats: {", ".join(sorted(FORMATS))} (pass the format explicitly if detection fails)'
    )


def _get(name: str) -> Format:
    _load_builtin_formats()
    try:
        return FORMATS[name]
    except KeyError:
        raise HamiltonianError(
            f'unknown format {name!r}; known formats: {", ".join(sorted(FORMATS))}'
        ) from None


def read(path: str | Path, format: str | None = None) -> BlockHamiltonian:
    """Read any supported file or folder; the format is auto-detected unless given."""
    fmt = _get(format or detect_format(path))
    if fmt.read is None:
        raise HamiltonianError(f'format {fmt.name!r} can be written but not read')
    return fmt.read(Path(path))


def write(bh: BlockHamiltonian, path: str | Path, format: str = 'nextham') -> Path:
    """Write ``bh`` in ``format`` (``'nextham'`` HDF5, ``'deeph-legacy'``, ``'deeph'``, ...)."""
    fmt = _get(format)
    if fmt.write is None:
        raise HamiltonianError(f'format {fmt.name!r} can be read but not written')
    return fmt.write(bh, Path(path))
