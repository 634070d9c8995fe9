"""``NexthamArpesFitCalculation``: ``nextham arpes-fit`` (tight-binding parameters from ARPES data).

Everything the engine reads is written into the working directory from input nodes (no local paths):

- ``data.nc``: the NetCDF file of the ``data`` node (an ``ArpesData``), byte for byte;
- ``init.json``: the first start (``parameters['init']``), when given;
- ``hamiltonian.h5``: the file of the ``hamiltonian`` node (a ``HamiltonianData``) for the model
  ``'hamiltonian'``, the tight-binding model seeded by that Hamiltonian
  (``--model hamiltonian:hamiltonian.h5``; its options, e.g. ``orbitals``, in ``parameters['fixed']``).

The engine writes ``result.json`` (fitted parameters, uncertainties, loss, metrics, timings, starts;
see :class:`~aiida_nextham.arpes.fit.FitResult`) and ``fit.png`` (data with the fitted bands). On a named
failure it writes nothing but one ``Error: <name>: <message>`` line to stderr and exits with its own code
(30 bad data, 31 bad model, 32 bad surrogate, 33 fit failed), which the parser maps to exit codes 430-433.

The fit itself (INR surrogate multi-start or EDC/MDC baseline) is the engine's; model selection among
several candidate models is :class:`~aiida_nextham.workflows.arpes_fit.NexthamArpesFitWorkChain`.
"""

from __future__ import annotations

import json
import math

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from ..data.arpes import ArpesData
from ..data.hamiltonian import HamiltonianData

__all__ = ('ARPES_FIT_PARAMETERS', 'NexthamArpesFitCalculation', 'validate_arpes_fit_parameters')

#: keys of the ``parameters`` input, with their meaning (``model`` is required)
ARPES_FIT_PARAMETERS: dict[str, str] = {
    'model': "tight-binding model name, e.g. 'nickelate-eg', 'graphene', 'single-band', or 'hamiltonian' "
    '(seeded by the `hamiltonian` input) (required).',
    'method': "'inr' (SIREN-surrogate multi-start, then the exact model; default) or 'baseline' (EDC/MDC "
    'peaks + least squares).',
    'starts': 'random starts within the physical bounds (default 20).',
    'fraction': 'fit a seeded random fraction of the data points, in (0, 1] (default 1).',
    'emin': 'fit only E − E_F >= emin, eV (e.g. -0.1; default: the whole energy range).',
    'seed': 'seed of the starts, of `fraction` and of the surrogate (default 0).',
    'fixed': 'model constructor arguments, e.g. {"a": 3.83, "extra": ["tp"]} (default: from the data); '
    'for the hamiltonian model e.g. {"orbitals": ["Ni:d"], "hopping_shells": 1}.',
    'init': 'parameter values of the first start, e.g. {"t": 0.4, "delta": 0.1, "mu": -0.6}.',
    'refine': 'INR: distinct best surrogate minima refined with the exact model; 0 refines all (default 3).',
    'gamma0': 'starting Lorentzian half width, eV (the surrogate is trained with it).',
    'work_function': 'eV, for kinetic-energy or angle data whose file does not give it.',
    'surrogate_steps': 'INR: surrogate training steps (default 2000).',
    'surrogate_spectra': 'INR: simulated spectra the surrogate is trained on (default 400).',
    'search_steps': 'INR: gradient steps of the surrogate descent (default 300).',
    'plot': 'write fit.png, the data with the fitted bands (default True).',
}
_METHODS = ('inr', 'baseline')
#: the model seeded by the ``hamiltonian`` input
HAMILTONIAN_MODEL = 'hamiltonian'
#: integer keys and their smallest value
_INTEGERS = {'starts': 1, 'refine': 0, 'surrogate_steps': 1, 'surrogate_spectra': 1, 'search_steps': 1}
#: ``parameters`` key -> engine option, for the numbers passed through unchanged
_OPTIONS = {
    'starts': '--starts',
    'seed': '--seed',
    'refine': '--refine',
    'gamma0': '--gamma0',
    'work_function': '--work-function',
    'surrogate_steps': '--surrogate-steps',
    'surrogate_spectra': '--surrogate-spectra',
    'search_steps': '--search-steps',
}


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _is_integer(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


def validate_arpes_fit_parameters(value: orm.Dict | None, _=None) -> str | None:
    """Port validator of ``parameters``: the model is named, unknown keys and impossible values by name."""
    if value is None:
        return None
    parameters = value.get_dict()
    unknown = sorted(set(parameters) - set(ARPES_FIT_PARAMETERS))
    if unknown:
        return f'unknown parameters {unknown}; accepted: {sorted(ARPES_FIT_PARAMETERS)}'
    model = parameters.get('model')
    if not isinstance(model, str) or not model.strip():
        return f'model must name a tight-binding model (e.g. nickelate-eg), got {model!r}'
    if parameters.get('method', 'inr') not in _METHODS:
        return f'method must be one of {_METHODS}, got {parameters["method"]!r}'
    for key, low in _INTEGERS.items():
        if key in parameters and (not _is_integer(parameters[key]) or parameters[key] < low):
            return f'{key} must be an integer >= {low}, got {parameters[key]!r}'
    if 'seed' in parameters and not _is_integer(parameters['seed']):
        return f'seed must be an integer, got {parameters["seed"]!r}'
    fraction = parameters.get('fraction', 1.0)
    if not _is_number(fraction) or not 0 < fraction <= 1:
        return f'fraction must be a number in (0, 1], got {fraction!r}'
    for key in ('emin', 'work_function'):
        if key in parameters and not _is_number(parameters[key]):
            return f'{key} must be a finite number (eV), got {parameters[key]!r}'
    if 'gamma0' in parameters and (not _is_number(parameters['gamma0']) or parameters['gamma0'] <= 0):
        return f'gamma0 must be a positive number (eV), got {parameters["gamma0"]!r}'
    if 'fixed' in parameters and not isinstance(parameters['fixed'], dict):
        return f'fixed must be a dictionary of constructor arguments such as a, got {parameters["fixed"]!r}'
    if model == HAMILTONIAN_MODEL and 'path' in parameters.get('fixed', {}):
        return 'fixed: the hamiltonian model reads the `hamiltonian` input; do not give a path'
    if 'init' in parameters:
        init = parameters['init']
        if not isinstance(init, dict) or not init:
            return f'init must be a non-empty dictionary of parameter values, got {init!r}'
        bad = {key: item for key, item in init.items() if not _is_number(item)}
        if bad:
            return f'init: parameter values must be finite numbers, got {bad}'
    if 'plot' in parameters and not isinstance(parameters['plot'], bool):
        return f'plot must be true or false, got {parameters["plot"]!r}'
    return None


def _validate_inputs(inputs: dict, _=None) -> str | None:
    """The data must have an energy axis (the fit is of E(k)); the hamiltonian model needs a Hamiltonian."""
    data = inputs.get('data')
    if data is not None and 'eV' not in (data.dims or []):
        return (
            f'data: the ArpesData<{data.pk}> has no eV dimension (dims {data.dims}): nothing to fit E(k) to'
        )
    parameters = inputs.get('parameters')
    model = parameters.get_dict().get('model') if parameters is not None else None
    if model == HAMILTONIAN_MODEL and 'hamiltonian' not in inputs:
        return 'the model hamiltonian needs the `hamiltonian` input (the HamiltonianData that seeds it)'
    if 'hamiltonian' in inputs and model is not None and model != HAMILTONIAN_MODEL:
        return f'a `hamiltonian` input is used only by the model {HAMILTONIAN_MODEL!r}, not {model!r}'
    return None


# ------------------------------------------------------------------------------------------ CalcJob
class NexthamArpesFitCalculation(CalcJob):
    """Tight-binding parameters (with uncertainties and fit metrics) from ARPES data."""

    _DATA_FILE = 'data.nc'
    _INIT_FILE = 'init.json'
    _HAMILTONIAN_FILE = 'hamiltonian.h5'
    _RESULT_FILE = 'result.json'
    _PLOT_FILE = 'fit.png'
    _STDOUT_FILE = 'nextham.out'
    _STDERR_FILE = 'nextham.err'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'data', valid_type=ArpesData, help='The ARPES data to fit (an ArpesData with an eV dimension).'
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            validator=validate_arpes_fit_parameters,
            help='Fit settings: ' + '; '.join(f'{k}: {v}' for k, v in ARPES_FIT_PARAMETERS.items()),
        )
        spec.input(
            'hamiltonian',
            valid_type=HamiltonianData,
            required=False,
            help="The block Hamiltonian (DFT or predicted) that seeds the model 'hamiltonian': its on-site "
            'energies, hopping scales and chemical potential are fitted (with S, in the Löwdin basis).',
        )
        spec.inputs.validator = _validate_inputs

        spec.inputs['metadata']['options']['resources'].default = lambda: {
            'num_machines': 1,
            'num_mpiprocs_per_machine': 1,
        }
        spec.inputs['metadata']['options']['withmpi'].default = False
        spec.inputs['metadata']['options']['parser_name'].default = 'nextham.arpes_fit'
        spec.inputs['metadata']['options']['output_filename'].default = cls._STDOUT_FILE

        spec.output(
            'output_parameters',
            valid_type=orm.Dict,
            help='Fitted parameters, uncertainties, nuisance (broadening) parameters, loss, metrics, '
            'timings, the per-start results, the fitted model spec and the options of the fit.',
        )
        spec.output(
            'bands',
            valid_type=orm.BandsData,
            required=False,
            help='Bands of the fitted model along k_x of the data (k_y nearest 0), Cartesian k in 1/Å, '
            'E − E_F in eV.',
        )
        spec.output(
            'plot',
            valid_type=orm.SinglefileData,
            required=False,
            help='PNG of the data with the fitted bands (parameters plot: true).',
        )
        spec.default_output_node = 'output_parameters'

        spec.exit_code(
            300, 'ERROR_OUTPUT_FILES_MISSING', message='output file(s) {filenames} missing: {message}'
        )
        spec.exit_code(
            301, 'ERROR_OUTPUT_RESULT_UNREADABLE', message='the result JSON is unreadable: {message}'
        )
        spec.exit_code(
            305, 'ERROR_ENGINE_FAILED', message='the engine failed with an unclassified error: {message}'
        )
        spec.exit_code(
            306, 'ERROR_UNEXPECTED_PARSER_EXCEPTION', message='the parser raised an exception: {message}'
        )
        spec.exit_code(
            430,
            'ERROR_BAD_DATA',
            message='the data cannot be fitted (no energy axis, no points left, unreadable): {message}',
        )
        spec.exit_code(
            431,
            'ERROR_BAD_MODEL',
            message='unknown model, bad constructor arguments or parameters outside the bounds: {message}',
        )
        spec.exit_code(432, 'ERROR_BAD_SURROGATE', message='the INR surrogate is unusable: {message}')
        spec.exit_code(
            433, 'ERROR_FIT_FAILED', message='the fit ended with a non-finite loss or parameters: {message}'
        )

    # ---------------------------------------------------------------------------------- helpers
    def _parameters(self) -> dict:
        return self.inputs.parameters.get_dict()

    def _cmdline(self) -> list[str]:
        parameters = self._parameters()
        model = parameters['model']
        if model == HAMILTONIAN_MODEL:
            model = f'{HAMILTONIAN_MODEL}:{self._HAMILTONIAN_FILE}'
        params = ['arpes-fit', self._DATA_FILE, '--model', model]
        params += ['--method', parameters.get('method', 'inr')]
        if parameters.get('fixed'):
            params += ['--fixed', json.dumps(parameters['fixed'], sort_keys=True)]
        if parameters.get('init'):
            params += ['--init', self._INIT_FILE]
        for key, option in _OPTIONS.items():
            if key in parameters:
                value = parameters[key]
                params += [option, str(value) if _is_integer(value) else repr(float(value))]
        if 'fraction' in parameters:
            params += ['--fraction', repr(float(parameters['fraction']))]
        if 'emin' in parameters:
            params += ['--emin', repr(float(parameters['emin']))]
        params += ['-o', self._RESULT_FILE]
        if parameters.get('plot', True):
            params += ['--plot', self._PLOT_FILE]
        return params

    def prepare_for_submission(self, folder):
        data = self.inputs.data
        with data.base.repository.open(data.filename, 'rb') as source:
            folder.create_file_from_filelike(source, self._DATA_FILE, mode='wb')
        if 'hamiltonian' in self.inputs:
            hamiltonian = self.inputs.hamiltonian
            with hamiltonian.base.repository.open(hamiltonian.filename, 'rb') as source:
                folder.create_file_from_filelike(source, self._HAMILTONIAN_FILE, mode='wb')
        init = self._parameters().get('init')
        if init:
            with folder.open(self._INIT_FILE, 'w') as target:
                target.write(json.dumps(init, indent=1, sort_keys=True) + '\n')

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = self._cmdline()
        codeinfo.stdout_name = self._STDOUT_FILE
        codeinfo.stderr_name = self._STDERR_FILE
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [self._RESULT_FILE, self._PLOT_FILE, self._STDOUT_FILE, self._STDERR_FILE]
        return calcinfo
