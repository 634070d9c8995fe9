"""Crystal graphs of block Hamiltonians: atoms are nodes, stored off-site blocks (i, j, R) are edges.

On-site blocks ``(0, 0, 0, i, i)`` belong to the nodes; every other stored pair, including an atom
with its own periodic image ``(R != 0, i, i)``, is a directed edge ``i -> j`` in cell ``R``. Each
edge knows the row of its block in the source :class:`BlockHamiltonian` (``edge_pair``) and its
hermitian partner ``(-R, j, i)`` (``edge_reverse``), so predictions map back to blocks exactly.

The edge set is taken from the stored blocks and checked against a periodic neighbour list (ASE):
every atom pair within the cutoff must have a stored block, or the label file was truncated at a
smaller radius than the graph needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from ase.neighborlist import primitive_neighbor_list

from ..hamiltonian.block import BlockHamiltonian, find_pairs

__all__ = ['GraphBatch', 'GraphError', 'StructureGraph', 'build_graph', 'collate', 'CUTOFF_TOLERANCE']

CUTOFF_TOLERANCE = 1e-6
"""Å: neighbours closer than ``cutoff - CUTOFF_TOLERANCE`` must have a stored block."""


class GraphError(ValueError):
    """A block Hamiltonian cannot be turned into a graph (missing blocks, half storage, ...)."""


def _move(obj, device=None, dtype: torch.dtype | None = None):
    """Copy of a dataclass with every tensor moved to ``device``; floating tensors cast to ``dtype``."""
    changes = {}
    for item in fields(obj):
        value = getattr(obj, item.name)
        if isinstance(value, torch.Tensor):
            cast = dtype if dtype is not None and value.is_floating_point() else None
            changes[item.name] = value.to(device=device, dtype=cast)
        else:
            changes[item.name] = value
    return type(obj)(**changes)


@dataclass(eq=False)
class StructureGraph:
    """The graph of one structure. N atoms, E directed edges.

    :param numbers: (N,) int64 atomic numbers.
    :param positions: (N, 3) Cartesian positions, Å.
    :param lattice: (3, 3) lattice vectors as rows, Å.
    :param edge_src: (E,) int64 atom i of each edge (home cell).
    :param edge_dst: (E,) int64 atom j of each edge (in cell ``edge_shift``).
    :param edge_shift: (E, 3) int64 cell R of the destination atom.
    :param edge_vec: (E, 3) ``positions[dst] + R @ lattice - positions[src]``, Å.
    :param edge_pair: (E,) int64 row of each edge's block in ``source.pairs`` (all stored pairs).
    :param edge_reverse: (E,) int64 index of the partner edge (dst, src, -R).
    :param node_pair: (N,) int64 row of each atom's on-site block in ``source.pairs``.
    :param cutoff: the cutoff radius of the edges, Å.
    :param source: the block Hamiltonian the indices refer to, with all its stored blocks (also those
        beyond the cutoff, which keep their H0 in a prediction); not a tensor.
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    lattice: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_shift: torch.Tensor
    edge_vec: torch.Tensor
    edge_pair: torch.Tensor
    edge_reverse: torch.Tensor
    node_pair: torch.Tensor
    cutoff: float
    source: BlockHamiltonian | None = field(default=None, repr=False)

    @property
    def n_nodes(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None) -> StructureGraph:
        """A copy on ``device`` (floating tensors optionally cast to ``dtype``); ``source`` is shared."""
        return _move(self, device, dtype)

    def __repr__(self) -> str:
        formula = self.source.formula if self.source is not None else '?'
        sizes = f'{self.n_nodes} nodes, {self.n_edges} edges'
        return f'StructureGraph({formula}, {sizes}, cutoff={self.cutoff:g} Å)'


# ------------------------------------------------------------------------------------------- building
def _format_pair(row: np.ndarray) -> str:
    r1, r2, r3, i, j = (int(x) for x in row)
    return f'(i={i}, j={j}, R=({r1}, {r2}, {r3}))'


def _check_neighbours(bh: BlockHamiltonian, cutoff: float, periodic: tuple[bool, bool, bool]) -> None:
    """Raise when a neighbour pair closer than ``cutoff - CUTOFF_TOLERANCE`` has no stored block."""
    radius = cutoff - CUTOFF_TOLERANCE
    if radius <= 0 or bh.n_atoms == 0:
        return
    i, j, shifts, distances = primitive_neighbor_list(
        'ijSd', periodic, bh.lattice, bh.positions, radius, self_interaction=False
    )
    neighbours = np.column_stack([shifts, i, j]).astype(np.int64)
    missing = np.flatnonzero(find_pairs(bh.pairs, neighbours, bh.n_atoms) < 0)
    if len(missing):
        first = missing[np.argmin(distances[missing])]
        raise GraphError(
            f'{len(missing)} neighbour pair(s) within the cutoff {cutoff:g} Å have no stored block, '
            f'e.g. {_format_pair(neighbours[first])} at {distances[first]:.4f} Å; the labels were '
            'truncated at a smaller radius: use a smaller cutoff or recompute them with a larger one'
        )


def _onsite_pairs(bh: BlockHamiltonian) -> np.ndarray:
    """Row of each atom's on-site pair; raise when one is missing. Shape (n_atoms,)."""
    atoms = np.arange(bh.n_atoms)
    onsite = np.column_stack([np.zeros((bh.n_atoms, 3), dtype=np.int64), atoms, atoms])
    rows = find_pairs(bh.pairs, onsite, bh.n_atoms)
    if (rows < 0).any():
        missing = atoms[rows < 0].tolist()
        raise GraphError(f'on-site blocks (0, 0, 0, i, i) are missing for atom(s) {missing[:10]}')
    return rows


def _partner_pairs(bh: BlockHamiltonian) -> np.ndarray:
    """Row of each pair's hermitian partner (-R, j, i); raise when one is missing. Shape (n_pairs,)."""
    rows = bh.partner_index()
    if (rows < 0).any():
        missing = np.flatnonzero(rows < 0)
        raise GraphError(
            f'{len(missing)} block(s) have no hermitian partner (-R, j, i), e.g. '
            f'{_format_pair(bh.pairs[missing[0]])}: the Hamiltonian is half-stored; '
            'call complete_hermitian() first'
        )
    return rows


def build_graph(
    bh: BlockHamiltonian,
    cutoff: float | None = None,
    dtype: torch.dtype = torch.float64,
    *,
    periodic: Sequence[bool] | None = None,
) -> StructureGraph:
    """The graph of the blocks of ``bh`` within ``cutoff`` Å.

    :param cutoff: drop stored blocks beyond it (``bh.truncate``); default: the largest stored pair
        distance. Every neighbour pair within it must have a stored block.
    :param dtype: floating dtype of ``positions``, ``lattice`` and ``edge_vec``.
    :param periodic: periodic lattice directions of the neighbour check; default ``bh.periodic`` of
        the blocks as stored (before the cutoff): a direction no stored block crosses counts as vacuum.
    :raises GraphError: missing on-site or partner blocks, or neighbour pairs without a block.
    """
    periodic = bh.periodic if periodic is None else tuple(bool(p) for p in periodic)
    if len(periodic) != 3:
        raise GraphError(f'periodic must have 3 entries, got {periodic}')
    full = bh
    kept = np.arange(bh.n_pairs)  # rows of the truncated pairs in the full pair list
    if cutoff is not None:
        onsite = (bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)
        kept = np.flatnonzero((bh.distances() <= cutoff) | onsite)
        bh = bh.truncate(cutoff)
    partner = _partner_pairs(bh)
    node_pair = _onsite_pairs(bh)
    distances = bh.distances()
    effective = float(cutoff) if cutoff is not None else float(distances.max(initial=0.0))
    _check_neighbours(bh, effective, periodic)

    pairs = bh.pairs
    is_edge = np.ones(bh.n_pairs, dtype=bool)
    is_edge[node_pair] = False
    edge_pair = np.flatnonzero(is_edge)
    edge_of_pair = np.full(bh.n_pairs, -1, dtype=np.int64)
    edge_of_pair[edge_pair] = np.arange(len(edge_pair))
    src, dst, shift = pairs[edge_pair, 3], pairs[edge_pair, 4], pairs[edge_pair, :3]
    vectors = bh.positions[dst] + shift @ bh.lattice - bh.positions[src]

    def as_long(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.int64)

    def as_float(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)

    return StructureGraph(
        numbers=as_long(bh.numbers),
        positions=as_float(bh.positions),
        lattice=as_float(bh.lattice),
        edge_src=as_long(src),
        edge_dst=as_long(dst),
        edge_shift=as_long(shift),
        edge_vec=as_float(vectors.reshape(-1, 3)),
        edge_pair=as_long(kept[edge_pair]),
        edge_reverse=as_long(edge_of_pair[partner[edge_pair]]),
        node_pair=as_long(kept[node_pair]),
        cutoff=effective,
        source=full,
    )


# ------------------------------------------------------------------------------------------- batching
@dataclass(eq=False)
class GraphBatch:
    """Several structure graphs as one disconnected graph. B structures, N nodes, E edges in total.

    Node indices (``edge_src``, ``edge_dst``) and ``edge_reverse`` are global (offset per structure);
    ``edge_pair`` and ``node_pair`` stay local rows of each structure's ``sources[b].pairs``.

    :param numbers: (N,) int64. :param positions: (N, 3). :param lattice: (B, 3, 3).
    :param edge_src, edge_dst: (E,) int64 global node indices.
    :param edge_shift: (E, 3) int64. :param edge_vec: (E, 3).
    :param edge_pair: (E,) int64 local pair rows. :param edge_reverse: (E,) int64 global edge indices.
    :param node_pair: (N,) int64 local pair rows.
    :param batch: (N,) int64 structure of each node. :param edge_batch: (E,) int64 structure of each edge.
    :param n_nodes, n_edges: (B,) int64 sizes per structure.
    :param cutoffs: cutoff of each structure, Å.
    :param sources: the block Hamiltonian of each structure (None where unknown).
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    lattice: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_shift: torch.Tensor
    edge_vec: torch.Tensor
    edge_pair: torch.Tensor
    edge_reverse: torch.Tensor
    node_pair: torch.Tensor
    batch: torch.Tensor
    edge_batch: torch.Tensor
    n_nodes: torch.Tensor
    n_edges: torch.Tensor
    cutoffs: list[float]
    sources: list[BlockHamiltonian | None] = field(default_factory=list, repr=False)

    @property
    def n_graphs(self) -> int:
        return int(self.n_nodes.shape[0])

    @property
    def node_offsets(self) -> torch.Tensor:
        """(B + 1,) start of each structure's nodes."""
        return torch.cat([self.n_nodes.new_zeros(1), torch.cumsum(self.n_nodes, 0)])

    @property
    def edge_offsets(self) -> torch.Tensor:
        """(B + 1,) start of each structure's edges."""
        return torch.cat([self.n_edges.new_zeros(1), torch.cumsum(self.n_edges, 0)])

    def split_nodes(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Split a (N, ...) per-node tensor into B per-structure tensors."""
        return list(torch.split(tensor, self.n_nodes.tolist()))

    def split_edges(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Split an (E, ...) per-edge tensor into B per-structure tensors."""
        return list(torch.split(tensor, self.n_edges.tolist()))

    def to(self, device=None, dtype: torch.dtype | None = None) -> GraphBatch:
        """A copy on ``device`` (floating tensors optionally cast to ``dtype``); sources are shared."""
        return _move(self, device, dtype)

    def __len__(self) -> int:
        return self.n_graphs


def collate(graphs: list) -> GraphBatch:
    """Batch :class:`StructureGraph` objects (or objects with a ``.graph``, e.g. dataset samples)."""
    graphs = [getattr(item, 'graph', item) for item in graphs]
    if not graphs:
        raise GraphError('cannot collate an empty list of graphs')
    n_nodes = torch.tensor([g.n_nodes for g in graphs], dtype=torch.int64)
    n_edges = torch.tensor([g.n_edges for g in graphs], dtype=torch.int64)
    node_offsets = torch.cumsum(n_nodes, 0) - n_nodes
    edge_offsets = torch.cumsum(n_edges, 0) - n_edges

    def cat(name: str, offsets: torch.Tensor | None = None) -> torch.Tensor:
        parts = [getattr(g, name) for g in graphs]
        if offsets is not None:
            parts = [part + offset for part, offset in zip(parts, offsets.tolist(), strict=True)]
        return torch.cat(parts)

    index = torch.arange(len(graphs))
    return GraphBatch(
        numbers=cat('numbers'),
        positions=cat('positions'),
        lattice=torch.stack([g.lattice for g in graphs]),
        edge_src=cat('edge_src', node_offsets),
        edge_dst=cat('edge_dst', node_offsets),
        edge_shift=cat('edge_shift'),
        edge_vec=cat('edge_vec'),
        edge_pair=cat('edge_pair'),
        edge_reverse=cat('edge_reverse', edge_offsets),
        node_pair=cat('node_pair'),
        batch=torch.repeat_interleave(index, n_nodes),
        edge_batch=torch.repeat_interleave(index, n_edges),
        n_nodes=n_nodes,
        n_edges=n_edges,
        cutoffs=[g.cutoff for g in graphs],
        sources=[g.source for g in graphs],
    )
