"""``NexthamPhononCalculation``: runs ``nextham phonons`` (phonopy finite displacements) on any computer.

Files written into the working directory: ``structure.xyz`` (extended XYZ, Å); for DFT forces
``dft.json`` (DftConfig settings) and, when ``pseudos`` are given, ``pseudo/gth.dat``; for ML forces the
model files under ``model/``. The engine writes the folder ``phonons/`` (phonopy's files, bands.json,
dos.json, thermal_properties.json, summary.json) and ``summary.json`` (or ``{"error": ...}``).
"""

from __future__ import annotations

import io

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from ..data.model import ModelData
from ..data.pseudo import GthPseudoData
from .dft import _validate_structure, config_to_json, validate_parameters

__all__ = ('PHONON_SETTINGS', 'NexthamPhononCalculation', 'validate_settings')

#: keys of the ``settings`` input -> command-line option of ``nextham phonons``
PHONON_SETTINGS = {
    'displacement': '--displacement',
    'path': '--path',
    'npoints': '--npoints',
    'mesh': '--mesh',
    'tmax': '--tmax',
    'tstep': '--tstep',
    'imaginary_tolerance': '--imaginary-tolerance',
}


def _validate_supercell(value: orm.List, _=None) -> str | None:
    items = value.get_list()
    if len(items) != 3 or not all(isinstance(n, int) and n >= 1 for n in items):
        return f'supercell must be three positive integers (diagonal), got {items!r}'
    return None


def validate_settings(value: orm.Dict | None, _=None) -> str | None:
    """Phonon settings: known keys only, values accepted by :class:`~aiida_nextham.phonons.PhononSettings`."""
    if value is None:
        return None
    settings = value.get_dict()
    unknown = sorted(set(settings) - set(PHONON_SETTINGS))
    if unknown:
        return f'unknown settings {unknown}; accepted: {sorted(PHONON_SETTINGS)}'
    from ..phonons import PhononSettings

    try:
        PhononSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    except (TypeError, ValueError) as exc:
        return f'invalid settings: {exc}'
    mesh = settings.get('mesh')
    if mesh is not None and (not isinstance(mesh, list) or len(mesh) != 3):
        return f'mesh must be a list of three integers, got {mesh!r}'
    return None


def _validate_protocol(value: orm.Str, _=None) -> str | None:
    from ..dft.protocols import PROTOCOLS

    if value.value not in PROTOCOLS:
        return f'unknown protocol {value.value!r}; choose from {PROTOCOLS}'
    return None


def _validate_calculator(value: orm.Str, _=None) -> str | None:
    from ..phonons import ASE_CALCULATORS

    if value.value not in ASE_CALCULATORS:
        return f'unknown calculator {value.value!r}; choose from {ASE_CALCULATORS}'
    return None


def _validate_inputs(inputs: dict, _=None) -> str | None:
    """Exactly one force source; DFT-only inputs only with DFT; pseudopotentials for every kind."""
    sources = [name for name in ('protocol', 'model', 'calculator') if name in inputs]
    if len(sources) != 1:
        return 'give exactly one force source: `protocol` (DFT), `model` (ML force field) or `calculator`'
    if sources[0] != 'protocol' and ('dft_parameters' in inputs or inputs.get('pseudos')):
        return '`dft_parameters` and `pseudos` apply to DFT forces (`protocol`) only'
    pseudos, structure = inputs.get('pseudos') or {}, inputs.get('structure')
    if pseudos and structure is not None:
        missing = sorted({kind.name for kind in structure.kinds} - set(pseudos))
        if missing:
            return f'no pseudopotential for the kind(s) {missing}'
        for kind in structure.kinds:
            if pseudos[kind.name].element != kind.symbol:
                return f'the pseudopotential of kind {kind.name!r} is for {pseudos[kind.name].element}'
    return None


class NexthamPhononCalculation(CalcJob):
    """Phonon bands, DOS and thermal properties with forces from the PySCF engine or an ML force field."""

    _STRUCTURE_FILE = 'structure.xyz'
    _DFT_FILE = 'dft.json'
    _PSEUDO_FILE = 'pseudo/gth.dat'
    _MODEL_FOLDER = 'model'
    _OUTPUT_FOLDER = 'phonons'
    _SUMMARY_FILE = 'summary.json'
    _STDOUT_FILE = 'nextham.out'
    _STDERR_FILE = 'nextham.err'
    #: phonopy's own files, kept together as the ``phonopy_files`` output
    _PHONOPY_FILES = ('phonopy_disp.yaml', 'phonopy_params.yaml', 'FORCE_SETS', 'force_constants.hdf5')

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'structure',
            valid_type=orm.StructureData,
            validator=_validate_structure,
            help='The crystal (unit cell of the supercell and of the phonon path), Å.',
        )
        spec.input(
            'supercell',
            valid_type=orm.List,
            validator=_validate_supercell,
            help='Diagonal supercell of the structure for the finite displacements, e.g. [2, 2, 2].',
        )
        spec.input(
            'protocol',
            valid_type=orm.Str,
            required=False,
            validator=_validate_protocol,
            help='DFT forces (PySCF) with this engine protocol (fast, balanced, stringent).',
        )
        spec.input(
            'dft_parameters',
            valid_type=orm.Dict,
            required=False,
            validator=validate_parameters,
            help='DftConfig settings on top of the protocol (e.g. {"kmesh": [1, 1, 1]}: Γ-point gradients).',
        )
        spec.input_namespace(
            'pseudos',
            valid_type=GthPseudoData,
            dynamic=True,
            required=False,
            help='GTH pseudopotential per kind for DFT forces (default: PySCF’s bundled gth-pbe).',
        )
        spec.input(
            'model',
            valid_type=(ModelData, orm.FolderData),
            required=False,
            help='ML force field (model.safetensors + model.json) instead of DFT forces.',
        )
        spec.input(
            'calculator',
            valid_type=orm.Str,
            required=False,
            validator=_validate_calculator,
            help="Empirical ASE calculator instead of DFT ('emt'): cheap reference forces.",
        )
        spec.input(
            'settings',
            valid_type=orm.Dict,
            required=False,
            validator=validate_settings,
            help='Phonon settings: displacement (Å), path, npoints, mesh, tmax, tstep (K), '
            'imaginary_tolerance (THz).',
        )
        spec.inputs.validator = _validate_inputs
        options = spec.inputs['metadata']['options']
        options['resources'].default = lambda: {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        options['withmpi'].default = False
        options['parser_name'].default = 'nextham.phonons'
        options['output_filename'].default = cls._STDOUT_FILE

        spec.output(
            'bands', valid_type=orm.BandsData, required=False, help='Phonon frequencies (THz) on the path.'
        )
        spec.output(
            'dos', valid_type=orm.XyData, required=False, help='Total phonon DOS (states/THz per cell).'
        )
        spec.output(
            'thermal_properties',
            valid_type=orm.Dict,
            required=False,
            help='Temperatures (K), free energy (eV), entropy and heat capacity (eV/K) per primitive cell.',
        )
        spec.output(
            'phonopy_files',
            valid_type=orm.FolderData,
            required=False,
            help='phonopy_disp.yaml, phonopy_params.yaml (displacements + forces), FORCE_SETS, '
            'force_constants.hdf5: what phonopy and aiida-phonopy read.',
        )
        spec.output(
            'output_parameters',
            valid_type=orm.Dict,
            help='Summary: dynamically_stable, stability details, frequencies at special points, timings.',
        )
        spec.default_output_node = 'output_parameters'

        spec.exit_code(
            300, 'ERROR_OUTPUT_FILES_MISSING', message='output file(s) {filenames} missing: {message}'
        )
        spec.exit_code(
            301, 'ERROR_OUTPUT_SUMMARY_UNREADABLE', message='the summary JSON is unreadable: {message}'
        )
        spec.exit_code(302, 'ERROR_OUTPUT_UNREADABLE', message='an output file is unreadable: {message}')
        spec.exit_code(303, 'ERROR_INVALID_SETTINGS', message='the engine rejected its settings: {message}')
        spec.exit_code(304, 'ERROR_BAD_MODEL', message='the force-field model cannot be used: {message}')
        spec.exit_code(
            305, 'ERROR_ENGINE_FAILED', message='the engine failed with an unclassified error: {message}'
        )
        spec.exit_code(
            410, 'ERROR_SCF_NOT_CONVERGED', message='SCF of a displaced supercell not converged: {message}'
        )
        spec.exit_code(
            412, 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS', message='unsupported element or basis: {message}'
        )
        spec.exit_code(413, 'ERROR_BAD_STRUCTURE', message='bad structure: {message}')
        spec.exit_code(
            414, 'ERROR_BAD_FORCES', message='the force backend returned unusable forces: {message}'
        )

    def _cmdline(self) -> list[str]:
        params = ['phonons', self._STRUCTURE_FILE, '--supercell', *map(str, self.inputs.supercell.get_list())]
        if 'protocol' in self.inputs:
            params += ['--protocol', self.inputs.protocol.value, '--parameters', self._DFT_FILE]
        elif 'calculator' in self.inputs:
            params += ['--calculator', self.inputs.calculator.value]
        else:
            params += ['--model', self._MODEL_FOLDER]
        settings = self.inputs.settings.get_dict() if 'settings' in self.inputs else {}
        for key, option in PHONON_SETTINGS.items():
            if key in settings:
                value = settings[key]
                params += [option, *map(str, value)] if isinstance(value, list) else [option, str(value)]
        return [*params, '-o', self._OUTPUT_FOLDER, '--summary', self._SUMMARY_FILE]

    def prepare_for_submission(self, folder):
        from ase.io import write

        handle = io.StringIO()
        write(handle, self.inputs.structure.get_ase(), format='extxyz')
        with folder.open(self._STRUCTURE_FILE, 'w') as target:
            target.write(handle.getvalue())

        local_copy_list = []
        if 'protocol' in self.inputs:
            config = self.inputs.dft_parameters.get_dict() if 'dft_parameters' in self.inputs else {}
            config = {key: value for key, value in config.items() if key != 'protocol'}
            pseudos = self.inputs.get('pseudos') or {}
            if pseudos:
                folder.get_subfolder('pseudo', create=True)
                by_element = {pseudo.element: pseudo for pseudo in pseudos.values()}
                with folder.open(self._PSEUDO_FILE, 'w') as target:
                    target.write(
                        ''.join(p.get_content().rstrip('\n') + '\n' for _, p in sorted(by_element.items()))
                    )
                config['pseudo'] = self._PSEUDO_FILE
            with folder.open(self._DFT_FILE, 'w') as target:
                target.write(config_to_json(config))
        elif 'model' in self.inputs:
            model = self.inputs.model
            for name in model.base.repository.list_object_names():
                local_copy_list.append((model.uuid, name, f'{self._MODEL_FOLDER}/{name}'))

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = self._cmdline()
        codeinfo.stdout_name = self._STDOUT_FILE
        codeinfo.stderr_name = self._STDERR_FILE
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.retrieve_list = [
            self._OUTPUT_FOLDER,
            self._SUMMARY_FILE,
            self._STDOUT_FILE,
            self._STDERR_FILE,
        ]
        return calcinfo
