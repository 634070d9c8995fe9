"""``nextham train``: exact resume after SIGKILL, DDP equals one process, NaN guard, bad inputs, end to end.

Tiny model (a few thousand parameters) on the real Si labels in tests/data/ml; float64 where results are
compared, so that equality means equality of the computation, not luck of rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from aiida_nextham.engine.cli import cli
from aiida_nextham.engine.train_command import (
    EXIT_BAD_CHECKPOINT,
    EXIT_BAD_CONFIG,
    EXIT_BAD_DATA,
    EXIT_DIVERGED,
    run_training,
)
from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.hdf5 import read_hdf5, write_hdf5
from aiida_nextham.ml.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from aiida_nextham.ml.dataset import HamiltonianDataset
from aiida_nextham.ml.inference import Coverage
from aiida_nextham.ml.predictor import predict_hamiltonian
from aiida_nextham.ml.run_config import ConfigError, RunConfig, load_run_config
from aiida_nextham.ml.serialization import load_model
from aiida_nextham.ml.training import FAULTS_ENV, TrainConfig, Trainer

LABELS = sorted((Path(__file__).parent / 'data' / 'ml').glob('si2_rattled_*.h5'))
TINY = {
    'cutoff': 4.5,
    'node_channels': {0: 8, 1: 4, 2: 4},
    'edge_channels': {0: 8, 1: 4, 2: 4},
    'value_channels': {0: 4, 1: 4, 2: 2},
    'pair_channels': {0: 4, 1: 2},
    'n_layers': 1,
    'n_heads': 2,
    'radial_hidden': 16,
}
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def labels(tmp_path_factory) -> Path:
    """Four label files (the three Si labels and a renamed copy): split 2 train / 1 val / 1 test."""
    assert len(LABELS) == 3, 'run tests/data/ml/generate.py'
    folder = tmp_path_factory.mktemp('labels')
    for path in LABELS:
        shutil.copy(path, folder / path.name)
    shutil.copy(LABELS[0], folder / 'si2_copy_3.h5')
    return folder


@pytest.fixture(autouse=True)
def no_faults(monkeypatch):
    monkeypatch.delenv(FAULTS_ENV, raising=False)


def make_config(labels: Path, output: Path, **train) -> dict:
    settings = {
        'steps': 8,
        'batch_size': 1,
        'dtype': 'float64',
        'n_kpoints': 3,
        'warmup_steps': 2,
        'val_every': 4,
        'checkpoint_every': 2,
        'keep_checkpoints': 10,
        'ema_decay': 0.9,
        'progress': False,
        **train,
    }
    return {
        'data': {'folder': str(labels), 'split': [0.5, 0.25, 0.25], 'cache_dir': str(labels / 'cache')},
        'model': TINY,
        'train': settings,
        'output': str(output),
    }


def write_config(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data) if path.suffix == '.yaml' else json.dumps(data))
    return path


def train_records(output: Path, kind: str = 'train') -> list[dict]:
    lines = (output / 'metrics.jsonl').read_text().splitlines()
    return [r for r in map(json.loads, lines) if r['kind'] == kind]


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_failed(result, code: int, *fragments):
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    error = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
    assert len(error) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error[0], error[0]
    return json.loads(result.stdout)


# ------------------------------------------------------------------------------------------- resume
def test_resume_after_sigkill_reaches_the_uninterrupted_parameters(labels, tmp_path):
    reference = run_training(RunConfig.from_dict(make_config(labels, tmp_path / 'reference')))
    assert reference['steps'] == 8

    config = write_config(make_config(labels, tmp_path / 'killed'), tmp_path / 'killed.json')
    env = {**os.environ, FAULTS_ENV: json.dumps({'kill_in_checkpoint': 6}), 'OMP_NUM_THREADS': '1'}
    process = subprocess.run(
        [sys.executable, '-m', 'aiida_nextham.engine.train_command', str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -9, process.stderr  # SIGKILL while checkpoint 6 was half written
    root = tmp_path / 'killed' / 'checkpoints'
    assert [p.name for p in list_checkpoints(root)] == ['step-00000000', 'step-00000002', 'step-00000004']
    assert list(root.glob('.step-00000006.*')), (
        'the half-written checkpoint should be left in its temp folder'
    )
    status = json.loads((tmp_path / 'killed' / 'status.json').read_text())
    assert status['status'] == 'running' and status['step'] == 4
    assert max(r['step'] for r in train_records(tmp_path / 'killed')) == 6  # it trained past the checkpoint

    resumed = run_training(load_run_config(config), resume=True)
    assert resumed['steps'] == 8
    expected = read_checkpoint(latest_checkpoint(tmp_path / 'reference' / 'checkpoints'))
    actual = read_checkpoint(latest_checkpoint(root))
    assert expected.step == actual.step == 8
    assert set(expected.tensors) == set(actual.tensors)
    for name, tensor in expected.tensors.items():
        if not name.startswith('rng/'):
            torch.testing.assert_close(actual.tensors[name], tensor, rtol=1e-12, atol=0, msg=name)
    # the log of the resumed run is the uninterrupted one: steps 1..8 once, same losses
    ours, theirs = train_records(tmp_path / 'killed'), train_records(tmp_path / 'reference')
    assert [r['step'] for r in ours] == list(range(1, 9))
    assert [r['total'] for r in ours] == pytest.approx([r['total'] for r in theirs], rel=1e-12)
    assert actual.metadata['best'] == pytest.approx(expected.metadata['best'], rel=1e-12)


# ---------------------------------------------------------------------------------------------- DDP
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(labels, tmp_path):
    single = run_training(
        RunConfig.from_dict(make_config(labels, tmp_path / 'single', steps=5, batch_size=2))
    )
    config = write_config(make_config(labels, tmp_path / 'ddp', steps=5, batch_size=1), tmp_path / 'ddp.yaml')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    process = subprocess.run(
        [*command, '-m', 'aiida_nextham.engine.train_command', str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(process.stdout)  # only rank 0 prints
    assert summary['world_size'] == 2 and summary['steps'] == 5
    ddp, one = train_records(tmp_path / 'ddp'), train_records(tmp_path / 'single')
    assert [r['step'] for r in ddp] == [1, 2, 3, 4, 5]
    assert [r['total'] for r in ddp] == pytest.approx([r['total'] for r in one], rel=1e-6)
    assert ddp[-1]['total'] < 0.9 * ddp[0]['total']  # it trains
    # same predictions (raw parameters are no test: the attention-logit biases have an identically zero
    # gradient, softmax being shift invariant, so Adam turns rounding noise into O(lr) updates of them)
    bh = read_hdf5(LABELS[1])
    ddp_model, one_model = load_model(tmp_path / 'ddp' / 'model'), load_model(tmp_path / 'single' / 'model')
    h_ddp = predict_hamiltonian(ddp_model, bh, dtype=torch.float64).hamiltonian
    h_one = predict_hamiltonian(one_model, bh, dtype=torch.float64).hamiltonian
    np.testing.assert_allclose(h_ddp, h_one, rtol=0, atol=1e-9)
    assert np.abs(h_ddp - bh.h0).max() > 1e-4  # and the model does predict a correction
    assert summary['best_val_mae'] == pytest.approx(single['best_val_mae'], rel=1e-6)


def test_early_stopping_keeps_the_best_ema_weights(labels, tmp_path):
    # min_delta so large that no validation after the first counts as an improvement
    config = make_config(labels, tmp_path / 'early', steps=40, val_every=2, patience=2, min_delta=1e9)
    summary = run_training(RunConfig.from_dict(config))
    assert summary['status'] == 'early_stopped' and summary['steps'] == 6 and summary['best_step'] == 2
    final = read_checkpoint(latest_checkpoint(tmp_path / 'early' / 'checkpoints'))
    assert final.step == 6 and final.metadata['run']['stale_validations'] == 2
    model = load_model(tmp_path / 'early' / 'model')
    best, ema = final.group('best'), final.group('ema')
    assert any(not torch.equal(best[k], ema[k]) for k in best)  # training went on after step 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[name]), name
    metadata = json.loads((tmp_path / 'early' / 'model' / 'model.json').read_text())
    assert metadata['provenance']['weights'] == 'ema-best'


# ---------------------------------------------------------------------------------------- NaN guard
def test_a_nan_batch_leaves_weights_and_optimizer_state_untouched(labels):
    torch.manual_seed(0)
    dataset = HamiltonianDataset(sorted(labels.glob('*.h5'))[:2], cutoff=TINY['cutoff'])
    from aiida_nextham.ml.config import ModelConfig
    from aiida_nextham.ml.model import NexthamModel

    model = NexthamModel(ModelConfig(shells={14: (0, 1)}, **TINY))
    config = TrainConfig(steps=4, batch_size=1, n_kpoints=2, dtype='float64', ema_decay=0.9)
    trainer = Trainer(model, dataset, config, cache_dir=labels / 'cache')
    trainer.poison_steps = {1}

    def snapshot():
        optimizer = {
            (k, name): v.clone() for k, s in trainer.optimizer.state.items() for name, v in s.items()
        }
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        ema = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
        return weights, ema, optimizer

    assert not trainer.train_step([0])['skipped']
    before = snapshot()
    logged = trainer.train_step([1])
    assert logged['skipped'] and trainer.step == 2
    after = snapshot()
    for old, new in zip(before, after, strict=True):
        assert old.keys() == new.keys()
        for key in old:
            assert torch.equal(old[key], new[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert not trainer.train_step([1])['skipped']  # the same batch, unpoisoned, trains again
    assert any(not torch.equal(before[0][k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_nans_reload_the_last_checkpoint_with_a_lower_learning_rate(labels, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({'nan_steps': [3, 4, 5]}))
    config = make_config(labels, tmp_path / 'nan', steps=8, nan_patience=3, nan_lr_factor=0.5)
    summary = run_training(RunConfig.from_dict(config))
    assert summary['status'] == 'finished' and summary['nan_reloads'] == 1 and summary['skipped_steps'] == 3
    records = [json.loads(line) for line in (tmp_path / 'nan' / 'metrics.jsonl').read_text().splitlines()]
    reload = [r for r in records if r.get('event') == 'nan_reload']
    # attempts 3, 4, 5 (0-based) are the logged steps 4, 5, 6; checkpoint 4 was written after the first
    # skipped step, with the (untouched) weights of step 3: that is the one reloaded
    assert len(reload) == 1 and reload[0]['lr_factor'] == 0.5 and reload[0]['failed_at'] == 6
    assert reload[0]['step'] == 4
    steps = [r for r in records if r['kind'] == 'train']
    assert [r['step'] for r in steps] == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    assert [r['skipped'] for r in steps] == [False] * 3 + [True] * 3 + [False] * 4
    first, again = steps[4], steps[6]  # step 5 before and after the reload: same batch, half the lr
    assert again['lr'] == pytest.approx(0.5 * first['lr'], rel=1e-12)
    model = load_model(tmp_path / 'nan' / 'model')
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    final = read_checkpoint(latest_checkpoint(tmp_path / 'nan' / 'checkpoints'))
    assert final.metadata['scheduler']['lr_factor'] == 0.5


def test_persistent_nans_end_with_the_diverged_exit_code(labels, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({'nan_steps': [1, 2]}))
    config = make_config(labels, tmp_path / 'diverged', steps=6, nan_patience=2, max_nan_reloads=0)
    result = invoke('train', write_config(config, tmp_path / 'diverged.json'))
    record = assert_failed(result, EXIT_DIVERGED, 'Diverged', 'non-finite')
    status = json.loads((tmp_path / 'diverged' / 'status.json').read_text())
    assert status['status'] == 'failed' and status['exit_code'] == EXIT_DIVERGED == record['exit_code']


# ---------------------------------------------------------------------------------------- bad input
def test_unknown_config_keys_are_named_with_their_section(labels, tmp_path):
    good = make_config(labels, tmp_path / 'out')
    cases = {
        'train': {**good, 'train': {**good['train'], 'stepz': 3}},
        'train.loss': {**good, 'train': {**good['train'], 'loss': {'l1_wieght': 1.0}}},
        'model': {**good, 'model': {**TINY, 'n_layer': 2}},
        'data': {**good, 'data': {**good['data'], 'cuttoff': 4.0}},
        'top level': {**good, 'extra': 1},
    }
    bad_key = {
        'train': 'stepz',
        'train.loss': 'l1_wieght',
        'model': 'n_layer',
        'data': 'cuttoff',
        'top level': 'extra',
    }
    for section, data in cases.items():
        with pytest.raises(ConfigError, match=rf"'{bad_key[section]}' in section '{section}'"):
            RunConfig.from_dict(data)
    with pytest.raises(ConfigError, match="'steps' in section 'train' must be int"):
        RunConfig.from_dict({**good, 'train': {'steps': 'ten'}})
    result = invoke('train', write_config(cases['train'], tmp_path / 'bad.yaml'))
    record = assert_failed(result, EXIT_BAD_CONFIG, 'BadConfig', "'stepz'", "section 'train'")
    assert record['error'] == 'BadConfig'
    # relative paths are relative to the config file; a preset name alone is a valid model section
    (tmp_path / 'sub').mkdir()
    data = {'data': {'folder': '../labels'}, 'model': 'small', 'output': 'run'}
    loaded = load_run_config(write_config(data, tmp_path / 'sub' / 'c.yaml'))
    assert loaded.data.folder == str((tmp_path / 'labels').resolve())
    assert loaded.output == str(tmp_path / 'sub' / 'run')


def test_empty_and_mismatched_datasets_fail_with_the_data_exit_code(labels, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    config = make_config(labels, tmp_path / 'out')
    config['data']['folder'] = str(empty)
    result = invoke('train', write_config(config, tmp_path / 'empty.json'))
    assert_failed(result, EXIT_BAD_DATA, 'BadData', 'empty')
    assert json.loads((tmp_path / 'out' / 'status.json').read_text())['exit_code'] == EXIT_BAD_DATA

    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    shutil.copy(LABELS[0], mixed / 'a.h5')
    bh = read_hdf5(LABELS[1])
    write_hdf5(bh.replace(basis=Basis(bh.basis.elements, 'gth-dzvp', 'pyscf')), mixed / 'b.h5')
    config['data']['folder'] = str(mixed)
    result = invoke('train', write_config(config, tmp_path / 'mixed.json'))
    assert_failed(result, EXIT_BAD_DATA, 'BadData', 'b.h5', 'basis')


def test_corrupt_or_foreign_checkpoints_are_refused(labels, tmp_path):
    config = make_config(labels, tmp_path / 'run', steps=2)
    path = write_config(config, tmp_path / 'run.yaml')  # YAML keeps int keys: {0: 8}
    assert invoke('train', path).exit_code == 0
    # without --resume an output folder with checkpoints is not overwritten
    assert_failed(invoke('train', path), EXIT_BAD_CONFIG, '--resume')
    # a different learning rate is not the same run
    other = write_config({**config, 'train': {**config['train'], 'lr': 1e-4}}, tmp_path / 'other.yaml')
    assert_failed(invoke('train', other, '--resume'), EXIT_BAD_CHECKPOINT, 'train.lr')
    # --steps may change: the run continues
    result = invoke('train', path, '--resume', '--steps', '3')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)['steps'] == 3
    tensors = latest_checkpoint(tmp_path / 'run' / 'checkpoints') / 'checkpoint.safetensors'
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    record = assert_failed(invoke('train', path, '--resume'), EXIT_BAD_CHECKPOINT, 'corrupt', 'step-00000003')
    assert record['error'] == 'BadCheckpoint'


# ------------------------------------------------------------------------------------------- CLI e2e
def test_cli_trains_and_writes_model_checkpoint_logs_and_curves(labels, tmp_path):
    config = make_config(labels, 'out', steps=50, val_every=5, checkpoint_every=4, keep_checkpoints=2)
    config['train'].update(dtype='float32', lr=5e-3)
    path = write_config(config, tmp_path / 'train.yaml')
    result = invoke('train', path, '--steps', '10')
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    out = tmp_path / 'out'
    assert summary['steps'] == 10 and summary['status'] == 'finished'
    assert summary['best_step'] in (5, 10) and summary['best_val_mae'] > 0
    model = load_model(out / 'model')
    assert model.config.cutoff == TINY['cutoff'] and model.config.shells == {14: (0, 1)}
    metadata = json.loads((out / 'model' / 'model.json').read_text())
    provenance = metadata['provenance']
    assert {f['name'] for f in provenance['dataset']['files']} == {p.name for p in labels.glob('*.h5')}
    assert all(len(f['sha256']) == 64 for f in provenance['dataset']['files'])
    assert provenance['split']['train'] and provenance['seeds'] == {'split': 0, 'train': 0}
    assert {'torch', 'e3nn', 'aiida_nextham'} <= set(provenance['versions'])
    # what `nextham predict` needs to build a matching H0 and to refuse other bases
    assert provenance['dft'] == {'basis': 'gth-szv', 'pseudo': 'gth-pbe', 'xc': 'pbe', 'init_guess': 'atom'}
    assert provenance['coverage']['elements']['Si']['shells'] == [0, 1]
    assert Coverage.from_metadata(metadata).describe() == 'Si (gth-szv: s p)'
    assert provenance['run_config']['train']['steps'] == 10
    assert [p.name for p in list_checkpoints(out / 'checkpoints')] == ['step-00000008', 'step-00000010']
    assert read_checkpoint(out / 'checkpoints' / 'step-00000010').metadata['epoch'] == 5
    assert len(train_records(out)) == 10 and [r['step'] for r in train_records(out, 'val')] == [5, 10]
    assert (out / 'learning_curves.png').read_bytes()[:8] == PNG_MAGIC
    status = json.loads((out / 'status.json').read_text())
    assert status['status'] == 'finished' and status['exit_code'] == 0


def test_label_engine_settings_skip_sandbox_pseudo_files(tmp_path):
    """Labels made by the AiiDA CalcJob name their pseudopotential file (``pseudo/gth.dat``): that is no
    setting a prediction could reproduce, so the model records none (and predict uses the protocol's)."""
    from aiida_nextham.ml.training_run import _label_engine

    source = read_hdf5(LABELS[0])
    path = write_hdf5(
        source.replace(metadata={**source.metadata, 'pseudo': 'pseudo/gth.dat'}), tmp_path / 'a.h5'
    )
    assert _label_engine([path]) == {'basis': 'gth-szv', 'xc': 'pbe', 'init_guess': 'atom'}
