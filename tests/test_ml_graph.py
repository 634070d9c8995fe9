"""Graphs of block Hamiltonians, batching, and the lazy dataset / split / loader of label files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from ase.build import bulk

from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.hdf5 import read_hdf5, write_hdf5
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian
from aiida_nextham.ml import dataset as dataset_module
from aiida_nextham.ml.dataset import (
    DatasetError,
    HamiltonianDataset,
    coverage,
    describe_split,
    make_loader,
    split_from_description,
    split_indices,
)
from aiida_nextham.ml.graph import GraphError, build_graph, collate

PYSCF_FILE = Path(__file__).parent / 'data' / 'dft_outputs' / 'success' / 'hamiltonian.h5'
SP = Basis.from_shells({'Si': [0, 1]}, name='synthetic-sp', code='synthetic')


@pytest.fixture(scope='module')
def pyscf_hamiltonian():
    """Real PySCF labels (Si2, gth-szv, H, S and H0, pairs up to 4 Å)."""
    return read_hdf5(PYSCF_FILE)


def _rows(graph) -> np.ndarray:
    """(E, 5) rows (R1, R2, R3, src, dst) of a graph's edges."""
    return torch.cat([graph.edge_shift, graph.edge_src[:, None], graph.edge_dst[:, None]], 1).numpy()


def _onsite(bh) -> np.ndarray:
    return (bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)


def _drop_couple(bh, pair: int):
    """``bh`` without block ``pair`` and its hermitian partner."""
    keep = np.ones(bh.n_pairs, dtype=bool)
    keep[[pair, bh.partner_index()[pair]]] = False
    return bh.select_pairs(keep)


# ---------------------------------------------------------------------------------------------- graphs
@pytest.mark.parametrize('which', ['synthetic', 'pyscf'])
def test_edges_are_stored_offsite_pairs(which, si_hamiltonian, pyscf_hamiltonian):
    bh = si_hamiltonian if which == 'synthetic' else pyscf_hamiltonian
    graph = build_graph(bh)
    offsite = ~_onsite(bh)
    assert graph.n_edges == offsite.sum() == bh.n_pairs - bh.n_atoms
    np.testing.assert_array_equal(graph.edge_pair.numpy(), np.flatnonzero(offsite))
    np.testing.assert_array_equal(_rows(graph), bh.pairs[offsite])
    assert (bh.pairs[offsite][:, 3] == bh.pairs[offsite][:, 4]).any(), 'self-image edges (i, i, R != 0) kept'
    np.testing.assert_allclose(graph.edge_vec.norm(dim=1).numpy(), bh.distances()[offsite], atol=1e-12)
    assert graph.edge_vec.dtype == torch.float64
    np.testing.assert_array_equal(
        bh.pairs[graph.node_pair.numpy()], [[0, 0, 0, i, i] for i in range(bh.n_atoms)]
    )
    assert graph.source is bh and graph.cutoff == pytest.approx(bh.distances().max())

    reverse = graph.edge_reverse
    assert torch.equal(reverse[reverse], torch.arange(graph.n_edges))
    assert not torch.equal(reverse, torch.arange(graph.n_edges))
    assert torch.equal(graph.edge_src[reverse], graph.edge_dst)
    assert torch.equal(graph.edge_dst[reverse], graph.edge_src)
    assert torch.equal(graph.edge_shift[reverse], -graph.edge_shift)
    torch.testing.assert_close(graph.edge_vec[reverse], -graph.edge_vec, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(
        bh.partner_index()[graph.edge_pair.numpy()], graph.edge_pair[reverse].numpy()
    )


def test_dtype_and_device_move(si_hamiltonian):
    graph = build_graph(si_hamiltonian, dtype=torch.float32)
    assert graph.edge_vec.dtype == graph.positions.dtype == graph.lattice.dtype == torch.float32
    assert graph.edge_src.dtype == torch.int64
    moved = graph.to('cpu', dtype=torch.float64)
    assert moved.edge_vec.dtype == torch.float64 and moved.edge_shift.dtype == torch.int64
    assert moved.source is graph.source


def test_truncated_labels_raise_naming_the_pair(pyscf_hamiltonian, tmp_path):
    bh = pyscf_hamiltonian
    distances = bh.distances()
    inner = int(np.flatnonzero(~_onsite(bh) & (distances < distances.max() - 0.5))[0])
    path = write_hdf5(_drop_couple(bh, inner), tmp_path / 'truncated.h5')
    truncated = read_hdf5(path)
    r1, r2, r3, i, j = bh.pairs[inner].tolist()
    names = {f'(i={i}, j={j}, R=({r1}, {r2}, {r3}))', f'(i={j}, j={i}, R=({-r1}, {-r2}, {-r3}))'}
    with pytest.raises(GraphError, match='no stored block') as error:
        build_graph(truncated)
    assert any(name in str(error.value) for name in names), str(error.value)
    assert f'{distances[inner]:.4f} Å' in str(error.value)
    # a cutoff inside the dropped shell is fine; one beyond the stored radius is not
    build_graph(truncated, cutoff=distances[inner] - 0.01)
    with pytest.raises(GraphError, match='no stored block'):  # the tolerance is tiny, not a skin
        build_graph(truncated, cutoff=distances[inner] + 1e-3)
    assert build_graph(bh, cutoff=float(distances[inner])).n_edges > 0  # a block exactly at the cutoff
    with pytest.raises(GraphError, match='within the cutoff 6 Å'):
        build_graph(bh, cutoff=6.0)
    # a direction no stored block crosses counts as vacuum, unless periodicity is given explicitly
    no_a1 = bh.select_pairs(bh.pairs[:, 0] == 0)
    assert no_a1.periodic == (False, True, True)
    build_graph(no_a1)
    with pytest.raises(GraphError, match='no stored block'):
        build_graph(no_a1, periodic=(True, True, True))


def test_slab_with_vacuum_direction():
    from ase.build import diamond111

    slab = diamond111('Si', (1, 1, 4), vacuum=6.0)
    bh = random_block_hamiltonian(slab, SP, cutoff=3.0, seed=5)
    assert bh.periodic == (True, True, False)
    graph = build_graph(bh)
    assert graph.n_edges == bh.n_pairs - 4 and not graph.edge_shift[:, 2].any()
    np.testing.assert_allclose(graph.edge_vec.norm(dim=1).numpy(), bh.distances()[~_onsite(bh)], atol=1e-12)


def test_half_stored_hamiltonian_raises_with_hint(si_hamiltonian):
    bh = si_hamiltonian
    pairs = bh.pairs
    keep = (pairs[:, 3] < pairs[:, 4]) | ((pairs[:, 3] == pairs[:, 4]) & (pairs[:, :3].sum(axis=1) >= 0))
    half = bh.select_pairs(keep)
    assert half.n_pairs < bh.n_pairs
    with pytest.raises(GraphError, match=r'half-stored.*complete_hermitian\(\)'):
        build_graph(half)
    assert build_graph(half.complete_hermitian()).n_edges == bh.n_pairs - bh.n_atoms


def test_missing_onsite_block_raises(si_hamiltonian):
    keep = np.ones(si_hamiltonian.n_pairs, dtype=bool)
    keep[np.flatnonzero(_onsite(si_hamiltonian))[1]] = False
    with pytest.raises(GraphError, match=r'on-site .* atom\(s\) \[1\]'):
        build_graph(si_hamiltonian.select_pairs(keep))


@pytest.mark.parametrize('cutoff', [2.0, 3.0, 3.9])
def test_cutoff_keeps_exactly_the_pairs_within_it(si_hamiltonian, cutoff):
    bh = si_hamiltonian  # stored up to 4 Å: shells at 2.35 and 3.84 Å
    graph = build_graph(bh, cutoff=cutoff)
    expected = bh.pairs[~_onsite(bh) & (bh.distances() <= cutoff)]
    assert {tuple(r) for r in _rows(graph).tolist()} == {tuple(r) for r in expected.tolist()}
    assert graph.n_edges == len(expected) and graph.cutoff == cutoff
    assert (graph.edge_vec.norm(dim=1) <= cutoff).all()
    # indices refer to all stored blocks (those beyond the cutoff keep their H0 in a prediction)
    assert graph.source is bh
    np.testing.assert_array_equal(bh.pairs[graph.edge_pair.numpy()], _rows(graph))
    np.testing.assert_array_equal(bh.pairs[graph.node_pair.numpy(), 3], np.arange(bh.n_atoms))


def _moved_atom(bh, atom: int, cells: np.ndarray):
    """The same crystal with ``atom`` placed in another periodic image, pairs relabelled to match."""
    positions = bh.positions.copy()
    positions[atom] += cells @ bh.lattice
    pairs = bh.pairs.copy()
    pairs[pairs[:, 4] == atom, :3] -= cells
    pairs[pairs[:, 3] == atom, :3] += cells
    return bh.replace(positions=positions, pairs=pairs)


def _edge_multiset(graph) -> np.ndarray:
    rows = np.column_stack([graph.edge_src.numpy(), graph.edge_dst.numpy(), graph.edge_vec.numpy().round(8)])
    return rows[np.lexsort(rows.T[::-1])]


def test_graph_invariant_under_periodic_images_and_origin(si_hamiltonian):
    rattled = si_hamiltonian.replace(
        positions=si_hamiltonian.positions + np.random.default_rng(3).normal(scale=0.05, size=(2, 3))
    )
    reference = build_graph(rattled)
    moved = _moved_atom(rattled, 1, np.array([1, -2, 3]))
    assert np.abs(moved.positions[1] - rattled.positions[1]).max() > 5  # really another image
    graph = build_graph(moved)
    shift = np.array([1, -2, 3])
    assert not np.array_equal(_rows(graph)[:, :3], _rows(reference)[:, :3])  # R labels did change
    # the same physical bond: (i, j, R) of the moved structure is (i, j, R + n_j - n_i) of the original
    original_r = (
        _rows(graph)[:, :3] + shift * (_rows(graph)[:, 4:5] == 1) - shift * (_rows(graph)[:, 3:4] == 1)
    )
    np.testing.assert_array_equal(original_r, _rows(reference)[:, :3])
    torch.testing.assert_close(graph.edge_vec, reference.edge_vec, rtol=0, atol=1e-10)
    np.testing.assert_allclose(_edge_multiset(graph), _edge_multiset(reference), atol=1e-8)

    translated = build_graph(rattled.replace(positions=rattled.positions + [0.37, -11.2, 2.5]))
    torch.testing.assert_close(translated.edge_vec, reference.edge_vec, rtol=0, atol=1e-10)
    assert torch.equal(translated.edge_reverse, reference.edge_reverse)


# -------------------------------------------------------------------------------------------- batching
def test_collate_split_round_trip(si_hamiltonian, pyscf_hamiltonian):
    cubic = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43, cubic=True), SP, cutoff=3.0, seed=1)
    slab = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43).repeat((2, 1, 1)), SP, cutoff=2.5, seed=2)
    graphs = [build_graph(cubic), build_graph(pyscf_hamiltonian), build_graph(slab)]
    assert [g.n_nodes for g in graphs] == [8, 2, 4]
    batch = collate(graphs)
    assert batch.n_graphs == len(batch) == 3
    assert batch.n_nodes.tolist() == [8, 2, 4] and batch.n_edges.tolist() == [g.n_edges for g in graphs]
    assert batch.batch.tolist() == [0] * 8 + [1] * 2 + [2] * 4
    assert batch.edge_batch.tolist() == sum(([k] * g.n_edges for k, g in enumerate(graphs)), [])
    assert torch.equal(batch.batch[batch.edge_src], batch.edge_batch)
    assert torch.equal(batch.batch[batch.edge_dst], batch.edge_batch)
    assert torch.equal(batch.edge_reverse[batch.edge_reverse], torch.arange(int(batch.n_edges.sum())))
    assert torch.equal(batch.edge_src[batch.edge_reverse], batch.edge_dst)
    assert batch.lattice.shape == (3, 3, 3) and batch.sources[1] is pyscf_hamiltonian

    node_offsets, edge_offsets = batch.node_offsets.tolist(), batch.edge_offsets.tolist()
    for name, split in [('edge_vec', batch.split_edges), ('edge_shift', batch.split_edges)]:
        for part, graph in zip(split(getattr(batch, name)), graphs, strict=True):
            assert torch.equal(part, getattr(graph, name))
    for k, graph in enumerate(graphs):
        assert torch.equal(batch.split_edges(batch.edge_src)[k] - node_offsets[k], graph.edge_src)
        assert torch.equal(batch.split_edges(batch.edge_reverse)[k] - edge_offsets[k], graph.edge_reverse)
        assert torch.equal(batch.split_edges(batch.edge_pair)[k], graph.edge_pair)
        assert torch.equal(batch.split_nodes(batch.positions)[k], graph.positions)
        assert torch.equal(batch.split_nodes(batch.node_pair)[k], graph.node_pair)
    with pytest.raises(GraphError):
        collate([])


# --------------------------------------------------------------------------------------------- dataset
def _label(seed: int, basis: Basis = SP, h0: bool = True):
    """A synthetic labelled Si cell (rattled; H0 = 0.9 H when ``h0``)."""
    atoms = bulk('Si', 'diamond', a=5.43)
    atoms.rattle(0.02, seed=seed)
    bh = random_block_hamiltonian(atoms, basis, cutoff=4.0, seed=seed)
    return bh.replace(h0=0.9 * bh.hamiltonian) if h0 else bh


@pytest.fixture(scope='module')
def label_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('labels')
    for seed in range(6):
        write_hdf5(_label(seed), folder / f'si_{seed}.h5')
    return folder


def _seed_of(bh) -> int:
    return int(bh.metadata['seed'])


def test_dataset_reads_lazily_and_caches(label_folder, monkeypatch):
    opened: list[str] = []
    real_file = h5py.File

    def counting_file(name, *args, **kwargs):
        opened.append(Path(name).name)
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(h5py, 'File', counting_file)
    dataset = HamiltonianDataset.from_folder(label_folder, cutoff=3.0)
    assert len(dataset) == 6 and dataset.names == [f'si_{k}.h5' for k in range(6)]
    assert opened == [], 'constructing the dataset must not open files'
    sample = dataset[2]
    assert opened == ['si_2.h5'] and _seed_of(sample.hamiltonian) == 2 and sample.index == 2
    assert sample.graph.source is sample.hamiltonian and sample.graph.cutoff == 3.0
    dataset[2]
    assert opened == ['si_2.h5'] * 2, 'no cache by default'
    assert dataset[-1].index == 5

    cached = HamiltonianDataset.from_folder(label_folder, cache_size=1)
    opened.clear()
    assert cached[0] is cached[0]
    cached[1]  # evicts 0
    cached[0]
    assert opened == ['si_0.h5', 'si_1.h5', 'si_0.h5']
    with pytest.raises(IndexError):
        dataset[6]


def test_dataset_missing_matrix_and_bad_input(tmp_path, label_folder):
    path = write_hdf5(_label(0, h0=False), tmp_path / 'no_h0.h5')
    dataset = HamiltonianDataset([path])
    with pytest.raises(DatasetError, match=r'no_h0\.h5.*needs H0'):
        dataset[0]
    with pytest.raises(DatasetError, match=r'no_h0\.h5.*needs H0'):
        dataset.validate()
    assert HamiltonianDataset([path], require=('H', 'S'))[0].hamiltonian.h0 is None
    HamiltonianDataset.from_folder(label_folder).validate()
    with pytest.raises(DatasetError, match='empty'):
        HamiltonianDataset.from_folder(tmp_path, pattern='*.nothing')
    with pytest.raises(DatasetError, match='empty'):
        HamiltonianDataset([])
    with pytest.raises(DatasetError, match='do not exist'):
        HamiltonianDataset([tmp_path / 'absent.h5'])
    with pytest.raises(DatasetError, match='unknown matrices'):
        HamiltonianDataset([path], require=('H', 'K'))
    bh = _label(1)
    nearest = int(np.flatnonzero(~_onsite(bh) & (bh.distances() < 3.0))[0])
    truncated = write_hdf5(_drop_couple(bh, nearest), tmp_path / 'truncated.h5')
    with pytest.raises(DatasetError, match=r'truncated\.h5.*no stored block'):
        HamiltonianDataset([truncated])[0]


def test_split_indices_deterministic_and_complete():
    split = split_indices(50, (0.8, 0.1, 0.1), seed=3)
    assert split == split_indices(50, (0.8, 0.1, 0.1), seed=3)
    assert split != split_indices(50, (0.8, 0.1, 0.1), seed=4)
    assert [len(split[k]) for k in ('train', 'val', 'test')] == [40, 5, 5]
    assert sorted(split['train'] + split['val'] + split['test']) == list(range(50))
    assert split['val'] == sorted(split['val'])
    assert split_indices(1, seed=0) == {'train': [0], 'val': [], 'test': []}
    tiny = split_indices(2, (0.2, 0.4, 0.4), seed=0)
    assert len(tiny['train']) == 1 and sorted(sum(tiny.values(), [])) == [0, 1]
    for bad in [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (float('nan'), 0.5, 0.5)]:
        with pytest.raises(DatasetError, match='fraction'):
            split_indices(10, bad)
    with pytest.raises(DatasetError, match='empty'):
        split_indices(0)

    names = [f'f{k}.h5' for k in range(50)]
    record = json.loads(json.dumps(describe_split(split, seed=3, fractions=(0.8, 0.1, 0.1), names=names)))
    assert record['seed'] == 3 and record['n'] == 50
    assert split_from_description(record, names) == split
    with pytest.raises(DatasetError, match='differ'):
        split_from_description(record, names[::-1])
    with pytest.raises(DatasetError, match='50 files'):
        split_from_description(record, names[:10])


def test_loader_order_reproducible_for_seed_and_epoch(label_folder):
    dataset = HamiltonianDataset.from_folder(label_folder)
    indices = [0, 1, 2, 3, 4, 5]

    def order(loader) -> list[int]:
        return [_seed_of(bh) for batch in loader for bh in batch.sources]

    rng_state = torch.random.get_rng_state()
    loader = make_loader(dataset, indices, batch_size=4, shuffle=True, seed=11)
    first = order(loader)
    assert sorted(first) == indices and first != indices
    assert order(loader) == first, 'same epoch, same order'
    assert order(make_loader(dataset, indices, batch_size=4, shuffle=True, seed=11)) == first
    loader.set_epoch(1)
    second = order(loader)
    assert sorted(second) == indices and second != first
    assert order(make_loader(dataset, indices, batch_size=2, shuffle=True, seed=11, epoch=1)) == second
    assert order(make_loader(dataset, indices, batch_size=4, shuffle=True, seed=12)) != first
    assert torch.equal(torch.random.get_rng_state(), rng_state), 'loaders must not use the global RNG'

    batches = list(make_loader(dataset, [4, 1, 3], batch_size=2))
    assert [b.n_graphs for b in batches] == [2, 1]
    assert [_seed_of(bh) for b in batches for bh in b.sources] == [4, 1, 3]
    shards = [
        make_loader(dataset, indices[:5], 1, shuffle=True, seed=0, rank=r, world_size=2) for r in (0, 1)
    ]
    orders = [shard.epoch_sampler.order() for shard in shards]
    assert len(orders[0]) == len(orders[1]) == 3 and set(orders[0] + orders[1]) == set(indices[:5])


def test_coverage_and_basis_mismatch(label_folder, tmp_path):
    info = coverage(HamiltonianDataset.from_folder(label_folder))
    assert info['n_files'] == 6 and info['spins'] == ['none']
    assert info['elements'] == {
        'Si': {'number': 14, 'shells': [0, 1], 'basis': 'synthetic-sp', 'code': 'synthetic', 'n_files': 6}
    }
    json.dumps(info)
    other = Basis.from_shells({'Si': [0, 0, 1]}, name='synthetic-sp', code='synthetic')
    odd = write_hdf5(_label(9, basis=other), tmp_path / 'odd_basis.h5')
    dataset = HamiltonianDataset([label_folder / 'si_0.h5', odd])
    with pytest.raises(DatasetError, match=r'odd_basis\.h5: basis of Si .*si_0\.h5'):
        coverage(dataset)


def test_dataset_pickles_without_cache(label_folder):
    import pickle

    dataset = HamiltonianDataset.from_folder(label_folder, cache_size=4)
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.paths == dataset.paths and len(clone._cache) == 0 and len(dataset._cache) == 1
    assert dataset_module.SPLIT_NAMES == ('train', 'val', 'test')
