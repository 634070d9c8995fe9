"""AiiDA layer of prediction and validation: NexthamPredictCalculation, NexthamPredictBandsWorkChain,
validate_hamiltonian / validate_bands and NexthamValidateWorkChain.

The training step is a calcfunction of this module (a few optimiser steps of a tiny model on two of
the real PySCF labels in ``tests/data/ml``), so the provenance runs labels -> model -> prediction ->
bands. Engine runs: one prediction from H0 files (no DFT, ~10 s) and one work chain with a real PySCF
H0 (2-atom Si, ``fast`` protocol, ~25 s). Expected dry-run files: ``tests/data/predict_dry_run``
(regenerate with ``NEXTHAM_REGENERATE_DRY_RUN=1``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import calcfunction, run_get_node

from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.data.model import ModelData
from aiida_nextham.data.pseudo import GthPseudoData, GthPseudoFamily

DATA = Path(__file__).parent / 'data'
LABELS = sorted((DATA / 'ml').glob('si2_rattled_*.h5'))
DRY_RUN = DATA / 'predict_dry_run'
SMALL = {
    'node_channels': {0: 8, 1: 4, 2: 4},
    'edge_channels': {0: 8, 1: 4, 2: 4},
    'value_channels': {0: 4, 1: 2, 2: 2},
    'pair_channels': {0: 4, 1: 2, 2: 2},
    'n_heads': 2,
    'n_radial': 4,
    'radial_hidden': 8,
}
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1'}}
NPOINTS = 40


@calcfunction
def train_tiny_model(config: orm.Dict, **labels) -> ModelData:
    """The training step of the provenance (a stand-in for ``NexthamTrainCalculation``)."""
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
        model = NexthamModel(ModelConfig(shells={14: (0, 1)}, cutoff=settings['cutoff'], n_layers=1, **SMALL))
        fit_scales(model, samples)
        train = TrainConfig(**settings['train'], progress=False, device='cpu')
        history = Trainer(model, samples, train).fit(progress=False)
        provenance = {
            'coverage': coverage(dataset),
            'dft': {'basis': 'gth-szv', 'pseudo': 'gth-pbe', 'xc': 'pbe', 'init_guess': 'atom'},
            'metrics': {'final_real_l1': float(history[-1]['real_l1'])},
            'seed': settings['seed'],
        }
        return ModelData(save_model(model, Path(tmp) / 'model', provenance))


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope='module')
def code(tmp_path_factory):
    from aiida_nextham.cli.setup import find_nextham_executable, get_or_create_code, get_or_create_localhost

    computer, _ = get_or_create_localhost('localhost-predict', workdir=str(tmp_path_factory.mktemp('work')))
    executable = os.environ.get('NEXTHAM_TEST_EXECUTABLE') or find_nextham_executable()
    return get_or_create_code(computer, executable=Path(executable))[0]


@pytest.fixture(scope='module')
def labels() -> list[HamiltonianData]:
    assert len(LABELS) == 3, 'run tests/data/ml/generate.py'
    return [HamiltonianData.from_file(path, format='nextham').store() for path in LABELS]


@pytest.fixture(scope='module')
def model(labels) -> ModelData:
    config = {
        'cutoff': 4.0,
        'seed': 0,
        'train': {
            'steps': 30,
            'batch_size': 2,
            'lr': 5e-3,
            'warmup_steps': 5,
            'n_kpoints': 2,
            'ema_decay': 0.0,
        },
    }
    return train_tiny_model(config=orm.Dict(config), label_0=labels[0], label_1=labels[1])


def _si(a: float = 5.43) -> orm.StructureData:
    from ase.build import bulk

    return orm.StructureData(ase=bulk('Si', 'diamond', a=a))


@pytest.fixture(scope='module')
def h0_prediction(code, model, labels):
    """NexthamPredictCalculation from the H0 of the held-out label (no DFT): (results, node)."""
    from aiida_nextham.calculations.predict import NexthamPredictCalculation

    builder = NexthamPredictCalculation.get_builder()
    builder.code = code
    builder.model = model
    builder.h0 = {'rattled_2': labels[2]}
    builder.parameters = orm.Dict(
        # in this well-conditioned szv basis a 1e-9 ghost filter keeps the whole correction
        {'bands': True, 'npoints': NPOINTS, 'dos': True, 'mesh': [4, 4, 4], 'device': 'cpu'}
        | {'ghost_filter': 1e-9}
    )
    builder.metadata.options.environment_variables = OPTIONS['environment_variables']
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert "'--ghost-filter' '1e-09'" in node.base.repository.get_object_content('_aiidasubmit.sh')
    return results, node


def _sha256(node: ModelData) -> str:
    with node.base.repository.open('model.safetensors', 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# ------------------------------------------------------------------------------------------ dry run
def test_calcjob_dry_run_regression(code, gth_family, model, tmp_path, monkeypatch):
    """Files written into the working directory, command line, retrieve lists and submit script."""
    from ase.io import read

    from aiida_nextham.calculations.predict import NexthamPredictCalculation
    from aiida_nextham.workflows.predict import seekpath_band_path

    monkeypatch.chdir(tmp_path)  # a dry run writes its folder into ./submit_test
    structure = _si()
    builder = NexthamPredictCalculation.get_builder()
    builder.code = code
    builder.model = model
    builder.structures = {'si': structure}
    builder.pseudos = {'Si': gth_family.get_pseudo('Si')}
    builder.parameters = orm.Dict(
        {'protocol': 'fast', 'dos': True, 'mesh': [4, 4, 4], 'batch_size': 4, 'device': 'cpu'}
    )
    builder.kpoints = seekpath_band_path(structure, orm.Dict({'path': 'auto', 'npoints': NPOINTS}))
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = Path(node.dry_run_info['folder'])

    calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
    found = {
        'cmdline': calcinfo['codes_info'][0]['cmdline_params'],
        'files': sorted(
            str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file() and '.aiida' not in p.parts
        ),
        'retrieve_list': calcinfo['retrieve_list'],
        'retrieve_temporary_list': calcinfo['retrieve_temporary_list'],
    }
    executable = str(code.filepath_executable)
    submit = (folder / '_aiidasubmit.sh').read_text().replace(executable, '<nextham>')
    submit = re.sub(r'^#.*\n', '', submit, flags=re.MULTILINE)  # scheduler directives and comments
    if os.environ.get('NEXTHAM_REGENERATE_DRY_RUN'):
        DRY_RUN.mkdir(exist_ok=True)
        (DRY_RUN / 'calcinfo.json').write_text(json.dumps(found, indent=1) + '\n')
        (DRY_RUN / '_aiidasubmit.sh').write_text(submit)
    assert found == json.loads((DRY_RUN / 'calcinfo.json').read_text())
    assert submit == (DRY_RUN / '_aiidasubmit.sh').read_text()
    assert all(not str(arg).startswith('/') for arg in found['cmdline'])  # no local paths

    # the weights are the node's, byte for byte; model.json names the provenance pseudopotential file
    assert (folder / 'model' / 'model.safetensors').read_bytes() == model.base.repository.get_object_content(
        'model.safetensors', mode='rb'
    )
    written = json.loads((folder / 'model' / 'model.json').read_text())
    original = model.metadata
    assert written['provenance']['dft'] == {**original['provenance']['dft'], 'pseudo': 'pseudo/gth.dat'}
    written['provenance']['dft'] = original['provenance']['dft']
    assert written == original
    pseudo = (folder / 'pseudo' / 'gth.dat').read_bytes()
    assert hashlib.md5(pseudo).hexdigest() == gth_family.get_pseudo('Si').md5
    atoms = read(folder / 'structures' / 'si.xyz')
    assert np.allclose(atoms.cell.array, structure.get_ase().cell.array) and len(atoms) == 2


# ------------------------------------------------------------------------------------------ refusals
def test_refusals_before_any_job(code, gth_family, model, labels):
    """A structure with an element outside the model coverage is refused before any job, naming it."""
    from ase.build import bulk

    from aiida_nextham.calculations.predict import NexthamPredictCalculation
    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain, seekpath_band_path

    sic = orm.StructureData(ase=bulk('SiC', 'zincblende', a=4.36))
    n_jobs = orm.QueryBuilder().append(orm.CalcJobNode).count()

    builder = NexthamPredictCalculation.get_builder()
    builder.code = code
    builder.model = model
    builder.structures = {'sic': sic}
    builder.pseudos = gth_family.get_pseudos(elements=['Si', 'C'])
    with pytest.raises(ValueError, match=r'structures\.sic: element\(s\) C outside the model coverage'):
        run_get_node(builder)

    builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
        code, model, sic, protocol='fast', pseudo_family=gth_family.label
    )
    _, node = run_get_node(builder)
    assert node.exit_status == NexthamPredictBandsWorkChain.exit_codes.ERROR_MODEL_COVERAGE.status == 401
    assert 'element(s) C outside the model coverage' in node.exit_message
    assert 'covers Si' in node.exit_message
    assert not node.called  # not even the band path
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == n_jobs

    # other inputs refused by the validators, with the reason
    si = _si()

    def refused(match, **inputs):
        builder = NexthamPredictCalculation.get_builder()
        builder.code = code
        builder.model = model
        with pytest.raises(ValueError, match=match):  # on assignment (port validators) or at launch
            for key, value in inputs.items():
                setattr(builder, key, value)
            run_get_node(builder)

    refused('give `structures`')
    refused(r"no pseudopotential for the element\(s\) \['Si'\]", structures={'si': si})
    refused('used only to build H0', h0={'x': labels[0]}, pseudos={'Si': gth_family.get_pseudo('Si')})
    refused('reserved', h0={'summary': labels[0]})
    refused('does not describe', h0={'x': labels[0]}, structures={'x': si})
    refused('unknown parameters', h0={'x': labels[0]}, parameters=orm.Dict({'npoint': 3}))
    refused(
        r'ghost_filter must be a number in \[0, 1\)',
        h0={'x': labels[0]},
        parameters=orm.Dict({'ghost_filter': 1}),
    )
    kpoints = seekpath_band_path(si, orm.Dict({'path': 'auto', 'npoints': NPOINTS}))
    refused('kpoints: ', h0={'x': labels[0]}, kpoints=kpoints)  # the path of another cell
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == n_jobs


# ------------------------------------------------------------------------------------ H0-file route
def test_predict_from_h0_labels_and_provenance(h0_prediction, model, labels):
    from aiida_nextham.calculations.predict import NexthamPredictCalculation

    results, node = h0_prediction
    predicted = results['hamiltonians']['rattled_2']
    bands = results['bands']['rattled_2']
    dos = results['dos']['rattled_2']
    summary = results['results'].get_dict()
    assert predicted.base.attributes.get('predicted') is True and predicted.formula == 'Si2'
    assert (
        bands.get_bands().shape == (NPOINTS, 8) and bands.labels[0] == (0, 'GAMMA') and len(bands.labels) > 2
    )
    assert dos.get_x()[1].shape == dos.get_y()[0][1].shape
    assert summary['gap'] > 0 and summary['fermi_level'] is not None and summary['n_electrons'] == 8
    assert summary['model']['weights_sha256'] == _sha256(model) and 'path' not in summary['model']
    assert summary['structures']['rattled_2']['h0_source'] == 'file'
    # H0 and S are the label's; H is corrected within the model cutoff only
    pred, label = predicted.get_block_hamiltonian(), labels[2].get_block_hamiltonian()
    assert np.array_equal(pred.h0, label.h0) and np.array_equal(pred.overlap, label.overlap)
    assert not np.allclose(pred.hamiltonian, pred.h0)

    # provenance: bands <- prediction <- model <- training <- labels; and the H0 input
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='calc')
    query.append(ModelData, with_outgoing='calc', tag='model')
    query.append(orm.CalcFunctionNode, with_outgoing='model', tag='train', project='attributes.function_name')
    query.append(HamiltonianData, with_outgoing='train', project='uuid')
    rows = query.all()
    assert {uuid for _, uuid in rows} == {labels[0].uuid, labels[1].uuid}
    assert {name for name, _ in rows} == {'train_tiny_model'}
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='calc')
    query.append(
        HamiltonianData, with_outgoing='calc', edge_filters={'label': 'h0__rattled_2'}, project='uuid'
    )
    assert query.all(flat=True) == [labels[2].uuid]


def test_engine_refusal_becomes_exit_code(code, gth_family, model):
    """What only the engine can see (the basis of H0 against the model's) fails the job with exit code
    401 naming the element and the bases, before any DFT; the summary is still returned."""
    from aiida_nextham.calculations.predict import NexthamPredictCalculation

    builder = NexthamPredictCalculation.get_builder()
    builder.code = code
    builder.model = model
    builder.structures = {'si': _si()}
    builder.pseudos = {'Si': gth_family.get_pseudo('Si')}
    builder.parameters = orm.Dict({'protocol': 'fast', 'basis': 'gth-dzvp', 'device': 'cpu'})
    builder.metadata.options.environment_variables = OPTIONS['environment_variables']
    results, node = run_get_node(builder)
    assert node.exit_status == NexthamPredictCalculation.exit_codes.ERROR_MODEL_COVERAGE.status == 401
    assert 'the basis of Si is gth-dzvp' in node.exit_message and 'gth-szv' in node.exit_message
    assert results['results']['error'] == 'CoverageMismatch' and 'hamiltonians' not in results


# --------------------------------------------------------------------------------------- validation
def test_validation_against_bands_of_another_route(h0_prediction, labels, run_cli_command):
    """Predicted bands against the bands of the DFT label (compute_bands): the metrics are those of
    ml/evaluation on the same data; a different k-path is refused with exit code 410."""
    from aiida.cmdline.commands.cmd_process import process_show

    from aiida_nextham.calculations.functions import compute_bands, get_band_path
    from aiida_nextham.hamiltonian.spectra import band_energies
    from aiida_nextham.ml.evaluation import evaluate_pairs
    from aiida_nextham.ml.metrics import _fermi_from_count, band_energy_error, count_ghost_bands
    from aiida_nextham.workflows.validate import (
        NexthamValidateWorkChain,
        validate_bands,
        validate_hamiltonian,
    )

    results, calc = h0_prediction
    predicted, bands = results['hamiltonians']['rattled_2'], results['bands']['rattled_2']
    reference = compute_bands(labels[2], get_band_path(labels[2], npoints=NPOINTS))
    window = [-2.0, 2.0]

    # the work chain: predicted BandsData vs the reference BandsData, PNG overlay
    outputs, node = run_get_node(
        NexthamValidateWorkChain,
        predicted=bands,
        reference=reference['bands'],
        predicted_parameters=calc.outputs.results,
        reference_parameters=reference['output_parameters'],
        parameters=orm.Dict({'window': window}),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    metrics = outputs['band_metrics'].get_dict()
    assert metrics['alignment'] == 'vbm' and metrics['kpoints_max_deviation'] < 1e-8
    assert metrics['n_values'] > 0 and metrics['band_mae'] > 0 and metrics['gap_error'] is not None
    with outputs['plot'].open(mode='rb') as handle:
        assert handle.read(8) == b'\x89PNG\r\n\x1a\n'
    assert 'Finished [0]' in run_cli_command(process_show, [node.pk]).output

    # the same numbers as ml/metrics on the same Hamiltonians and k-points (Fermi alignment)
    pred_bh = predicted.get_block_hamiltonian()
    true_bh = labels[2].get_block_hamiltonian().replace(fermi_level=None)
    kpoints = np.asarray(bands.get_kpoints())
    fermi = [_fermi_from_count(bh, band_energies(bh, kpoints)) for bh in (pred_bh, true_bh)]
    parameters = {'align': 'fermi', 'window': window, 'plot': False}
    parameters.update(predicted_fermi_level=fermi[0], reference_fermi_level=fermi[1])
    ours = validate_bands(bands, reference['bands'], orm.Dict(parameters))['metrics'].get_dict()
    expected = band_energy_error(pred_bh, true_bh, kpoints, tuple(window), align='fermi')
    ghosts = count_ghost_bands(pred_bh, true_bh, kpoints, tuple(window), 0.1, align='fermi')
    assert ours['band_mae'] == pytest.approx(expected['mae'], abs=1e-6)
    assert ours['band_max'] == pytest.approx(expected['max'], abs=1e-6)
    assert ours['n_values'] == expected['n_values'] and ours['ghost_bands'] == ghosts['count']
    assert ours['shift'] == pytest.approx(expected['shift'], abs=1e-9)

    # Hamiltonian against label: exactly the benchmark's evaluate_pairs
    mine = validate_hamiltonian(predicted, labels[2]).get_dict()
    (row,) = evaluate_pairs([(pred_bh, labels[2].get_block_hamiltonian())], window=(-2.0, 2.0))
    for key, value in row.items():
        assert mine[key] == (
            pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value
        ), key
    assert mine['n_pairs_dropped'] == 0

    # the mixed route (predicted Hamiltonian, reference bands): bands computed at the reference k-points
    outputs, node = run_get_node(
        NexthamValidateWorkChain,
        predicted=predicted,
        reference=reference['bands'],
        reference_parameters=reference['output_parameters'],
        parameters=orm.Dict({'window': window}),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert outputs['band_metrics']['band_mae'] == pytest.approx(metrics['band_mae'], abs=1e-6)

    # other numbers of bands (a semicore band more in the reference): the window alone is compared
    energies = reference['bands'].get_bands()
    extra = reference['bands'].clone()
    extra.set_bands(np.concatenate([np.full((len(energies), 1), -60.0), energies], axis=1), units='eV')
    more = validate_bands(
        bands,
        extra,
        orm.Dict({'window': window, 'reference_n_electrons': 10, 'plot': False}),
        calc.outputs.results,
    )['metrics']
    assert more['band_index_offset'] == -1 and more['band_mae'] == pytest.approx(
        metrics['band_mae'], abs=1e-9
    )
    # a rigid shift is removed by the VBM alignment
    shifted = reference['bands'].clone()
    shifted.set_bands(energies + 0.5, units='eV')
    counts = reference['output_parameters']
    same = validate_bands(
        shifted, reference['bands'], orm.Dict({'plot': False, 'align': 'vbm'}), counts, counts
    )
    same = same['metrics']
    assert same['band_mae'] == pytest.approx(0, abs=1e-9) and same['shift'] == pytest.approx(0.5)
    assert same['gap_error'] == pytest.approx(0, abs=1e-9) and same['ghost_bands'] == 0

    # a different k-path: named exit code
    other = compute_bands(labels[2], get_band_path(labels[2], path='X-GAMMA-Y', npoints=NPOINTS))['bands']
    _, node = run_get_node(NexthamValidateWorkChain, predicted=bands, reference=other)
    assert node.exit_status == NexthamValidateWorkChain.exit_codes.ERROR_KPOINTS_MISMATCH.status == 410
    assert 'k-points differ' in node.exit_message
    assert node.called[0].exit_status == 410
    other = compute_bands(labels[2], get_band_path(labels[2], npoints=NPOINTS + 1))['bands']
    _, node = run_get_node(NexthamValidateWorkChain, predicted=bands, reference=other)
    assert node.exit_status == 410 and f'{NPOINTS + 1}' in node.exit_message


# ------------------------------------------------------------------------------ DFT route work chain


def test_validation_applies_the_ghost_filter_to_the_predicted_side_only(h0_prediction, labels):
    """``ghost_filter``: the Hamiltonian metrics equal evaluate_pairs with the filter, and in the mixed
    route compute_bands filters the predicted Hamiltonian's bands (never the reference's)."""
    from aiida_nextham.calculations.functions import compute_bands, get_band_path
    from aiida_nextham.ml.evaluation import evaluate_pairs
    from aiida_nextham.workflows.validate import NexthamValidateWorkChain, validate_hamiltonian

    results, _ = h0_prediction
    predicted = results['hamiltonians']['rattled_2']
    filtered = validate_hamiltonian(predicted, labels[2], orm.Dict({'ghost_filter': 0.3})).get_dict()
    plain = validate_hamiltonian(predicted, labels[2]).get_dict()
    pairs = [(predicted.get_block_hamiltonian(), labels[2].get_block_hamiltonian())]
    (row,) = evaluate_pairs(pairs, window=(-2.0, 2.0), ghost_filter=0.3)
    assert filtered['band_mae'] == pytest.approx(row['band_mae'], rel=1e-9)
    assert abs(filtered['band_mae'] - plain['band_mae']) > 1e-3  # S of Si2 szv goes below 0.3 × its largest

    reference = compute_bands(labels[2], get_band_path(labels[2], npoints=NPOINTS))
    _, node = run_get_node(
        NexthamValidateWorkChain,
        predicted=predicted,
        reference=reference['bands'],
        reference_parameters=reference['output_parameters'],
        parameters=orm.Dict({'ghost_filter': 0.3}),
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    (called,) = [n for n in node.called if n.process_label == 'compute_bands']
    assert called.inputs.hamiltonian.uuid == predicted.uuid
    assert called.inputs.parameters.get_dict() == {'ghost_filter': 0.3}
    with pytest.raises(ValueError, match=r'ghost_filter must be a number in \[0, 1\)'):
        NexthamValidateWorkChain.get_builder().parameters = orm.Dict({'ghost_filter': 1.5})


def test_predict_bands_workchain_fast(code, gth_family, model, labels, run_cli_command, provenance_graph):
    """Structure -> seekpath path -> PySCF H0 -> model -> bands, DOS, gap; provenance; verdi commands."""
    from aiida.cmdline.commands.cmd_process import process_list, process_report, process_show

    from aiida_nextham.calculations.predict import NexthamPredictCalculation
    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain

    assert set(NexthamPredictBandsWorkChain.get_available_protocols()) == {'fast', 'balanced', 'stringent'}
    structure = _si().store()
    builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
        code, model, structure, protocol='fast', pseudo_family=gth_family.label, options=OPTIONS
    )
    assert builder.predict.parameters['protocol'] == 'fast' and builder.kpath['npoints'] == 60
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    bands, parameters = results['band_structure'], results['output_parameters'].get_dict()
    assert bands.get_bands().shape == (60, 8)
    assert parameters['gap'] > 0 and parameters['fermi_level'] is not None
    assert parameters['dft']['basis'] == 'gth-szv' and parameters['dft']['pseudos']['Si']['md5'] == (
        gth_family.get_pseudo('Si').md5
    )
    assert isinstance(results['dos'], orm.XyData) and results['hamiltonian'].base.attributes.get('predicted')
    (calc,) = [n for n in node.called if n.process_class is NexthamPredictCalculation]

    # provenance of the bands: the model (and its training labels), the structure, the pseudopotentials
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='calc')
    query.append(ModelData, with_outgoing='calc', tag='model')
    query.append(orm.CalcFunctionNode, with_outgoing='model', tag='train')
    query.append(HamiltonianData, with_outgoing='train', project='uuid')
    assert set(query.all(flat=True)) == {labels[0].uuid, labels[1].uuid}
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='calc')
    query.append(GthPseudoData, with_outgoing='calc', tag='pseudo', project='attributes.element')
    query.append(GthPseudoFamily, with_node='pseudo', project='label')
    assert query.all() == [['Si', gth_family.label]]
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='calc')
    query.append(orm.KpointsData, with_outgoing='calc', tag='path')
    query.append(orm.CalcFunctionNode, with_outgoing='path', tag='seekpath')
    query.append(orm.StructureData, with_outgoing='seekpath', project='uuid')
    assert query.all(flat=True) == [structure.uuid]
    assert calc.inputs.structures['structure'].uuid == structure.uuid

    # every CalcJob input is a node the remote side receives as files: no local path in any of them
    scratch = str(Path(tempfile.gettempdir()))
    for link in calc.base.links.get_incoming().all():
        if isinstance(link.node, orm.Code):
            continue
        text = json.dumps(link.node.base.attributes.all, default=str)
        assert scratch not in text and str(Path.cwd()) not in text and '/work/' not in text, link.link_label

    # verdi on the processes
    for process in (node, calc):
        result = run_cli_command(process_show, [process.pk])
        assert 'Finished [0]' in result.output
    assert 'launched NexthamPredictCalculation' in run_cli_command(process_report, [node.pk]).output
    assert str(calc.pk) in run_cli_command(process_list, ['-a', '-p', '1']).output
    graph = provenance_graph(bands.pk, '-a', '4', '-d', '1')
    assert 'BandsData' in graph and 'NexthamPredictCalculation' in graph and 'ModelData' in graph
