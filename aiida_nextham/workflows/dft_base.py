"""``NexthamDftBaseWorkChain``: ``NexthamDftCalculation`` with automatic recovery from known failures.

Handlers (highest priority first):

- unsupported element/basis, bad structure, invalid configuration: stop at once (nothing to retry);
- SCF not converged: escalate, one step per failure: (1) more cycles, (2) damping and a level shift,
  (3) Fermi-Dirac smearing (or a wider smearing);
- self-check failed: a denser k-mesh for the real-space transform (larger alias margin), then a
  larger neighbour cutoff.

Protocols (``fast``, ``balanced``, ``stringent``) are the label engine's own (``dft/protocols.yaml``):
the AiiDA layer and the ``nextham dft`` command share one source of defaults.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from ..calculations.dft import NexthamDftCalculation, check_structure
from ..data.pseudo import GthPseudoFamily

__all__ = ('NexthamDftBaseWorkChain', 'ProtocolMixin')

#: protocol names of the engine, cheapest first
PROTOCOLS = ('fast', 'balanced', 'stringent')
DEFAULT_PROTOCOL = 'balanced'

#: SCF escalation settings (DftConfig names and units: eV)
SCF_DEFAULT_CYCLES = 50
SCF_DAMPING = 0.5
SCF_LEVEL_SHIFT = 0.5
SCF_SMEARING_WIDTH = 0.1
#: self-check escalation: Å added to the alias margin, then to the neighbour cutoff
SELFCHECK_ALIAS_STEP = 4.0
SELFCHECK_CUTOFF_STEP = 2.0


class ProtocolMixin:
    """``get_builder_from_protocol`` support on top of the engine's protocol YAML."""

    @classmethod
    def get_available_protocols(cls) -> dict[str, dict]:
        """``{name: {'description': ...}}`` for every protocol of the engine's ``protocols.yaml``."""
        from importlib import resources

        import yaml

        data = yaml.safe_load(resources.files('aiida_nextham.dft').joinpath('protocols.yaml').read_text())
        return {
            name: {'description': settings.get('description', '')}
            for name, settings in data['protocols'].items()
        }

    @classmethod
    def get_default_protocol(cls) -> str:
        """``balanced``: the protocol the engine uses when none is named."""
        return DEFAULT_PROTOCOL

    @classmethod
    def get_protocol_parameters(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """The full engine configuration of ``protocol`` with ``overrides`` applied, as a plain dict."""
        from ..dft.protocols import get_protocol

        config = get_protocol(protocol or DEFAULT_PROTOCOL, overrides or {})
        if hasattr(config, 'as_dict'):
            config = config.as_dict()
        return dict(config)


def _validate_inputs(inputs, _=None):
    """Pseudopotentials come from ``dft.pseudos`` or from ``pseudo_family`` (exactly one of them)."""
    dft = inputs.get('dft', {})
    has_pseudos = bool(dft.get('pseudos'))
    if has_pseudos and 'pseudo_family' in inputs:
        return 'give either `dft.pseudos` or `pseudo_family`, not both'
    if not has_pseudos and 'pseudo_family' not in inputs:
        return 'give `dft.pseudos` or `pseudo_family`'
    structure = dft.get('structure')
    if structure is not None and has_pseudos:
        from ..calculations.dft import _validate_inputs as validate_calcjob_inputs

        return validate_calcjob_inputs(dft)
    return None


class NexthamDftBaseWorkChain(ProtocolMixin, BaseRestartWorkChain):
    """Run ``NexthamDftCalculation`` and recover from SCF non-convergence and failed self-checks."""

    _process_class = NexthamDftCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(NexthamDftCalculation, namespace='dft', exclude=('pseudos',))
        spec.input_namespace(
            'dft.pseudos',
            valid_type=NexthamDftCalculation.spec().inputs['pseudos'].valid_type,
            dynamic=True,
            required=False,
            help='A GTH pseudopotential for every kind (else from `pseudo_family`).',
        )
        spec.inputs['dft'].validator = None
        spec.input(
            'pseudo_family',
            valid_type=orm.Str,
            required=False,
            help='Label of a GthPseudoFamily to take the pseudopotentials from (instead of dft.pseudos).',
        )
        spec.inputs.validator = _validate_inputs

        spec.outline(
            cls.setup,
            cls.validate_inputs,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.expose_outputs(NexthamDftCalculation)
        spec.exit_code(
            410, 'ERROR_SCF_NOT_CONVERGED', message='the SCF did not converge even after all escalation steps'
        )
        spec.exit_code(
            411,
            'ERROR_SELF_CHECK_FAILED',
            message='the self-check still fails after densifying the mesh and enlarging the cutoff',
        )
        spec.exit_code(
            412, 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS', message='unsupported element or basis: {message}'
        )
        spec.exit_code(413, 'ERROR_BAD_STRUCTURE', message='bad structure: {message}')
        spec.exit_code(414, 'ERROR_INVALID_CONFIG', message='the engine rejected its configuration')

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.Code,
        structure: orm.StructureData,
        protocol: str | None = None,
        overrides: dict | None = None,
        mode: str = 'label',
        pseudo_family: str | None = None,
        options: dict | None = None,
    ):
        """A builder prepopulated from a protocol (``fast``, ``balanced``, ``stringent``).

        :param overrides: engine settings replacing the protocol's (e.g. ``{'basis': 'gth-dzvp'}``);
            the key ``kmesh`` becomes the ``kpoints`` input, everything else the ``parameters``.
        :param mode: ``'label'`` (H0, H, S) or ``'h0'``.
        :param pseudo_family: label of a GthPseudoFamily (default: PySCF's GTH family of the functional,
            installed on the fly when missing).
        :param options: ``metadata.options`` of the calculation.
        """
        from ..data.pseudo import install_pyscf_gth_family, pyscf_gth_family_label

        protocol = protocol or cls.get_default_protocol()
        if protocol not in PROTOCOLS:
            raise ValueError(f'unknown protocol {protocol!r}; available: {PROTOCOLS}')
        parameters = cls.get_protocol_parameters(protocol, overrides)
        functional = str(parameters.get('xc', 'pbe')).lower()
        kmesh = parameters.pop('kmesh', None)
        parameters.pop('pseudo', None)  # set by the calculation from the pseudopotential files

        if pseudo_family is None:
            family, _ = install_pyscf_gth_family(functional if functional != 'lda' else 'pade')
        else:
            family = GthPseudoFamily.collection.get(label=pseudo_family)
        if family.label != pyscf_gth_family_label(functional) and family.base.extras.get('functional', None):
            if family.base.extras.get('functional').lower() != functional:
                raise ValueError(
                    f'the family {family.label} is for {family.base.extras.get("functional")}, '
                    f'the protocol asks for {functional}'
                )

        builder = cls.get_builder()
        builder.dft.code = code
        builder.dft.structure = structure
        builder.dft.pseudos = family.get_pseudos(structure=structure)
        builder.dft.parameters = orm.Dict({'protocol': protocol, **_drop_none(parameters)})
        builder.dft.mode = orm.Str(mode)
        if kmesh is not None:
            kpoints = orm.KpointsData()
            kpoints.set_kpoints_mesh([int(n) for n in kmesh])
            builder.dft.kpoints = kpoints
        if options:
            builder.dft.metadata.options = options
        builder.clean_workdir = orm.Bool(False)
        return builder

    # --------------------------------------------------------------------------------- outline
    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(NexthamDftCalculation, 'dft'))
        # `dft.pseudos` is redeclared (optional) rather than exposed, so `exposed_inputs` leaves it out
        self.ctx.inputs.pseudos = dict(self.inputs.dft.get('pseudos', {}))
        self.ctx.scf_escalation = 0
        self.ctx.selfcheck_escalation = 0

    def validate_inputs(self):
        """Cheap checks before any DFT work: structure sanity and pseudopotential coverage."""
        structure = self.ctx.inputs.structure
        problem = check_structure(structure)
        if problem is not None:
            return self.exit_codes.ERROR_BAD_STRUCTURE.format(message=problem[1])
        if 'pseudo_family' in self.inputs:
            family = GthPseudoFamily.collection.get(label=self.inputs.pseudo_family.value)
            missing = sorted({kind.symbol for kind in structure.kinds} - set(family.elements))
            if missing:
                return self.exit_codes.ERROR_UNSUPPORTED_ELEMENT_OR_BASIS.format(
                    message=f'the family {family.label} has no pseudopotential for {missing}'
                )
            self.ctx.inputs.pseudos = family.get_pseudos(structure=structure)
        return None

    # -------------------------------------------------------------------------------- helpers
    def _parameters(self) -> dict:
        return self.ctx.inputs.parameters.get_dict() if 'parameters' in self.ctx.inputs else {}

    def _set_parameters(self, parameters: dict) -> None:
        self.ctx.inputs.parameters = orm.Dict(parameters)

    def _effective(self, key: str, default):
        """Value of an engine setting: explicit parameter, else the protocol's, else ``default``."""
        parameters = self._parameters()
        if key in parameters:
            return parameters[key]
        try:
            return self.get_protocol_parameters(parameters.get('protocol')).get(key, default)
        except Exception:
            return default

    # -------------------------------------------------------------------------------- handlers
    @process_handler(
        priority=600,
        exit_codes=[
            NexthamDftCalculation.exit_codes.ERROR_UNSUPPORTED_ELEMENT_OR_BASIS,
            NexthamDftCalculation.exit_codes.ERROR_BAD_STRUCTURE,
            NexthamDftCalculation.exit_codes.ERROR_INVALID_CONFIG,
        ],
    )
    def handle_unrecoverable_input(self, calculation):
        """Inputs the engine rejects will be rejected again: stop with the same meaning."""
        label = {
            412: 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS',
            413: 'ERROR_BAD_STRUCTURE',
        }.get(calculation.exit_status, 'ERROR_INVALID_CONFIG')
        self.report(f'{calculation.process_label}<{calculation.pk}> failed: {calculation.exit_message}')
        exit_code = getattr(self.exit_codes, label)
        if '{message}' in exit_code.message:
            exit_code = exit_code.format(message=calculation.exit_message)
        return ProcessHandlerReport(True, exit_code)

    @process_handler(priority=500, exit_codes=[NexthamDftCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED])
    def handle_scf_not_converged(self, calculation):
        """Escalate: more cycles, then damping + level shift, then smearing (or a wider smearing)."""
        parameters = self._parameters()
        step = self.ctx.scf_escalation
        if step == 0:
            cycles = int(self._effective('max_cycles', SCF_DEFAULT_CYCLES))
            parameters['max_cycles'] = max(2 * cycles, SCF_DEFAULT_CYCLES)
            action = f'max_cycles {cycles} -> {parameters["max_cycles"]}'
        elif step == 1:
            parameters['damping'] = max(float(self._effective('damping', 0.0)), SCF_DAMPING)
            parameters['level_shift'] = max(float(self._effective('level_shift', 0.0)), SCF_LEVEL_SHIFT)
            action = f'damping {parameters["damping"]}, level shift {parameters["level_shift"]} eV'
        elif step == 2:
            if self._effective('smearing', None) is None:
                parameters['smearing'] = 'fermi-dirac'
                parameters['smearing_width'] = SCF_SMEARING_WIDTH
            else:
                parameters['smearing_width'] = 2 * float(
                    self._effective('smearing_width', SCF_SMEARING_WIDTH)
                )
            action = (
                f'smearing {parameters["smearing"] if "smearing" in parameters else "kept"}, '
                f'width {parameters["smearing_width"]} eV'
            )
        else:
            self.report('the SCF did not converge after every escalation step: giving up')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_SCF_NOT_CONVERGED)
        self.ctx.scf_escalation += 1
        self._set_parameters(parameters)
        self.report(
            f'{calculation.process_label}<{calculation.pk}>: SCF not converged; restarting with {action}'
        )
        return ProcessHandlerReport(True)

    @process_handler(priority=400, exit_codes=[NexthamDftCalculation.exit_codes.ERROR_SELF_CHECK_FAILED])
    def handle_self_check_failed(self, calculation):
        """A denser transform mesh (larger alias margin, or a denser explicit mesh), then a larger cutoff."""
        parameters = self._parameters()
        step = self.ctx.selfcheck_escalation
        if step == 0:
            dense = self._effective('dense_kmesh', None)
            if dense is not None:
                parameters['dense_kmesh'] = [int(n) + max(1, int(n) // 2) for n in dense]
                action = f'dense_kmesh {list(dense)} -> {parameters["dense_kmesh"]}'
            else:
                margin = float(self._effective('alias_margin', 4.0))
                parameters['alias_margin'] = margin + SELFCHECK_ALIAS_STEP
                action = f'alias_margin {margin} -> {parameters["alias_margin"]} Å'
        elif step == 1:
            cutoff = float(self._effective('cutoff', 8.0))
            parameters['cutoff'] = cutoff + SELFCHECK_CUTOFF_STEP
            if 'dense_kmesh' in parameters:
                parameters['dense_kmesh'] = [int(n) + max(1, int(n) // 2) for n in parameters['dense_kmesh']]
            action = f'cutoff {cutoff} -> {parameters["cutoff"]} Å'
        else:
            self.report('the self-check still fails after densifying the mesh and enlarging the cutoff')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_SELF_CHECK_FAILED)
        self.ctx.selfcheck_escalation += 1
        self._set_parameters(parameters)
        self.report(
            f'{calculation.process_label}<{calculation.pk}>: self-check failed; restarting with {action}'
        )
        return ProcessHandlerReport(True)


def _drop_none(parameters: dict) -> dict:
    return {key: value for key, value in parameters.items() if value is not None}
