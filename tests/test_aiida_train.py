"""AiiDA layer of training: NexthamTrainCalculation, its parser and NexthamTrainWorkChain.

Real runs of ``nextham train`` on the local computer with the three tiny Si labels of tests/data/ml (a
model of a few thousand parameters, float64, 12 steps): a plain run, a run killed after a checkpoint and
resumed by the work chain (the same step count and the same weights as the plain run), a diverging run
resumed with half the learning rate, and a fine-tuning run. The submit scripts (local computer, Slurm with
GPUs and torchrun) are regression-tested through dry runs against tests/data/train_dry_run (regenerate
with ``NEXTHAM_UPDATE_EXPECTED=1``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from aiida import orm
from aiida.common.exceptions import NotExistent
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from tiny import LABELS, TINY_MODEL

from aiida_nextham.calculations.train import (
    NexthamTrainCalculation,
    get_or_create_torchrun_code,
    hamiltonian_inputs,
)
from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.data.model import ModelData
from aiida_nextham.ml.training import FAULTS_ENV
from aiida_nextham.workflows.train import NexthamTrainWorkChain

DATA = Path(__file__).parent / 'data'
EXPECTED = DATA / 'train_dry_run'
UPDATE = bool(os.environ.get('NEXTHAM_UPDATE_EXPECTED'))

TRAIN = {
    'steps': 12,
    'batch_size': 1,
    'checkpoint_every': 4,
    'val_every': 4,
    'n_kpoints': 2,
    'dtype': 'float64',
    'warmup_steps': 2,
    'ema_decay': 0.9,
}
CONFIG = {'data': {'split': [0.34, 0.33, 0.33], 'seed': 0}, 'model': TINY_MODEL, 'train': TRAIN}
#: the engine process of every test run uses one thread (two shared cores)
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1'}, 'max_wallclock_seconds': 900}

#: nodes made by one test and reused by later ones (the uninterrupted reference run)
_RUNS: dict[str, int] = {}


@pytest.fixture(scope='module')
def labels() -> orm.Group:
    """The three Si labels as stored HamiltonianData in a Group (keys from a ``dataset_key`` extra)."""
    group, _ = orm.Group.collection.get_or_create(label='test/train-labels')
    if group.count() != len(LABELS):
        group.clear()
        for path in LABELS:
            node = HamiltonianData.from_file(path, format='nextham').store()
            node.base.extras.set('dataset_key', path.stem)
            group.add_nodes(node)
    return group


def _builder(code, labels, config=None, **kwargs):
    return NexthamTrainCalculation.get_builder_from_group(
        labels, code, config or CONFIG, options=kwargs.pop('options', OPTIONS), **kwargs
    )


def _dry_run(builder) -> Path:
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    return Path(node.dry_run_info['folder'])


def _compare(actual: str, name: str) -> None:
    """``actual`` equals the expected file ``name`` (written instead when NEXTHAM_UPDATE_EXPECTED is set)."""
    path = EXPECTED / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.is_file(), f'{path} missing: run with NEXTHAM_UPDATE_EXPECTED=1'
    assert actual == path.read_text(), f'{name} differs from the expected file'


def _submit_script(folder: Path) -> str:
    """The submit script with the run-specific job name (``aiida-<pk>``) masked."""
    return re.sub(r'aiida-(\d+|None)', 'aiida-<pk>', (folder / '_aiidasubmit.sh').read_text())


def _slurm_computer() -> orm.Computer:
    """A Slurm computer with GPUs, for dry runs only (never configured, never connected)."""
    existing = (
        orm.QueryBuilder().append(orm.Computer, filters={'label': 'slurm-gpu-dry-run'}).first(flat=True)
    )
    if existing is not None:
        return existing
    computer = orm.Computer(
        label='slurm-gpu-dry-run',
        hostname='gpu.cluster.example',
        description='Slurm computer with GPUs (dry runs only)',
        transport_type='core.local',
        scheduler_type='core.slurm',
        workdir='/scratch/{username}/aiida',
    ).store()
    computer.set_mpirun_command(['srun', '-n', '{tot_num_mpiprocs}'])
    computer.set_default_mpiprocs_per_machine(1)
    return computer


def _tiny_model_data() -> ModelData:
    """A small untrained ModelData for Si (gth-szv), made without training."""
    import tempfile

    from aiida_nextham.ml.config import ModelConfig
    from aiida_nextham.ml.model import NexthamModel
    from aiida_nextham.ml.serialization import save_model

    config = ModelConfig(shells={14: (0, 1)}, **{k: v for k, v in TINY_MODEL.items() if k != 'preset'})
    provenance = {
        'coverage': {'elements': {'Si': {'number': 14, 'shells': [0, 1], 'basis': 'gth-szv'}}},
        'dft': {'basis': 'gth-szv'},
    }
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        return ModelData(save_model(NexthamModel(config), Path(folder) / 'model', provenance)).store()


def _fake_checkpoint(step: int) -> orm.FolderData:
    import io

    folder = orm.FolderData()
    metadata = json.dumps({'format': 'nextham-checkpoint', 'step': step}).encode()
    folder.base.repository.put_object_from_filelike(io.BytesIO(metadata), 'checkpoint.json')
    folder.base.repository.put_object_from_filelike(io.BytesIO(b'tensors'), 'checkpoint.safetensors')
    folder.base.repository.put_object_from_filelike(
        io.BytesIO(b'{"kind": "train", "step": 1}\n'), 'metrics.jsonl'
    )
    return folder.store()


def _state(model: ModelData) -> dict[str, torch.Tensor]:
    return model.load().state_dict()


# ------------------------------------------------------------------------------------------ dry runs
def test_dry_run_local_config_and_command(nextham_code, labels, tmp_path, monkeypatch):
    """The run config references only files in the working directory; the command is `nextham train`."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder into ./submit_test
    folder = _dry_run(_builder(nextham_code, labels))
    config = yaml.safe_load((folder / 'config.yaml').read_text())
    _compare(yaml.safe_dump(config, sort_keys=True), 'config.yaml')
    assert config['data']['paths'] == [f'data/si2_rattled_{i}.h5' for i in range(3)]
    assert config['output'] == '.' and config['train']['progress'] is False
    calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
    cmdline = calcinfo['codes_info'][0]['cmdline_params']
    _compare(json.dumps(cmdline) + '\n', 'cmdline.json')
    assert cmdline == ['train', 'config.yaml']
    # the labels are the nodes' files, copied into the working directory (no path on this machine)
    for node in labels.nodes:
        key = node.base.extras.get('dataset_key')
        with node.base.repository.open(node.filename, 'rb') as handle:
            assert (folder / 'data' / f'{key}.h5').read_bytes() == handle.read()
    assert set(calcinfo['retrieve_list']) >= {'status.json', 'metrics.jsonl', 'nextham.err'}
    assert set(calcinfo['retrieve_temporary_list']) == {'model', 'checkpoints'}
    submit = (folder / '_aiidasubmit.sh').read_text()
    assert re.search(r"'train' 'config\.yaml'\s+> 'nextham\.out' 2> 'nextham\.err'", submit), submit
    assert "export OMP_NUM_THREADS='1'" in submit
    # the engine accepts the written config as it stands
    from aiida_nextham.ml.run_config import load_run_config

    loaded = load_run_config(folder / 'config.yaml')
    assert loaded.output == str(folder.resolve()) and loaded.train.steps == 12


def test_dry_run_slurm_gpus_torchrun(labels, tmp_path, monkeypatch):
    """Slurm with 2 GPUs: `--gres=gpu:2`, `torchrun --nproc_per_node 2`; resume and fine-tuning copies."""
    monkeypatch.chdir(tmp_path)
    computer = _slurm_computer()
    try:
        nextham = orm.load_code(f'nextham@{computer.label}')
    except NotExistent:
        executable = '/opt/nextham/venv/bin/nextham'
        nextham = orm.InstalledCode(
            label='nextham', computer=computer, filepath_executable=executable
        ).store()
    torchrun = get_or_create_torchrun_code(nextham)
    assert str(torchrun.filepath_executable) == '/opt/nextham/venv/bin/torchrun'
    assert get_or_create_torchrun_code(nextham).pk == torchrun.pk  # reused

    # one process per GPU needs the torchrun code
    with pytest.raises(ValueError, match='needs a code whose executable is `torchrun`'):
        run_get_node(_builder(nextham, labels, gpus=2, options={'max_wallclock_seconds': 3600}))

    parent = _tiny_model_data()
    options = {
        'max_wallclock_seconds': 7200,
        'queue_name': 'gpu',
        'account': 'nextham',
        'environment_variables': {'OMP_NUM_THREADS': '8'},
    }
    builder = _builder(
        torchrun,
        labels,
        config={'data': CONFIG['data'], 'train': TRAIN},
        parent_model=parent,
        checkpoint=_fake_checkpoint(8),
        gpus=2,
        options=options,
    )
    folder = _dry_run(builder)
    script = _submit_script(folder)
    _compare(script, '_aiidasubmit.sh')
    assert '#SBATCH --gres=gpu:2' in script
    assert re.search(r"'--nproc_per_node' '2' '-m' 'aiida_nextham\.engine\.train_command'", script), script
    assert "'/opt/nextham/venv/bin/torchrun' '--standalone'" in script and "'--resume'" in script
    calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
    _compare(json.dumps(calcinfo['codes_info'][0]['cmdline_params']) + '\n', 'cmdline_torchrun.json')
    config = yaml.safe_load((folder / 'config.yaml').read_text())
    assert config['model'] == {'init_from': 'parent_model'}
    for name in ('model.safetensors', 'model.json'):  # the parent model, byte for byte
        assert (folder / 'parent_model' / name).read_bytes() == parent.base.repository.get_object_content(
            name, mode='rb'
        )
    step = folder / 'checkpoints' / 'step-00000008'
    assert (step / 'checkpoint.safetensors').read_bytes() == b'tensors'
    assert (folder / 'metrics.jsonl').is_file()  # the log of the earlier run continues


def test_dry_run_resume_from_a_remote_folder(nextham_code, labels, aiida_localhost, tmp_path, monkeypatch):
    """A RemoteData checkpoint is copied on the remote computer: a run folder or one checkpoint folder."""
    monkeypatch.chdir(tmp_path)
    cases = {
        '/scratch/aiida/ab/cd/run': [
            [aiida_localhost.uuid, '/scratch/aiida/ab/cd/run/checkpoints', 'checkpoints'],
            [aiida_localhost.uuid, '/scratch/aiida/ab/cd/run/metrics.jsonl', 'metrics.jsonl'],
        ],
        '/scratch/run/checkpoints/step-00000008': [
            [aiida_localhost.uuid, '/scratch/run/checkpoints/step-00000008', 'checkpoints/step-00000008'],
        ],
    }
    for path, expected in cases.items():
        remote = orm.RemoteData(computer=aiida_localhost, remote_path=path).store()
        folder = _dry_run(_builder(nextham_code, labels, checkpoint=remote))
        calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
        assert calcinfo['remote_copy_list'] == expected
        assert calcinfo['codes_info'][0]['cmdline_params'] == ['train', 'config.yaml', '--resume']
    elsewhere = orm.RemoteData(computer=_slurm_computer(), remote_path='/scratch/run').store()
    with pytest.raises(ValueError, match='give the retrieved `checkpoint` FolderData'):
        run_get_node(_builder(nextham_code, labels, checkpoint=elsewhere))


# ------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused_before_submission(nextham_code, labels):
    from aiida_nextham.hamiltonian.basis import Basis
    from aiida_nextham.hamiltonian.hdf5 import read_hdf5

    good = hamiltonian_inputs(labels)
    bh = read_hdf5(LABELS[0])
    cases = {
        'has no H0': HamiltonianData(bh.replace(h0=None)),
        'has no S': HamiltonianData(bh.replace(overlap=None)),
        'basis of Si is 1s1p \\(gth-dzvp': HamiltonianData(
            bh.replace(basis=Basis(bh.basis.elements, 'gth-dzvp', 'pyscf'))
        ),
    }
    for message, node in cases.items():
        builder = _builder(nextham_code, labels)
        with pytest.raises(ValueError, match=message):
            builder.hamiltonians = {**good, 'zz_bad': node}
    h0_only = HamiltonianData(bh)
    h0_only.base.attributes.set('mode', 'h0')
    with pytest.raises(ValueError, match='H0-only'):
        _builder(nextham_code, labels).hamiltonians = {'a': h0_only}

    configs = {
        'set by the calculation': {**CONFIG, 'data': {'paths': ['/home/me/si.h5']}},
        '`output` is set by the calculation': {**CONFIG, 'output': '/tmp/run'},
        "'stepz' in section 'train'": {**CONFIG, 'train': {**TRAIN, 'stepz': 3}},
        'parent_model': {**CONFIG, 'model': {'init_from': '/home/me/model'}},
    }
    for message, config in configs.items():
        with pytest.raises(ValueError, match=message):
            _builder(nextham_code, labels, config=config)

    # fine-tuning: the parent model must cover the elements with the same basis; no architecture keys
    parent = _tiny_model_data()
    builder = _builder(nextham_code, labels, parent_model=parent)
    with pytest.raises(ValueError, match='remove the `model` section'):
        run_get_node(builder)
    carbon = HamiltonianData(bh.replace(numbers=np.array([6, 14]), basis=_with_carbon(bh.basis)))
    builder = _builder(nextham_code, labels, config={'train': TRAIN}, parent_model=parent)
    builder.hamiltonians = {**good, 'carbon': carbon}
    with pytest.raises(ValueError, match="covers \\['Si'\\] but hamiltonians.carbon contains C"):
        run_get_node(builder)


def test_run_config_init_from_and_resume_sections(tmp_path):
    """The engine's config sections the CalcJob relies on: model.init_from and resume.allow_changes."""
    from aiida_nextham.engine.train_command import run_training
    from aiida_nextham.ml.checkpoint import CheckpointError
    from aiida_nextham.ml.run_config import ConfigError, RunConfig

    base = {'data': {'paths': [str(p) for p in LABELS]}, 'output': str(tmp_path / 'out')}
    extra = {'model': {'init_from': 'parent'}, 'resume': {'allow_changes': ['lr']}}
    config = RunConfig.from_dict({**base, **extra}, base=tmp_path)
    assert config.model.init_from == str(tmp_path / 'parent')
    assert config.as_dict()['resume'] == {'allow_changes': ['lr']}
    plain = RunConfig.from_dict(base).as_dict()  # unchanged for runs that use neither
    assert 'resume' not in plain and 'init_from' not in plain['model']
    with pytest.raises(ConfigError, match='init_from takes the architecture'):
        RunConfig.from_dict({**base, 'model': {'init_from': 'parent', 'cutoff': 5.0}})
    with pytest.raises(ConfigError, match='allow_changes may name'):
        RunConfig.from_dict({**base, 'resume': {'allow_changes': ['dtype']}})
    with pytest.raises(CheckpointError, match='model.init_from: .*not a model folder'):
        run_training(config)


def _with_carbon(basis):
    from aiida_nextham.hamiltonian.basis import Basis, ElementBasis

    elements = dict(basis.elements)
    elements[6] = ElementBasis('C', elements[14].shells)
    return Basis(elements, basis.name, basis.code)


# ---------------------------------------------------------------------------------------------- parser
def _parse(code, files: dict[str, str], temporary: Path | None = None, exit_status: int | None = None):
    """Parse files as if retrieved by a NexthamTrainCalculation (``temporary``: the temporary folder)."""
    from aiida.plugins import ParserFactory

    node = orm.CalcJobNode(computer=code.computer, process_type='aiida.calculations:nextham.train')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    node.base.links.add_incoming(code, LinkType.INPUT_CALC, 'code')
    node.base.links.add_incoming(orm.Dict(CONFIG).store(), LinkType.INPUT_CALC, 'config')
    node.store()
    if exit_status is not None:
        node.set_exit_status(exit_status)
    retrieved = orm.FolderData()
    for name, text in files.items():
        import io

        retrieved.base.repository.put_object_from_filelike(io.BytesIO(text.encode()), name)
    retrieved.base.links.add_incoming(node, LinkType.CREATE, 'retrieved')
    retrieved.store()
    kwargs = {'retrieved_temporary_folder': str(temporary)} if temporary is not None else {}
    return ParserFactory('nextham.train').parse_from_node(node, store_provenance=False, **kwargs)


def test_parser_exit_codes(nextham_code, tmp_path):
    log = '\n'.join(
        json.dumps(r)
        for r in (
            {'kind': 'train', 'step': 1, 'total': 5.0, 'lr': 1e-3, 'skipped': False},
            {'kind': 'train', 'step': 2, 'total': None, 'lr': 1e-3, 'skipped': True},
            {'kind': 'val', 'step': 2, 'val_mae': 3.0, 'val_rmse': 4.0},
        )
    )
    failed = {'status': 'failed', 'error': 'BadData', 'exit_code': 31, 'message': 'a.h5: no overlap'}
    cases = [
        ({'nextham.err': 'Traceback\nImportError: no torch\n'}, 300, 'no torch'),
        ({'status.json': '{"status": '}, 301, 'status.json'),
        ({'status.json': json.dumps(failed)}, 411, 'no overlap'),
        (
            {'status.json': json.dumps({**failed, 'exit_code': 1, 'error': 'InternalError'})},
            305,
            'no overlap',
        ),
        ({'status.json': json.dumps({'status': 'finished', 'steps': 2}), 'metrics.jsonl': log}, 302, ''),
        ({'status.json': json.dumps({'status': 'running', 'step': 0, 'steps': 12})}, 401, 'killed'),
    ]
    for files, exit_status, fragment in cases:
        results, calcfunction = _parse(nextham_code, files, tmp_path)
        assert calcfunction.exit_status == exit_status, (files, calcfunction.exit_message)
        assert fragment in calcfunction.exit_message
    results, calcfunction = _parse(
        nextham_code, {'status.json': json.dumps({'status': 'finished', 'steps': 2}), 'metrics.jsonl': log}
    )
    assert calcfunction.exit_status == 302
    curves = results['learning_curves']
    assert curves.get_array('train_step').tolist() == [1, 2]
    assert np.isnan(curves.get_array('train_loss')[1]) and curves.get_array('val_mae').tolist() == [3.0]
    assert results['metrics']['skipped_steps'] == 1 and results['metrics']['final_val_mae'] == 3.0

    # the scheduler's walltime without any output: no checkpoint to resume from
    _, calcfunction = _parse(nextham_code, {}, tmp_path, exit_status=120)
    assert calcfunction.exit_status == 401 and 'walltime' in calcfunction.exit_message


# ------------------------------------------------------------------------------------------ real runs
def _check_provenance(calc, model: ModelData, labels: orm.Group) -> None:
    """The model is linked to the calculation and, through it, to every label; no local path in inputs."""
    uuids = {node.uuid for node in labels.nodes}
    query = orm.QueryBuilder()
    query.append(HamiltonianData, filters={'uuid': {'in': sorted(uuids)}}, tag='label', project='uuid')
    query.append(orm.CalcJobNode, with_incoming='label', tag='calc', filters={'id': calc.pk})
    query.append(ModelData, with_incoming='calc', filters={'id': model.pk})
    assert {row[0] for row in query.all()} == uuids
    back = orm.QueryBuilder()
    back.append(ModelData, filters={'id': model.pk}, tag='model')
    back.append(orm.CalcJobNode, with_outgoing='model', tag='calc')
    back.append(HamiltonianData, with_outgoing='calc', project='uuid')
    assert set(back.all(flat=True)) == uuids
    for link in calc.base.links.get_incoming().all():
        if isinstance(link.node, orm.Dict):
            text = json.dumps(link.node.get_dict())
            assert '/' not in text.replace('"/"', ''), f'a path in the input {link.link_label}: {text}'
    config = yaml.safe_load(calc.base.repository.get_object_content('config.yaml'))
    assert all(not Path(p).is_absolute() for p in config['data']['paths'])


def _reference(code, labels) -> orm.CalcJobNode:
    """The uninterrupted run of CONFIG (made once per module)."""
    if 'reference' not in _RUNS:
        _, node = run_get_node(_builder(code, labels))
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        _RUNS['reference'] = node.pk
    return orm.load_node(_RUNS['reference'])


@pytest.mark.slow
def test_calcjob_run_outputs_and_provenance(nextham_code, labels):
    calc = _reference(nextham_code, labels)
    model = calc.outputs.model
    assert isinstance(model, ModelData) and model.base.attributes.get('elements') == ['Si']
    assert model.base.attributes.get('train_set_size') == 1 and model.base.attributes.get('cutoff') == 4.5
    loaded = model.load()
    assert sum(p.numel() for p in loaded.parameters()) == model.base.attributes.get('n_parameters')
    metrics = calc.outputs.metrics.get_dict()
    assert metrics['status'] == 'finished' and metrics['steps'] == metrics['target_steps'] == 12
    assert metrics['best_val_mae'] > 0 and metrics['final_val_step'] == 12 and metrics['skipped_steps'] == 0
    assert metrics['wall_time'] > 0 and metrics['resumed_from_step'] is None
    curves = calc.outputs.learning_curves
    assert curves.get_array('train_step').tolist() == list(range(1, 13))
    assert curves.get_array('val_step').tolist() == [4, 8, 12]
    assert np.isfinite(curves.get_array('train_loss')).all()
    checkpoint = calc.outputs.checkpoint
    assert checkpoint.base.attributes.get('step') == 12
    assert json.loads(checkpoint.base.repository.get_object_content('checkpoint.json'))['step'] == 12
    assert 'learning_curves.png' in calc.outputs.retrieved.base.repository.list_object_names()
    _check_provenance(calc, model, labels)


@pytest.mark.slow
def test_workchain_resumes_after_a_walltime_kill(nextham_code, labels, run_cli_command, provenance_graph):
    """Killed after checkpoint 4 (as by the scheduler): resumed from the retrieved checkpoint, it ends with
    the step count and, in float64, the weights of the uninterrupted run."""
    reference = _reference(nextham_code, labels)
    faults = {FAULTS_ENV: json.dumps({'kill_after_checkpoint': 4})}
    options = {**OPTIONS, 'environment_variables': {**OPTIONS['environment_variables'], **faults}}
    builder = NexthamTrainWorkChain.get_builder_from_group(labels, nextham_code, CONFIG, options=options)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calcs = sorted(node.called, key=lambda n: n.ctime)
    assert [c.exit_status for c in calcs] == [400, 0]
    assert 'status.json still says running' in calcs[0].exit_message
    assert calcs[0].outputs.checkpoint.base.attributes.get('step') == 4
    assert calcs[1].inputs.checkpoint.uuid == calcs[0].outputs.checkpoint.uuid
    metrics = results['metrics'].get_dict()
    assert metrics['steps'] == reference.outputs.metrics['steps'] == 12 and metrics['resumed_from_step'] == 4
    # the log carried by the checkpoint: the learning curves cover the whole training, steps once each
    assert results['learning_curves'].get_array('train_step').tolist() == list(range(1, 13))
    np.testing.assert_allclose(
        results['learning_curves'].get_array('train_loss'),
        reference.outputs.learning_curves.get_array('train_loss'),
        rtol=1e-10,
    )
    ours, theirs = _state(results['model']), _state(reference.outputs.model)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-10, atol=1e-12, msg=name)
    _check_provenance(calcs[1], results['model'], labels)

    # verdi on the processes: nothing unserialisable, the graph links model and labels
    from aiida.cmdline.commands.cmd_process import process_list, process_report, process_show

    listing = run_cli_command(process_list, ['-a', '-p', '1']).output
    assert 'NexthamTrainWorkChain' in listing and 'NexthamTrainCalculation' in listing
    shown = run_cli_command(process_show, [node.pk]).output
    assert 'NexthamTrainWorkChain' in shown and 'train' in shown and 'checkpoint' in shown
    assert 'hamiltonians' in run_cli_command(process_show, [calcs[1].pk]).output
    report = run_cli_command(process_report, [node.pk]).output
    assert 'resuming from the checkpoint of step 4' in report
    graph = provenance_graph(node.pk)
    assert 'ModelData' in graph and 'HamiltonianData' in graph and 'FolderData' in graph


@pytest.mark.slow
def test_workchain_lowers_the_learning_rate_after_divergence(nextham_code, labels):
    """NaN steps exhaust the engine's guard (exit 410): resumed from checkpoint 4 with half the lr."""
    config = {**CONFIG, 'train': {**TRAIN, 'lr': 4e-3, 'nan_patience': 2, 'max_nan_reloads': 0}}
    # the fault only in the first attempt: a resumed working directory has a checkpoints folder
    faults = json.dumps({'nan_steps': [5, 6]})
    options = {**OPTIONS, 'prepend_text': f"[ -d checkpoints ] || export {FAULTS_ENV}='{faults}'"}
    builder = NexthamTrainWorkChain.get_builder_from_group(labels, nextham_code, config, options=options)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    first, second = sorted(node.called, key=lambda n: n.ctime)
    assert first.exit_status == 410 and 'diverged' in first.exit_message
    assert first.outputs.metrics['error'] == 'Diverged'
    assert second.inputs.checkpoint.base.attributes.get('step') == 4
    restarted = second.inputs.config.get_dict()
    assert restarted['train']['lr'] == pytest.approx(2e-3) and restarted['resume'] == {
        'allow_changes': ['lr']
    }
    assert {k: v for k, v in restarted['train'].items() if k != 'lr'} == {
        k: v for k, v in config['train'].items() if k != 'lr'
    }
    metrics = results['metrics'].get_dict()
    assert metrics['steps'] == 12 and metrics['resumed_from_step'] == 4
    # steps 5..7 were tried by both runs: the second one with half the learning rate
    lr = {}
    for calc in (first, second):
        curves = calc.outputs.learning_curves
        lr[calc.pk] = dict(zip(curves.get_array('train_step').tolist(), curves.get_array('lr'), strict=True))
    for step in (5, 6, 7):
        assert lr[second.pk][step] == pytest.approx(0.5 * lr[first.pk][step], rel=1e-12)
    log = second.outputs.retrieved.base.repository.get_object_content('metrics.jsonl')
    assert 'lr: 0.004 -> 0.002' in log  # the engine records the deliberate change


@pytest.mark.slow
def test_fine_tuning_with_torchrun_starts_from_the_parent_model(nextham_code, labels):
    """Fine-tuning on two processes (torchrun, gloo on CPU): with a vanishing learning rate the result is
    the parent model itself, so the run started from its weights and scales."""
    import hashlib

    parent = _reference(nextham_code, labels).outputs.model
    torchrun = get_or_create_torchrun_code(nextham_code)
    train = {**TRAIN, 'steps': 2, 'checkpoint_every': 2, 'val_every': 2, 'lr': 1e-12}
    config = {'data': {'split': [0.67, 0.33, 0.0], 'seed': 0}, 'train': train}  # 2 structures for 2 ranks
    builder = _builder(torchrun, labels, config=config, parent_model=parent)
    builder.metadata.options.nproc_per_node = 2
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert results['metrics']['world_size'] == 2 and results['metrics']['steps'] == 2
    child = results['model']
    assert child.metadata['config'] == parent.metadata['config']
    weights = parent.base.repository.get_object_content('model.safetensors', 'rb')
    assert child.metadata['provenance']['init_from']['sha256'] == hashlib.sha256(weights).hexdigest()
    ours, theirs = _state(child), _state(parent)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-6, atol=1e-8, msg=name)
    ancestors = orm.QueryBuilder().append(ModelData, filters={'id': child.pk}, tag='child')
    ancestors.append(orm.CalcJobNode, with_outgoing='child', tag='calc')
    ancestors.append(ModelData, with_outgoing='calc', project='id')
    assert ancestors.all(flat=True) == [parent.pk]
