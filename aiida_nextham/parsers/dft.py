"""Parser of ``nextham dft``: the JSON summary and the HDF5 block Hamiltonian into nodes.

The parser never raises: every problem becomes an exit code of :class:`NexthamDftCalculation`. When
the engine reports a named failure (``{"error": "ScfNotConvergedError", ...}`` in the summary), the
summary is still returned as ``output_parameters`` so restart handlers can read what happened.
"""

from __future__ import annotations

import json

from aiida import orm
from aiida.common.exceptions import NotExistent

from .base import EngineParser, json_safe, last_line

__all__ = ('ERROR_CLASS_EXIT_CODES', 'NexthamDftParser')

#: engine error (``error_class`` or ``error`` code of the summary) -> exit-code label of the CalcJob
ERROR_CLASS_EXIT_CODES = {
    'ScfNotConvergedError': 'ERROR_SCF_NOT_CONVERGED',
    'ScfNotConverged': 'ERROR_SCF_NOT_CONVERGED',
    'SelfCheckError': 'ERROR_SELF_CHECK_FAILED',
    'SelfCheckFailed': 'ERROR_SELF_CHECK_FAILED',
    'UnsupportedElementError': 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS',
    'UnsupportedElement': 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS',
    'BadStructureError': 'ERROR_BAD_STRUCTURE',
    'BadStructure': 'ERROR_BAD_STRUCTURE',
    'DftConfigError': 'ERROR_INVALID_CONFIG',
    'InvalidConfig': 'ERROR_INVALID_CONFIG',
}


class NexthamDftParser(EngineParser):
    """Turn ``summary.json`` and ``hamiltonian.h5`` into ``output_parameters`` and ``hamiltonian``."""

    unexpected_exit_code = 'ERROR_OUTPUT_SUMMARY_UNREADABLE'  # an unforeseen problem is an unreadable output

    def _parse(self, temporary_folder: str | None):
        calc = self.node.process_class
        try:
            retrieved = self.retrieved
        except NotExistent:
            return self.exit_codes.ERROR_NO_RETRIEVED_FOLDER
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

        results = self._collect_results(summary)
        self.out('output_parameters', orm.Dict(results))

        error = summary.get('error')
        if error:
            label = ERROR_CLASS_EXIT_CODES.get(
                str(summary.get('error_class')), ERROR_CLASS_EXIT_CODES.get(str(error), 'ERROR_ENGINE_FAILED')
            )
            message = summary.get('message') or summary.get('detail') or str(error)
            exit_code = getattr(self.exit_codes, label)
            return exit_code.format(message=message) if '{message}' in exit_code.message else exit_code

        if calc._OUTPUT_HAMILTONIAN not in names:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(
                filenames=calc._OUTPUT_HAMILTONIAN, message='the summary reports no error'
            )
        try:
            from ..data.hamiltonian import HamiltonianData

            with retrieved.base.repository.as_path(calc._OUTPUT_HAMILTONIAN) as path:
                hamiltonian = HamiltonianData.from_file(path, format='nextham')
        except Exception as exc:
            return self.exit_codes.ERROR_OUTPUT_HAMILTONIAN_UNREADABLE.format(
                message=f'{type(exc).__name__}: {exc}'
            )
        hamiltonian.base.attributes.set_many(
            {
                key: results[key]
                for key in ('basis_set', 'xc', 'pseudo_family', 'mode', 'guess_key')
                if key in results
            }
        )
        self.out('hamiltonian', hamiltonian)

        # defensive checks on what the engine claims (it should have raised a named error itself)
        if results.get('mode') == 'label' and results.get('converged') is False:
            return self.exit_codes.ERROR_SCF_NOT_CONVERGED.format(
                message='the summary reports converged=false'
            )
        tolerance = results.get('selfcheck_tolerance')
        deviation = results.get('selfcheck_deviation')
        if tolerance is not None and deviation is not None and deviation > tolerance:
            return self.exit_codes.ERROR_SELF_CHECK_FAILED.format(
                message=f'deviation {deviation:.4g} meV > tolerance {tolerance:.4g} meV'
            )
        return None

    def _collect_results(self, summary: dict) -> dict:
        """The summary plus the provenance the CalcJob knows: basis, xc, pseudos and their md5s."""
        results = dict(summary)
        parameters = self.node.inputs.parameters.get_dict() if 'parameters' in self.node.inputs else {}
        config = summary.get('config') if isinstance(summary.get('config'), dict) else {}
        results.setdefault('mode', self.node.inputs.mode.value if 'mode' in self.node.inputs else None)
        for key in ('basis', 'xc', 'init_guess'):
            if results.get(key) is None and (config.get(key) or parameters.get(key)) is not None:
                results[key] = config.get(key) or parameters.get(key)
        if parameters.get('protocol'):
            results['protocol'] = parameters['protocol']
        results['basis_set'] = results.get('basis')
        results['guess_key'] = results.get('init_guess')
        tolerance = config.get('selfcheck_tolerance', parameters.get('selfcheck_tolerance'))
        results['selfcheck_tolerance'] = tolerance
        if 'pseudos' in self.node.inputs:
            results['pseudos'] = {
                kind: {'element': pseudo.element, 'name': pseudo.name, 'md5': pseudo.md5, 'uuid': pseudo.uuid}
                for kind, pseudo in self.node.inputs.pseudos.items()
            }
        return json_safe(results)
