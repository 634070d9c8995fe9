"""``NexthamDftCalculation``: runs ``nextham dft`` (PySCF label engine) on any computer.

Files written into the working directory: ``structure.xyz`` (extended XYZ with cell and pbc, Å),
the GTH pseudopotential file of every element under ``pseudo/`` and ``config.json`` (the engine
configuration: basis, xc, k-mesh, neighbour cutoff, SCF and self-check options). The engine writes
``hamiltonian.h5`` (nextham HDF5) and ``summary.json`` (energies, Fermi level, gap, self-check
deviation, timings; or ``{"error": "<ErrorClass>", ...}`` on a named failure).
"""

from __future__ import annotations

import io
import json
import re

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from ..data.hamiltonian import HamiltonianData
from ..data.pseudo import GthPseudoData

__all__ = (
    'NexthamDftCalculation',
    'check_structure',
    'validate_parameters',
)


#: keys accepted in ``parameters`` that are passed on the command line rather than in config.json
_CLI_KEYS = ('protocol',)


def _engine_config_fields() -> set[str] | None:
    """Names of the engine configuration fields (``DftConfig``), None if the engine cannot be imported."""
    try:
        from ..dft.config import DftConfig
    except ImportError:
        return None
    import dataclasses

    if dataclasses.is_dataclass(DftConfig):
        return {field.name for field in dataclasses.fields(DftConfig)}
    fields = getattr(DftConfig, 'model_fields', None)  # pydantic
    return set(fields) if fields is not None else None


def validate_parameters(value: orm.Dict | None, _=None) -> str | None:
    """Port validator of ``parameters``: unknown keys and impossible values are reported by name."""
    if value is None:
        return None
    parameters = value.get_dict()
    if 'pseudo' in parameters:
        return '`pseudo` is set by the calculation from the `pseudos` input; remove it from the parameters'
    fields = _engine_config_fields()
    if fields is not None:
        unknown = sorted(set(parameters) - fields - set(_CLI_KEYS))
        if unknown:
            return f'unknown parameters {unknown}; accepted: {sorted(fields | set(_CLI_KEYS))}'
    try:  # the engine's own validation of every value (types, ranges, choices)
        from ..dft.errors import DftConfigError
        from ..dft.protocols import get_protocol
    except ImportError:
        return None
    settings = {key: value for key, value in parameters.items() if key not in _CLI_KEYS}
    try:
        get_protocol(parameters.get('protocol'), settings)
    except DftConfigError as exc:
        return f'invalid parameters: {exc}'
    except (TypeError, ValueError) as exc:
        return f'invalid parameters: {type(exc).__name__}: {exc}'
    return None


def _float_text(value: float) -> str:
    """``repr`` of a float with a decimal point and a signed exponent (``1.0e-06``, ``1.0e+20``)."""
    text = repr(float(value))
    mantissa, _, exponent = text.partition('e')
    if not exponent:
        return text
    if '.' not in mantissa:
        mantissa += '.0'
    if exponent[0] not in '+-':
        exponent = '+' + exponent
    return f'{mantissa}e{exponent}'


def config_to_json(config: dict) -> str:
    """JSON text of the engine configuration that YAML 1.1 loaders also read as numbers.

    ``nextham dft --parameters`` accepts JSON or YAML and reads both with a YAML loader, for which
    ``1e-06`` is a string; floats are therefore written as ``1.0e-06`` (still valid JSON).
    """
    floats: list[str] = []

    def mark(value):
        if isinstance(value, float):
            floats.append(_float_text(value))
            return f'@@float{len(floats) - 1}@@'
        if isinstance(value, dict):
            return {key: mark(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [mark(item) for item in value]
        return value

    text = json.dumps(mark(config), indent=2, sort_keys=True)
    text = re.sub(r'"@@float(\d+)@@"', lambda match: floats[int(match.group(1))], text)
    return text + '\n'


def check_structure(structure: orm.StructureData) -> tuple[str, str] | None:
    """The engine's cheap structure checks (empty, non-periodic, degenerate cell, overlapping atoms).

    :returns: None if fine, else ``(reason, message)``.
    """
    from ..dft.checks import check_structure as engine_check_structure
    from ..dft.errors import BadStructureError

    if len(structure.sites) == 0:
        return 'empty', 'the structure has no atoms'
    try:
        engine_check_structure(structure.get_ase())
    except BadStructureError as exc:
        return str(exc.details.get('reason', 'bad_structure')), str(exc)
    return None


def _validate_structure(value: orm.StructureData, _=None) -> str | None:
    problem = check_structure(value)
    return None if problem is None else problem[1]


def _validate_kpoints(value: orm.KpointsData, _=None) -> str | None:
    try:
        mesh, offset = value.get_kpoints_mesh()
    except AttributeError:
        return 'kpoints must be a Monkhorst-Pack mesh (KpointsData.set_kpoints_mesh), not an explicit list'
    if min(mesh) < 1:
        return f'invalid k-point mesh {mesh}'
    if any(abs(o) > 1e-8 for o in offset):
        return f'shifted k-point meshes are not supported by the engine, got offset {offset}'
    return None


def _validate_mode(value: orm.Str, _=None) -> str | None:
    if value.value not in ('h0', 'label'):
        return f"mode must be 'h0' or 'label', got {value.value!r}"
    return None


def _validate_inputs(inputs: dict, _=None) -> str | None:
    """Every kind of the structure has a GTH pseudopotential of its element."""
    structure = inputs.get('structure')
    pseudos = inputs.get('pseudos', {})
    if structure is None:
        return None
    kinds = {kind.name: kind.symbol for kind in structure.kinds}
    missing = sorted(set(kinds) - set(pseudos))
    if missing:
        return f'no pseudopotential for the kind(s) {missing}: give `pseudos` (e.g. from a GthPseudoFamily)'
    for name, symbol in kinds.items():
        if pseudos[name].element != symbol:
            return f'the pseudopotential of kind {name!r} is for {pseudos[name].element}, not {symbol}'
    by_element = {}
    for name, symbol in kinds.items():
        if by_element.setdefault(symbol, pseudos[name].uuid) != pseudos[name].uuid:
            return f'kinds of {symbol} use different pseudopotentials; the engine takes one per element'
    if len(by_element) > 1:
        for name in kinds:
            last = ([pseudos[name].name] + list(pseudos[name].aliases))[-1] or ''
            if last.rsplit('-', 1)[-1][:1] == 'q' and last.rsplit('-', 1)[-1][1:].isdigit():
                return (
                    f'the pseudopotential {pseudos[name].pyscf_name!r} is a non-default valence variant; '
                    'PySCF reads such entries only from single-element structures'
                )
    return None


class NexthamDftCalculation(CalcJob):
    """Zeroth-step (``h0``) or self-consistent (``label``) block Hamiltonians from the PySCF engine."""

    _STRUCTURE_FILE = 'structure.xyz'
    _CONFIG_FILE = 'config.json'
    _PSEUDO_FOLDER = 'pseudo'
    _PSEUDO_FILE = 'pseudo/gth.dat'
    _OUTPUT_HAMILTONIAN = 'hamiltonian.h5'
    _SUMMARY_FILE = 'summary.json'
    _STDOUT_FILE = 'nextham.out'
    _STDERR_FILE = 'nextham.err'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'structure',
            valid_type=orm.StructureData,
            validator=_validate_structure,
            help='The crystal (periodic in three directions), Å.',
        )
        spec.input_namespace(
            'pseudos',
            valid_type=GthPseudoData,
            dynamic=True,
            help='A GTH pseudopotential for every kind of the structure.',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            validator=validate_parameters,
            help='Engine settings (basis, xc, cutoff, smearing, SCF options, self-check tolerance; '
            'protocol for the engine defaults).',
        )
        spec.input(
            'kpoints',
            valid_type=orm.KpointsData,
            required=False,
            validator=_validate_kpoints,
            help='Monkhorst-Pack mesh of the SCF (default: the protocol’s).',
        )
        spec.input(
            'mode',
            valid_type=orm.Str,
            default=lambda: orm.Str('label'),
            validator=_validate_mode,
            help="'h0' (zeroth-step Hamiltonian only) or 'label' (H0, SCF H and S).",
        )
        spec.inputs.validator = _validate_inputs

        spec.inputs['metadata']['options']['resources'].default = lambda: {
            'num_machines': 1,
            'num_mpiprocs_per_machine': 1,
        }
        spec.inputs['metadata']['options']['withmpi'].default = False
        spec.inputs['metadata']['options']['parser_name'].default = 'nextham.dft'
        spec.inputs['metadata']['options']['input_filename'].default = cls._CONFIG_FILE
        spec.inputs['metadata']['options']['output_filename'].default = cls._STDOUT_FILE

        spec.output(
            'hamiltonian',
            valid_type=HamiltonianData,
            required=False,
            help='HamiltonianData: H0 (and H, S in label mode) as real-space blocks.',
        )
        spec.output(
            'output_parameters',
            valid_type=orm.Dict,
            help='Energies, Fermi level, gap, self-check deviation, SCF cycles, timings, basis.',
        )
        spec.default_output_node = 'output_parameters'

        spec.exit_code(
            300, 'ERROR_OUTPUT_FILES_MISSING', message='output file(s) {filenames} missing: {message}'
        )
        spec.exit_code(
            301, 'ERROR_OUTPUT_SUMMARY_UNREADABLE', message='the summary JSON is unreadable: {message}'
        )
        spec.exit_code(
            302,
            'ERROR_OUTPUT_HAMILTONIAN_UNREADABLE',
            message='the Hamiltonian file is unreadable: {message}',
        )
        spec.exit_code(
            303, 'ERROR_INVALID_CONFIG', message='the engine rejected its configuration: {message}'
        )
        spec.exit_code(
            305, 'ERROR_ENGINE_FAILED', message='the engine failed with an unclassified error: {message}'
        )
        spec.exit_code(410, 'ERROR_SCF_NOT_CONVERGED', message='the SCF did not converge: {message}')
        spec.exit_code(
            411,
            'ERROR_SELF_CHECK_FAILED',
            message='the self-check of the real-space Hamiltonian failed: {message}',
        )
        spec.exit_code(
            412, 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS', message='unsupported element or basis: {message}'
        )
        spec.exit_code(413, 'ERROR_BAD_STRUCTURE', message='bad structure: {message}')

    # ---------------------------------------------------------------------------------- helpers
    def _pseudos_by_element(self) -> dict[str, GthPseudoData]:
        return {
            self.inputs.pseudos[kind.name].element: self.inputs.pseudos[kind.name]
            for kind in self.inputs.structure.kinds
        }

    def _config(self) -> dict:
        """The engine configuration written to config.json (parameters minus command-line keys).

        ``pseudo`` is the path of the pseudopotential file written from the ``pseudos`` nodes, so the
        engine computes with exactly the files recorded in the provenance (the parser copies their
        names and md5 into ``output_parameters``).
        """
        parameters = self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}
        config = {key: value for key, value in sorted(parameters.items()) if key not in _CLI_KEYS}
        config['pseudo'] = self._PSEUDO_FILE
        return config

    def _cmdline(self) -> list[str]:
        parameters = self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}
        params = ['dft', self._STRUCTURE_FILE, '--mode', self.inputs.mode.value]
        if parameters.get('protocol'):
            params += ['--protocol', parameters['protocol']]
        params += ['--parameters', self._CONFIG_FILE]
        if 'kpoints' in self.inputs:
            mesh, _ = self.inputs.kpoints.get_kpoints_mesh()
            params += ['--kmesh', *(str(int(n)) for n in mesh)]
        params += ['-o', self._OUTPUT_HAMILTONIAN, '--summary', self._SUMMARY_FILE]
        return params

    def prepare_for_submission(self, folder):
        from ase.io import write

        atoms = self.inputs.structure.get_ase()
        handle = io.StringIO()
        write(handle, atoms, format='extxyz')
        with folder.open(self._STRUCTURE_FILE, 'w') as target:
            target.write(handle.getvalue())

        # one CP2K-format file with the entry of every element: PySCF reads it as ``cell.pseudo`` (a path)
        folder.get_subfolder(self._PSEUDO_FOLDER, create=True)
        blocks = []
        for _, pseudo in sorted(self._pseudos_by_element().items()):
            blocks.append(pseudo.get_content().rstrip('\n') + '\n')
        with folder.open(self._PSEUDO_FILE, 'w') as target:
            target.write(''.join(blocks))

        with folder.open(self._CONFIG_FILE, 'w') as target:
            target.write(config_to_json(self._config()))

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = self._cmdline()
        codeinfo.stdout_name = self._STDOUT_FILE
        codeinfo.stderr_name = self._STDERR_FILE
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [
            self._OUTPUT_HAMILTONIAN,
            self._SUMMARY_FILE,
            self._STDOUT_FILE,
            self._STDERR_FILE,
        ]
        return calcinfo
