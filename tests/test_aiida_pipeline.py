"""End to end on the test profile: DFT labels -> training -> prediction -> validation, all real processes.

The processes are run by ``examples/pipeline_si.py`` (the pipeline tutorial) with tiny settings:

- labels: ``NexthamDatasetWorkChain`` with the real PySCF engine (tiny settings: gth-szv, 6 Å blocks,
  2³ mesh, no self-check) for three rattled 2-atom Si cells generated from one parent;
- training: ``NexthamTrainWorkChain`` (-> ``NexthamTrainCalculation``) with a tiny config on two of them;
- prediction: ``NexthamPredictBandsWorkChain`` (``fast`` protocol: H0 by PySCF with the family's
  pseudopotentials) of the third, held-out structure;
- validation: ``NexthamValidateWorkChain`` of the predicted ``BandsData`` against the ``BandsData`` of
  the held-out DFT label (``compute_bands`` at the same k-points).

Then QueryBuilder queries prove that the final ``BandsData`` links back to the DFT labels used for
training, the pseudopotential family, the training config and the structures. About 1.5 minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiida import orm
from tiny import TINY_MODEL

from aiida_nextham.calculations.dft import NexthamDftCalculation
from aiida_nextham.calculations.predict import NexthamPredictCalculation
from aiida_nextham.calculations.train import NexthamTrainCalculation
from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.data.model import ModelData
from aiida_nextham.data.pseudo import GthPseudoData, GthPseudoFamily

#: engine settings of the labels: the real engine, as cheap as it gets (see tests/test_quickstart.py)
TINY_LABEL = {'cutoff': 6.0, 'alias_margin': 1.0, 'selfcheck': False, 'threads': 1, 'kmesh': [2, 2, 2]}
RECIPE = {'supercell': 1, 'n_structures': 3, 'rattle': 0.05, 'seed': 3}
CONFIG = {
    'data': {'split': [0.5, 0.5, 0.0], 'seed': 0},
    'model': TINY_MODEL,
    'train': {'steps': 12, 'batch_size': 1, 'checkpoint_every': 12, 'val_every': 6, 'n_kpoints': 2},
}
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1'}}


@pytest.fixture(scope='module')
def code(tmp_path_factory):
    from aiida_nextham.cli.setup import find_nextham_executable, get_or_create_code, get_or_create_localhost

    computer, _ = get_or_create_localhost('localhost-pipeline', workdir=str(tmp_path_factory.mktemp('work')))
    executable = os.environ.get('NEXTHAM_TEST_EXECUTABLE') or find_nextham_executable()
    return get_or_create_code(computer, executable=Path(executable))[0]


@pytest.mark.slow
def test_train_predict_validate_provenance(code, load_example):
    from aiida_nextham.cli.quickstart import provenance_summary

    example = load_example('pipeline_si.py')
    nodes = example.run_pipeline(
        code, n_structures=3, config=CONFIG, label_overrides=TINY_LABEL, npoints=30, options=OPTIONS
    )
    for name in ('dataset', 'train', 'predict', 'validate'):
        assert nodes[name].is_finished_ok, (name, nodes[name].exit_status, nodes[name].exit_message)
    labels, family, parent, dataset = nodes['labels'], nodes['family'], nodes['parent'], nodes['dataset']
    assert sorted(labels) == ['structure_0000', 'structure_0001', 'structure_0002']
    train_keys, heldout_key = ['structure_0000', 'structure_0001'], 'structure_0002'
    assert (nodes['train_keys'], nodes['heldout_key']) == (train_keys, heldout_key)
    model = nodes['model']
    (train_calc,) = [n for n in nodes['train'].called if n.process_class is NexthamTrainCalculation]

    structure = nodes['structure']
    assert structure.creator.process_label == 'generate_structures'
    bands = nodes['bands']
    assert bands.get_bands().shape == (30, 8)

    metrics = nodes['metrics'].get_dict()
    assert metrics['n_values'] > 0 and metrics['kpoints_max_deviation'] < 1e-8
    assert metrics['band_mae'] >= 0 and metrics['gap_reference'] is not None
    assert nodes['metrics'].creator.inputs.predicted.pk == bands.pk
    assert nodes['plot'].get_content(mode='rb')[:4] == b'\x89PNG'

    # ONE query: bands <- prediction <- model <- training <- (config, DFT labels <- DFT job <- structure),
    # prediction <- pseudopotential <- family, prediction <- band path <- seekpath <- structure
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='predict')
    query.append(ModelData, with_outgoing='predict', tag='model')
    query.append(NexthamTrainCalculation, with_outgoing='model', tag='train')
    query.append(
        orm.Dict, with_outgoing='train', edge_filters={'label': 'config'}, tag='config', project='uuid'
    )
    query.append(HamiltonianData, with_outgoing='train', tag='label', project='uuid')
    query.append(NexthamDftCalculation, with_outgoing='label', tag='dft')
    query.append(orm.StructureData, with_outgoing='dft', tag='label_structure', project='uuid')
    query.append(GthPseudoData, with_outgoing='dft', tag='label_pseudo', project='uuid')
    query.append(GthPseudoData, with_outgoing='predict', tag='pseudo', project='uuid')
    query.append(GthPseudoFamily, with_node='pseudo', project='label')
    query.append(orm.KpointsData, with_outgoing='predict', tag='path')
    query.append(orm.CalcFunctionNode, with_outgoing='path', tag='seekpath')
    query.append(orm.StructureData, with_outgoing='seekpath', tag='structure', project='uuid')
    rows = query.all()
    assert rows, 'the predicted bands do not link back to the training'
    columns = zip(*rows, strict=True)
    config, label, label_structure, label_pseudo, pseudo, family_label, predicted_structure = columns
    assert set(config) == {train_calc.inputs.config.uuid}
    assert train_calc.inputs.config.get_dict()['model'] == CONFIG['model']
    assert set(label) == {labels[key].uuid for key in train_keys}
    assert set(label_structure) == {labels[key].creator.inputs.structure.uuid for key in train_keys}
    assert set(pseudo) == set(label_pseudo) == {family.get_pseudo('Si').uuid}
    assert set(family_label) == {family.label}
    assert set(predicted_structure) == {structure.uuid}

    # ... and every one of those, the parent structure and the recipe are ancestors of the bands
    expected = {*config, *label, *label_structure, *pseudo, structure.uuid, parent.uuid, model.uuid}
    expected.add(dataset.inputs.recipe.uuid)
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(
        orm.Node, with_descendants='bands', filters={'uuid': {'in': sorted(expected)}}, project='uuid'
    )
    assert set(query.all(flat=True)) == expected
    # the held-out label is not: the model never saw it
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(orm.Node, with_descendants='bands', filters={'uuid': labels[heldout_key].uuid})
    assert query.count() == 0

    # the quickstart's provenance summary finds the same nodes
    summary = provenance_summary(bands)
    assert {pk for pk, _ in summary['labels']} == {labels[key].pk for key in train_keys}
    assert summary['config'] == [train_calc.inputs.config.pk] and summary['model'] == [model.pk]
    assert summary['pseudos'] == [[family.get_pseudo('Si').pk, 'Si', family.label]]
    assert summary['structure'] == [structure.pk]
    assert summary['ancestors']['HamiltonianData'] == len(train_keys)
