"""Files of a phonon run: phonopy's own (disp/params YAML, FORCE_SETS, force-constants HDF5) and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ['FILES', 'compare_bands', 'read_bands', 'write_json', 'write_phonon_files']

#: every file :func:`write_phonon_files` writes, by role
FILES = {
    'disp': 'phonopy_disp.yaml',
    'params': 'phonopy_params.yaml',
    'force_sets': 'FORCE_SETS',
    'force_constants': 'force_constants.hdf5',
    'bands': 'bands.json',
    'dos': 'dos.json',
    'thermal': 'thermal_properties.json',
}


def _default(value):
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=1, default=_default) + '\n')
    return path


def write_phonon_files(result, folder: str | Path) -> dict[str, Path]:
    """Write the files of :data:`FILES` for ``result`` (a :class:`PhononResult`) into ``folder``.

    ``phonopy_params.yaml`` (structure, supercell matrix, displacements and forces) is what
    ``phonopy.load`` and aiida-phonopy read back; ``force_constants.hdf5`` is phonopy's format.
    """
    from phonopy.file_IO import write_force_constants_to_hdf5, write_FORCE_SETS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    phonon = result.phonopy
    paths = {key: folder / name for key, name in FILES.items()}
    phonon.save(
        paths['disp'], settings={'force_sets': False, 'displacements': True, 'force_constants': False}
    )
    phonon.save(
        paths['params'], settings={'force_sets': True, 'displacements': True, 'force_constants': False}
    )
    write_FORCE_SETS(phonon.dataset, filename=paths['force_sets'])
    write_force_constants_to_hdf5(
        phonon.force_constants, filename=str(paths['force_constants']), p2s_map=phonon.primitive.p2s_map
    )
    write_json(result.band_dict(), paths['bands'])
    write_json(result.dos_dict(), paths['dos'])
    write_json(result.thermal_dict(), paths['thermal'])
    return paths


def read_bands(path: str | Path) -> dict:
    """A ``bands.json`` with arrays for qpoints, distances, frequencies (THz) and primitive_cell."""
    data = json.loads(Path(path).read_text())
    for key in ('qpoints', 'distances', 'frequencies', 'primitive_cell'):
        data[key] = np.asarray(data[key], dtype=float)
    return data


def compare_bands(reference: dict | str | Path, other: dict | str | Path, atol: float = 1e-6) -> dict:
    """Frequency errors of ``other`` against ``reference`` on the same q-path (THz).

    Both must have the same q-points in the same Cartesian frame (checked through each file's
    primitive cell, so two runs whose phonopy chose different primitive bases still compare).
    :return: ``mae``, ``rmse``, ``max_abs`` over all modes and q-points, and ``mae_by_band``.
    """
    ref = read_bands(reference) if not isinstance(reference, dict) else reference
    oth = read_bands(other) if not isinstance(other, dict) else other
    to_cartesian = lambda d: d['qpoints'] @ (2 * np.pi * np.linalg.inv(d['primitive_cell']).T)  # noqa: E731
    if ref['frequencies'].shape != oth['frequencies'].shape or not np.allclose(
        to_cartesian(ref), to_cartesian(oth), atol=atol
    ):
        raise ValueError('the two band files are not on the same q-path (q-points or number of modes differ)')
    error = np.sort(oth['frequencies'], axis=1) - np.sort(ref['frequencies'], axis=1)
    return {
        'mae': float(np.abs(error).mean()),
        'rmse': float(np.sqrt((error**2).mean())),
        'max_abs': float(np.abs(error).max()),
        'mae_by_band': np.abs(error).mean(axis=0).tolist(),
        'n_qpoints': int(len(error)),
    }
