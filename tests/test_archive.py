"""Interoperability: a prediction's provenance travels in an AiiDA archive to a fresh profile.

On the test profile: two real PySCF labels (``tests/data/ml``) -> a tiny model trained by a calcfunction
(a few optimiser steps) -> ``NexthamPredictBandsWorkChain`` (2-atom Si, ``fast`` protocol, PySCF H0,
short band path). ``verdi archive create`` writes the work chain's provenance; ``verdi archive import``
loads it into a fresh profile, on SQLite and on PostgreSQL, where the QueryBuilder must find the
structure, the model and the bands, linked as in the original (bands <- prediction <- model, structure;
model <- training <- labels), with the same contents.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import calcfunction
from daemon_support import STORAGES, throwaway_profile

from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.data.model import ModelData

LABELS = sorted((Path(__file__).parent / 'data' / 'ml').glob('si2_rattled_*.h5'))[:2]
TINY = {
    'node_channels': {0: 4, 1: 2, 2: 2},
    'edge_channels': {0: 4, 1: 2, 2: 2},
    'value_channels': {0: 2, 1: 2, 2: 2},
    'pair_channels': {0: 2, 1: 2, 2: 2},
    'n_heads': 1,
    'n_radial': 4,
    'radial_hidden': 8,
}
NPOINTS = 20


@calcfunction
def train_tiny_model(config: orm.Dict, **labels) -> ModelData:
    """A few optimiser steps of a tiny model on the labels (the training step of the provenance)."""
    import torch

    from aiida_nextham.ml.config import ModelConfig
    from aiida_nextham.ml.dataset import HamiltonianDataset, coverage
    from aiida_nextham.ml.model import NexthamModel
    from aiida_nextham.ml.predictor import fit_scales
    from aiida_nextham.ml.serialization import save_model
    from aiida_nextham.ml.training import TrainConfig, Trainer

    settings = config.get_dict()
    with tempfile.TemporaryDirectory() as tmp:
        paths = [labels[key].export(Path(tmp) / f'{key}.h5') for key in sorted(labels)]
        dataset = HamiltonianDataset(paths, cutoff=settings['cutoff'])
        samples = [dataset[i] for i in range(len(dataset))]
        torch.manual_seed(settings['seed'])
        model = NexthamModel(ModelConfig(shells={14: (0, 1)}, cutoff=settings['cutoff'], n_layers=1, **TINY))
        fit_scales(model, samples)
        train = TrainConfig(**settings['train'], progress=False, device='cpu')
        Trainer(model, samples, train).fit(progress=False)
        provenance = {
            'coverage': coverage(dataset),
            'dft': {'basis': 'gth-szv', 'pseudo': 'gth-pbe', 'xc': 'pbe', 'init_guess': 'atom'},
            'seed': settings['seed'],
        }
        return ModelData(save_model(model, Path(tmp) / 'model', provenance))


def _invoke(command, args: list[str]) -> str:
    """Run a ``verdi`` command in-process on the loaded profile; fail with its output and traceback."""
    import traceback

    from aiida.common import AttributeDict
    from aiida.manage import get_config, get_manager
    from click.testing import CliRunner

    obj = AttributeDict({'config': get_config(), 'profile': get_manager().get_profile()})
    result = CliRunner().invoke(command, args, obj=obj, catch_exceptions=True)
    details = result.output
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        details += ''.join(traceback.format_exception(*result.exc_info))
    assert result.exit_code == 0, f'{command.name} {args} failed:\n{details}'
    return result.output


def _sha256(model: ModelData) -> str:
    return hashlib.sha256(
        model.base.repository.get_object_content('model.safetensors', mode='rb')
    ).hexdigest()


@pytest.fixture(scope='module')
def prediction_archive(tmp_path_factory):
    """Run the prediction on the test profile and archive it: ``(archive path, expected uuids and data)``."""
    from aiida.cmdline.commands.cmd_archive import create
    from aiida.engine import run_get_node
    from ase.build import bulk

    from aiida_nextham.cli.setup import find_nextham_executable, get_or_create_code, get_or_create_localhost
    from aiida_nextham.data.pseudo import install_pyscf_gth_family
    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain

    assert len(LABELS) == 2, 'run tests/data/ml/generate.py'
    tmp = tmp_path_factory.mktemp('archive')
    computer, _ = get_or_create_localhost('localhost-archive', workdir=str(tmp / 'work'))
    executable = os.environ.get('NEXTHAM_TEST_EXECUTABLE') or find_nextham_executable()
    code, _ = get_or_create_code(computer, executable=Path(executable))
    family, _ = install_pyscf_gth_family('pbe')

    labels = [HamiltonianData.from_file(path, format='nextham').store() for path in LABELS]
    config = {
        'cutoff': 4.0,
        'seed': 0,
        'train': {
            'steps': 3,
            'batch_size': 2,
            'lr': 5e-3,
            'warmup_steps': 1,
            'n_kpoints': 2,
            'ema_decay': 0.0,
        },
    }
    model = train_tiny_model(config=orm.Dict(config), label_0=labels[0], label_1=labels[1])
    structure = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43)).store()
    builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
        code,
        model,
        structure,
        protocol='fast',
        pseudo_family=family.label,
        overrides={'npoints': NPOINTS, 'kspacing': 1.0, 'parameters': {'dos': False, 'device': 'cpu'}},
        options={'environment_variables': {'OMP_NUM_THREADS': '1'}},
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    bands = node.outputs.band_structure

    archive = tmp / 'prediction.aiida'
    _invoke(create, [str(archive), '--nodes', str(node.pk)])
    assert archive.is_file()
    expected = {
        'workchain': node.uuid,
        'structure': structure.uuid,
        'model': model.uuid,
        'model_sha256': _sha256(model),
        'labels': {label.uuid for label in labels},
        'bands': bands.uuid,
        'bands_array': bands.get_bands(),
        'kpoints': bands.get_kpoints(),
        'band_labels': bands.labels,
        'gap': node.outputs.output_parameters['gap'],
        'cell': structure.cell,
    }
    return archive, expected


@pytest.mark.parametrize('storage', STORAGES)
def test_prediction_archive_imports_into_a_fresh_profile(
    storage, prediction_archive, tmp_path, aiida_config_factory
):
    """``verdi archive import`` into an empty profile; the QueryBuilder finds structure, model, bands."""
    from aiida.cmdline.commands.cmd_archive import import_archive

    from aiida_nextham.calculations.predict import NexthamPredictCalculation
    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain

    archive, expected = prediction_archive
    with throwaway_profile(storage, tmp_path / 'config', aiida_config_factory):
        assert orm.QueryBuilder().append(orm.Node).count() == 0
        _invoke(import_archive, [str(archive)])

        # bands <- prediction <- model, structure (one query over the links)
        query = orm.QueryBuilder()
        query.append(orm.BandsData, tag='bands', project='uuid')
        query.append(NexthamPredictCalculation, with_outgoing='bands', tag='calc')
        query.append(ModelData, with_outgoing='calc', tag='model', project='uuid')
        query.append(orm.StructureData, with_outgoing='calc', project='uuid')
        assert query.all() == [[expected['bands'], expected['model'], expected['structure']]]

        # the work chain returns those bands and took that structure and that model
        query = orm.QueryBuilder()
        query.append(NexthamPredictBandsWorkChain, tag='wc', project='uuid')
        query.append(
            orm.BandsData, with_incoming='wc', edge_filters={'label': 'band_structure'}, project='uuid'
        )
        assert query.all() == [[expected['workchain'], expected['bands']]]
        workchain = orm.load_node(expected['workchain'])
        assert workchain.is_finished_ok
        assert workchain.inputs.structure.uuid == expected['structure']
        assert workchain.inputs.model.uuid == expected['model']

        # model <- training calcfunction <- labels
        query = orm.QueryBuilder()
        query.append(ModelData, filters={'uuid': expected['model']}, tag='model')
        query.append(orm.CalcFunctionNode, with_outgoing='model', tag='train')
        query.append(HamiltonianData, with_outgoing='train', project='uuid')
        assert set(query.all(flat=True)) == expected['labels']

        # same contents, usable as this plugin's types
        bands = orm.load_node(expected['bands'])
        np.testing.assert_array_equal(bands.get_bands(), expected['bands_array'])
        np.testing.assert_array_equal(bands.get_kpoints(), expected['kpoints'])
        assert bands.labels == expected['band_labels']
        model = orm.load_node(expected['model'])
        assert isinstance(model, ModelData) and _sha256(model) == expected['model_sha256']
        assert model.base.attributes.get('elements') == ['Si']
        structure = orm.load_node(expected['structure'])
        assert structure.get_formula() == 'Si2' and np.allclose(structure.cell, expected['cell'])
        assert workchain.outputs.output_parameters['gap'] == expected['gap']
