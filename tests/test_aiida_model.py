"""``ModelData``: a trained model as a node; only safetensors + JSON accepted; queryable attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.plugins import DataFactory

from aiida_nextham.ml.config import ModelConfig
from aiida_nextham.ml.model import NexthamModel
from aiida_nextham.ml.serialization import ModelFileError, save_model

ModelData = DataFactory('nextham.model')


@pytest.fixture
def model_folder(tmp_path):
    torch.manual_seed(0)
    model = NexthamModel(ModelConfig(shells={14: (0, 1)}, cutoff=4.5, n_layers=1))
    provenance = {
        'coverage': {
            'elements': {'Si': {'number': 14, 'shells': [0, 1], 'basis': 'gth-szv', 'code': 'pyscf'}}
        },
        'dft': {'basis': 'gth-szv', 'pseudo': 'gth-pbe', 'xc': 'pbe'},
        'split': {'train': [0, 1, 2]},
        'metrics': {'best_val_mae': 0.4},
    }
    return save_model(model, tmp_path / 'model', provenance), model


def test_model_node_round_trip_and_query(model_folder, aiida_profile_clean):
    folder, model = model_folder
    node = ModelData(folder).store()
    loaded = node.load()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert node.base.attributes.get('coverage') == {'Si': {'shells': [0, 1], 'basis': 'gth-szv'}}
    found = (
        orm.QueryBuilder()
        .append(ModelData, filters={'attributes.elements': {'contains': ['Si']}, 'attributes.cutoff': 4.5})
        .all(flat=True)
    )
    assert [n.pk for n in found] == [node.pk]
    assert node.base.attributes.get('train_set_size') == 3
    assert node.base.attributes.get('n_parameters') == model.n_parameters
    assert np.isclose(node.base.attributes.get('metrics')['best_val_mae'], 0.4)


def test_model_node_refuses_anything_but_safetensors_and_json(model_folder, tmp_path):
    folder, model = model_folder
    torch.save(model.state_dict(), tmp_path / 'pickled.pt')
    with pytest.raises(ModelFileError, match='not a model folder'):
        ModelData(tmp_path)
    (folder / 'model.safetensors').write_bytes(b'\x80\x04pickle, not safetensors')
    with pytest.raises(ModelFileError, match='not a safetensors file'):
        ModelData(folder)
