"""Inference at scale and ``nextham predict``: chunked == plain forward, batching, coverage refusal,
invalid model files, the command end to end (with a real PySCF H0 and with an H0 file).

Models are tiny and untrained (the paths do not depend on the weights); only one test runs PySCF
(2-atom Si, gth-szv, the ``fast`` protocol: ~15 s).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import write
from click.testing import CliRunner

from aiida_nextham.engine.cli import cli
from aiida_nextham.engine.predict_command import EXIT_COVERAGE, EXIT_H0_INVALID, EXIT_MODEL_INVALID
from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.hdf5 import read_hdf5
from aiida_nextham.hamiltonian.spectra import band_energies
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian
from aiida_nextham.ml.config import ModelConfig
from aiida_nextham.ml.graph import build_graph
from aiida_nextham.ml.inference import (
    Coverage,
    CoverageError,
    InferenceStats,
    chunk_count,
    chunked_forward,
    edge_chunks,
    load_inference_model,
    predict_structures,
)
from aiida_nextham.ml.model import GraphInputs, NexthamModel
from aiida_nextham.ml.predictor import predict_hamiltonian, spinless, structure_layout
from aiida_nextham.ml.serialization import ModelFileError, save_model

DATA = Path(__file__).parent / 'data' / 'ml'
SMALL = {
    'node_channels': {0: 8, 1: 4, 2: 4},
    'edge_channels': {0: 8, 1: 4, 2: 4},
    'value_channels': {0: 4, 1: 2, 2: 2},
    'pair_channels': {0: 4, 1: 2, 2: 2},
    'n_heads': 2,
    'n_radial': 4,
    'radial_hidden': 8,
}
SCALES = ('node_h0_scale', 'edge_h0_scale', 'node_out_scale', 'edge_out_scale')


def tiny_model(shells=None, cutoff: float = 4.5, n_layers: int = 2, dtype=torch.float64) -> NexthamModel:
    torch.manual_seed(0)
    config = ModelConfig(shells=shells or {14: (0, 1)}, cutoff=cutoff, n_layers=n_layers, **SMALL)
    model = NexthamModel(config).to(dtype).eval()
    with torch.no_grad():  # non-trivial scales: every factor of the forward pass is exercised
        for name in SCALES:
            getattr(model, name).uniform_(0.5, 2.0)
    return model


def synthetic(atoms, shells=(0, 1), cutoff: float = 5.0, seed: int = 0, name: str = 'synthetic'):
    """Random block Hamiltonian with H0 = H (the model only reads H0)."""
    symbols = sorted(set(atoms.get_chemical_symbols()))
    basis = Basis.from_shells({s: list(shells) for s in symbols}, name=name, code='synthetic')
    bh = random_block_hamiltonian(atoms, basis, cutoff=cutoff, seed=seed)
    return bh.replace(h0=bh.hamiltonian.copy(), n_electrons=4.0 * len(atoms))


def rattled_si(repeat=(1, 1, 1), seed: int = 1):
    atoms = bulk('Si', 'diamond', a=5.43).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def graph_inputs(model: NexthamModel, bh) -> GraphInputs:
    graph = build_graph(bh, model.config.cutoff)
    features = structure_layout(model, bh).to_features(torch.as_tensor(spinless(bh, 'H0')))
    return GraphInputs(
        graph.numbers,
        graph.edge_src,
        graph.edge_dst,
        graph.edge_vec,
        graph.edge_reverse,
        features[graph.node_pair],
        features[graph.edge_pair],
    )


# -------------------------------------------------------------------------------------- chunking
def test_edge_chunks_keep_partners_together():
    reverse = build_graph(synthetic(rattled_si((2, 1, 1))), 4.5).edge_reverse
    for size in (2, 7, 50):
        chunks = edge_chunks(reverse, size)
        assert len(chunks) == chunk_count(len(reverse), size) > 1
        seen = torch.cat([c.index for c in chunks])
        assert torch.equal(seen.sort().values, torch.arange(len(reverse)))
        for chunk in chunks:
            assert len(chunk.index) <= size
            assert torch.equal(chunk.index[chunk.reverse], reverse[chunk.index])
    with pytest.raises(ValueError, match='at least 2'):
        edge_chunks(reverse, 1)


@pytest.mark.parametrize('chunk', [4, 13, 10**6])
def test_chunked_forward_equals_plain(chunk):
    """Chunk sizes that do not divide E (86 edges: 22 and 8 chunks), and one chunk for all."""
    model = tiny_model()
    inputs = graph_inputs(model, synthetic(rattled_si((2, 1, 1))))
    n_edges = len(inputs.edge_src)
    assert n_edges % 4 and n_edges % 13 and n_edges > 50
    with torch.no_grad():
        plain = model(inputs)
    stats = InferenceStats()
    chunked = chunked_forward(model, inputs, chunk, stats)
    assert stats.n_chunks == chunk_count(n_edges, chunk)
    for name in ('node', 'edge', 'node_trace', 'edge_trace'):
        assert torch.allclose(getattr(chunked, name), getattr(plain, name), rtol=0, atol=1e-10), name
    assert plain.edge.abs().max() > 0.1  # not trivially zero


def test_predict_structures_chunked_matches_predictor():
    model = tiny_model()
    bh = synthetic(rattled_si((2, 1, 1)))
    reference = predict_hamiltonian(model, bh, dtype=torch.float64)
    stats = InferenceStats()
    (predicted,) = predict_structures(model, [bh], edge_chunk_size=9, stats=stats)
    assert stats.n_chunked == 1 and stats.n_chunks > 1
    assert np.abs(predicted.hamiltonian - reference.hamiltonian).max() < 1e-10
    assert np.array_equal(predicted.h0, bh.h0) and np.array_equal(predicted.overlap, bh.overlap)
    assert predicted.fermi_level is None and predicted.metadata['prediction']['cutoff'] == 4.5


def test_batched_prediction_equals_one_by_one():
    model = tiny_model(shells={6: (0, 1), 14: (0, 1)})
    structures = [
        synthetic(rattled_si(), seed=1),
        synthetic(rattled_si((1, 1, 2), seed=2), seed=2),
        synthetic(bulk('SiC', 'zincblende', a=4.36), seed=3),
    ]
    together, alone = InferenceStats(), InferenceStats()
    batched = predict_structures(model, structures, batch_size=3, stats=together)
    single = predict_structures(model, structures, batch_size=1, stats=alone)
    assert (together.n_batches, alone.n_batches) == (1, 3)
    for a, b, bh in zip(batched, single, structures, strict=True):
        assert a.formula == bh.formula
        assert np.abs(a.hamiltonian - b.hamiltonian).max() < 1e-10
        assert np.abs(a.hamiltonian - a.h0).max() > 1e-3
    # an edge budget splits the batch, and the parts still agree
    budget = InferenceStats()
    split = predict_structures(model, structures, batch_size=3, edge_chunk_size=140, stats=budget)
    assert budget.n_batches == 2 and budget.n_chunked == 0  # 42 + 90 edges, then 68
    assert (
        max(np.abs(a.hamiltonian - b.hamiltonian).max() for a, b in zip(split, single, strict=True)) < 1e-10
    )


def test_large_structure_runs_in_chunks():
    """216 atoms (~3,500 edges) with a small edge chunk and with a memory budget."""
    atoms = bulk('Si', 'diamond', a=5.43, cubic=True).repeat((3, 3, 3))
    bh = synthetic(atoms, cutoff=4.0)
    model = tiny_model(cutoff=4.0, n_layers=1, dtype=torch.float32)
    stats = InferenceStats()
    (predicted,) = predict_structures(model, [bh], edge_chunk_size=512, stats=stats)
    assert stats.n_edges > 3000 and stats.n_chunked == 1
    assert stats.n_chunks == chunk_count(stats.n_edges, 512) > 1
    assert np.isfinite(predicted.hamiltonian).all() and predicted.n_atoms == 216
    assert set(stats.times) >= {'graph', 'h0_features', 'model', 'assemble'}
    assert stats.memory['peak_rss_mb'] >= stats.memory['rss_start_mb'] > 0
    budget = InferenceStats()
    predict_structures(model, [bh], max_memory_mb=2, stats=budget)
    assert budget.edge_chunk_size < stats.n_edges and budget.n_chunks > 1


# -------------------------------------------------------------------------------------- coverage
def test_coverage_refuses_elements_and_bases():
    model = tiny_model()
    coverage = Coverage.from_model(model)
    with pytest.raises(CoverageError, match=r'element\(s\) C outside the model coverage.*covers Si'):
        predict_structures(model, [synthetic(bulk('SiC', 'zincblende', a=4.36))])
    dzvp = synthetic(rattled_si(), shells=(0, 0, 1, 1, 2), name='gth-dzvp')
    with pytest.raises(
        CoverageError, match=r'Si is gth-dzvp \(shells s s p p d\).*trained on a basis \(shells s p\)'
    ):
        coverage.check(dzvp)

    metadata = {
        'config': model.config.as_dict(),
        'provenance': {
            'coverage': {
                'elements': {'Si': {'number': 14, 'shells': [0, 1], 'basis': 'gth-szv', 'code': 'pyscf'}}
            },
            'dft': {'basis': 'gth-szv', 'pseudo': 'gth-pbe', 'xc': 'pbe'},
        },
    }
    trained = Coverage.from_metadata(metadata)
    assert trained.describe() == 'Si (gth-szv: s p)'
    renamed = synthetic(rattled_si(), name='Si_gga_7au_100Ry_1s1p')
    with pytest.raises(CoverageError, match='Si_gga_7au_100Ry_1s1p.*trained on gth-szv'):
        trained.check(renamed)
    real = read_hdf5(DATA / 'si2_rattled_0.h5')  # gth-szv, pyscf, PBE: inside the coverage
    trained.check(real)
    with pytest.raises(CoverageError, match='xc=lda, the model was trained on pbe'):
        trained.check(real.replace(metadata={**real.metadata, 'xc': 'lda'}))
    with pytest.raises(CoverageError, match='pseudo=gth-lda, the model was trained on gth-pbe'):
        trained.check(real.replace(metadata={**real.metadata, 'pseudo': 'gth-lda'}))
    # an H0 built by the AiiDA CalcJob names its run's pseudopotential file: not comparable by name
    trained.check(real.replace(metadata={**real.metadata, 'pseudo': 'pseudo/gth.dat'}))


# ----------------------------------------------------------------------------------- model files
def _not_a_model(kind: str, tmp_path: Path, good: Path) -> Path:
    if kind == 'empty folder':
        (tmp_path / 'empty').mkdir()
        return tmp_path / 'empty'
    if kind == 'pickle file':
        path = tmp_path / 'model.pt'
        path.write_bytes(pickle.dumps({'weights': [1.0, 2.0]}))
        return path
    folder = tmp_path / kind.replace(' ', '_')
    folder.mkdir()
    (folder / 'model.safetensors').write_bytes((good / 'model.safetensors').read_bytes())
    (folder / 'model.json').write_text((good / 'model.json').read_text())
    if kind == 'other format json':
        (folder / 'model.json').write_text(json.dumps({'format': 'deeph-e3', 'version': 2}))
    elif kind == 'pickled weights':
        (folder / 'model.safetensors').write_bytes(pickle.dumps({'layer.weight': [0.0]}))
    return folder


@pytest.mark.parametrize('kind', ['empty folder', 'pickle file', 'other format json', 'pickled weights'])
def test_invalid_model_files_are_refused(kind, tmp_path):
    good = save_model(tiny_model(dtype=torch.float32), tmp_path / 'good')
    path = _not_a_model(kind, tmp_path, good)
    expected = {
        'empty folder': 'not a model folder',
        'pickle file': 'never loaded',
        'other format json': "format 'deeph-e3'",
        'pickled weights': 'cannot load the model',
    }[kind]
    with pytest.raises(ModelFileError, match=expected):
        load_inference_model(path)
    h0 = DATA / 'si2_rattled_0.h5'
    result = CliRunner().invoke(cli, ['predict', str(path), '--h0', str(h0), '-o', str(tmp_path / 'out')])
    assert result.exit_code == EXIT_MODEL_INVALID, result.output
    assert 'ModelFileInvalid' in result.output and expected in ' '.join(result.output.split())


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope='module')
def cli_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(shells={14: (0, 1)}, cutoff=4.0, n_layers=1, **SMALL)
    return save_model(NexthamModel(config), tmp_path_factory.mktemp('model') / 'model')


def _run(args, exit_code: int = 0):
    result = CliRunner().invoke(cli, ['predict', *map(str, args)])
    assert result.exit_code == exit_code, result.output + repr(result.exception)
    return result


def _summary(result) -> dict:
    text = result.stdout
    return json.loads(text[text.index('{') :])


def test_cli_with_dft_h0(cli_model, tmp_path):
    """The real chain: PySCF H0 (fast protocol, gth-szv, 12 Å) -> model -> H, bands."""
    write(tmp_path / 'si.cif', bulk('Si', 'diamond', a=5.43))
    out = tmp_path / 'out'
    summary = _summary(_run([cli_model, tmp_path / 'si.cif', '--protocol', 'fast', '--bands', '-o', out]))
    (entry,) = summary['structures']
    assert entry['formula'] == 'Si2' and entry['h0_source'] == 'pyscf'
    assert set(entry['timings']) == {'h0', 'inference', 'spectra'}
    assert entry['fermi_level'] is not None and entry['gap']['gap'] is not None
    assert summary['dft']['basis'] == 'gth-szv' and summary['inference']['n_structures'] == 1
    assert summary['dft']['selfcheck'] is False  # the model reads blocks within its own cutoff only
    for key in ('hamiltonian', 'bands', 'bands_plot'):
        assert Path(entry['outputs'][key]).is_file()
    assert (out / 'summary.json').is_file() and (out / 'si.json').is_file()
    bh = read_hdf5(out / 'si.h5')
    assert bh.hermiticity_error('H') < 1e-12 and bh.h0 is not None and bh.overlap is not None
    assert bh.n_electrons == 8.0 and bh.fermi_level == pytest.approx(entry['fermi_level'])
    assert 1e-4 < np.abs(bh.hamiltonian - bh.h0).max() < 1e3
    bands = json.loads((out / 'si.bands.json').read_text())
    assert np.asarray(bands['energies']).shape == (100, 8)


def test_cli_with_h0_file(cli_model, tmp_path):
    h0_file = DATA / 'si2_rattled_0.h5'
    out = tmp_path / 'out'
    summary = _summary(_run([cli_model, '--h0', h0_file, '--dos', '--gap', '-o', out]))
    (entry,) = summary['structures']
    assert entry['h0_source'] == 'file' and summary['protocol'] is None
    assert Path(entry['outputs']['dos']).is_file() and Path(entry['outputs']['dos_plot']).is_file()
    source, bh = read_hdf5(h0_file), read_hdf5(out / 'si2_rattled_0.h5')
    assert np.array_equal(bh.h0, source.h0) and np.array_equal(bh.overlap, source.overlap)
    assert bh.hermiticity_error('H') < 1e-12
    # the model corrects the blocks within its 4 Å cutoff; those beyond get H0 + μ̂S (far-field shift)
    far = np.repeat(bh.distances() > 4.0, np.diff(bh.block_offsets('H')))
    delta, overlap = bh.hamiltonian - bh.h0, bh.overlap
    assert far.any() and np.abs(delta[~far]).max() > 1e-4
    shift = (overlap[~far] * delta[~far]).sum() / (overlap[~far] ** 2).sum()
    np.testing.assert_allclose(delta[far], shift * overlap[far], rtol=0, atol=1e-6)
    dos = json.loads((out / 'si2_rattled_0.dos.json').read_text())
    assert len(dos['energies']) == len(dos['dos']) > 100


def test_cli_refusals(cli_model, tmp_path):
    write(tmp_path / 'gaas.cif', bulk('GaAs', 'zincblende', a=5.65))
    result = _run([cli_model, tmp_path / 'gaas.cif', '--protocol', 'fast', '-o', tmp_path], EXIT_COVERAGE)
    assert 'CoverageMismatch' in result.output and 'Ga, As outside the model coverage' in result.output
    assert 'covers Si (shells s p)' in result.output
    # the stringent protocol uses gth-dzvp (s s p p d): refused before any DFT
    write(tmp_path / 'si.cif', bulk('Si', 'diamond', a=5.43))
    result = _run([cli_model, tmp_path / 'si.cif', '--protocol', 'stringent', '-o', tmp_path], EXIT_COVERAGE)
    assert 'gth-dzvp (shells s s p p d)' in ' '.join(result.output.split())
    # an H0 file of another structure
    h0_file = DATA / 'si2_rattled_0.h5'
    result = _run([cli_model, tmp_path / 'si.cif', '--h0', h0_file, '-o', tmp_path], EXIT_H0_INVALID)
    assert 'does not describe the structure' in ' '.join(result.output.split())


def test_cli_ghost_filter_is_applied_to_the_written_spectra(cli_model, tmp_path):
    """--ghost-filter: the spectra are those of the filtered H0 + P(H − H0)P of the written file; 0 is off."""
    h0_file = DATA / 'si2_rattled_0.h5'
    bands = {}
    for value in ('0', '0.3'):
        out = tmp_path / value
        summary = _summary(_run([cli_model, '--h0', h0_file, '--bands', '--ghost-filter', value, '-o', out]))
        (entry,) = summary['structures']
        assert entry['ghost_filter'] == (float(value) or None) and np.isfinite(entry['fermi_level'])
        data = json.loads((out / 'si2_rattled_0.bands.json').read_text())
        bands[value] = np.asarray(data['energies'], dtype=float)
    predicted = read_hdf5(tmp_path / '0.3' / 'si2_rattled_0.h5')
    kpoints = np.asarray(data['kpoints'], dtype=float)
    np.testing.assert_allclose(bands['0.3'], band_energies(predicted, kpoints, ghost_filter=0.3), atol=1e-10)
    np.testing.assert_allclose(bands['0'], band_energies(predicted, kpoints), atol=1e-10)
    # S(k) of Si2 in gth-szv has eigenvalues below 0.3 × its largest: the filter changes the bands
    assert np.abs(bands['0.3'] - bands['0']).max() > 1e-3


@pytest.mark.slow
def test_bench_speed_times_predict_per_structure(cli_model, tmp_path):
    """`nextham bench speed`: one predict process per structure, timed with its phases; the SCF only up
    to --scf-max-atoms (none here), the band path with --npoints, everything in the JSON."""
    write(tmp_path / 'si.cif', bulk('Si', 'diamond', a=5.43))
    output = tmp_path / 'speed.json'
    args = ['bench', 'speed', tmp_path / 'si.cif', '--model', cli_model, '--protocol', 'fast']
    args += ['--scf-max-atoms', '0', '--npoints', '10', '-o', output]
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(output.read_text())
    assert (report['spectra'], report['npoints'], report['protocol']) == ('bands', 10, 'fast')
    (row,) = report['results']
    assert row['structure'] == 'si.cif' and row['n_atoms'] == 2
    assert set(row['predict_phases']) == {'h0', 'inference', 'spectra'}
    assert row['predict_seconds'] > sum(row['predict_phases'].values()) > 0  # + imports and model loading
    assert 'scf_seconds' not in row and 'speedup' not in row
    bad = CliRunner().invoke(cli, list(map(str, [*args[:5], '--model', tmp_path, '-o', output])))
    assert bad.exit_code != 0 and 'failed' in bad.output


def test_bench_accuracy_reports_every_model_against_h0(cli_model, tmp_path):
    """`nextham bench accuracy`: H0 alone and each model (two folders both named `model` stay apart);
    H0 alone has zero ghosts and its own MAE; the filter setting is recorded."""
    import shutil

    other = shutil.copytree(cli_model, tmp_path / 'copy' / 'model')
    labels = [DATA / 'si2_rattled_0.h5', DATA / 'si2_rattled_1.h5']
    output = tmp_path / 'accuracy.json'
    args = ['bench', 'accuracy', *labels, '--model', cli_model, '--model', other, '--ghost-filter', '1e-4']
    result = CliRunner().invoke(cli, [*map(str, args), '-o', str(output), '--kdensity', '4'])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(output.read_text())
    assert set(report['results']) == {'h0_alone', str(cli_model), str(other)}
    assert report['options']['ghost_filter'] == 1e-4
    h0 = report['results']['h0_alone']['summary']
    model = report['results'][str(cli_model)]['summary']
    assert h0['ghost_bands'] == 0 and h0['mae_shifted'] > 0
    assert model == {
        **report['results'][str(other)]['summary'],
        'inference_seconds': model['inference_seconds'],
    }
