"""``NexthamPredictBandsWorkChain``: structure -> seekpath band path -> H0 -> model -> H, bands, DOS, gap.

Outline: the inputs are checked before any job (structure sanity, every element inside the model
coverage — exit code 401 naming the element —, a pseudopotential for every element); the band path
of the structure's own cell is made by the ``seekpath_band_path`` calcfunction (provenance of the
k-points); one ``NexthamPredictCalculation`` builds H0 with the model's basis and the family's
pseudopotentials, predicts H and computes the bands along that path, the DOS, Fermi level and gap.

Protocols (``fast``, ``balanced``, ``stringent``, ``predict_protocols.yaml``) set the engine's H0
protocol, the number of path points and the k-mesh of the Fermi level and DOS.
"""

from __future__ import annotations

import math

import numpy as np
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, calcfunction

from ..calculations.predict import NexthamPredictCalculation, structure_band_kpath
from ..data.hamiltonian import HamiltonianData
from ..data.model import ModelData

__all__ = ('NexthamPredictBandsWorkChain', 'seekpath_band_path')

#: label of the structure in the calculation's namespaces (names its outputs)
STRUCTURE_LABEL = 'structure'
KPATH_KEYS = ('path', 'npoints')


@calcfunction
def seekpath_band_path(structure: orm.StructureData, parameters: orm.Dict) -> orm.KpointsData:
    """Seekpath's band path of ``structure`` in the reciprocal basis of its own cell (no standardisation).

    The same path ``nextham predict --kpath PATH --npoints N`` computes (``parameters``: ``path``,
    ``'auto'`` or labels such as ``'G-X-W-K-G-L'``; ``npoints``).
    """
    settings = parameters.get_dict()
    kpath = structure_band_kpath(structure, settings.get('path', 'auto'), int(settings.get('npoints', 100)))
    kpoints = orm.KpointsData()
    kpoints.set_cell_from_structure(structure)
    kpoints.set_kpoints(np.asarray(kpath.kpoints, dtype=np.float64))
    kpoints.labels = [(int(index), str(label)) for index, label in kpath.labels]
    return kpoints


def _validate_kpath(value: orm.Dict | None, _=None) -> str | None:
    if value is None:
        return None
    settings = value.get_dict()
    unknown = sorted(set(settings) - set(KPATH_KEYS))
    if unknown:
        return f'unknown kpath settings {unknown}; accepted: {list(KPATH_KEYS)}'
    npoints = settings.get('npoints', 100)
    if isinstance(npoints, bool) or not isinstance(npoints, int) or npoints < 2:
        return f'npoints must be an integer >= 2, got {npoints!r}'
    if not isinstance(settings.get('path', 'auto'), str):
        return f'path must be a string, got {settings["path"]!r}'
    return None


class PredictProtocolMixin:
    """``get_builder_from_protocol`` support from ``predict_protocols.yaml``."""

    _PROTOCOL_FILE = 'predict_protocols.yaml'

    @classmethod
    def _load_protocols(cls) -> dict:
        from importlib import resources

        import yaml

        return yaml.safe_load(
            resources.files('aiida_nextham.workflows').joinpath(cls._PROTOCOL_FILE).read_text()
        )

    @classmethod
    def get_available_protocols(cls) -> dict[str, dict]:
        return {
            name: {'description': settings.get('description', '')}
            for name, settings in cls._load_protocols()['protocols'].items()
        }

    @classmethod
    def get_default_protocol(cls) -> str:
        return cls._load_protocols()['default_protocol']

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None) -> dict:
        """The protocol's settings merged into the default inputs."""
        data = cls._load_protocols()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            raise ValueError(f'unknown protocol {protocol!r}; available: {sorted(data["protocols"])}')
        inputs = dict(data['default_inputs'])
        inputs.update(data['protocols'][protocol])
        inputs['parameters'] = dict(data['default_inputs'].get('parameters', {}))
        return inputs


def _mesh(structure: orm.StructureData, kspacing: float) -> list[int]:
    """Monkhorst-Pack mesh with at most ``kspacing`` Å⁻¹ (2π included) between k-points."""
    reciprocal = 2 * np.pi * np.linalg.inv(np.asarray(structure.cell, dtype=np.float64)).T
    return [max(1, math.ceil(float(np.linalg.norm(b)) / kspacing)) for b in reciprocal]


class NexthamPredictBandsWorkChain(PredictProtocolMixin, WorkChain):
    """Band structure, DOS, Fermi level and gap of a structure from a trained model (H0 by the DFT engine)."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(
            NexthamPredictCalculation,
            namespace='predict',
            exclude=('model', 'structures', 'h0', 'pseudos', 'kpoints'),
            namespace_options={
                'help': 'Inputs of the NexthamPredictCalculation (code, parameters, options).'
            },
        )
        spec.inputs['predict'].validator = None
        spec.input('structure', valid_type=orm.StructureData, help='The crystal (periodic in 3D), Å.')
        spec.input('model', valid_type=ModelData, help='The trained model.')
        spec.input(
            'pseudo_family',
            valid_type=orm.Str,
            help='Label of the GthPseudoFamily whose pseudopotentials build H0 (provenance).',
        )
        spec.input(
            'kpath',
            valid_type=orm.Dict,
            required=False,
            validator=_validate_kpath,
            help="Band path settings: path ('auto' or labels such as 'G-X-W-K-G-L'), npoints (default 100).",
        )
        spec.outline(
            cls.validate_inputs,
            cls.make_band_path,
            cls.run_predict,
            cls.inspect_predict,
            cls.results,
        )
        spec.output('hamiltonian', valid_type=HamiltonianData, help='The predicted block Hamiltonian.')
        spec.output('band_structure', valid_type=orm.BandsData, help='Bands along the seekpath path, eV.')
        spec.output('dos', valid_type=orm.XyData, required=False, help='Density of states, states/eV/cell.')
        spec.output(
            'output_parameters', valid_type=orm.Dict, help='Fermi level, gap, VBM, CBM, timings (eV, s).'
        )
        spec.default_output_node = 'output_parameters'
        spec.exit_code(
            401,
            'ERROR_MODEL_COVERAGE',
            message='the structure is outside the model coverage: {message}',
        )
        spec.exit_code(402, 'ERROR_MISSING_PSEUDOPOTENTIAL', message='pseudopotentials: {message}')
        spec.exit_code(403, 'ERROR_BAD_STRUCTURE', message='bad structure: {message}')
        spec.exit_code(404, 'ERROR_INVALID_KPATH', message='no band path for this cell: {message}')
        spec.exit_code(
            450,
            'ERROR_PREDICT_FAILED',
            message='the NexthamPredictCalculation failed with exit status {status}: {message}',
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.Code,
        model: ModelData,
        structure: orm.StructureData,
        protocol: str | None = None,
        overrides: dict | None = None,
        pseudo_family: str | None = None,
        options: dict | None = None,
    ):
        """A builder prepopulated from a protocol (``fast``, ``balanced``, ``stringent``).

        :param overrides: ``{'parameters': {...}}`` (NexthamPredictCalculation parameters replacing the
            protocol's), ``'npoints'``, ``'kpath'`` (path labels) and ``'kspacing'`` (Fermi/DOS mesh).
        :param pseudo_family: label of a GthPseudoFamily (default: PySCF's GTH family of the model's
            functional, installed offline when missing).
        :param options: ``metadata.options`` of the calculation (merged into the defaults).
        """
        from ..data.pseudo import install_pyscf_gth_family

        inputs = cls.get_protocol_inputs(protocol)
        overrides = dict(overrides or {})
        parameters = {**inputs['parameters'], **overrides.pop('parameters', {})}
        inputs.update(overrides)
        parameters.setdefault('protocol', inputs['h0_protocol'])
        parameters.setdefault('mesh', _mesh(structure, float(inputs['kspacing'])))
        if pseudo_family is None:
            xc = str((model.base.attributes.get('dft', {}) or {}).get('xc') or 'pbe').lower()
            pseudo_family = install_pyscf_gth_family(xc if xc != 'lda' else 'pade')[0].label

        builder = cls.get_builder()
        builder.predict.code = code
        builder.predict.parameters = orm.Dict(parameters)
        for key, value in (options or {}).items():  # one by one: the defaults (resources) stay
            setattr(builder.predict.metadata.options, key, value)
        builder.structure = structure
        builder.model = model
        builder.pseudo_family = orm.Str(pseudo_family)
        builder.kpath = orm.Dict({'path': inputs.get('kpath', 'auto'), 'npoints': int(inputs['npoints'])})
        return builder

    # ------------------------------------------------------------------------------------ outline
    def validate_inputs(self):
        """Everything that can be refused without a job: structure, coverage, pseudopotentials, path."""
        from aiida.common.exceptions import NotExistent

        from ..calculations.dft import check_structure
        from ..data.pseudo import GthPseudoFamily
        from ..ml.inference import Coverage, CoverageError

        structure = self.inputs.structure
        problem = check_structure(structure)
        if problem is not None:
            return self.exit_codes.ERROR_BAD_STRUCTURE.format(message=problem[1])

        coverage = Coverage.from_metadata(self.inputs.model.metadata)
        numbers = structure.get_ase().numbers
        try:
            coverage.check_elements(numbers, f'{structure.get_formula()} <{structure.pk}>')
        except CoverageError as exc:
            self.report(f'refused before any job: {exc}')
            return self.exit_codes.ERROR_MODEL_COVERAGE.format(message=str(exc))

        label = self.inputs.pseudo_family.value
        try:
            family = GthPseudoFamily.collection.get(label=label)
        except NotExistent:
            return self.exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.format(
                message=f'no GthPseudoFamily {label!r}'
            )
        elements = sorted({kind.symbol for kind in structure.kinds})
        missing = sorted(set(elements) - set(family.elements))
        if missing:
            return self.exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.format(
                message=f'the family {label} has no pseudopotential for {missing}'
            )
        self.ctx.pseudos = family.get_pseudos(elements=elements)

        settings = self.inputs.kpath.get_dict() if 'kpath' in self.inputs else {}
        try:
            structure_band_kpath(structure, settings.get('path', 'auto'), int(settings.get('npoints', 100)))
        except (ValueError, RuntimeError) as exc:
            return self.exit_codes.ERROR_INVALID_KPATH.format(message=str(exc))
        return None

    def make_band_path(self):
        kpath = self.inputs.kpath if 'kpath' in self.inputs else orm.Dict({'path': 'auto', 'npoints': 100})
        self.ctx.kpoints = seekpath_band_path(self.inputs.structure, kpath)

    def run_predict(self):
        inputs = AttributeDict(self.exposed_inputs(NexthamPredictCalculation, 'predict'))
        inputs.model = self.inputs.model
        inputs.structures = {STRUCTURE_LABEL: self.inputs.structure}
        inputs.pseudos = self.ctx.pseudos
        inputs.kpoints = self.ctx.kpoints
        inputs.metadata.call_link_label = 'predict'
        calculation = self.submit(NexthamPredictCalculation, **inputs)
        self.report(f'launched NexthamPredictCalculation<{calculation.pk}>')
        return ToContext(calculation=calculation)

    def inspect_predict(self):
        calculation = self.ctx.calculation
        if calculation.is_finished_ok:
            return None
        self.report(f'NexthamPredictCalculation<{calculation.pk}> failed: {calculation.exit_message}')
        if calculation.exit_status == NexthamPredictCalculation.exit_codes.ERROR_MODEL_COVERAGE.status:
            return self.exit_codes.ERROR_MODEL_COVERAGE.format(message=calculation.exit_message)
        return self.exit_codes.ERROR_PREDICT_FAILED.format(
            status=calculation.exit_status, message=calculation.exit_message or 'no message'
        )

    def results(self):
        outputs = self.ctx.calculation.outputs
        self.out('hamiltonian', outputs.hamiltonians[STRUCTURE_LABEL])
        self.out('band_structure', outputs.bands[STRUCTURE_LABEL])
        if 'dos' in outputs and STRUCTURE_LABEL in outputs.dos:
            self.out('dos', outputs.dos[STRUCTURE_LABEL])
        self.out('output_parameters', outputs.results)
