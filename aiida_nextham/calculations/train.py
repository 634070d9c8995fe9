"""``NexthamTrainCalculation``: runs ``nextham train`` (or ``torchrun`` for several GPUs) on any computer.

Nothing local is referenced: the label files of the ``hamiltonians`` nodes are copied into the working
directory (``data/<key>.h5``), the parent model (fine-tuning) into ``parent_model/`` and a checkpoint to
resume from into ``checkpoints/step-XXXXXXXX/``; ``config.yaml`` is the complete run config written from
the ``config`` Dict with paths relative to the working directory. The engine writes ``status.json``,
``metrics.jsonl``, ``learning_curves.png``, ``checkpoints/`` and ``model/`` there.

Launch. The command follows from the code:

- a code whose executable is ``nextham`` (as made by ``aiida-nextham setup``) runs one process::

      nextham train config.yaml [--resume]

- a code whose executable is ``torchrun`` (from the same Python environment; see
  :func:`get_or_create_torchrun_code`) runs DistributedDataParallel on one node with
  ``metadata.options.nproc_per_node`` processes (one per GPU; gloo on CPUs)::

      torchrun --standalone --nproc_per_node N -m aiida_nextham.engine.train_command config.yaml [--resume]

  GPUs are requested from the scheduler with ``metadata.options.custom_scheduler_commands`` (Slurm:
  ``#SBATCH --gres=gpu:N``), which :meth:`NexthamTrainCalculation.get_builder_from_group` sets from its
  ``gpus`` argument. The provenance then names the launcher that really ran.

Retrieval. ``status.json``, ``metrics.jsonl``, the learning curves and the engine's stdout/stderr are kept
in ``retrieved``; ``model/`` and ``checkpoints/`` are retrieved temporarily (also when the job died on the
walltime): the parser turns them into the ``model`` and ``checkpoint`` outputs without storing them twice.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from ..data.hamiltonian import HamiltonianData
from ..data.model import ModelData

__all__ = (
    'CONFIG_DATA_KEYS',
    'NexthamTrainCalculation',
    'get_or_create_torchrun_code',
    'hamiltonian_inputs',
    'is_torchrun_code',
    'validate_config',
    'validate_hamiltonians',
)

#: keys of the ``data`` section the ``config`` input may set (label paths and caches belong to the CalcJob)
CONFIG_DATA_KEYS = ('split', 'seed', 'cutoff', 'cache_size')
#: top-level sections of the ``config`` input
CONFIG_SECTIONS = ('data', 'model', 'train', 'resume')
_STEP_FOLDER = re.compile(r'^step-(\d{8,})$')
_SHELL_LETTERS = 'spdfghik'


# ----------------------------------------------------------------------------------------- launcher
def is_torchrun_code(code: orm.AbstractCode) -> bool:
    """True if the code's executable is ``torchrun`` (DistributedDataParallel launcher)."""
    try:
        executable = code.get_executable()
    except Exception:
        return False
    return PurePosixPath(str(executable)).name.startswith('torchrun')


def get_or_create_torchrun_code(code: orm.InstalledCode, label: str | None = None) -> orm.InstalledCode:
    """The ``torchrun`` beside the ``nextham`` executable of ``code`` (same environment), as a code.

    Reused when a code of that label exists on the computer. The executable is a path on the (possibly
    remote) computer: it is not checked here.
    """
    label = label or f'{code.label}-torchrun'
    query = orm.QueryBuilder()
    query.append(orm.Computer, filters={'id': code.computer.pk}, tag='computer')
    query.append(orm.InstalledCode, with_computer='computer', filters={'label': label})
    existing = query.first(flat=True)
    if existing is not None:
        return existing
    executable = PurePosixPath(str(code.filepath_executable)).with_name('torchrun')
    return orm.InstalledCode(
        label=label,
        computer=code.computer,
        filepath_executable=str(executable),
        default_calc_job_plugin='nextham.train',
        description=f'torchrun of the Python environment of {code.full_label} (DDP training)',
        prepend_text=code.prepend_text,
    ).store()


# --------------------------------------------------------------------------------------- validation
def _shell_label(shells) -> str:
    counts = [list(shells).count(l) for l in range(max(shells) + 1)]
    return ''.join(f'{n}{_SHELL_LETTERS[l]}' for l, n in enumerate(counts) if n)


def _element_bases(node: HamiltonianData) -> dict[str, str]:
    """``{symbol: '1s1p'}`` from the ``basis`` attribute (``'Si:1s1p O:2s2p1d'``)."""
    label = node.base.attributes.get('basis', '') or ''
    return dict(item.split(':', 1) for item in label.split() if ':' in item)


def validate_hamiltonians(value: dict, _=None) -> str | None:
    """Every label has H0, H and S, and all of them use one basis per element (checked on attributes)."""
    if not value:
        return 'give at least one HamiltonianData in `hamiltonians`'
    seen: dict[str, tuple[str, tuple]] = {}
    for key, node in sorted(value.items()):
        attributes = node.base.attributes
        missing = [
            name for name, flag in (('H0', 'has_h0'), ('S', 'has_overlap')) if not attributes.get(flag, False)
        ]
        if missing:
            return (
                f'hamiltonians.{key} ({node.formula}) has no {" and no ".join(missing)}: a training label '
                'needs H0, H and S (run the DFT engine in label mode)'
            )
        if attributes.get('mode', None) == 'h0':
            return f'hamiltonians.{key} is an H0-only Hamiltonian (mode h0): it is no label, H is just H0'
        identity = (attributes.get('basis_set', None), attributes.get('source_code', None))
        for symbol, shells in sorted(_element_bases(node).items()):
            entry = (shells, identity)
            if symbol not in seen:
                seen[symbol] = (key, entry)
            elif seen[symbol][1] != entry:
                first, (first_shells, (first_set, first_code)) = seen[symbol]
                return (
                    f'hamiltonians.{key}: basis of {symbol} is {shells} ({identity[0]}, {identity[1]}), but '
                    f'hamiltonians.{first} uses {first_shells} ({first_set}, {first_code}); a training set '
                    'must use one basis per element'
                )
    return None


def validate_config(value: orm.Dict | None, _=None) -> str | None:
    """The ``config`` Dict: run-config sections without paths, checked by the engine's own parser."""
    if value is None:
        return None
    config = value.get_dict()
    unknown = sorted(set(config) - set(CONFIG_SECTIONS))
    if 'output' in unknown:
        return '`output` is set by the calculation (the working directory); remove it from the config'
    if unknown:
        return f'unknown config section(s) {unknown}; accepted: {list(CONFIG_SECTIONS)}'
    data = config.get('data') or {}
    if not isinstance(data, dict):
        return 'config section `data` must be a mapping'
    where = sorted(set(data) & {'folder', 'paths', 'pattern', 'cache_dir'})
    if where:
        return (
            f'config data {where} are set by the calculation: give the labels as the `hamiltonians` input '
            '(HamiltonianData nodes), never as paths'
        )
    unknown = sorted(set(data) - set(CONFIG_DATA_KEYS))
    if unknown:
        return f'unknown key(s) {unknown} in config section `data`; accepted: {list(CONFIG_DATA_KEYS)}'
    model = config.get('model') or {}
    if isinstance(model, dict) and 'init_from' in model:
        return 'give the model to fine-tune as the `parent_model` input (a ModelData), not as model.init_from'
    try:
        from ..ml.run_config import ConfigError, RunConfig
    except ImportError:  # the engine is not installed where AiiDA runs: it will check the config itself
        return None
    try:
        RunConfig.from_dict({**config, 'data': {**data, 'paths': ['data/label.h5']}})
    except ConfigError as exc:
        return f'invalid config: {exc}'
    return None


def _validate_checkpoint(value, _=None) -> str | None:
    if isinstance(value, orm.FolderData):
        names = value.base.repository.list_object_names()
        missing = [name for name in ('checkpoint.json', 'checkpoint.safetensors') if name not in names]
        if missing:
            return (
                f'the checkpoint FolderData has no {missing} at its top level (it must hold one checkpoint '
                'folder of `nextham train`, like the `checkpoint` output of a NexthamTrainCalculation)'
            )
        try:
            int(json.loads(value.base.repository.get_object_content('checkpoint.json'))['step'])
        except (ValueError, KeyError, TypeError) as exc:
            return f'the checkpoint.json of the checkpoint FolderData has no valid step ({exc!r})'
    return None


def _validate_inputs(inputs: dict, _=None) -> str | None:
    """Cross-input checks: parent model coverage, checkpoint computer, launcher and processes."""
    options = inputs.get('metadata', {}).get('options', {})
    code = inputs.get('code')
    nproc = options.get('nproc_per_node', 1)
    if code is not None:
        if nproc > 1 and not is_torchrun_code(code):
            return (
                f'nproc_per_node={nproc} needs a code whose executable is `torchrun` (e.g. from '
                f'get_or_create_torchrun_code); the code {code.full_label} runs one process'
            )
        machines = (options.get('resources') or {}).get('num_machines', 1)
        if is_torchrun_code(code) and machines != 1:
            return f'DDP training runs on one node (torchrun --standalone); got num_machines={machines}'
    checkpoint = inputs.get('checkpoint')
    if isinstance(checkpoint, orm.RemoteData) and code is not None:
        if checkpoint.computer.pk != code.computer.pk:
            return (
                f'the checkpoint RemoteData is on {checkpoint.computer.label}, the code on '
                f'{code.computer.label}: give the retrieved `checkpoint` FolderData instead'
            )
    parent = inputs.get('parent_model')
    if parent is not None:
        config = inputs['config'].get_dict() if inputs.get('config') is not None else {}
        if config.get('model'):
            return (
                'the architecture of a fine-tuning run is that of `parent_model`: remove the `model` section '
                f'({sorted(config["model"])}) from the config'
            )
        coverage = parent.base.attributes.get('coverage', {}) or {}
        for key, node in sorted((inputs.get('hamiltonians') or {}).items()):
            for symbol, shells in sorted(_element_bases(node).items()):
                covered = coverage.get(symbol)
                if covered is None:
                    return (
                        f'the parent model covers {sorted(coverage)} but hamiltonians.{key} contains {symbol}'
                    )
                if _shell_label(covered['shells']) != shells or (
                    covered.get('basis') and covered['basis'] != node.base.attributes.get('basis_set', None)
                ):
                    return (
                        f'the parent model gives {symbol} the basis {_shell_label(covered["shells"])} '
                        f'({covered.get("basis")}), hamiltonians.{key} has {shells} '
                        f'({node.base.attributes.get("basis_set", None)})'
                    )
    return None


def hamiltonian_inputs(hamiltonians) -> dict[str, HamiltonianData]:
    """The ``hamiltonians`` namespace from a Group, a list or a dict of HamiltonianData.

    Keys of a Group or list: the node's ``dataset_key`` extra when it has one (set by
    ``NexthamDatasetWorkChain``), else ``node_<pk>``.
    """
    if isinstance(hamiltonians, dict):
        return dict(hamiltonians)
    nodes = hamiltonians.nodes if isinstance(hamiltonians, orm.Group) else list(hamiltonians)
    result: dict[str, HamiltonianData] = {}
    for node in sorted(nodes, key=lambda n: n.pk):
        if not isinstance(node, HamiltonianData):
            raise TypeError(f'{node.__class__.__name__}<{node.pk}> is not a HamiltonianData')
        key = str(node.base.extras.get('dataset_key', '') or f'node_{node.pk}')
        key = re.sub(r'\W', '_', key)
        if key in result or not key[:1].isalpha():
            key = f'node_{node.pk}'
        result[key] = node
    return result


# ----------------------------------------------------------------------------------------- calcjob
class NexthamTrainCalculation(CalcJob):
    """Train a NextHAM ΔH model on HamiltonianData labels (fine-tuning and resuming supported)."""

    _CONFIG_FILE = 'config.yaml'
    _DATA_FOLDER = 'data'
    _CACHE_FOLDER = 'cache'
    _PARENT_FOLDER = 'parent_model'
    _CHECKPOINT_FOLDER = 'checkpoints'
    _MODEL_FOLDER = 'model'
    _STATUS_FILE = 'status.json'
    _METRICS_FILE = 'metrics.jsonl'
    _CURVES_FILE = 'learning_curves.png'
    _STDOUT_FILE = 'nextham.out'
    _STDERR_FILE = 'nextham.err'
    _TORCHRUN_MODULE = 'aiida_nextham.engine.train_command'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace(
            'hamiltonians',
            valid_type=HamiltonianData,
            dynamic=True,
            validator=validate_hamiltonians,
            help='The training labels (H0, H and S), one per structure; the split is made by the engine.',
        )
        spec.input(
            'config',
            valid_type=orm.Dict,
            validator=validate_config,
            help='Run-config sections `model`, `train` (and `resume`) and the data options '
            f'{list(CONFIG_DATA_KEYS)}; no paths: the calculation writes the full run config.',
        )
        spec.input(
            'parent_model',
            valid_type=ModelData,
            required=False,
            help='A trained model to fine-tune: its architecture, weights and scales are the starting point.',
        )
        spec.input(
            'checkpoint',
            valid_type=(orm.FolderData, orm.RemoteData),
            required=False,
            validator=_validate_checkpoint,
            help='Resume from this checkpoint (`--resume`): the `checkpoint` output of an earlier run '
            '(FolderData), a checkpoint folder `.../checkpoints/step-XXXXXXXX` or the `remote_folder` of an '
            'earlier run on the same computer (RemoteData).',
        )
        spec.input(
            'metadata.options.nproc_per_node',
            valid_type=int,
            default=1,
            validator=lambda value, _: None if value >= 1 else 'nproc_per_node must be >= 1',
            help='Training processes (GPUs) on the node; > 1 needs a torchrun code.',
        )
        spec.inputs.validator = _validate_inputs

        spec.inputs['metadata']['options']['resources'].default = lambda: {
            'num_machines': 1,
            'num_mpiprocs_per_machine': 1,
        }
        spec.inputs['metadata']['options']['withmpi'].default = False
        spec.inputs['metadata']['options']['parser_name'].default = 'nextham.train'
        spec.inputs['metadata']['options']['input_filename'].default = cls._CONFIG_FILE
        spec.inputs['metadata']['options']['output_filename'].default = cls._STDOUT_FILE

        spec.output('model', valid_type=ModelData, required=False, help='The trained model.')
        spec.output(
            'metrics',
            valid_type=orm.Dict,
            required=False,
            help='Status, steps, best and final validation MAE (meV), skipped steps, wall time (s), ...',
        )
        spec.output(
            'learning_curves',
            valid_type=orm.ArrayData,
            required=False,
            help='Per-step train loss and learning rate, per-validation MAE/RMSE (meV), by step.',
        )
        spec.output(
            'checkpoint',
            valid_type=orm.FolderData,
            required=False,
            help='The last checkpoint (and the metrics log up to it): the input to resume from.',
        )
        spec.default_output_node = 'metrics'

        spec.exit_code(
            300, 'ERROR_OUTPUT_FILES_MISSING', message='output file(s) {filenames} missing: {message}'
        )
        spec.exit_code(
            301, 'ERROR_OUTPUT_UNREADABLE', message='the output file {filename} is unreadable: {message}'
        )
        spec.exit_code(302, 'ERROR_MODEL_MISSING', message='the run finished but the model folder is missing')
        spec.exit_code(
            303, 'ERROR_MODEL_UNREADABLE', message='the model folder is not a valid model: {message}'
        )
        spec.exit_code(
            305, 'ERROR_ENGINE_FAILED', message='nextham train failed with an unclassified error: {message}'
        )
        spec.exit_code(
            400,
            'ERROR_WALLTIME_WITH_CHECKPOINT',
            message='the run stopped at step {step} of {steps} ({reason}); its last checkpoint (step '
            '{checkpoint}) is the `checkpoint` output: resume from it',
        )
        spec.exit_code(
            401,
            'ERROR_INTERRUPTED_WITHOUT_CHECKPOINT',
            message='the run stopped ({reason}) before writing any checkpoint',
        )
        spec.exit_code(
            410, 'ERROR_DIVERGED', message='the training diverged (the NaN/Inf guard gave up): {message}'
        )
        spec.exit_code(411, 'ERROR_BAD_DATA', message='the training data is unusable: {message}')
        spec.exit_code(412, 'ERROR_BAD_CONFIG', message='the engine rejected the run config: {message}')
        spec.exit_code(
            413, 'ERROR_BAD_CHECKPOINT', message='the checkpoint or parent model is unusable: {message}'
        )

    # ---------------------------------------------------------------------------------- builders
    @classmethod
    def get_builder_from_group(
        cls,
        hamiltonians,
        code: orm.AbstractCode,
        config: dict | orm.Dict,
        parent_model: ModelData | None = None,
        checkpoint: orm.FolderData | orm.RemoteData | None = None,
        options: dict | None = None,
        gpus: int | None = None,
    ):
        """A builder for the labels of a Group (or a list/dict) of HamiltonianData.

        :param config: the ``config`` input (sections ``model``, ``train``, data options).
        :param gpus: GPUs on the node: sets ``nproc_per_node`` and ``#SBATCH --gres=gpu:N`` (Slurm); more
            than one needs a torchrun ``code``.
        """
        builder = cls.get_builder()
        builder.code = code
        builder.hamiltonians = hamiltonian_inputs(hamiltonians)
        builder.config = config if isinstance(config, orm.Dict) else orm.Dict(config)
        if parent_model is not None:
            builder.parent_model = parent_model
        if checkpoint is not None:
            builder.checkpoint = checkpoint
        options = dict(options or {})
        if gpus:
            options['nproc_per_node'] = int(gpus)
            commands = options.get('custom_scheduler_commands', '')
            if code.computer.scheduler_type == 'core.slurm' and '--gres' not in commands:
                options['custom_scheduler_commands'] = '\n'.join(
                    line for line in (commands, f'#SBATCH --gres=gpu:{int(gpus)}') if line
                )
        for key, value in options.items():
            setattr(builder.metadata.options, key, value)
        return builder

    # -------------------------------------------------------------------------------- preparation
    def _label_files(self) -> dict[str, str]:
        """``{key: 'data/<key>.h5'}`` in key order (the order of the dataset, hence of the split)."""
        return {key: f'{self._DATA_FOLDER}/{key}.h5' for key in sorted(self.inputs.hamiltonians)}

    def run_config(self) -> dict:
        """The complete run config written to ``config.yaml`` (paths relative to the working directory)."""
        config = self.inputs.config.get_dict()
        data = dict(config.get('data') or {})
        data.update(paths=list(self._label_files().values()), cache_dir=self._CACHE_FOLDER)
        train = {'progress': False, **(config.get('train') or {})}
        result = {'data': data}
        if 'parent_model' in self.inputs:
            result['model'] = {'init_from': self._PARENT_FOLDER}
        elif config.get('model') is not None:
            result['model'] = config['model']
        result.update(train=train, output='.')
        if config.get('resume'):
            result['resume'] = config['resume']
        return result

    def _checkpoint_copies(self) -> tuple[list, list]:
        """``(local_copy_list, remote_copy_list)`` entries that put the checkpoint where --resume finds it."""
        checkpoint = self.inputs.checkpoint
        if isinstance(checkpoint, orm.FolderData):
            metadata = json.loads(checkpoint.base.repository.get_object_content('checkpoint.json'))
            folder = f'{self._CHECKPOINT_FOLDER}/step-{int(metadata["step"]):08d}'
            local = [
                (checkpoint.uuid, name, f'{folder}/{name}')
                for name in ('checkpoint.json', 'checkpoint.safetensors')
            ]
            if self._METRICS_FILE in checkpoint.base.repository.list_object_names():
                local.append((checkpoint.uuid, self._METRICS_FILE, self._METRICS_FILE))
            return local, []
        path = PurePosixPath(checkpoint.get_remote_path())
        computer = checkpoint.computer.uuid
        if _STEP_FOLDER.match(path.name):
            return [], [(computer, str(path), f'{self._CHECKPOINT_FOLDER}/{path.name}')]
        return [], [
            (computer, str(path / self._CHECKPOINT_FOLDER), self._CHECKPOINT_FOLDER),
            (computer, str(path / self._METRICS_FILE), self._METRICS_FILE),
        ]

    def _cmdline(self) -> list[str]:
        resume = ['--resume'] if 'checkpoint' in self.inputs else []
        if is_torchrun_code(self.inputs.code):
            nproc = self.inputs.metadata.options.nproc_per_node
            return [
                '--standalone',
                '--nproc_per_node',
                str(nproc),
                '-m',
                self._TORCHRUN_MODULE,
                self._CONFIG_FILE,
                *resume,
            ]
        return ['train', self._CONFIG_FILE, *resume]

    def prepare_for_submission(self, folder):
        import yaml

        with folder.open(self._CONFIG_FILE, 'w') as handle:
            handle.write('# written by NexthamTrainCalculation: paths are relative to this folder\n')
            handle.write(yaml.safe_dump(self.run_config(), sort_keys=False))

        local_copy_list = [
            (self.inputs.hamiltonians[key].uuid, self.inputs.hamiltonians[key].filename, target)
            for key, target in self._label_files().items()
        ]
        remote_copy_list = []
        if 'parent_model' in self.inputs:
            parent = self.inputs.parent_model
            for name in sorted(parent.base.repository.list_object_names()):
                local_copy_list.append((parent.uuid, name, f'{self._PARENT_FOLDER}/{name}'))
        if 'checkpoint' in self.inputs:
            local, remote = self._checkpoint_copies()
            local_copy_list += local
            remote_copy_list += remote

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = self._cmdline()
        codeinfo.stdout_name = self._STDOUT_FILE
        codeinfo.stderr_name = self._STDERR_FILE

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.remote_copy_list = remote_copy_list
        calcinfo.retrieve_list = [
            self._STATUS_FILE,
            self._METRICS_FILE,
            self._CURVES_FILE,
            self._STDOUT_FILE,
            self._STDERR_FILE,
        ]
        calcinfo.retrieve_temporary_list = [self._MODEL_FOLDER, self._CHECKPOINT_FOLDER]
        return calcinfo
