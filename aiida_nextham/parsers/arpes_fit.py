"""Parser of ``nextham arpes-fit``: ``result.json`` into ``output_parameters``, the fitted bands and the plot.

The fitted bands are read from ``result['bands']`` (written by the engine along the plotted cut), so the
parser needs neither the data nor the model (nor, for the ``hamiltonian`` model, its file).

The parser never raises: every problem becomes an exit code of :class:`NexthamArpesFitCalculation`. A
named engine failure (one ``Error: <name>: <message>`` line on stderr, no ``result.json``) becomes the
exit code of :data:`ENGINE_ERROR_EXIT_CODES` with the engine's message.
"""

from __future__ import annotations

import json
import re

import numpy as np
from aiida import orm
from aiida.common.exceptions import NotExistent

from .base import EngineParser, json_safe, last_line

__all__ = ('ENGINE_ERROR_EXIT_CODES', 'NexthamArpesFitParser')

#: name of the engine failure (``nextham arpes-fit`` exit code) -> exit-code label of the CalcJob
ENGINE_ERROR_EXIT_CODES = {
    'BadData': 'ERROR_BAD_DATA',  # 30
    'BadModel': 'ERROR_BAD_MODEL',  # 31
    'BadSurrogate': 'ERROR_BAD_SURROGATE',  # 32
    'FitFailed': 'ERROR_FIT_FAILED',  # 33
}
#: keys of result.json copied into ``output_parameters``
_RESULT_KEYS = (
    'method',
    'model',
    'parameters',
    'uncertainties',
    'nuisance',
    'nuisance_uncertainties',
    'loss',
    'metrics',
    'timings',
    'starts',
    'options',
)
_ERROR_LINE = re.compile(r'^Error: (?:(?P<name>[A-Z]\w+): )?(?P<message>.*)$')


class NexthamArpesFitParser(EngineParser):
    """``result.json`` -> ``output_parameters``; the fitted bands -> ``bands``; ``fit.png`` -> ``plot``."""

    def _parse(self, temporary_folder: str | None):
        calc = self.node.process_class
        try:
            retrieved = self.retrieved
        except NotExistent:
            return self.exit_codes.ERROR_NO_RETRIEVED_FOLDER
        names = retrieved.base.repository.list_object_names()

        if calc._RESULT_FILE not in names:
            return self._engine_failure(self._read_text(calc._STDERR_FILE, names), calc._RESULT_FILE)
        try:
            result = json.loads(retrieved.base.repository.get_object_content(calc._RESULT_FILE))
            if not isinstance(result, dict) or not isinstance(result.get('parameters'), dict):
                raise ValueError('not a JSON object with fitted parameters')
        except (ValueError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_RESULT_UNREADABLE.format(message=str(exc))

        output = {key: result[key] for key in _RESULT_KEYS if key in result}
        output['units'] = {'energy': 'eV', 'timings': 's'}
        output['data_uuid'] = self.node.inputs.data.uuid
        self.out('output_parameters', orm.Dict(json_safe(output)))

        try:
            self.out('bands', self._bands(result))
        except Exception as exc:  # the fit is still valid: report, do not fail
            self.logger.warning(f'no fitted bands: {type(exc).__name__}: {exc}')

        if self.node.inputs.parameters.get_dict().get('plot', True):
            if calc._PLOT_FILE not in names:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                    filenames=calc._PLOT_FILE, message='the engine wrote the result but no plot'
                )
            with retrieved.base.repository.open(calc._PLOT_FILE, 'rb') as handle:
                self.out('plot', orm.SinglefileData(handle, filename=calc._PLOT_FILE))
        return None

    def _engine_failure(self, stderr: str, filename: str):
        """The exit code of the engine's ``Error:`` line, or 'output missing' when there is none."""
        errors = [line.strip() for line in stderr.splitlines() if line.startswith('Error: ')]
        if not errors:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=filename, message=last_line(stderr)
            )
        match = _ERROR_LINE.match(errors[-1])
        name, message = match.group('name'), match.group('message')
        label = ENGINE_ERROR_EXIT_CODES.get(name or '', 'ERROR_ENGINE_FAILED')
        if label == 'ERROR_ENGINE_FAILED':
            message = errors[-1].removeprefix('Error: ')
        return getattr(self.exit_codes, label).format(message=message)

    @staticmethod
    def _bands(result: dict) -> orm.BandsData:
        """The fitted bands the engine wrote into ``result['bands']`` (the cut of the plot: the data's k_x,
        k_y nearest 0, the first k_z or hν).

        The cell is a bookkeeping cell 2π·I Å whose reciprocal vectors are the Cartesian unit vectors, so
        the k-points are the Cartesian k in 1/Å both as fractional and as Cartesian coordinates.
        """
        if 'bands' not in result:
            raise KeyError('the result has no fitted bands (an engine older than the bands output)')
        kpoints = np.asarray(result['bands']['kpoints'], dtype=np.float64).reshape(-1, 3)
        energies = np.asarray(result['bands']['energies'], dtype=np.float64).reshape(len(kpoints), -1)
        if not np.isfinite(energies).all():
            raise ValueError('non-finite band energies')
        bands = orm.BandsData()
        bands.set_cell((2 * np.pi * np.eye(3)).tolist())
        bands.set_kpoints(kpoints, cartesian=True)
        bands.set_bands(energies, units='eV')
        bands.base.attributes.set_many({'fermi_level': 0.0, 'kpoints_units': '1/Angstrom'})
        return bands
