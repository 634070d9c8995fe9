"""examples/query_provenance.py: the provenance queries against a real, tiny provenance graph.

Built once for the module with the real CalcJobs on the local computer: ``NexthamDftCalculation`` makes
the H0 of a rattled Si2 (PySCF, ``fast`` protocol, ``h0`` mode: an SCF label takes minutes on the test
machine); a ``NexthamTrainCalculation`` trains a tiny model (12 steps) on the three labels of tests/data/ml
in a group; a ``NexthamPredictCalculation`` predicts H and the bands from the H0 of one label. The
example's functions must return exactly these nodes (only nodes made here are compared: the session's
profile is shared with other test modules).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.manage import get_manager
from tiny import LABELS, TINY_MODEL

from aiida_nextham.data.hamiltonian import HamiltonianData

GROUP = 'test/example-provenance-labels'
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1'}}
TRAIN = {'steps': 12, 'batch_size': 1, 'checkpoint_every': 12, 'val_every': 6, 'n_kpoints': 2}
TRAIN |= {'dtype': 'float64', 'warmup_steps': 2, 'device': 'cpu'}


@pytest.fixture(scope='module')
def example(load_example):
    return load_example('query_provenance.py')


def _first_pk() -> int:
    """The PK the next stored node will get, at the earliest."""
    last = orm.QueryBuilder().append(orm.Node, project='id').order_by({orm.Node: {'id': 'desc'}}).first()
    return (last[0] if last else 0) + 1


@pytest.fixture(scope='module')
def graph(gth_family, tmp_path_factory):
    """The provenance: {name: node}; ``start`` is the first PK of the nodes made here."""
    from ase.build import bulk

    from aiida_nextham.calculations.dft import NexthamDftCalculation
    from aiida_nextham.calculations.predict import NexthamPredictCalculation
    from aiida_nextham.calculations.train import NexthamTrainCalculation
    from aiida_nextham.cli.setup import find_nextham_executable, get_or_create_code, get_or_create_localhost

    start = _first_pk()
    computer, _ = get_or_create_localhost('localhost-provenance', str(tmp_path_factory.mktemp('work')))
    executable = os.environ.get('NEXTHAM_TEST_EXECUTABLE') or find_nextham_executable()
    code = get_or_create_code(computer, executable=Path(executable))[0]

    # the zeroth-step Hamiltonian (H0, S) of a rattled Si2 from PySCF: fast protocol, no SCF (a few seconds)
    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.rattle(0.05, seed=3)
    structure = orm.StructureData(ase=atoms)
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh([1, 1, 1])
    builder = NexthamDftCalculation.get_builder()
    builder.code = code
    builder.structure = structure
    builder.pseudos = gth_family.get_pseudos(structure=structure)
    builder.parameters = orm.Dict({'protocol': 'fast', 'cutoff': 6.0, 'selfcheck': False, 'threads': 1})
    builder.kpoints = kpoints
    builder.mode = orm.Str('h0')
    builder.metadata.options.environment_variables = OPTIONS['environment_variables']
    results, dft = run_get_node(builder)
    assert dft.is_finished_ok, (dft.exit_status, dft.exit_message)
    h0 = results['hamiltonian']

    # the training group: the three labels of tests/data/ml (imported: no DFT calculation behind them)
    labels = [HamiltonianData.from_file(path, format='nextham').store() for path in LABELS]
    group = orm.Group(label=GROUP).store()
    for path, node in zip(LABELS, labels, strict=True):
        node.base.extras.set('dataset_key', path.stem)
    group.add_nodes(labels)

    config = {'data': {'split': [0.34, 0.33, 0.33], 'seed': 0}, 'model': TINY_MODEL, 'train': TRAIN}
    builder = NexthamTrainCalculation.get_builder_from_group(group, code, config, options=OPTIONS)
    results, train = run_get_node(builder)
    assert train.is_finished_ok, (train.exit_status, train.exit_message)
    model = results['model']

    # the prediction (H and bands) from the DFT H0 above (structure -> H0 -> H is one provenance chain)
    builder = NexthamPredictCalculation.get_builder()
    builder.code = code
    builder.model = model
    builder.h0 = {'si2_rattled': h0}
    builder.parameters = orm.Dict({'bands': True, 'npoints': 20, 'device': 'cpu'})
    builder.metadata.options.environment_variables = OPTIONS['environment_variables']
    results, predict = run_get_node(builder)
    assert predict.is_finished_ok, (predict.exit_status, predict.exit_message)
    return {
        'start': start,
        'structure': structure,
        'dft': dft,
        'h0': h0,
        'labels': labels,
        'train': train,
        'model': model,
        'predict': predict,
        'hamiltonian': results['hamiltonians']['si2_rattled'],
        'bands': results['bands']['si2_rattled'],
        'results': results['results'],
    }


def _mine(rows: list[dict], key: str, start: int) -> list[dict]:
    return [row for row in rows if row[key] >= start]


def test_training_groups(example, graph):
    rows = _mine(example.training_groups(), 'model', graph['start'])
    model = graph['model']
    assert rows == [
        {
            'group': GROUP,
            'model': model.pk,
            'model_uuid': model.uuid,
            'train': graph['train'].pk,
            'train_set_size': 1,  # split 0.34/0.33/0.33 of three labels: one to train on
            'n_parameters': model.base.attributes.get('n_parameters'),
            'labels': sorted(node.pk for node in graph['labels']),
        }
    ]
    assert model.base.attributes.get('train_set_size') == 1 and rows[0]['n_parameters'] > 0


def test_predictions(example, graph):
    rows = _mine(example.predictions(), 'hamiltonian', graph['start'])
    hamiltonian = graph['hamiltonian']
    assert rows == [
        {
            'hamiltonian': hamiltonian.pk,
            'uuid': hamiltonian.uuid,
            'name': 'si2_rattled',
            'formula': 'Si2',
            'n_atoms': 2,
            'predict': graph['predict'].pk,
            'model': graph['model'].pk,
            'model_uuid': graph['model'].uuid,
            'train_set_size': 1,
            'training_groups': [GROUP],
        }
    ]
    # the H0 input of the prediction and the training labels are no predictions
    assert hamiltonian.base.attributes.get('predicted') is True
    assert hamiltonian.base.attributes.get('model_uuid') == graph['model'].uuid


def test_band_structures(example, graph):
    rows = _mine(example.band_structures(), 'bands', graph['start'])
    results = graph['results'].get_dict()
    assert results['gap'] is not None
    assert rows == [
        {
            'bands': graph['bands'].pk,
            'uuid': graph['bands'].uuid,
            'name': 'si2_rattled',
            'formula': 'Si2',
            'predict': graph['predict'].pk,
            'model': graph['model'].pk,
            'gap': results['gap'],
            'vbm': results['vbm'],
            'cbm': results['cbm'],
            'is_metal': results['is_metal'],
        }
    ]


def test_dft_hamiltonians_by_protocol_and_mode(example, graph):
    h0 = graph['h0']
    expected = [
        {
            'hamiltonian': h0.pk,
            'uuid': h0.uuid,
            'formula': 'Si2',
            'mode': 'h0',
            'structure': graph['structure'].pk,
            'dft': graph['dft'].pk,
            'protocol': 'fast',
            'basis_set': 'gth-szv',
            'fermi_level': h0.fermi_level,
        }
    ]
    assert h0.fermi_level is not None
    start = graph['start']
    assert _mine(example.dft_hamiltonians(mode='h0'), 'hamiltonian', start) == expected
    assert _mine(example.dft_hamiltonians('fast', mode='h0'), 'hamiltonian', start) == expected
    assert _mine(example.dft_hamiltonians('balanced', mode='h0'), 'hamiltonian', start) == []
    # labels: none made here by a DFT calculation (the imported labels and the prediction do not count)
    assert _mine(example.dft_hamiltonians(), 'hamiltonian', start) == []


def test_main_prints_the_tables(example, graph, capsys):
    profile = get_manager().get_profile().name
    assert example.main(['--profile', profile, '--protocol', 'fast', '--mode', 'h0']) == 0
    out = capsys.readouterr().out
    print(out)  # shown with -s: the excerpt in docs/guides/provenance.md
    for title in (
        'Predicted Hamiltonians',
        'Band structures of predictions',
        'DFT Hamiltonians (mode h0, protocol fast)',
    ):
        assert title in out
    assert 'Models by training group' in out
    line = next(line for line in out.splitlines() if line.startswith(f'{graph["hamiltonian"].pk} '))
    assert line.split()[:7] == [
        str(graph['hamiltonian'].pk),
        'si2_rattled',
        'Si2',
        '2',
        str(graph['predict'].pk),
        str(graph['model'].pk),
        '1',
    ]
