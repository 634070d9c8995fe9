"""The versioned HDF5 file of a block Hamiltonian (schema in ``docs/file_format.md``).

Layout (schema_version 1)::

    /                       attrs: format, schema_version, spin, hermitian_storage,
                                   fermi_level, n_electrons, metadata (JSON)
    /structure/lattice      (3, 3) float64, rows are lattice vectors, Å
    /structure/positions    (n_atoms, 3) float64, Cartesian, Å
    /structure/numbers      (n_atoms,) int64
    /basis                  attrs: json (Basis.to_json)
    /pairs                  (n_pairs, 5) int64: R1, R2, R3, i, j (0-based atoms)
    /blocks/H, /blocks/S, /blocks/H0
                            flat, chunked arrays; pair p's block is
                            [offsets[p], offsets[p+1]) reshaped to (spin..., ni, nj)

``hermitian_storage`` is ``'full'`` (both (R, i, j) and (-R, j, i) stored) or ``'half'`` (only one
of each partner couple; readers complete the other by hermiticity).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .basis import Basis
from .block import MATRICES, BlockHamiltonian, HamiltonianError

__all__ = ['FORMAT_NAME', 'SCHEMA_VERSION', 'read_hdf5', 'write_hdf5', 'is_nextham_hdf5']

FORMAT_NAME = 'nextham-block-hamiltonian'
SCHEMA_VERSION = 1
_CHUNK = 1 << 18


def write_hdf5(
    bh: BlockHamiltonian, path: str | Path, *, half: bool = False, compression: str | None = None
) -> Path:
    """Write ``bh`` to ``path`` atomically (a temporary file is renamed into place).

    :param half: store each hermitian couple once (i < j, or i == j and R >= 0).
    :param compression: an h5py compression filter such as ``'gzip'`` (None: uncompressed, fastest).
    """
    path = Path(path)
    if half:
        bh = _half(bh)
    tmp = path.with_name(f'.{path.name}.tmp')
    try:
        with h5py.File(tmp, 'w') as handle:
            handle.attrs['format'] = FORMAT_NAME
            handle.attrs['schema_version'] = SCHEMA_VERSION
            handle.attrs['spin'] = bh.spin
            handle.attrs['hermitian_storage'] = 'half' if half else 'full'
            handle.attrs['metadata'] = json.dumps(bh.metadata, sort_keys=True)
            for key in ('fermi_level', 'n_electrons'):
                value = getattr(bh, key)
                if value is not None:
                    handle.attrs[key] = float(value)
            structure = handle.create_group('structure')
            structure['lattice'] = bh.lattice
            structure['positions'] = bh.positions
            structure['numbers'] = bh.numbers
            handle.create_group('basis').attrs['json'] = bh.basis.to_json()
            handle.create_dataset('pairs', data=bh.pairs, chunks=(min(max(bh.n_pairs, 1), _CHUNK // 5), 5))
            blocks = handle.create_group('blocks')
            for name in MATRICES:
                data = bh.matrix(name)
                if data is not None:
                    chunks = (min(max(data.size, 1), _CHUNK),)
                    blocks.create_dataset(name, data=data, chunks=chunks, compression=compression)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_nextham_hdf5(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file written by :func:`write_hdf5` (any schema version)."""
    try:
        with h5py.File(path, 'r') as handle:
            return handle.attrs.get('format') == FORMAT_NAME
    except OSError:
        return False


def read_hdf5(path: str | Path) -> BlockHamiltonian:
    """Read a block-Hamiltonian file; half storage is completed by hermiticity."""
    path = Path(path)
    try:
        handle = h5py.File(path, 'r')
    except OSError as exc:
        raise HamiltonianError(f'{path}: not a readable HDF5 file ({exc})') from None
    with handle:
        if handle.attrs.get('format') != FORMAT_NAME:
            raise HamiltonianError(
                f'{path}: not a nextham block-Hamiltonian file (no format={FORMAT_NAME!r})'
            )
        version = int(handle.attrs.get('schema_version', -1))
        if version != SCHEMA_VERSION:
            raise HamiltonianError(
                f'{path}: schema_version {version} is not supported by this aiida-nextham '
                f'(reads version {SCHEMA_VERSION}); upgrade the package or re-export the file'
            )
        try:
            arrays = {name: handle['blocks'][name][()] for name in MATRICES if name in handle['blocks']}
            bh = BlockHamiltonian(
                lattice=handle['structure/lattice'][()],
                positions=handle['structure/positions'][()],
                numbers=handle['structure/numbers'][()],
                basis=Basis.from_json(handle['basis'].attrs['json']),
                pairs=handle['pairs'][()],
                hamiltonian=arrays.get('H'),
                overlap=arrays.get('S'),
                h0=arrays.get('H0'),
                spin=str(handle.attrs['spin']),
                fermi_level=_optional_float(handle.attrs.get('fermi_level')),
                n_electrons=_optional_float(handle.attrs.get('n_electrons')),
                metadata=json.loads(handle.attrs.get('metadata', '{}')),
            )
        except KeyError as exc:
            raise HamiltonianError(
                f'{path}: missing {exc.args[0]!r}; the file is truncated or not complete'
            ) from None
        storage = handle.attrs.get('hermitian_storage', 'full')
    if storage == 'half':
        bh = bh.complete_hermitian()
    elif storage != 'full':
        raise HamiltonianError(f'{path}: unknown hermitian_storage {storage!r}')
    return bh


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _half(bh: BlockHamiltonian) -> BlockHamiltonian:
    """Keep one pair of each hermitian couple: i < j, or i == j with R lexicographically >= 0."""
    i, j = bh.pairs[:, 3], bh.pairs[:, 4]
    r = bh.pairs[:, :3]
    first_nonzero = np.where(r[:, 0] != 0, r[:, 0], np.where(r[:, 1] != 0, r[:, 1], r[:, 2]))
    keep = (i < j) | ((i == j) & (first_nonzero >= 0))
    if bh.complete_hermitian().n_pairs != bh.n_pairs:
        raise HamiltonianError(
            'half storage needs every hermitian partner present; call complete_hermitian()'
        )
    return bh.select_pairs(keep)
