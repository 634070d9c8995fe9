"""Inference at scale: many small structures in batches, large ones with memory-bounded edge chunks.

:func:`predict_structures` turns block Hamiltonians that carry H0 (or ``run_engine`` results in
``'h0'`` mode) into block Hamiltonians with the predicted H = H0 + ΔH, H0 and S kept. Small
structures are collated several graphs per forward pass; a structure (or batch) with more edges than
``edge_chunk_size`` goes through :func:`chunked_forward`, which evaluates the same network edge chunk
by edge chunk:

- every per-edge operation (harmonics, radial basis, invariants, tensor products, attention logits
  and values, edge updates, TraceGrad, output heads) acts on one chunk at a time, so the working
  memory is O(chunk) instead of O(E); node features and the per-edge state (edge features, logits)
  stay O(N) and O(E);
- the attention softmax over a node's edges is exact in two passes: the (E, heads) logits first,
  then values and messages per chunk, accumulated into the node aggregates with ``index_add``;
- a chunk holds each edge together with its hermitian partner (j, i, -R), so the edge update
  ``edge_from_reverse(value[reverse])`` never needs a value from another chunk, and the edge
  features can be overwritten in place.

The chunked path equals ``model(inputs)`` to rounding (summation order of the aggregates only).

Coverage: a structure whose elements or basis (shells per element, basis-set name, and the H0
settings when known) differ from the model's training data is refused with :class:`CoverageError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from e3nn import o3

from ..hamiltonian.basis import Basis
from ..hamiltonian.block import BlockHamiltonian
from .graph import StructureGraph, build_graph, collate
from .layers import scatter_softmax
from .loss import SpinorLayout
from .model import GraphInputs, ModelOutput, NexthamModel, TransformerLayer
from .predictor import spinless, structure_delta, structure_layout
from .serialization import WEIGHTS, ModelFileError, load_model, read_model_metadata

__all__ = [
    'Coverage',
    'CoverageError',
    'EdgeChunk',
    'InferenceStats',
    'MemoryMonitor',
    'chunk_count',
    'chunked_forward',
    'edge_chunks',
    'edge_chunk_size_for',
    'load_inference_model',
    'predict_structures',
    'weights_digest',
    'working_bytes_per_edge',
]

#: settings of the H0 a model was trained on that must match the H0 it is applied to
H0_SETTINGS = ('basis', 'pseudo', 'xc', 'init_guess')


def is_pseudo_file(value) -> bool:
    """Whether a recorded ``pseudo`` setting is a file of one run (e.g. ``pseudo/gth.dat`` in an AiiDA
    sandbox) rather than a library name: its name says nothing about its content, so it is not compared."""
    return isinstance(value, str) and ('/' in value or value.endswith('.dat'))


_SHELL_LETTERS = 'spdfgh'


class CoverageError(ValueError):
    """A structure has elements or a basis outside what the model was trained on."""


# ------------------------------------------------------------------------------------------ model files
def load_inference_model(
    folder: str | Path, device: str | torch.device = 'cpu'
) -> tuple[NexthamModel, dict[str, Any]]:
    """Load a model folder for inference: ``(model in eval mode, metadata)``.

    Every way a path can fail to be a model (a file instead of a folder, a pickle, a weights file that is
    not safetensors, a config of another format) raises :class:`ModelFileError`; nothing is unpickled.
    """
    path = Path(folder)
    if path.is_file():
        raise ModelFileError(
            f'{path}: {_describe_file(path)}; a model is a folder with {WEIGHTS} and model.json'
        )
    if not path.exists():
        raise ModelFileError(f'{path}: no such model folder')
    metadata = read_model_metadata(path)
    try:
        model = load_model(path, device=device)
    except ModelFileError:
        raise
    except Exception as exc:  # safetensors, config and shape errors all mean: not a loadable model
        text = ' '.join(str(exc).split()) or type(exc).__name__
        raise ModelFileError(f'{path}: cannot load the model ({type(exc).__name__}: {text})') from None
    return model, metadata


def _describe_file(path: Path) -> str:
    head = path.read_bytes()[:8]
    if head[:1] == b'\x80' or head.startswith(b'PK\x03\x04'):
        return 'a pickle / torch.save file, which is never loaded (unpickling can run arbitrary code)'
    return 'a file, not a model folder'


def weights_digest(folder: str | Path) -> str:
    """SHA-256 of the weights file of a model folder (provenance of a prediction)."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- coverage
def _shell_text(shells: Sequence[int]) -> str:
    return ' '.join(_SHELL_LETTERS[l] for l in shells)


@dataclass(frozen=True)
class Coverage:
    """What a model was trained on.

    :param shells: ``{Z: (l, ...)}`` of every element (from the model config).
    :param basis: basis-set name per element, when the training provenance records it.
    :param code: code that defined the orbitals per element (``'pyscf'``, ...), when recorded.
    :param dft: H0 settings of the training data (subset of ``basis``, ``pseudo``, ``xc``,
        ``init_guess``), when recorded.
    """

    shells: dict[int, tuple[int, ...]]
    basis: dict[int, str] = field(default_factory=dict)
    code: dict[int, str] = field(default_factory=dict)
    dft: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: NexthamModel) -> Coverage:
        return cls(dict(model.config.shells))

    @classmethod
    def from_metadata(cls, metadata: dict) -> Coverage:
        """From a model folder's metadata: ``config.shells``, and from ``provenance`` (all optional):

        - ``coverage``: the output of :func:`~aiida_nextham.ml.dataset.coverage`,
          ``{'elements': {symbol: {'shells', 'basis', 'code', ...}}}``;
        - ``dft`` (or ``label_engine``): ``{'basis' | 'basis_set', 'pseudo', 'xc', 'init_guess'}``.
        """
        shells = {int(z): tuple(int(l) for l in ls) for z, ls in metadata['config']['shells'].items()}
        provenance = metadata.get('provenance') or {}
        basis, code = {}, {}
        elements = (provenance.get('coverage') or {}).get('elements') or {}
        for key, entry in elements.items():
            z = int(entry.get('number', chemical_symbols.index(key) if key in chemical_symbols else -1))
            if z in shells and entry.get('basis'):
                basis[z] = str(entry['basis'])
            if z in shells and entry.get('code'):
                code[z] = str(entry['code'])
        engine = provenance.get('dft') or provenance.get('label_engine') or {}
        dft = {key: str(engine[key]) for key in H0_SETTINGS if engine.get(key)}
        if 'basis' not in dft and engine.get('basis_set'):
            dft['basis'] = str(engine['basis_set'])
        names = set(basis.values())
        if 'basis' not in dft and len(names) == 1 and len(basis) == len(shells):
            dft['basis'] = names.pop()
        return cls(shells, basis, code, dft)

    @property
    def elements(self) -> tuple[int, ...]:
        return tuple(sorted(self.shells))

    def describe(self) -> str:
        """E.g. ``'Si (gth-szv: s p)'``."""
        parts = []
        for z in self.elements:
            name = self.basis.get(z) or self.dft.get('basis')
            prefix = f'{name}: ' if name else 'shells '
            parts.append(f'{chemical_symbols[z]} ({prefix}{_shell_text(self.shells[z])})')
        return ', '.join(parts)

    def check_elements(self, numbers: Sequence[int], label: str = 'the structure') -> None:
        """Raise :class:`CoverageError` when an element is outside the model's coverage."""
        missing = sorted(set(int(z) for z in numbers) - set(self.shells))
        if missing:
            names = ', '.join(chemical_symbols[z] for z in missing)
            raise CoverageError(
                f'{label}: element(s) {names} outside the model coverage; the model covers {self.describe()}'
            )

    def check(self, bh: BlockHamiltonian, label: str | None = None) -> None:
        """Raise :class:`CoverageError` unless the elements, shells, basis-set names and H0 settings of
        ``bh`` are those of the training data (names and settings compared where both sides know them)."""
        self.check_basis(bh.basis, bh.numbers, label or bh.formula, bh.metadata)

    def check_basis(
        self, basis: Basis, numbers: Sequence[int], label: str, settings: dict | None = None
    ) -> None:
        """:meth:`check` for a basis, the atomic numbers and the H0 ``settings`` (``basis_set``,
        ``pseudo``, ``xc``, ``init_guess``; e.g. the metadata of an engine result)."""
        settings = settings or {}
        self.check_elements(numbers, label)
        name = basis.name or settings.get('basis_set') or ''
        for z in sorted(set(int(z) for z in numbers)):
            theirs = tuple(basis[z].shells)
            trained = self.basis.get(z) or self.dft.get('basis') or ''
            if theirs != self.shells[z] or (name and trained and name != trained):
                raise CoverageError(
                    f'{label}: the basis of {chemical_symbols[z]} is {name or "unnamed"} '
                    f'(shells {_shell_text(theirs)}), but the model was trained on {trained or "a basis"} '
                    f"(shells {_shell_text(self.shells[z])}); compute H0 with the model's basis"
                )
            if self.code.get(z) and basis.code and basis.code != self.code[z]:
                raise CoverageError(
                    f'{label}: the orbitals of {chemical_symbols[z]} come from {basis.code}, '
                    f'the model was trained on {self.code[z]} orbitals'
                )
        for key in H0_SETTINGS[1:]:
            ours, theirs = self.dft.get(key), settings.get(key)
            if key == 'pseudo' and (is_pseudo_file(ours) or is_pseudo_file(theirs)):
                continue  # the CalcJob checks the pseudopotential nodes' functional against the model
            if ours and theirs and str(theirs) != ours:
                raise CoverageError(
                    f'{label}: H0 was built with {key}={theirs}, the model was trained on {ours}'
                )


# ------------------------------------------------------------------------------------ memory monitoring
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class MemoryMonitor:
    """Peak resident memory (MB) of the process while a block runs.

    A thread samples the RSS (psutil) every ``interval`` s; if ``ru_maxrss`` rose during the block its
    new value is the exact peak. On CUDA the peak of ``torch.cuda.max_memory_allocated`` is kept too.
    """

    def __init__(self, interval: float = 0.005, device: torch.device | str | None = None):
        self.interval = interval
        self.device = torch.device(device) if device is not None else None
        self.start_mb = self.peak_mb = 0.0
        self.cuda_peak_mb: float | None = None

    @contextlib.contextmanager
    def measure(self) -> Iterator[MemoryMonitor]:
        stop = threading.Event()
        self.start_mb = self.peak_mb = _rss_mb()
        maxrss_before = _maxrss_mb()
        cuda = self.device is not None and self.device.type == 'cuda'
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

        def sample():
            while not stop.wait(self.interval):
                self.peak_mb = max(self.peak_mb, _rss_mb())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_mb = max(self.peak_mb, _rss_mb())
            maxrss = _maxrss_mb()
            if maxrss > maxrss_before + 1:
                self.peak_mb = max(self.peak_mb, maxrss)
            if cuda:
                self.cuda_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    def as_dict(self) -> dict[str, float | None]:
        return {
            'rss_start_mb': round(self.start_mb, 1),
            'peak_rss_mb': round(self.peak_mb, 1),
            'peak_increase_mb': round(self.peak_mb - self.start_mb, 1),
            'cuda_peak_mb': None if self.cuda_peak_mb is None else round(self.cuda_peak_mb, 1),
        }


@dataclass
class InferenceStats:
    """What :func:`predict_structures` did: wall times per phase (s), chunking and memory."""

    times: dict[str, float] = field(default_factory=dict)
    n_structures: int = 0
    n_batches: int = 0
    n_chunked: int = 0
    n_chunks: int = 0
    edge_chunk_size: int | None = None
    n_edges: int = 0
    memory: dict[str, float | None] = field(default_factory=dict)

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def as_dict(self) -> dict:
        return {
            'times': {k: round(v, 4) for k, v in self.times.items()},
            'n_structures': self.n_structures,
            'n_batches': self.n_batches,
            'n_chunked': self.n_chunked,
            'n_chunks': self.n_chunks,
            'edge_chunk_size': self.edge_chunk_size,
            'n_edges': self.n_edges,
            'memory': dict(self.memory),
        }


# ------------------------------------------------------------------------------------- memory estimate
def working_bytes_per_edge(model: NexthamModel, dtype: torch.dtype | None = None) -> int:
    """Estimated bytes per edge of the largest set of per-edge intermediates alive at one time.

    The tensor product of a layer dominates: its ``tp.irreps_out.dim`` outputs exist twice (the list
    of paths and their concatenation), next to the invariants, the path weights and the value.
    Calibrated on the small preset with Si gth-dzvp (float32): estimate 17.7 kB per edge, measured
    ~14 kB per additional chunk edge (peak RSS at chunks of 2,000 and 8,000 edges).
    """
    dtype = dtype or next(model.parameters()).dtype
    itemsize = torch.finfo(dtype).bits // 8
    config = model.config
    geometry = model.sh_irreps.dim + 2 * config.n_radial + 4
    stages = [model.edge_irreps.dim * 2 + model.out_irreps.dim * 2 + geometry]
    for layer in model.layers:
        n_invariants = layer.tp_weights[0].in_features
        stages.append(
            geometry
            + n_invariants
            + config.radial_hidden
            + layer.tp.weight_numel
            + layer.value_in.irreps_out.dim
            + 2 * layer.tp.irreps_out.dim
            + 3 * model.node_irreps.dim
            + 3 * model.edge_irreps.dim
        )
        stages.append(6 * model.edge_irreps.dim + 2 * model.node_irreps.dim)
    pair = max(
        (
            model.pair_product.irreps1[i1].mul
            * model.pair_product.irreps2[i2].mul
            * model.pair_product.irreps1[i1].ir.dim
            * model.pair_product.irreps2[i2].ir.dim
            for i1, i2, _ in model.pair_product.paths
        ),
        default=0,
    )
    stages.append(
        8 * model.edge_irreps.dim + 2 * model.pair_src.irreps_out.dim + pair + 3 * model.out_irreps.dim
    )
    return itemsize * max(stages)


def edge_chunk_size_for(model: NexthamModel, max_memory_mb: float, dtype: torch.dtype | None = None) -> int:
    """The edge chunk whose estimated working memory (:func:`working_bytes_per_edge`) fits the budget."""
    if max_memory_mb <= 0:
        raise ValueError(f'max_memory_mb must be positive, got {max_memory_mb}')
    return max(2, int(max_memory_mb * 2**20 // working_bytes_per_edge(model, dtype)))


# ------------------------------------------------------------------------------------- chunked forward
@dataclass
class EdgeChunk:
    """A set of edges closed under reversal: ``index`` (n,) into the E edges, ``reverse`` (n,) the
    position of each edge's partner within the chunk."""

    index: torch.Tensor
    reverse: torch.Tensor


def edge_chunks(edge_reverse: torch.Tensor, chunk_size: int) -> list[EdgeChunk]:
    """Partition the E edges into chunks of at most ``chunk_size`` (>= 2) edges, each edge with its partner.

    :param edge_reverse: (E,) index of each edge's partner; must be an involution without fixed points.
    """
    if chunk_size < 2:
        raise ValueError(
            f'the edge chunk size must be at least 2 (an edge and its partner), got {chunk_size}'
        )
    n = edge_reverse.shape[0]
    order = torch.arange(n, device=edge_reverse.device)
    if n and (bool((edge_reverse == order).any()) or not torch.equal(edge_reverse[edge_reverse], order)):
        raise ValueError('edge_reverse must pair every edge with a different partner edge')
    canonical = order[order < edge_reverse]
    chunks = []
    for part in canonical.split(chunk_size // 2):
        k = part.shape[0]
        local = torch.arange(k, device=part.device)
        chunks.append(EdgeChunk(torch.cat([part, edge_reverse[part]]), torch.cat([local + k, local])))
    return chunks


@dataclass
class _Geometry:
    sh: torch.Tensor
    radial: torch.Tensor
    envelope: torch.Tensor


def _geometry(model: NexthamModel, vectors: torch.Tensor) -> _Geometry:
    """Harmonics, enveloped radial basis and envelope of (n, 3) edge vectors (as in the model)."""
    length = vectors.norm(dim=1)
    sh = o3.spherical_harmonics(model.sh_irreps, vectors, normalize=True, normalization='component')
    envelope = model.envelope(length)
    return _Geometry(sh, model.radial(length) * envelope[:, None], envelope)


def _invariants(layer: TransformerLayer, geometry: _Geometry, e_chunk, x, src, dst) -> torch.Tensor:
    n_node = layer.node_irreps.count('0e')
    n_edge = layer.edge_irreps.count('0e')
    return torch.cat([geometry.radial, e_chunk[:, :n_edge], x[src, :n_node], x[dst, :n_node]], dim=1)


def _layer(layer: TransformerLayer, model: NexthamModel, x, e, g: GraphInputs, chunks) -> torch.Tensor:
    """``TransformerLayer.forward`` chunk by chunk; updates ``e`` in place and returns the new x."""
    # pass 1: attention logits of every edge (E, heads), softmax over each atom's edges exactly
    logits = x.new_empty(e.shape[0], layer.n_heads)
    for chunk in chunks:
        src, dst = g.edge_src[chunk.index], g.edge_dst[chunk.index]
        geometry = _geometry(model, g.edge_vec[chunk.index])
        logits[chunk.index] = layer.attention(_invariants(layer, geometry, e[chunk.index], x, src, dst))
    weights = scatter_softmax(logits, g.edge_src, x.shape[0])
    del logits
    # pass 2: values, messages into the node aggregates, and the value part of the edge update
    x_value = layer.value_in(x)
    aggregated = x.new_zeros(x.shape)
    for chunk in chunks:
        src, dst = g.edge_src[chunk.index], g.edge_dst[chunk.index]
        geometry = _geometry(model, g.edge_vec[chunk.index])
        e_chunk = e[chunk.index]
        invariants = _invariants(layer, geometry, e_chunk, x, src, dst)
        value = layer.value(layer.tp(x_value[dst], geometry.sh, layer.tp_weights(invariants)))
        value = value + layer.edge_value(e_chunk)
        alpha = weights[chunk.index] * geometry.envelope[:, None]
        aggregated.index_add_(0, src, value * alpha[:, layer.head_of_dim])
        e[chunk.index] = (
            e_chunk + layer.edge_from_value(value) + layer.edge_from_reverse(value[chunk.reverse])
        )
    x = layer.node_norm(x + layer.node_out(aggregated))
    x = layer.node_ffn_norm(x + layer.node_ffn(x))
    # pass 3: the node part of the edge update
    for chunk in chunks:
        src, dst = g.edge_src[chunk.index], g.edge_dst[chunk.index]
        e_chunk = layer.edge_norm(e[chunk.index] + layer.edge_from_src(x[src]) + layer.edge_from_dst(x[dst]))
        e[chunk.index] = layer.edge_ffn_norm(e_chunk + layer.edge_ffn(e_chunk))
    return x


@torch.no_grad()
def chunked_forward(
    model: NexthamModel, g: GraphInputs, edge_chunk_size: int, stats: InferenceStats | None = None
) -> ModelOutput:
    """``model(g)`` evaluated over edge chunks of at most ``edge_chunk_size`` edges (inference only).

    Working memory is O(edge_chunk_size) per-edge intermediates; node features (N, dim), the edge
    features (E, edge dim), the (E, heads) attention logits and the outputs are kept whole.
    """
    config = model.config
    element = model.element_index[g.numbers]
    if (element < 0).any():
        missing = sorted(set(g.numbers[element < 0].tolist()))
        raise CoverageError(
            f'elements {missing} are outside the model coverage {model.orbital_irreps.elements}'
        )
    if config.use_h0 and (g.node_h0 is None or g.edge_h0 is None):
        raise ValueError('this model takes H0 as input: give node_h0 and edge_h0 features')
    chunks = edge_chunks(g.edge_reverse, edge_chunk_size)
    if stats is not None:
        stats.n_chunks += len(chunks)
    n_scalars = model.node_irreps.count('0e')
    x = g.edge_vec.new_zeros(len(g.numbers), model.node_irreps.dim)
    x[:, :n_scalars] = model.element_embedding(element)
    if config.use_h0:
        x = x + model.node_h0(g.node_h0 / model._expand(model.node_h0_scale))
    e = g.edge_vec.new_empty(g.edge_vec.shape[0], model.edge_irreps.dim)
    for chunk in chunks:
        geometry = _geometry(model, g.edge_vec[chunk.index])
        e_chunk = model.edge_sh(geometry.sh, geometry.radial)
        if config.use_h0:
            e_chunk = e_chunk + model.edge_h0(g.edge_h0[chunk.index] / model._expand(model.edge_h0_scale))
        e[chunk.index] = e_chunk
    for layer in model.layers:
        x = _layer(layer, model, x, e, g, chunks)
    node_trace = edge_trace = None
    if config.tracegrad:
        x, node_trace = model.node_tracegrad(x)
        edge_trace = x.new_empty(e.shape[0])
    node = model.node_head(x) * model._expand(model.node_out_scale)
    pair_src, pair_dst = model.pair_src(x), model.pair_dst(x)
    edge = x.new_empty(e.shape[0], model.out_irreps.dim)
    out_scale = model._expand(model.edge_out_scale)
    for chunk in chunks:
        e_chunk = e[chunk.index]
        if config.tracegrad:
            e_chunk, edge_trace[chunk.index] = model.edge_tracegrad(e_chunk)
        src, dst = g.edge_src[chunk.index], g.edge_dst[chunk.index]
        envelope = model.envelope(g.edge_vec[chunk.index].norm(dim=1))
        out = model.edge_head(e_chunk) + model.pair_product(pair_src[src], pair_dst[dst])
        edge[chunk.index] = out * envelope[:, None] * out_scale
    return ModelOutput(node, edge, node_trace, edge_trace)


# ------------------------------------------------------------------------------------------- prediction
def _as_hamiltonian(item) -> BlockHamiltonian:
    """A BlockHamiltonian, or the ``hamiltonian`` of a ``run_engine`` result."""
    bh = item if isinstance(item, BlockHamiltonian) else getattr(item, 'hamiltonian', None)
    if not isinstance(bh, BlockHamiltonian):
        raise TypeError(f'expected a BlockHamiltonian or an engine result, got {type(item).__name__}')
    return bh


def _batches(graphs: list[StructureGraph], batch_size: int, edge_budget: int | None) -> list[list[int]]:
    """Consecutive groups of at most ``batch_size`` graphs whose edges fit ``edge_budget`` together; a
    graph larger than the budget forms its own group (it is chunked)."""
    groups: list[list[int]] = []
    current: list[int] = []
    edges = 0
    for k, graph in enumerate(graphs):
        fits = edge_budget is None or edges + graph.n_edges <= edge_budget
        if current and (len(current) >= batch_size or not fits):
            groups.append(current)
            current, edges = [], 0
        current.append(k)
        edges += graph.n_edges
    if current:
        groups.append(current)
    return groups


def _forward_batch(model, graphs, chunk_size, stats, dtype, device) -> list[np.ndarray]:
    """Flat spinless ΔH (or H) of each graph of one batch, float64 numpy arrays."""
    batch = collate(graphs).to(device, dtype)
    layouts = [structure_layout(model, graph.source) for graph in graphs]
    node_h0 = edge_h0 = None
    with stats.timer('h0_features'):
        if model.config.use_h0:
            node_parts, edge_parts = [], []
            for graph, layout in zip(graphs, layouts, strict=True):
                features = layout.to_features(torch.as_tensor(spinless(graph.source, 'H0'), dtype=dtype))
                node_parts.append(features[graph.node_pair].to(device))
                edge_parts.append(features[graph.edge_pair].to(device))
                del features
            node_h0, edge_h0 = torch.cat(node_parts), torch.cat(edge_parts)
    inputs = GraphInputs(
        batch.numbers, batch.edge_src, batch.edge_dst, batch.edge_vec, batch.edge_reverse, node_h0, edge_h0
    )
    with stats.timer('model'):
        if chunk_size is not None and batch.edge_src.shape[0] > chunk_size:
            stats.n_chunked += 1
            output = chunked_forward(model, inputs, chunk_size, stats)
        else:
            with torch.no_grad():
                output = model(inputs)
    del inputs, node_h0, edge_h0
    flats = []
    with stats.timer('assemble'):
        nodes, edges = batch.split_nodes(output.node), batch.split_edges(output.edge)
        for k, (graph, layout) in enumerate(zip(graphs, layouts, strict=True)):
            node_pair, edge_pair = graph.node_pair.to(device), graph.edge_pair.to(device)
            delta = structure_delta(model, graph.source, layout, node_pair, nodes[k], edge_pair, edges[k])
            flats.append(delta.double().cpu().numpy())
            del delta
    return flats


def _assemble(model: NexthamModel, bh: BlockHamiltonian, delta: np.ndarray, info: dict) -> BlockHamiltonian:
    """H = H0 + ΔH (spinless ΔH on both spin-diagonal blocks of a spinor); H0 and S kept."""
    metadata = {
        **bh.metadata,
        'matrices': {'hamiltonian': 'H_predicted', 'h0': 'H0', 'overlap': 'S'},
        'prediction': info,
    }
    if not model.config.use_h0:
        return bh.replace(hamiltonian=delta, fermi_level=None, metadata=metadata)
    if bh.spin == 'none':
        hamiltonian = np.add(delta, bh.h0, out=delta)  # delta is a fresh array: no third copy
    else:
        hamiltonian = bh.h0 + SpinorLayout.from_hamiltonian(bh).expand(delta, np.complex128)
    return bh.replace(hamiltonian=hamiltonian, fermi_level=None, metadata=metadata)


def predict_structures(
    model: NexthamModel,
    structures: Sequence,
    *,
    batch_size: int = 8,
    edge_chunk_size: int | None = None,
    max_memory_mb: float | None = None,
    coverage: Coverage | None = None,
    labels: Sequence[str] | None = None,
    model_info: dict | None = None,
    stats: InferenceStats | None = None,
) -> list[BlockHamiltonian]:
    """Predict H = H0 + ΔH for every structure (in order).

    :param structures: block Hamiltonians with H0 (or ``run_engine`` results in ``'h0'`` mode).
    :param batch_size: structures per forward pass (small structures are collated).
    :param edge_chunk_size: largest number of edges evaluated at once; a batch with more edges runs
        through :func:`chunked_forward`, and batches are filled only up to this many edges.
    :param max_memory_mb: working-memory budget from which ``edge_chunk_size`` is derived when not given.
    :param coverage: what the model was trained on (default: its element shells only).
    :param labels: names of the structures for error messages (default: formulas).
    :param model_info: JSON-serialisable description of the model, stored in each result's metadata.
    :param stats: filled with times per phase, chunking and the peak memory.
    :raises CoverageError: before any computation, for the first structure outside the coverage.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    stats = stats if stats is not None else InferenceStats()
    model.eval()
    parameter = next(model.parameters())
    dtype, device = parameter.dtype, parameter.device
    if edge_chunk_size is None and max_memory_mb is not None:
        edge_chunk_size = edge_chunk_size_for(model, max_memory_mb, dtype)
    stats.edge_chunk_size = edge_chunk_size
    coverage = coverage or Coverage.from_model(model)
    hamiltonians = [_as_hamiltonian(item) for item in structures]
    labels = list(labels) if labels is not None else [bh.formula for bh in hamiltonians]
    for bh, label in zip(hamiltonians, labels, strict=True):
        coverage.check(bh, label)
        if model.config.use_h0 and bh.h0 is None:
            raise ValueError(f'{label}: this model needs H0, but the Hamiltonian has none')
    info = {
        'cutoff': float(model.config.cutoff),
        'elements': list(model.orbital_irreps.elements),
        'use_h0': bool(model.config.use_h0),
        **(model_info or {}),
    }
    results: list[BlockHamiltonian | None] = [None] * len(hamiltonians)
    monitor = MemoryMonitor(device=device)
    with monitor.measure():
        with stats.timer('graph'):
            graphs = [build_graph(bh, model.config.cutoff, dtype=dtype) for bh in hamiltonians]
        stats.n_structures += len(graphs)
        stats.n_edges += sum(graph.n_edges for graph in graphs)
        for group in _batches(graphs, batch_size, edge_chunk_size):
            stats.n_batches += 1
            flats = _forward_batch(model, [graphs[k] for k in group], edge_chunk_size, stats, dtype, device)
            with stats.timer('assemble'):
                for k, flat in zip(group, flats, strict=True):
                    results[k] = _assemble(model, hamiltonians[k], flat, info)
                    graphs[k] = None
    stats.memory = monitor.as_dict()
    return results


def chunk_count(n_edges: int, edge_chunk_size: int) -> int:
    """Number of chunks :func:`edge_chunks` makes of ``n_edges`` paired edges."""
    return math.ceil(n_edges / 2 / (edge_chunk_size // 2)) if n_edges else 0
