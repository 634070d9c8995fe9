"""Parser of ``nextham predict``: the summary, the predicted HDF5 files, bands and DOS into nodes.

The parser never raises: every problem becomes an exit code of :class:`NexthamPredictCalculation`. On
a named engine failure (``{"error": "CoverageMismatch", ...}`` in ``summary.json``) the summary is
still returned as ``results`` so a work chain can read what happened.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from aiida import orm
from aiida.common.exceptions import NotExistent

from .base import EngineParser, json_safe, last_line

__all__ = ('ENGINE_ERROR_EXIT_CODES', 'NexthamPredictParser')

#: ``error`` of the engine summary -> exit-code label of the CalcJob
ENGINE_ERROR_EXIT_CODES = {
    'CoverageMismatch': 'ERROR_MODEL_COVERAGE',
    'ModelFileInvalid': 'ERROR_MODEL_INVALID',
    'H0FileInvalid': 'ERROR_H0_INVALID',
    'InvalidConfig': 'ERROR_INVALID_CONFIG',
    'BadStructure': 'ERROR_BAD_STRUCTURE',
    'UnsupportedElement': 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS',
    'ScfNotConverged': 'ERROR_H0_FAILED',
    'SelfCheckFailed': 'ERROR_H0_FAILED',
    'DftError': 'ERROR_H0_FAILED',
}
#: summary keys of one structure copied into ``results``
_ENTRY_KEYS = (
    'formula',
    'n_atoms',
    'n_orbitals',
    'n_pairs',
    'h0_source',
    'fermi_level',
    'n_electrons',
    'mesh',
    'gap',
    'spectra',
    'timings',
)


class NexthamPredictParser(EngineParser):
    """``summary.json`` and ``<label>.h5|bands.json|dos.json`` -> ``results`` and the output namespaces."""

    # ------------------------------------------------------------------------------------- main
    def _parse(self, temporary_folder):
        calc = self.node.process_class
        try:
            retrieved = self.retrieved
        except NotExistent:
            return self.exit_codes.ERROR_NO_RETRIEVED_FOLDER
        names = retrieved.base.repository.list_object_names()

        if calc._SUMMARY_FILE not in names:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=calc._SUMMARY_FILE, message=last_line(self._read_text(calc._STDERR_FILE, names))
            )
        try:
            summary = json.loads(retrieved.base.repository.get_object_content(calc._SUMMARY_FILE))
            if not isinstance(summary, dict):
                raise ValueError('the summary is not a JSON object')
        except (ValueError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_SUMMARY_UNREADABLE.format(message=str(exc))

        labels = self._labels()
        entries = {str(entry.get('name')): entry for entry in summary.get('structures') or []}
        results = self._results(summary, entries, labels)
        self.out('results', orm.Dict(results))

        if summary.get('error'):
            label = ENGINE_ERROR_EXIT_CODES.get(str(summary['error']), 'ERROR_ENGINE_FAILED')
            message = summary.get('message') or str(summary['error'])
            return getattr(self.exit_codes, label).format(message=message)

        missing = [label for label in labels if label not in entries]
        if missing:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=', '.join(f'{label}.h5' for label in missing),
                message='the summary reports no error but lists no result for them',
            )
        for label in labels:
            exit_code = self._parse_structure(label, entries[label], names, temporary_folder)
            if exit_code is not None:
                return exit_code
        return None

    def _labels(self) -> list[str]:
        inputs = self.node.inputs
        namespace = 'structures' if 'structures' in inputs else 'h0'
        return sorted(inputs[namespace]) if namespace in inputs else []

    # -------------------------------------------------------------------------------- structures
    def _parse_structure(self, label: str, entry: dict, names: list[str], temporary_folder):
        from ..data.hamiltonian import HamiltonianData

        filename = f'{label}.h5'
        path = pathlib.Path(temporary_folder) / filename if temporary_folder is not None else None
        if path is None or not path.is_file():
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=filename, message='the predicted Hamiltonian was not retrieved'
            )
        try:
            hamiltonian = HamiltonianData.from_file(path, format='nextham')
        except Exception as exc:
            return self.exit_codes.ERROR_OUTPUT_HAMILTONIAN_UNREADABLE.format(
                message=f'{filename}: {type(exc).__name__}: {exc}'
            )
        model = self.node.inputs.model
        hamiltonian.base.attributes.set_many(
            {
                'predicted': True,
                'model_uuid': model.uuid,
                'model_architecture': model.base.attributes.get('architecture', None),
            }
        )
        self.out(f'hamiltonians.{label}', hamiltonian)
        lattice = hamiltonian.get_structure_arrays()[0]

        if f'{label}.bands.json' in names:
            try:
                data = json.loads(self.retrieved.base.repository.get_object_content(f'{label}.bands.json'))
                bands = _bands_data(data, lattice)
            except Exception as exc:
                return self.exit_codes.ERROR_OUTPUT_SPECTRA_UNREADABLE.format(
                    message=f'{label}.bands.json: {type(exc).__name__}: {exc}'
                )
            if 'kpoints' in self.node.inputs:
                expected = np.asarray(self.node.inputs.kpoints.get_kpoints(), dtype=np.float64)
                found = np.asarray(bands.get_kpoints(), dtype=np.float64)
                if expected.shape != found.shape or np.abs(expected - found).max() > 1e-6:
                    return self.exit_codes.ERROR_KPOINTS_MISMATCH.format(
                        message=f'{label}: {len(found)} engine k-points vs {len(expected)} given'
                    )
            self.out(f'bands.{label}', bands)
        if f'{label}.dos.json' in names:
            try:
                data = json.loads(self.retrieved.base.repository.get_object_content(f'{label}.dos.json'))
                dos = _dos_data(data)
            except Exception as exc:
                return self.exit_codes.ERROR_OUTPUT_SPECTRA_UNREADABLE.format(
                    message=f'{label}.dos.json: {type(exc).__name__}: {exc}'
                )
            self.out(f'dos.{label}', dos)
        return None

    def _results(self, summary: dict, entries: dict, labels: list[str]) -> dict:
        """What users query: per structure, the model's digest and the H0 settings (no local paths)."""
        model = dict(summary.get('model') or {}) if isinstance(summary.get('model'), dict) else {}
        model.pop('path', None)
        model['uuid'] = self.node.inputs.model.uuid
        results = {
            'units': {'energy': 'eV', 'gap': 'eV', 'timings': 's'},
            'model': model,
            'coverage': summary.get('coverage'),
            'protocol': summary.get('protocol'),
            'structures': {
                name: {key: entry[key] for key in _ENTRY_KEYS if key in entry}
                for name, entry in entries.items()
            },
            'inference': summary.get('inference'),
            'timings': summary.get('timings'),
        }
        dft = summary.get('dft')
        if isinstance(dft, dict):
            dft = dict(dft)
            if 'pseudos' in self.node.inputs:
                dft.pop('pseudo', None)  # the engine's path of the file written from these nodes
                dft['pseudos'] = {
                    symbol: {'name': pseudo.name, 'md5': pseudo.md5, 'uuid': pseudo.uuid}
                    for symbol, pseudo in self.node.inputs.pseudos.items()
                }
            results['dft'] = dft
        for key in ('error', 'error_class', 'exit_status', 'message'):
            if key in summary:
                results[key] = summary[key]
        if len(labels) == 1 and labels[0] in entries:  # one structure: its numbers at the top level
            entry = entries[labels[0]]
            gap = entry.get('gap') if isinstance(entry.get('gap'), dict) else {}
            results.update(
                fermi_level=entry.get('fermi_level'),
                n_electrons=entry.get('n_electrons'),
                gap=gap.get('gap'),
                vbm=gap.get('vbm'),
                cbm=gap.get('cbm'),
                direct_gap=gap.get('direct_gap'),
                is_metal=gap.get('is_metal'),
            )
        return json_safe(results)


def _bands_data(data: dict, lattice: np.ndarray) -> orm.BandsData:
    """``BandsData`` (eV, not shifted) of an engine ``<label>.bands.json`` on the cell ``lattice``."""
    kpoints = np.asarray(data['kpoints'], dtype=np.float64).reshape(-1, 3)
    energies = np.asarray(data['energies'], dtype=np.float64)
    if energies.ndim != 2 or len(energies) != len(kpoints):
        raise ValueError(f'energies of shape {energies.shape} for {len(kpoints)} k-points')
    bands = orm.BandsData()
    bands.set_cell(np.asarray(lattice, dtype=np.float64).tolist())
    bands.set_kpoints(kpoints)
    bands.labels = [(int(index), str(label)) for index, label in data.get('labels', [])]
    bands.set_bands(energies, units='eV')
    if data.get('fermi_level') is not None:
        bands.base.attributes.set('fermi_level', float(data['fermi_level']))
    return bands


def _dos_data(data: dict) -> orm.XyData:
    energies = np.asarray(data['energies'], dtype=np.float64)
    dos = np.asarray(data['dos'], dtype=np.float64)
    if energies.shape != dos.shape:
        raise ValueError(f'{energies.shape} energies but {dos.shape} DOS values')
    xy = orm.XyData()
    xy.set_x(energies, 'energy', 'eV')
    xy.set_y(dos, 'dos', 'states/eV')
    for key in ('fermi_level', 'width', 'smearing'):
        if data.get(key) is not None:
            xy.base.attributes.set(key, data[key])
    if data.get('mesh') is not None:
        xy.base.attributes.set('mesh', [int(n) for n in data['mesh']])
    return xy
