"""``NexthamPhononWorkChain``: phonons of a structure with DFT or ML forces, with SCF recovery.

Runs :class:`~aiida_nextham.calculations.phonons.NexthamPhononCalculation` under ``BaseRestartWorkChain``:

- bad structure, unsupported element, invalid settings, unusable model: stop at once (nothing to retry);
- SCF not converged (DFT forces): one retry with more cycles, damping and a level shift.

A dynamically unstable structure (imaginary modes beyond the tolerance, acoustic modes at Γ excluded)
is a result, not a failure: ``output_parameters['dynamically_stable']`` is False and the work chain
reports it in its log; with ``fail_if_unstable`` it also ends with exit code 420 (outputs attached).
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from ..calculations.phonons import NexthamPhononCalculation

__all__ = ('NexthamPhononWorkChain',)

#: SCF recovery settings (DftConfig names, eV)
SCF_RETRY = {'max_cycles': 150, 'damping': 0.5, 'level_shift': 0.5}


class NexthamPhononWorkChain(BaseRestartWorkChain):
    """Phonon bands, DOS, thermal properties and phonopy files; forces from DFT (protocol) or a model."""

    _process_class = NexthamPhononCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(NexthamPhononCalculation, namespace='phonons')
        spec.input(
            'fail_if_unstable',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='End with exit code 420 (outputs attached) when the structure is dynamically unstable.',
        )
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
            cls.check_stability,
        )
        spec.expose_outputs(NexthamPhononCalculation)
        spec.exit_code(410, 'ERROR_SCF_NOT_CONVERGED', message='the SCF did not converge even with damping')
        spec.exit_code(413, 'ERROR_BAD_INPUT', message='the calculation rejected its input: {message}')
        spec.exit_code(
            420,
            'ERROR_DYNAMICALLY_UNSTABLE',
            message='imaginary modes: the structure is dynamically unstable',
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.Code,
        structure: orm.StructureData,
        protocol: str | None = 'fast',
        supercell=(2, 2, 2),
        model=None,
        dft_overrides: dict | None = None,
        settings: dict | None = None,
        options: dict | None = None,
        calculator: str | None = None,
    ):
        """A builder for DFT forces with ``protocol``, ML forces when ``model`` is given, or the forces of
        an ASE ``calculator`` (``'emt'``).

        :param dft_overrides: DftConfig settings on top of the protocol and of ``{'kmesh': [1, 1, 1]}``
            (Γ-point analytic gradients of the supercell, the affordable route; give ``kmesh`` to change it).
        """
        builder = cls.get_builder()
        builder.phonons.code = code
        builder.phonons.structure = structure
        builder.phonons.supercell = orm.List([int(n) for n in supercell])
        if model is not None and calculator is not None:
            raise ValueError('give either a force-field `model` or an ASE `calculator`, not both')
        if model is not None:
            builder.phonons.model = model
        elif calculator is not None:
            builder.phonons.calculator = orm.Str(calculator)
        else:
            builder.phonons.protocol = orm.Str(protocol)
            builder.phonons.dft_parameters = orm.Dict({'kmesh': [1, 1, 1], **(dft_overrides or {})})
        if settings:
            builder.phonons.settings = orm.Dict(settings)
        if options:
            builder.phonons.metadata.options = options
        return builder

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(NexthamPhononCalculation, 'phonons'))
        self.ctx.scf_retried = False

    def check_stability(self):
        """Report (and with ``fail_if_unstable``, fail on) imaginary modes."""
        parameters = self.outputs.get('output_parameters')
        if parameters is None or parameters.get('dynamically_stable', True):
            return None
        stability = parameters.get('stability', {})
        self.report(
            f'dynamically UNSTABLE: {stability.get("n_imaginary")} imaginary mode(s) on the path, lowest '
            f'{stability.get("min_frequency"):.3f} THz (tolerance {stability.get("tolerance")} THz)'
        )
        if self.inputs.fail_if_unstable.value:
            return self.exit_codes.ERROR_DYNAMICALLY_UNSTABLE
        return None

    @process_handler(
        priority=600,
        exit_codes=[
            NexthamPhononCalculation.exit_codes.ERROR_BAD_STRUCTURE,
            NexthamPhononCalculation.exit_codes.ERROR_UNSUPPORTED_ELEMENT_OR_BASIS,
            NexthamPhononCalculation.exit_codes.ERROR_INVALID_SETTINGS,
            NexthamPhononCalculation.exit_codes.ERROR_BAD_MODEL,
        ],
    )
    def handle_bad_input(self, node):
        """Nothing to retry: the input itself is wrong."""
        self.report(f'{node.process_label}<{node.pk}> rejected its input: {node.exit_message}')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_BAD_INPUT.format(message=node.exit_message))

    @process_handler(priority=500, exit_codes=[NexthamPhononCalculation.exit_codes.ERROR_SCF_NOT_CONVERGED])
    def handle_scf_not_converged(self, node):
        """Retry once with more cycles, damping and a level shift."""
        if self.ctx.scf_retried:
            return ProcessHandlerReport(True, self.exit_codes.ERROR_SCF_NOT_CONVERGED)
        parameters = self.ctx.inputs.get('dft_parameters')
        parameters = parameters.get_dict() if parameters is not None else {}
        self.ctx.inputs.dft_parameters = orm.Dict({**parameters, **SCF_RETRY})
        self.ctx.scf_retried = True
        self.report(f'SCF not converged in {node.process_label}<{node.pk}>; retrying with {SCF_RETRY}')
        return ProcessHandlerReport(True)
