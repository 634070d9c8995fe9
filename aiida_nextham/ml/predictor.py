"""From graphs to Hamiltonians: H0 encoding, the model's ΔH blocks per structure, feature scales.

The model sees every edge within its cutoff; blocks of stored pairs beyond it get the far-field
correction of :func:`far_field` (or none), which is why a structure's layout covers all its stored pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..hamiltonian.block import BlockHamiltonian
from .graph import GraphBatch, build_graph, collate
from .irreps import BlockLayout
from .loss import SpinorLayout
from .model import GraphInputs, NexthamModel

__all__ = [
    'Prediction',
    'channel_rms',
    'far_field',
    'fit_scales',
    'predict_batch',
    'predict_hamiltonian',
    'spinless',
    'structure_layout',
]


#: smallest feature scale (eV): a target channel that vanishes by symmetry must not blow up its inverse
SCALE_FLOOR = 1e-4


@dataclass
class Prediction:
    """The model's output for one structure.

    :param delta: (size,) flat spinless ΔH blocks in the layout of the structure's pairs (eV);
        H itself for a structure-only model.
    :param node_trace, edge_trace: TraceGrad invariants (N,), (E,), or None.
    """

    delta: torch.Tensor
    node_trace: torch.Tensor | None
    edge_trace: torch.Tensor | None
    layout: BlockLayout


def structure_layout(model: NexthamModel, bh: BlockHamiltonian) -> BlockLayout:
    """The block layout of ``bh`` (cached on the object: it depends only on its pairs and elements)."""
    cache = bh.__dict__.setdefault('_nextham_layouts', {})
    key = id(model.orbital_irreps)
    if key not in cache:
        cache[key] = BlockLayout(model.orbital_irreps, bh.numbers, bh.pairs)
    return cache[key]


def spinless(bh: BlockHamiltonian, name: str) -> np.ndarray:
    """Flat spinless blocks of matrix ``name``: as stored, or the spin average (↑↑ + ↓↓)/2 of a spinor."""
    flat = bh.matrix(name)
    return flat if bh.spin == 'none' else SpinorLayout.from_hamiltonian(bh).reduce(flat)


def _h0_features(bh: BlockHamiltonian, layout: BlockLayout, dtype, device) -> torch.Tensor:
    """(n_pairs, dim) irreps features of the H0 blocks of every pair of ``bh``."""
    if bh.h0 is None:
        raise ValueError(f'{bh.formula}: this model takes H0 as input but the Hamiltonian has none')
    return layout.to_features(torch.as_tensor(spinless(bh, 'H0'), dtype=dtype, device=device))


def far_field(delta: torch.Tensor, bh: BlockHamiltonian, covered_pairs: torch.Tensor) -> torch.Tensor:
    """ΔH of the pairs beyond the model's cutoff: μ̂S, with μ̂ = ⟨S, ΔH⟩ / ⟨S, S⟩ over the predicted blocks.

    Most of H − H0 is a uniform shift μS (0.1–0.5 eV in Si), and far blocks of a diffuse basis still
    overlap (gth-dzvp Si: |S| up to 0.09 beyond 6 Å). Leaving them at H0 would shift the near blocks
    but not the far ones; that mismatch, amplified along the near-null directions of S(k), puts ghost
    states into the gap. With the structure's own μ̂ the far blocks move with the rest (a structure
    whose true far blocks are H0 + μS is reproduced exactly there).

    :param delta: (n_elements,) flat spinless ΔH of all stored pairs of ``bh`` (zero beyond the cutoff).
    :param covered_pairs: (n_covered,) rows of ``bh.pairs`` the model predicted (on-site and edges).
    :return: (n_elements,) ``delta`` with μ̂S in the uncovered blocks (differentiable in ``delta``).
    """
    if bh.overlap is None:  # orthogonal basis: S vanishes off-site
        return delta
    sizes = torch.as_tensor(np.diff(bh.block_offsets('S')), device=delta.device)
    covered = torch.zeros(bh.n_pairs, dtype=torch.bool, device=delta.device)
    covered[covered_pairs] = True
    covered = covered.repeat_interleave(sizes)
    if bool(covered.all()):
        return delta
    overlap = torch.as_tensor(bh.overlap, device=delta.device).to(delta.dtype)
    inside = torch.where(covered, overlap, torch.zeros_like(overlap))
    shift = (inside * delta).sum() / inside.square().sum().clamp_min(torch.finfo(delta.dtype).tiny)
    return torch.where(covered, delta, shift * overlap)


def structure_delta(
    model: NexthamModel, bh: BlockHamiltonian, layout: BlockLayout, node_pair, node, edge_pair, edge
) -> torch.Tensor:
    """Flat spinless ΔH (H for a structure-only model) of all stored pairs from per-atom and per-edge
    outputs: (N, dim) ``node`` at rows ``node_pair``, (E, dim) ``edge`` at rows ``edge_pair``."""
    features = node.new_zeros(layout.n_pairs, model.out_irreps.dim)
    features[node_pair] = node
    features[edge_pair] = edge
    delta = layout.to_flat(features)
    if model.config.use_h0 and model.config.far_field_shift:
        delta = far_field(delta, bh, torch.cat([node_pair, edge_pair]))
    return delta


def predict_batch(model: NexthamModel, batch: GraphBatch) -> list[Prediction]:
    """Run the model on a batch and return ΔH blocks per structure."""
    dtype, device = batch.edge_vec.dtype, batch.edge_vec.device
    layouts = [structure_layout(model, bh) for bh in batch.sources]
    node_pairs, edge_pairs = batch.split_nodes(batch.node_pair), batch.split_edges(batch.edge_pair)
    node_h0 = edge_h0 = None
    if model.config.use_h0:
        features = [
            _h0_features(bh, layout, dtype, device) for bh, layout in zip(batch.sources, layouts, strict=True)
        ]
        node_h0 = torch.cat([f[pairs] for f, pairs in zip(features, node_pairs, strict=True)])
        edge_h0 = torch.cat([f[pairs] for f, pairs in zip(features, edge_pairs, strict=True)])
    inputs = GraphInputs(
        batch.numbers, batch.edge_src, batch.edge_dst, batch.edge_vec, batch.edge_reverse, node_h0, edge_h0
    )
    output = model(inputs)
    nodes, edges = batch.split_nodes(output.node), batch.split_edges(output.edge)
    node_traces = (
        batch.split_nodes(output.node_trace) if output.node_trace is not None else [None] * len(layouts)
    )
    edge_traces = (
        batch.split_edges(output.edge_trace) if output.edge_trace is not None else [None] * len(layouts)
    )
    predictions = []
    for k, (bh, layout) in enumerate(zip(batch.sources, layouts, strict=True)):
        delta = structure_delta(model, bh, layout, node_pairs[k], nodes[k], edge_pairs[k], edges[k])
        predictions.append(Prediction(delta, node_traces[k], edge_traces[k], layout))
    return predictions


@torch.no_grad()
def predict_hamiltonian(model: NexthamModel, bh: BlockHamiltonian, dtype=torch.float32) -> BlockHamiltonian:
    """H = H0 + ΔH (spinless correction added to both spin-diagonal blocks of a spinor H0)."""
    model.eval()
    graph = build_graph(bh, model.config.cutoff, dtype=dtype)
    device = next(model.parameters()).device
    delta = predict_batch(model, collate([graph]).to(device))[0].delta.double().cpu().numpy()
    if not model.config.use_h0:
        return bh.replace(hamiltonian=delta, h0=bh.h0)
    if bh.spin == 'none':
        return bh.replace(hamiltonian=bh.h0 + delta)
    return bh.replace(hamiltonian=bh.h0 + SpinorLayout.from_hamiltonian(bh).expand(delta, np.complex128))


def channel_rms(features: torch.Tensor, mask: torch.Tensor, model: NexthamModel) -> torch.Tensor:
    """RMS per component of every output channel over the rows that use it: (n, dim) -> (num_irreps,)."""
    sq = features.pow(2).new_zeros(features.shape[0], model.out_irreps.num_irreps)
    sq = sq.index_add(1, model.dim_channel, features.pow(2))
    used = sq.new_zeros(sq.shape).index_add(1, model.dim_channel, mask.to(sq.dtype)) > 0
    count = used.sum(0).clamp_min(1)
    dims = torch.zeros(model.out_irreps.num_irreps).index_add(
        0, model.dim_channel, torch.ones(model.out_irreps.dim)
    )
    rms = (sq.sum(0) / count / dims.to(sq.dtype)).sqrt()
    # unused channels get 1; channels that vanish by symmetry (rounding noise) are floored at 0.1 meV
    return torch.where(used.any(0), rms.clamp_min(SCALE_FLOOR), torch.ones_like(rms))


def _channel_masks(orbital_irreps, numbers: np.ndarray, pairs: np.ndarray) -> torch.Tensor:
    """(n_pairs, dim) bool: the output channels each pair's element types use."""
    elements = np.asarray(orbital_irreps.elements)
    table = np.stack([[orbital_irreps.channel_mask(a, b) for b in elements] for a in elements])
    kind = np.searchsorted(elements, numbers)
    return torch.as_tensor(table[kind[pairs[:, 3]], kind[pairs[:, 4]]])


@torch.no_grad()
def fit_scales(model: NexthamModel, samples) -> dict[str, list[float]]:
    """Set the model's input/output scales to the per-channel RMS of H0 and of the target.

    :param samples: iterable of :class:`~aiida_nextham.ml.dataset.Sample` (the training set).
    :returns: the fitted scales by buffer name.
    """
    stats: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
        k: [] for k in ('node_h0', 'edge_h0', 'node', 'edge')
    }
    for sample in samples:
        graph, bh = sample.graph, sample.hamiltonian
        layout = structure_layout(model, bh)
        masks = _channel_masks(layout.orbital_irreps, bh.numbers, bh.pairs)
        target = spinless(bh, 'H')
        if model.config.use_h0:
            h0 = spinless(bh, 'H0')
            h0_features = layout.to_features(torch.as_tensor(h0))
            stats['node_h0'].append((h0_features[graph.node_pair], masks[graph.node_pair]))
            stats['edge_h0'].append((h0_features[graph.edge_pair], masks[graph.edge_pair]))
            target = target - h0
        features = layout.to_features(torch.as_tensor(target))
        stats['node'].append((features[graph.node_pair], masks[graph.node_pair]))
        stats['edge'].append((features[graph.edge_pair], masks[graph.edge_pair]))
    fitted = {}
    for key, buffer in (
        ('node_h0', 'node_h0_scale'),
        ('edge_h0', 'edge_h0_scale'),
        ('node', 'node_out_scale'),
        ('edge', 'edge_out_scale'),
    ):
        if stats[key]:
            rms = channel_rms(
                torch.cat([f for f, _ in stats[key]]), torch.cat([m for _, m in stats[key]]), model
            )
            getattr(model, buffer).copy_(rms.to(getattr(model, buffer)))
            fitted[buffer] = rms.tolist()
    return fitted
