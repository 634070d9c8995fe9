"""``NexthamTrainWorkChain``: ``NexthamTrainCalculation`` that survives walltime limits and divergence.

Handlers (highest priority first):

- bad data, bad config, bad checkpoint or parent model: stop at once with the same meaning (a rerun would
  fail the same way);
- stopped with a checkpoint (walltime, node failure, killed): resume from the retrieved ``checkpoint``
  output with the same config, as long as every attempt makes progress;
- diverged (the engine's NaN/Inf guard gave up): resume from the last checkpoint with the learning rate
  ``train.lr`` multiplied by ``nan_lr_factor`` (the config then names ``lr`` in ``resume.allow_changes``,
  the engine's opt-in for a deliberate change on resume).

The number of restarts is bounded by ``max_iterations`` of the base class. The outputs are those of the
last calculation; its metrics log continues the earlier ones (the checkpoint carries the log), so the
learning curves cover the whole training.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from ..calculations.train import NexthamTrainCalculation

__all__ = ('DEFAULT_LR', 'NexthamTrainWorkChain')

#: the engine's default peak learning rate (``TrainConfig.lr``), used when the config does not set one
DEFAULT_LR = 3e-3


def _validate_factor(value: orm.Float, _=None) -> str | None:
    if not 0 < value.value < 1:
        return f'nan_lr_factor must lie in (0, 1), got {value.value}'
    return None


def _default_lr() -> float:
    try:
        from ..ml.training import TrainConfig
    except ImportError:
        return DEFAULT_LR
    return TrainConfig().lr


class NexthamTrainWorkChain(BaseRestartWorkChain):
    """Train a model; resume from checkpoints after walltime kills, lower the learning rate on divergence."""

    _process_class = NexthamTrainCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(NexthamTrainCalculation, namespace='train')
        spec.input(
            'nan_lr_factor',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.5),
            validator=_validate_factor,
            help='After a divergence the run resumes with train.lr multiplied by this factor.',
        )
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.expose_outputs(NexthamTrainCalculation)
        spec.exit_code(
            410, 'ERROR_DIVERGED', message='the training diverged and no checkpoint is left to resume from'
        )
        spec.exit_code(411, 'ERROR_BAD_DATA', message='the training data is unusable: {message}')
        spec.exit_code(412, 'ERROR_BAD_CONFIG', message='the engine rejected the run config: {message}')
        spec.exit_code(
            413, 'ERROR_BAD_CHECKPOINT', message='the checkpoint or parent model is unusable: {message}'
        )
        spec.exit_code(
            420,
            'ERROR_NO_PROGRESS',
            message='the restarted run stopped again at checkpoint step {step} without progress',
        )

    @classmethod
    def get_builder_from_group(
        cls,
        hamiltonians,
        code: orm.AbstractCode,
        config: dict | orm.Dict,
        parent_model=None,
        options: dict | None = None,
        gpus: int | None = None,
        max_iterations: int | None = None,
        nan_lr_factor: float | None = None,
    ):
        """A builder for the labels of a Group (or a list/dict) of HamiltonianData.

        The arguments are those of :meth:`NexthamTrainCalculation.get_builder_from_group`, plus the restart
        settings.
        """
        inner = NexthamTrainCalculation.get_builder_from_group(
            hamiltonians, code, config, parent_model=parent_model, options=options, gpus=gpus
        )
        builder = cls.get_builder()
        builder.train.code = inner.code
        builder.train.hamiltonians = dict(inner.hamiltonians)
        builder.train.config = inner.config
        if parent_model is not None:
            builder.train.parent_model = parent_model
        for key, value in inner.metadata.options.items():
            setattr(builder.train.metadata.options, key, value)
        if max_iterations is not None:
            builder.max_iterations = orm.Int(max_iterations)
        if nan_lr_factor is not None:
            builder.nan_lr_factor = orm.Float(nan_lr_factor)
        builder.clean_workdir = orm.Bool(False)
        return builder

    # --------------------------------------------------------------------------------- outline
    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(NexthamTrainCalculation, 'train'))
        self.ctx.resumed_from_step = None

    # -------------------------------------------------------------------------------- helpers
    def _resume_from(self, calculation) -> int | None:
        """Make the next calculation resume from ``calculation``'s checkpoint; its step, None if none."""
        checkpoint = calculation.outputs.checkpoint if 'checkpoint' in calculation.outputs else None
        if checkpoint is None:
            return None
        step = checkpoint.base.attributes.get('step', None)
        self.ctx.inputs.checkpoint = checkpoint
        self.ctx.resumed_from_step = step
        return step

    # -------------------------------------------------------------------------------- handlers
    @process_handler(
        priority=600,
        exit_codes=[
            NexthamTrainCalculation.exit_codes.ERROR_BAD_DATA,
            NexthamTrainCalculation.exit_codes.ERROR_BAD_CONFIG,
            NexthamTrainCalculation.exit_codes.ERROR_BAD_CHECKPOINT,
        ],
    )
    def handle_unrecoverable_input(self, calculation):
        """Data, config or checkpoint the engine rejects will be rejected again: stop with the same code."""
        label = {411: 'ERROR_BAD_DATA', 412: 'ERROR_BAD_CONFIG'}.get(
            calculation.exit_status, 'ERROR_BAD_CHECKPOINT'
        )
        self.report(f'{calculation.process_label}<{calculation.pk}> failed: {calculation.exit_message}')
        return ProcessHandlerReport(
            True, getattr(self.exit_codes, label).format(message=calculation.exit_message)
        )

    @process_handler(
        priority=500, exit_codes=[NexthamTrainCalculation.exit_codes.ERROR_WALLTIME_WITH_CHECKPOINT]
    )
    def handle_walltime_with_checkpoint(self, calculation):
        """Resume from the retrieved checkpoint (same config), unless the last attempt made no progress."""
        previous = self.ctx.resumed_from_step
        step = self._resume_from(calculation)
        if step is not None and previous is not None and step <= previous:
            self.report(f'{calculation.process_label}<{calculation.pk}> made no progress past step {step}')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_NO_PROGRESS.format(step=step))
        self.report(
            f'{calculation.process_label}<{calculation.pk}> stopped at step '
            f'{calculation.outputs.metrics["steps"] if "metrics" in calculation.outputs else "?"}: '
            f'resuming from the checkpoint of step {step}'
        )
        return ProcessHandlerReport(True)

    @process_handler(priority=400, exit_codes=[NexthamTrainCalculation.exit_codes.ERROR_DIVERGED])
    def handle_diverged(self, calculation):
        """Resume from the last checkpoint with ``train.lr`` × ``nan_lr_factor``."""
        step = self._resume_from(calculation)
        if step is None:
            self.report(f'{calculation.process_label}<{calculation.pk}> diverged and left no checkpoint')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_DIVERGED)
        config = self.ctx.inputs.config.get_dict()
        train = dict(config.get('train') or {})
        old = float(train.get('lr', _default_lr()))
        train['lr'] = old * self.inputs.nan_lr_factor.value
        resume = dict(config.get('resume') or {})
        resume['allow_changes'] = sorted(set(resume.get('allow_changes', [])) | {'lr'})
        self.ctx.inputs.config = orm.Dict({**config, 'train': train, 'resume': resume})
        self.report(
            f'{calculation.process_label}<{calculation.pk}> diverged: resuming from the checkpoint of step '
            f'{step} with lr {old:g} -> {train["lr"]:g}'
        )
        return ProcessHandlerReport(True)
