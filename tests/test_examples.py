"""The scripts in ``examples/`` (the tutorials of the docs include them verbatim) run as a user runs them.

Each example has a test: the shell scripts run as separate processes against the session's test profile
(``AIIDA_PATH`` is inherited), the Python scripts through their ``main(argv)``. The quickstart example is
tested in tests/test_quickstart.py, phonons, Slurm and provenance in tests/test_example_*.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aiida import orm

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'
TESTS = Path(__file__).resolve().parent


def example_env(**variables: str) -> dict[str, str]:
    """The environment of an example process: this one's, with the venv's scripts first on PATH."""
    path = f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'
    return {**os.environ, 'PATH': path, 'OMP_NUM_THREADS': '1', **variables}


def test_every_example_is_tested():
    """Each file in examples/ is named by some test module (a new example needs a test)."""
    sources = ''.join(path.read_text() for path in TESTS.glob('test_*.py'))
    untested = [path.name for path in EXAMPLES.iterdir() if path.is_file() and path.name not in sources]
    assert not untested, f'examples without a test: {untested}'


@pytest.mark.slow
def test_import_deeph_example(aiida_profile, realdata, tmp_path):
    """``examples/import_deeph.sh``: a real DeepH MoTe2 Hamiltonian imported as a node, its bands plotted."""
    env = example_env(
        NEXTHAM_PROFILE=aiida_profile.name, NEXTHAM_REALDATA=str(realdata), NEXTHAM_OUT=str(tmp_path)
    )
    command = ['bash', str(EXAMPLES / 'import_deeph.sh')]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout + process.stderr
    assert (tmp_path / 'MoTe2_bands.png').stat().st_size > 10_000
    nodes = orm.QueryBuilder().append(orm.Data, filters={'label': 'MoTe2-quickstart'}).all(flat=True)
    assert nodes, 'the imported HamiltonianData is not in the profile'
    hamiltonian = nodes[-1]
    assert hamiltonian.node_type.startswith('data.nextham.')
    assert f'<{hamiltonian.pk}>' in process.stdout
    assert hamiltonian.n_atoms == 3 and sorted(hamiltonian.formula) == sorted('MoTe2')


@pytest.mark.slow
def test_arpes_graphene_example(load_example, tmp_path, capsys):
    """``examples/arpes_graphene_fit.py`` (without the INR fit) on the real bilayer-graphene cut: the
    baseline gives graphene's Fermi velocity and the bilayer coupling (docs/benchmarks.md)."""
    example = load_example('arpes_graphene_fit.py')
    if not example.DATA.is_file():
        pytest.skip(f'{example.DATA} is missing (../shared/realdata)')
    assert example.main(['-o', str(tmp_path), '--starts', '4']) == 0
    results = json.loads((tmp_path / 'arpes_graphene_fit.json').read_text())
    fit = results['fits']['baseline_exact_geometry']
    assert 1.0 < fit['vF_1e6_m_s'] < 1.1  # graphene: 1.0-1.1 × 10⁶ m/s
    assert 0.35 < fit['parameters']['g1'] < 0.47  # Bernal bilayer γ₁ ≈ 0.4 eV
    assert fit['rmse_eV'] < 0.03
    assert abs(results['conventions']['hv_minus_E_F_eV']) < 0.02  # the export's E_F sits at hν
    assert (tmp_path / 'arpes_graphene_fit.png').stat().st_size > 10_000
    spec = json.loads((tmp_path / 'bilayer_spec.json').read_text())
    assert spec['name'] == 'hopping-list' and set(spec['parameters']) == {'t', 'g1', 'mu'}
    assert (tmp_path / 'blg_k_cut_prepared.nc').is_file()
    assert 'baseline_exact_geometry:' in capsys.readouterr().out


@pytest.mark.slow
def test_train_si_example_config(tmp_path):
    """``examples/train_si.yaml`` is a valid run config: a few steps train and write a loadable model."""
    from safetensors.numpy import load_file

    config = tmp_path / 'train_si.yaml'  # a copy beside the tests' data, so its relative paths resolve
    text = (EXAMPLES / 'train_si.yaml').read_text().replace('../tests/data/ml', str(TESTS / 'data' / 'ml'))
    config.write_text(text.replace('../nextham-train-si/targets', str(tmp_path / 'targets')))
    command = [sys.executable, '-m', 'aiida_nextham.engine.cli', 'train', str(config)]
    command += ['--steps', '3', '--output', str(tmp_path / 'run'), '--no-progress']
    process = subprocess.run(command, env=example_env(), capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout + process.stderr
    weights = load_file(tmp_path / 'run' / 'model' / 'model.safetensors')
    assert weights and all(np.isfinite(value).all() for value in weights.values())
    metadata = json.loads((tmp_path / 'run' / 'model' / 'model.json').read_text())
    assert metadata['config']['cutoff'] == 5.0


def test_pipeline_example_rejects_bad_arguments(load_example, capsys):
    """The pipeline example's own checks stop before any profile is loaded or process launched
    (its four steps run in tests/test_aiida_pipeline.py)."""
    example = load_example('pipeline_si.py')
    with pytest.raises(SystemExit) as exit_info:
        example.main(['--structures', '1'])
    assert exit_info.value.code == 2
    assert 'need at least 2 structures' in capsys.readouterr().err
