"""End to end on the test profile: DFT labels -> training -> prediction -> validation, all real processes.

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
from aiida.engine import run_get_node

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
    'model': {
        'preset': 'small',
        'cutoff': 4.5,
        'n_layers': 1,
        'node_channels': {'0': 8, '1': 4, '2': 4},
        'edge_channels': {'0': 8, '1': 4, '2': 4},
        'value_channels': {'0': 4, '1': 4, '2': 2},
        'pair_channels': {'0': 4, '1': 2},
        'n_heads': 2,
        'radial_hidden': 16,
    },
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
def test_train_predict_validate_provenance(code):
    from ase.build import bulk

    from aiida_nextham.calculations.functions import compute_bands
    from aiida_nextham.cli.quickstart import provenance_summary
    from aiida_nextham.data.pseudo import install_pyscf_gth_family
    from aiida_nextham.workflows.dataset import NexthamDatasetWorkChain
    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain
    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain
    from aiida_nextham.workflows.train import NexthamTrainWorkChain
    from aiida_nextham.workflows.validate import NexthamValidateWorkChain

    family, _ = install_pyscf_gth_family('pbe')
    parent = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43)).store()

    # DFT labels of three generated structures
    base = NexthamDftBaseWorkChain.get_builder_from_protocol(
        code, parent, protocol='fast', overrides=TINY_LABEL, mode='label', pseudo_family=family.label
    )
    builder = NexthamDatasetWorkChain.get_builder()
    builder.parent_structure = parent
    builder.recipe = orm.Dict(RECIPE)
    builder.base.dft.code = code
    builder.base.dft.parameters = base.dft.parameters
    builder.base.dft.mode = base.dft.mode
    builder.base.dft.kpoints = base.dft.kpoints
    builder.base.pseudo_family = orm.Str(family.label)
    results, dataset = run_get_node(builder)
    assert dataset.is_finished_ok, (dataset.exit_status, dataset.exit_message)
    labels = dict(results['hamiltonians'])
    assert sorted(labels) == ['structure_0000', 'structure_0001', 'structure_0002']
    train_keys, heldout_key = ['structure_0000', 'structure_0001'], 'structure_0002'

    # training on two of them
    train_group, _ = orm.Group.collection.get_or_create(f'test/pipeline/{dataset.uuid}')
    train_group.add_nodes([labels[key] for key in train_keys])
    builder = NexthamTrainWorkChain.get_builder_from_group(train_group, code, CONFIG, options=OPTIONS)
    results, train = run_get_node(builder)
    assert train.is_finished_ok, (train.exit_status, train.exit_message)
    model = results['model']
    (train_calc,) = [n for n in train.called if n.process_class is NexthamTrainCalculation]

    # prediction of the held-out structure: H0 by PySCF with the family's pseudopotentials
    structure = labels[heldout_key].creator.inputs.structure
    assert structure.creator.process_label == 'generate_structures'
    builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
        code, model, structure, protocol='fast', pseudo_family=family.label, options=OPTIONS
    )
    builder.kpath = orm.Dict({'path': 'auto', 'npoints': 30})
    results, predict = run_get_node(builder)
    assert predict.is_finished_ok, (predict.exit_status, predict.exit_message)
    bands, parameters = results['band_structure'], results['output_parameters']
    assert bands.get_bands().shape == (30, 8)

    # validation against the bands of the held-out DFT label at the same k-points
    reference = compute_bands(labels[heldout_key], bands.creator.inputs.kpoints)
    results, validate = run_get_node(
        NexthamValidateWorkChain,
        predicted=bands,
        reference=reference['bands'],
        predicted_parameters=parameters,
        reference_parameters=reference['output_parameters'],
        parameters=orm.Dict({'window': [-2.0, 2.0]}),
    )
    assert validate.is_finished_ok, (validate.exit_status, validate.exit_message)
    metrics = results['band_metrics'].get_dict()
    assert metrics['n_values'] > 0 and metrics['kpoints_max_deviation'] < 1e-8
    assert metrics['band_mae'] >= 0 and metrics['gap_reference'] is not None
    assert results['band_metrics'].creator.inputs.predicted.pk == bands.pk

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
