"""Parser of ``nextham phonons``: JSON outputs into BandsData (THz), XyData, Dicts and a FolderData.

Never raises: every problem becomes an exit code of :class:`NexthamPhononCalculation`. A named engine
failure still returns the summary as ``output_parameters``. A dynamically unstable structure is a
successful calculation whose ``output_parameters['dynamically_stable']`` is False (and whose bands
keep their negative, i.e. imaginary, frequencies).
"""

from __future__ import annotations

import io
import json

import numpy as np
from aiida import orm
from aiida.common.exceptions import NotExistent

from .base import EngineParser, json_safe, last_line

__all__ = ('ERROR_EXIT_CODES', 'NexthamPhononParser')

#: engine error name (``error`` of the summary) -> exit-code label
ERROR_EXIT_CODES = {
    'ScfNotConverged': 'ERROR_SCF_NOT_CONVERGED',
    'UnsupportedElement': 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS',
    'BadStructure': 'ERROR_BAD_STRUCTURE',
    'InvalidConfig': 'ERROR_INVALID_SETTINGS',
    'InvalidSettings': 'ERROR_INVALID_SETTINGS',
    'BadModel': 'ERROR_BAD_MODEL',
    'BadForces': 'ERROR_BAD_FORCES',
}


class NexthamPhononParser(EngineParser):
    """``summary.json`` + ``phonons/`` -> output_parameters, bands, dos, thermal_properties, phonopy_files."""

    unexpected_exit_code = 'ERROR_OUTPUT_UNREADABLE'

    def _parse(self, temporary_folder: str | None):
        calc = self.node.process_class
        try:
            retrieved = self.retrieved
        except NotExistent:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames='(all)', message='nothing retrieved'
            )
        names = retrieved.base.repository.list_object_names()
        if calc._SUMMARY_FILE not in names:
            stderr = self._read_text(calc._STDERR_FILE, names)
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=calc._SUMMARY_FILE, message=last_line(stderr)
            )
        try:
            summary = json.loads(retrieved.base.repository.get_object_content(calc._SUMMARY_FILE))
            if not isinstance(summary, dict):
                raise ValueError('the summary is not a JSON object')
        except (ValueError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_SUMMARY_UNREADABLE.format(message=str(exc))
        self.out('output_parameters', orm.Dict(json_safe(summary)))

        if summary.get('error'):
            label = ERROR_EXIT_CODES.get(str(summary['error']), 'ERROR_ENGINE_FAILED')
            return getattr(self.exit_codes, label).format(message=summary.get('message') or summary['error'])

        folder = calc._OUTPUT_FOLDER
        inside = set(retrieved.base.repository.list_object_names(folder)) if folder in names else set()
        needed = ['bands.json', 'dos.json', 'thermal_properties.json', *calc._PHONOPY_FILES]
        missing = [name for name in needed if name not in inside]
        if missing:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=', '.join(f'{folder}/{name}' for name in missing),
                message='the summary reports no error',
            )
        try:
            read = lambda name: json.loads(retrieved.base.repository.get_object_content(f'{folder}/{name}'))  # noqa: E731
            self.out('bands', self._bands(read('bands.json')))
            self.out('dos', self._dos(read('dos.json')))
            self.out('thermal_properties', orm.Dict(json_safe(read('thermal_properties.json'))))
        except (ValueError, KeyError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(message=f'{type(exc).__name__}: {exc}')
        files = orm.FolderData()
        for name in calc._PHONOPY_FILES:
            content = retrieved.base.repository.get_object_content(f'{folder}/{name}', mode='rb')
            files.base.repository.put_object_from_filelike(io.BytesIO(content), name)
        self.out('phonopy_files', files)
        return None

    @staticmethod
    def _bands(data: dict) -> orm.BandsData:
        frequencies = np.asarray(data['frequencies'], dtype=float)
        qpoints = np.asarray(data['qpoints'], dtype=float)
        if frequencies.ndim != 2 or len(frequencies) != len(qpoints):
            raise ValueError(
                f'bands.json: {len(qpoints)} q-points but frequencies of shape {frequencies.shape}'
            )
        bands = orm.BandsData()
        bands.set_cell(np.asarray(data['primitive_cell'], dtype=float).tolist())
        bands.set_kpoints(qpoints)
        bands.labels = [(int(index), str(label)) for index, label in data['labels']]
        bands.set_bands(frequencies, units='THz')
        return bands

    @staticmethod
    def _dos(data: dict) -> orm.XyData:
        dos = orm.XyData()
        dos.set_x(np.asarray(data['frequencies'], dtype=float), 'frequency', 'THz')
        dos.set_y(np.asarray(data['dos'], dtype=float), 'dos', 'states/THz')
        return dos
