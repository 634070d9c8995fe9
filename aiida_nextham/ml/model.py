"""The NextHAM model: an E(3)-equivariant graph-attention Transformer that predicts ΔH = H - H0.

Nodes are atoms, edges the (i, j, R) blocks. Node features start from the element and the on-site
H0 block, edge features from the H0 block of the pair and the spherical harmonics of the edge vector
weighted by a radial basis. Each layer attends over the edges of an atom (attention weights from
invariants, values from tensor products of the neighbour's features with the edge harmonics), then
updates the edge features from both end atoms. TraceGrad blocks and a bilinear x_i ⊗ x_j head lead
to the output irreps, which the Wigner-3j map turns into blocks; H_ij(R) = H_ji(-R)^T is exact
because the blocks are symmetrised over each pair and its partner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn

from .config import ModelConfig
from .irreps import OrbitalIrreps
from .layers import (
    BesselBasis,
    BilinearTensorProduct,
    ChannelwiseTensorProduct,
    EquivariantLayerNorm,
    GatedFeedForward,
    IrrepsLinear,
    PolynomialEnvelope,
    RadialHarmonics,
    ScalarMLP,
    TraceGrad,
    scatter_softmax,
)

__all__ = ['GraphInputs', 'ModelOutput', 'NexthamModel']


@dataclass
class GraphInputs:
    """What the network sees (one structure or a batch with nodes and edges concatenated).

    :param numbers: (N,) atomic numbers.
    :param edge_src: (E,) atom i of each edge (messages are gathered at i).
    :param edge_dst: (E,) atom j.
    :param edge_vec: (E, 3) r_j + R - r_i, Å.
    :param edge_reverse: (E,) index of the partner edge (j, i, -R).
    :param node_h0: (N, dim) irreps features of the on-site H0 blocks (eV), or None.
    :param edge_h0: (E, dim) irreps features of the edge H0 blocks (eV), or None.
    """

    numbers: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_vec: torch.Tensor
    edge_reverse: torch.Tensor
    node_h0: torch.Tensor | None = None
    edge_h0: torch.Tensor | None = None


@dataclass
class ModelOutput:
    """Predicted irreps features of ΔH (eV; H itself in structure-only mode) and the TraceGrad traces."""

    node: torch.Tensor  # (N, dim)
    edge: torch.Tensor  # (E, dim)
    node_trace: torch.Tensor | None = None  # (N,)
    edge_trace: torch.Tensor | None = None  # (E,)


def _head_index(irreps: o3.Irreps, n_heads: int) -> torch.Tensor:
    """(dim,) head of every feature component: the channels of each irrep split evenly over the heads."""
    parts = []
    for mul, ir in irreps:
        heads = torch.arange(mul) * n_heads // mul
        parts.append(heads.repeat_interleave(ir.dim))
    return torch.cat(parts)


class TransformerLayer(nn.Module):
    """One equivariant graph-attention layer with node and edge updates."""

    def __init__(self, config: ModelConfig, node_irreps, edge_irreps, sh_irreps):
        super().__init__()
        self.node_irreps, self.edge_irreps = node_irreps, edge_irreps
        self.n_heads = config.n_heads
        n_node_scalars = node_irreps.count('0e')
        n_edge_scalars = edge_irreps.count('0e')
        n_invariants = config.n_radial + n_edge_scalars + 2 * n_node_scalars
        value_irreps = config.value_irreps(node_irreps)
        self.value_in = IrrepsLinear(node_irreps, value_irreps)
        self.tp = ChannelwiseTensorProduct(value_irreps, sh_irreps, node_irreps)
        self.tp_weights = ScalarMLP([n_invariants, config.radial_hidden, self.tp.weight_numel])
        self.value = IrrepsLinear(self.tp.irreps_out, node_irreps)
        self.edge_value = IrrepsLinear(edge_irreps, node_irreps)
        self.attention = ScalarMLP([n_invariants, config.radial_hidden, config.n_heads], last_bias=False)
        self.register_buffer('head_of_dim', _head_index(node_irreps, config.n_heads))
        self.node_out = IrrepsLinear(node_irreps, node_irreps)
        self.node_norm = EquivariantLayerNorm(node_irreps)
        self.node_ffn = GatedFeedForward(node_irreps)
        self.node_ffn_norm = EquivariantLayerNorm(node_irreps)
        self.edge_from_value = IrrepsLinear(node_irreps, edge_irreps)
        self.edge_from_reverse = IrrepsLinear(node_irreps, edge_irreps)
        self.edge_from_src = IrrepsLinear(node_irreps, edge_irreps)
        self.edge_from_dst = IrrepsLinear(node_irreps, edge_irreps)
        self.edge_norm = EquivariantLayerNorm(edge_irreps)
        self.edge_ffn = GatedFeedForward(edge_irreps)
        self.edge_ffn_norm = EquivariantLayerNorm(edge_irreps)

    def forward(self, x, e, sh, radial, envelope, g: GraphInputs):
        """x (N, node dim), e (E, edge dim), sh (E, sh dim), radial (E, n_radial), envelope (E,)."""
        src, dst = g.edge_src, g.edge_dst
        n_node_scalars = self.node_irreps.count('0e')
        n_edge_scalars = self.edge_irreps.count('0e')
        invariants = torch.cat(
            [radial, e[:, :n_edge_scalars], x[src, :n_node_scalars], x[dst, :n_node_scalars]], dim=1
        )
        value = self.value(self.tp(self.value_in(x)[dst], sh, self.tp_weights(invariants))) + self.edge_value(
            e
        )
        alpha = scatter_softmax(self.attention(invariants), src, x.shape[0]) * envelope[:, None]
        messages = value * alpha[:, self.head_of_dim]
        aggregated = x.new_zeros(x.shape).index_add(0, src, messages)
        x = self.node_norm(x + self.node_out(aggregated))
        x = self.node_ffn_norm(x + self.node_ffn(x))
        e = e + self.edge_from_value(value) + self.edge_from_reverse(value[g.edge_reverse])
        e = self.edge_norm(e + self.edge_from_src(x[src]) + self.edge_from_dst(x[dst]))
        e = self.edge_ffn_norm(e + self.edge_ffn(e))
        return x, e


class NexthamModel(nn.Module):
    """(structure, H0) -> ΔH irreps features on every node and edge.

    Scalar L = 0 irreps must come first in every feature layout (``Irreps.sort()`` guarantees it).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.shells:
            raise ValueError('the model config has no element coverage (`shells`)')
        self.config = config
        self.orbital_irreps = OrbitalIrreps(config.shells)
        out = self.orbital_irreps.irreps
        self.out_irreps = out
        self.node_irreps = node_irreps = config.node_irreps(out)
        self.edge_irreps = edge_irreps = config.edge_irreps(out)
        self.sh_irreps = sh_irreps = o3.Irreps.spherical_harmonics(config.sh_lmax)

        elements = self.orbital_irreps.elements
        index = torch.full((119,), -1, dtype=torch.long)
        index[list(elements)] = torch.arange(len(elements))
        self.register_buffer('element_index', index)
        self.element_embedding = nn.Embedding(len(elements), node_irreps.count('0e'))
        self.radial = BesselBasis(config.cutoff, config.n_radial)
        self.envelope = PolynomialEnvelope(config.cutoff)
        self.edge_sh = RadialHarmonics(sh_irreps, config.n_radial, edge_irreps)
        if config.use_h0:
            self.node_h0 = IrrepsLinear(out, node_irreps)
            self.edge_h0 = IrrepsLinear(out, edge_irreps)
        self.layers = nn.ModuleList(
            TransformerLayer(config, node_irreps, edge_irreps, sh_irreps) for _ in range(config.n_layers)
        )
        if config.tracegrad:
            self.node_tracegrad = TraceGrad(node_irreps, config.radial_hidden)
            self.edge_tracegrad = TraceGrad(edge_irreps, config.radial_hidden)
        pair = config.pair_irreps(out)
        self.pair_src = IrrepsLinear(node_irreps, pair)
        self.pair_dst = IrrepsLinear(node_irreps, pair)
        self.pair_product = BilinearTensorProduct(pair, pair, out)
        self.node_head = IrrepsLinear(node_irreps, out)
        self.edge_head = IrrepsLinear(edge_irreps, out)
        n = out.num_irreps
        for name in ('node_h0_scale', 'edge_h0_scale', 'node_out_scale', 'edge_out_scale'):
            self.register_buffer(name, torch.ones(n))
        dims = torch.tensor([ir.dim for mul, ir in out for _ in range(mul)])
        self.register_buffer('dim_channel', torch.repeat_interleave(torch.arange(n), dims), persistent=False)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _expand(self, scale: torch.Tensor) -> torch.Tensor:
        return scale[self.dim_channel]

    def forward(self, g: GraphInputs) -> ModelOutput:
        element = self.element_index[g.numbers]
        if (element < 0).any():
            missing = sorted(set(g.numbers[element < 0].tolist()))
            raise ValueError(
                f'elements {missing} are outside the model coverage {self.orbital_irreps.elements}'
            )
        length = g.edge_vec.norm(dim=1)
        sh = o3.spherical_harmonics(self.sh_irreps, g.edge_vec, normalize=True, normalization='component')
        envelope = self.envelope(length)
        radial = self.radial(length) * envelope[:, None]

        n_scalars = self.node_irreps.count('0e')
        x = g.edge_vec.new_zeros(len(g.numbers), self.node_irreps.dim)
        x[:, :n_scalars] = self.element_embedding(element)
        e = self.edge_sh(sh, radial)
        if self.config.use_h0:
            if g.node_h0 is None or g.edge_h0 is None:
                raise ValueError('this model takes H0 as input: give node_h0 and edge_h0 features')
            x = x + self.node_h0(g.node_h0 / self._expand(self.node_h0_scale))
            e = e + self.edge_h0(g.edge_h0 / self._expand(self.edge_h0_scale))
        for layer in self.layers:
            x, e = layer(x, e, sh, radial, envelope, g)
        node_trace = edge_trace = None
        if self.config.tracegrad:
            x, node_trace = self.node_tracegrad(x)
            e, edge_trace = self.edge_tracegrad(e)
        node = self.node_head(x) * self._expand(self.node_out_scale)
        edge = self.edge_head(e) + self.pair_product(
            self.pair_src(x)[g.edge_src], self.pair_dst(x)[g.edge_dst]
        )
        edge = edge * envelope[:, None] * self._expand(self.edge_out_scale)
        return ModelOutput(node, edge, node_trace, edge_trace)
