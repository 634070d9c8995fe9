"""The equivariant force field: symmetry, conservation, periodic images, training, files, resume.

A tiny model in float64, so that equalities are equalities of the computation. Training data are
rattled diamond-Si cells labelled with an analytic Morse pair potential written below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list
from click.testing import CliRunner
from scipy.spatial.transform import Rotation

from aiida_nextham.engine.cli import cli
from aiida_nextham.engine.train_ff_command import run_ff_training
from aiida_nextham.ml.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from aiida_nextham.ml.forcefield import (
    ElementCoverageError,
    ForceFieldConfig,
    ForceFieldModel,
    ForceFieldPredictor,
    save_forcefield,
)
from aiida_nextham.ml.forcefield.training import FFRunConfig, load_ff_config
from aiida_nextham.ml.training import FAULTS_ENV, TrainingDiverged

TINY = {
    'channels': {0: 8, 1: 4, 2: 2},
    'n_radial': 6,
    'radial_hidden': 16,
    'n_layers': 2,
    'readout_hidden': 8,
}


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch):
    monkeypatch.delenv(FAULTS_ENV, raising=False)


def random_model(elements=(14,), cutoff: float = 4.0, seed: int = 0) -> ForceFieldModel:
    torch.manual_seed(seed)
    model = ForceFieldModel(
        ForceFieldConfig(elements=list(elements), cutoff=cutoff, avg_neighbors=10.0, **TINY)
    )
    model = model.double()
    with torch.no_grad():  # non-trivial buffers, so that they are tested too
        model.reference_energies.copy_(torch.linspace(-100.0, -90.0, len(elements), dtype=torch.float64))
        model.energy_scale.fill_(20.0)
    return model.eval()


def rattled_si(seed: int, repeat=(2, 1, 1), sigma: float = 0.05) -> Atoms:
    atoms = bulk('Si', 'diamond', a=5.43).repeat(repeat)
    rng = np.random.default_rng(seed)
    strain = np.eye(3) + rng.normal(scale=0.01, size=(3, 3))
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
    return atoms


# ------------------------------------------------------------------------------- analytic labels
MORSE = {'D': 2.0, 'alpha': 1.5, 'r0': 2.35, 'rc': 4.0}


def morse(atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of a shifted, smoothly cut Morse pair potential."""
    d, alpha, r0, rc = MORSE['D'], MORSE['alpha'], MORSE['r0'], MORSE['rc']
    i, j, r, vec = neighbor_list('ijdD', atoms, rc)
    x = np.exp(-alpha * (r - r0))
    phi = d * (x * x - 2 * x)
    dphi = d * (-2 * alpha * x * x + 2 * alpha * x)
    cut = (1 - (r / rc) ** 2) ** 2
    dcut = -4 * r / rc**2 * (1 - (r / rc) ** 2)
    energy = 0.5 * np.sum(phi * cut)  # every pair appears twice
    de_dr = 0.5 * (dphi * cut + phi * dcut)
    pair = (de_dr / r)[:, None] * vec  # dE/d r_j from the (i, j) term, also -dE/d r_i
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, i, pair)
    np.add.at(forces, j, -pair)
    return float(energy), forces


def labelled(atoms: Atoms) -> Atoms:
    energy, forces = morse(atoms)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def test_the_analytic_labels_are_conservative():
    atoms = rattled_si(0)
    _, forces = morse(atoms)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        assert -(morse(plus)[0] - morse(minus)[0]) / (2 * h) == pytest.approx(forces[atom, axis], abs=1e-7)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('ff') / 'morse.extxyz'
    ase.io.write(path, [labelled(rattled_si(seed)) for seed in range(10)], format='extxyz')
    return path


def run_config(dataset: Path, output: Path, **train) -> dict:
    settings = {
        'steps': 12,
        'batch_size': 2,
        'lr': 0.01,
        'warmup_steps': 2,
        'val_every': 4,
        'checkpoint_every': 4,
        'keep_checkpoints': 5,
        'ema_decay': 0.9,
        **train,
    }
    return {
        'data': {'paths': [str(dataset)], 'split': [0.6, 0.2, 0.2], 'seed': 1},
        'model': {'cutoff': 4.0, **TINY},
        'train': settings,
        'output': str(output),
    }


# ------------------------------------------------------------------------------------- symmetry
def test_energy_is_invariant_and_forces_rotate_under_rotation_translation_permutation():
    predictor = ForceFieldPredictor(random_model())
    atoms = rattled_si(1)
    reference = predictor.predict(atoms)
    rotation = Rotation.random(random_state=3).as_matrix()
    permutation = np.random.default_rng(4).permutation(len(atoms))
    moved = Atoms(
        numbers=atoms.numbers[permutation],
        positions=atoms.positions[permutation] @ rotation.T + np.array([0.3, -1.2, 2.5]),
        cell=atoms.cell.array @ rotation.T,
        pbc=True,
    )
    out = predictor.predict(moved)
    assert abs(reference['forces']).max() > 1e-3  # a non-trivial check
    assert out['energy'] == pytest.approx(reference['energy'], abs=1e-10)
    np.testing.assert_allclose(
        out['forces'], reference['forces'][permutation] @ rotation.T, atol=1e-10, rtol=0
    )
    # a reflection too (the model has natural parity: energy is a true scalar)
    mirrored = moved.copy()
    mirrored.positions[:, 0] *= -1
    mirrored.set_cell(moved.cell.array * np.array([-1, 1, 1]), scale_atoms=False)
    assert predictor.predict(mirrored)['energy'] == pytest.approx(reference['energy'], abs=1e-10)


def test_forces_and_stress_are_derivatives_of_the_energy():
    predictor = ForceFieldPredictor(random_model())
    atoms = rattled_si(2)
    out = predictor.predict(atoms, stress=True)
    h = 1e-5
    for atom, axis in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        numeric = -(predictor.predict(plus)['energy'] - predictor.predict(minus)['energy']) / (2 * h)
        assert numeric == pytest.approx(out['forces'][atom, axis], abs=1e-8)
    assert np.abs(out['forces'].sum(0)).max() < 1e-10  # translation invariance: no net force
    for a, b in [(0, 0), (1, 2)]:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = h if a == b else h / 2
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
            energies.append(predictor.predict(strained)['energy'])
        numeric = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
        assert numeric == pytest.approx(out['stress'][a, b], abs=1e-9)


def test_a_supercell_has_twice_the_energy_and_the_same_forces():
    predictor = ForceFieldPredictor(random_model(cutoff=4.5))
    cell = rattled_si(5, repeat=(1, 1, 1))  # 2 atoms: the 4.5 Å cutoff reaches many periodic images
    supercell = cell.repeat((2, 1, 1))
    small, large = predictor.predict(cell), predictor.predict(supercell)
    assert abs(small['forces']).max() > 1e-3
    assert large['energy'] == pytest.approx(2 * small['energy'], abs=1e-9)
    np.testing.assert_allclose(large['forces'], np.tile(small['forces'], (2, 1)), atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------------- files
def test_save_load_round_trip_gives_identical_predictions_and_refuses_other_elements(tmp_path):
    model = random_model(elements=(6, 14))
    atoms = rattled_si(6)
    atoms.numbers[0] = 6
    before = ForceFieldPredictor(model).predict(atoms)
    save_forcefield(model, tmp_path / 'ff', provenance={'note': 'test'})
    assert not list(tmp_path.glob('ff/*.pt')) and not list(tmp_path.glob('ff/*.pkl'))
    metadata = json.loads((tmp_path / 'ff' / 'model.json').read_text())
    assert metadata['elements'] == ['C', 'Si'] and metadata['cutoff'] == 4.0
    assert metadata['provenance'] == {'note': 'test'}
    loaded = ForceFieldPredictor.from_files(tmp_path / 'ff')
    after = loaded.predict(atoms)
    assert after['energy'] == before['energy']
    np.testing.assert_array_equal(after['forces'], before['forces'])
    germanium = atoms.copy()
    germanium.numbers[1] = 32
    with pytest.raises(ElementCoverageError, match=r'Ge \(Z=32\).*outside the force field coverage'):
        loaded.predict(germanium)


# ------------------------------------------------------------------------------------- training
def test_training_reduces_the_force_error_and_writes_model_logs_and_curves(dataset, tmp_path):
    config = run_config(dataset, tmp_path / 'run', steps=40, val_every=10, checkpoint_every=20)
    summary = run_ff_training(FFRunConfig.from_dict(config))
    records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    val = [r for r in records if r['kind'] == 'val']
    assert [r['step'] for r in val] == [10, 20, 30, 40]
    first_train = next(r for r in records if r['kind'] == 'train')
    assert summary['metrics']['train']['loss'] < 0.5 * first_train['loss']
    assert val[-1]['force_mae'] < val[0]['force_mae']
    assert summary['n_structures'] == {'train': 6, 'val': 2, 'test': 2}
    assert (tmp_path / 'run' / 'learning_curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    metadata = json.loads((tmp_path / 'run' / 'model' / 'model.json').read_text())
    assert metadata['provenance']['split'] == summary_split(tmp_path / 'run')
    assert metadata['provenance']['data'][0]['sha256']
    # the reference energy is the mean energy per atom of the training frames
    predictor = ForceFieldPredictor.from_files(tmp_path / 'run' / 'model')
    frames = ase.io.read(dataset, index=':')
    expected = np.mean(
        [frames[i].get_potential_energy() / len(frames[i]) for i in metadata['provenance']['split']['train']]
    )
    assert float(predictor.model.reference_energies[0]) == pytest.approx(expected, rel=1e-12)


def summary_split(output: Path) -> dict:
    return json.loads((output / 'model' / 'model.json').read_text())['provenance']['split']


def test_resume_after_sigkill_equals_the_uninterrupted_run(dataset, tmp_path):
    reference = run_ff_training(FFRunConfig.from_dict(run_config(dataset, tmp_path / 'reference', steps=8)))
    assert reference['steps'] == 8
    path = tmp_path / 'killed.json'
    path.write_text(json.dumps(run_config(dataset, tmp_path / 'killed', steps=8)))
    env = {**os.environ, FAULTS_ENV: json.dumps({'kill_after_checkpoint': 4}), 'OMP_NUM_THREADS': '1'}
    process = subprocess.run(
        [sys.executable, '-m', 'aiida_nextham.engine.train_ff_command', str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == -9, process.stderr
    root = tmp_path / 'killed' / 'checkpoints'
    assert list_checkpoints(root)[-1].name == 'step-00000004'
    resumed = run_ff_training(load_ff_config(path), resume=True)
    assert resumed['steps'] == 8
    expected = read_checkpoint(latest_checkpoint(tmp_path / 'reference' / 'checkpoints'))
    actual = read_checkpoint(latest_checkpoint(root))
    assert set(expected.tensors) == set(actual.tensors)
    for name, tensor in expected.tensors.items():
        if not name.startswith('rng/'):
            torch.testing.assert_close(actual.tensors[name], tensor, rtol=1e-12, atol=0, msg=name)
    for part, values in reference['metrics'].items():
        assert resumed['metrics'][part] == pytest.approx(values, rel=1e-10), part


def test_nan_steps_are_skipped_and_persistent_nans_reload_then_fail(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({'nan_steps': [5]}))
    summary = run_ff_training(FFRunConfig.from_dict(run_config(dataset, tmp_path / 'one', steps=8)))
    records = [json.loads(line) for line in (tmp_path / 'one' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records if r.get('skipped')] == [6]
    assert summary['status'] == 'finished'

    monkeypatch.setenv(FAULTS_ENV, json.dumps({'nan_steps': [5, 6, 7]}))
    run_ff_training(FFRunConfig.from_dict(run_config(dataset, tmp_path / 'reload', steps=8)))
    events = [json.loads(line) for line in (tmp_path / 'reload' / 'metrics.jsonl').read_text().splitlines()]
    reloads = [e for e in events if e.get('event') == 'nan_reload']
    assert len(reloads) == 1 and 'factor 0.5' in reloads[0]['message']

    monkeypatch.setenv(FAULTS_ENV, json.dumps({'nan_steps': [1, 2, 3]}))
    with pytest.raises(TrainingDiverged, match='non-finite steps in a row'):
        run_ff_training(
            FFRunConfig.from_dict(run_config(dataset, tmp_path / 'fail', steps=8, max_nan_reloads=0))
        )


def test_cli_trains_and_reports_bad_configs_with_exit_codes(dataset, tmp_path):
    path = tmp_path / 'ff.json'
    data = tmp_path / 'data.extxyz'
    data.write_bytes(dataset.read_bytes())
    path.write_text(json.dumps(run_config(data, tmp_path / 'out', steps=4)))
    runner = CliRunner()
    result = runner.invoke(cli, ['train-ff', str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / 'out' / 'model' / 'model.safetensors').is_file()
    again = runner.invoke(cli, ['train-ff', str(path)])
    assert again.exit_code == 30 and '--resume' in again.output
    frames = ase.io.read(data, index=':')
    frames[0].calc.results['energy'] += 1.0  # same frames, other labels: resuming would mix two datasets
    ase.io.write(data, frames, format='extxyz')
    resumed = runner.invoke(cli, ['train-ff', str(path), '--resume', '--steps', '8'])
    assert resumed.exit_code == 32 and 'another config or dataset' in resumed.output
    bad = run_config(dataset, tmp_path / 'bad')
    bad['model']['heads'] = 3
    path.write_text(json.dumps(bad))
    result = runner.invoke(cli, ['train-ff', str(path)])
    assert result.exit_code == 30 and "'heads'" in result.output
    unlabelled = tmp_path / 'plain.extxyz'
    ase.io.write(unlabelled, [rattled_si(0), rattled_si(1)], format='extxyz')
    bad = run_config(unlabelled, tmp_path / 'bad2')
    path.write_text(json.dumps(bad))
    result = runner.invoke(cli, ['train-ff', str(path)])
    assert result.exit_code == 31 and 'no energy and forces' in result.output
