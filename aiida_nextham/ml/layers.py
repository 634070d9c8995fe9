"""Small equivariant building blocks: radial basis, envelope, norm, gated feed-forward, TraceGrad."""

from __future__ import annotations

import math
from functools import cache

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn

__all__ = [
    'BesselBasis',
    'BilinearTensorProduct',
    'ChannelwiseTensorProduct',
    'IrrepsLinear',
    'EquivariantLayerNorm',
    'GatedFeedForward',
    'PolynomialEnvelope',
    'RadialHarmonics',
    'ScalarMLP',
    'TraceGrad',
    'scatter_softmax',
]


@cache
def _w3j64(l1: int, l2: int, l3: int) -> torch.Tensor:
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)


def coupling(l1: int, l2: int, l3: int, like: torch.Tensor) -> torch.Tensor:
    """Wigner-3j symbol (2l1+1, 2l2+1, 2l3+1) scaled by sqrt(2l3+1), in ``like``'s dtype and device.

    Kept out of the module buffers on purpose: ``model.float().double()`` would otherwise leave the
    symbols rounded to float32, and equivariance in float64 with them.
    """
    return _w3j64(l1, l2, l3).to(dtype=like.dtype, device=like.device)


def _blocks(x: torch.Tensor, irreps: o3.Irreps) -> list[torch.Tensor]:
    """(n, irreps.dim) -> one (n, mul, 2L+1) tensor per entry (``split``: cheaper backward than slices)."""
    parts = x.split([mul * ir.dim for mul, ir in irreps], dim=-1)
    return [part.reshape(-1, mul, ir.dim) for part, (mul, ir) in zip(parts, irreps, strict=True)]


class IrrepsLinear(nn.Module):
    """Equivariant linear map: channels of the same irrep type mixed, biases on even scalars.

    Same role as ``e3nn.o3.Linear`` with one matrix product per irrep *type* instead of one per pair of
    entries, which matters when the input has many repeated entries (the output of a tensor product).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, bias: bool = True):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        mul_in: dict = {}
        for mul, ir in self.irreps_in:
            mul_in[ir] = mul_in.get(ir, 0) + mul
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for mul, ir in self.irreps_out.simplify():
            if ir in mul_in:
                self.weights[str(ir)] = nn.Parameter(torch.randn(mul_in[ir], mul))
            if bias and ir == o3.Irrep('0e'):
                self.biases[str(ir)] = nn.Parameter(torch.zeros(mul))
        self.mul_in = mul_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, irreps_in.dim) -> (n, irreps_out.dim)."""
        grouped: dict = {}
        for block, (_, ir) in zip(_blocks(x, self.irreps_in), self.irreps_in, strict=True):
            grouped.setdefault(ir, []).append(block)
        per_type = {}
        for mul, ir in self.irreps_out.simplify():
            key = str(ir)
            if key in self.weights:
                inputs = torch.cat(grouped[ir], dim=1) if len(grouped[ir]) > 1 else grouped[ir][0]
                out = torch.einsum('nud,uv->nvd', inputs, self.weights[key]) / math.sqrt(self.mul_in[ir])
            else:
                out = x.new_zeros(x.shape[0], mul, ir.dim)
            if key in self.biases:
                out = out + self.biases[key][:, None]
            per_type[ir] = list(out.split([m for m, i in self.irreps_out if i == ir], dim=1))
        pieces = [per_type[ir].pop(0).reshape(x.shape[0], -1) for _, ir in self.irreps_out]
        return torch.cat(pieces, dim=1)


class ChannelwiseTensorProduct(nn.Module):
    """Channel-wise ('uvu') tensor product x ⊗ Y with per-sample path weights.

    Every (input entry, harmonic l, output L) path whose output type is in ``keep`` becomes one entry
    of ``irreps_out``: ``out[n, u, :] = w[n, u] sqrt(2L+1) Σ C(l1, l2, L) x[n, u, :] Y[n, :]``.

    :param irreps_in: features x, (n, irreps_in.dim).
    :param irreps_sh: harmonics Y, (n, irreps_sh.dim).
    :param keep: irrep types allowed in the output.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, keep: o3.Irreps):
        super().__init__()
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        types = {ir for _, ir in o3.Irreps(keep)}
        self.paths, out = [], []
        for i1, (mul, ir1) in enumerate(self.irreps_in):
            for i2, (_, ir2) in enumerate(self.irreps_sh):
                for ir_out in ir1 * ir2:
                    if ir_out in types:
                        self.paths.append((i1, i2, len(out)))
                        out.append((mul, ir_out))
        self.irreps_out = o3.Irreps(out)
        self.weight_numel = sum(mul for mul, _ in out)
        self.ls = [
            (self.irreps_in[i1].ir.l, self.irreps_sh[i2].ir.l, self.irreps_out[i_out].ir.l)
            for i1, i2, i_out in self.paths
        ]

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x (n, irreps_in.dim), y (n, irreps_sh.dim), weight (n, weight_numel) -> (n, irreps_out.dim)."""
        xs = _blocks(x, self.irreps_in)
        ys = [b[:, 0] for b in _blocks(y, self.irreps_sh)]
        ws = weight.split([mul for mul, _ in self.irreps_out], dim=1)
        out = []
        for k, (i1, i2, _) in enumerate(self.paths):
            c = torch.einsum('nj,ijk->nik', ys[i2], coupling(*self.ls[k], x))  # (n, 2l1+1, 2L+1)
            out.append((torch.bmm(xs[i1], c) * ws[k][:, :, None]).reshape(x.shape[0], -1))
        return torch.cat(out, dim=1)


class RadialHarmonics(nn.Module):
    """Edge embedding: harmonics Y_l(r̂) times learned radial functions, ``out[c] = (R(r) W_l)[c] Y_l``.

    :param irreps_sh: harmonics (n, irreps_sh.dim); :param n_radial: radial features (n, n_radial).
    :param irreps_out: output; each entry whose type is a harmonic's type gets it, the others stay zero.
    """

    def __init__(self, irreps_sh: o3.Irreps, n_radial: int, irreps_out: o3.Irreps):
        super().__init__()
        self.irreps_sh, self.irreps_out = o3.Irreps(irreps_sh), o3.Irreps(irreps_out)
        sh_types = {ir: k for k, (_, ir) in enumerate(self.irreps_sh)}
        self.sources = [sh_types.get(ir) for _, ir in self.irreps_out]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(n_radial, mul) / math.sqrt(n_radial))
            for (mul, _), source in zip(self.irreps_out, self.sources, strict=True)
            if source is not None
        )

    def forward(self, sh: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        ys = [b[:, 0] for b in _blocks(sh, self.irreps_sh)]
        weights = iter(self.weights)
        out = []
        for (mul, ir), source in zip(self.irreps_out, self.sources, strict=True):
            if source is None:
                out.append(sh.new_zeros(sh.shape[0], mul * ir.dim))
            else:
                out.append(
                    ((radial @ next(weights))[:, :, None] * ys[source][:, None, :]).reshape(sh.shape[0], -1)
                )
        return torch.cat(out, dim=1)


class BilinearTensorProduct(nn.Module):
    """Fully connected tensor product x1 ⊗ x2 -> out with learned weights per path (all channel pairs).

    ``out[w, k] = Σ_uv W[u, v, w] Σ_ij C(l1, l2, L)[i, j, k] x1[u, i] x2[v, j] / sqrt(fan-in)``.
    """

    def __init__(self, irreps1: o3.Irreps, irreps2: o3.Irreps, irreps_out: o3.Irreps):
        super().__init__()
        self.irreps1, self.irreps2, self.irreps_out = (
            o3.Irreps(irreps1),
            o3.Irreps(irreps2),
            o3.Irreps(irreps_out),
        )
        self.paths = []
        fan_in = [0] * len(self.irreps_out)
        for i1, (mul1, ir1) in enumerate(self.irreps1):
            for i2, (mul2, ir2) in enumerate(self.irreps2):
                for i_out, (_, ir_out) in enumerate(self.irreps_out):
                    if ir_out in ir1 * ir2:
                        self.paths.append((i1, i2, i_out))
                        fan_in[i_out] += mul1 * mul2
        self.fan_in = fan_in
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(self.irreps1[i1].mul, self.irreps2[i2].mul, self.irreps_out[i_out].mul))
            for i1, i2, i_out in self.paths
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1 (n, irreps1.dim), x2 (n, irreps2.dim) -> (n, irreps_out.dim)."""
        a, b = _blocks(x1, self.irreps1), _blocks(x2, self.irreps2)
        out = [x1.new_zeros(x1.shape[0], mul, ir.dim) for mul, ir in self.irreps_out]
        for (i1, i2, i_out), weight in zip(self.paths, self.weights, strict=True):
            c = coupling(self.irreps1[i1].ir.l, self.irreps2[i2].ir.l, self.irreps_out[i_out].ir.l, x1)
            pair = torch.einsum('nui,nvj,ijk->nuvk', a[i1], b[i2], c)
            out[i_out] = out[i_out] + torch.einsum('nuvk,uvw->nwk', pair, weight) / math.sqrt(
                self.fan_in[i_out]
            )
        return torch.cat([o.reshape(x1.shape[0], -1) for o in out], dim=1)


class BesselBasis(nn.Module):
    """``sqrt(2/rc) sin(n π r / rc) / r`` for n = 1..n_basis: (E,) lengths -> (E, n_basis)."""

    def __init__(self, cutoff: float, n_basis: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer(
            'frequencies', math.pi * torch.arange(1, n_basis + 1, dtype=torch.float64), persistent=False
        )

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r[:, None] / self.cutoff
        freq = self.frequencies.to(r.dtype)
        return math.sqrt(2.0 / self.cutoff) * torch.sin(freq * x) / r[:, None].clamp_min(1e-9)


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``1 - 28 x^6 + 48 x^7 - 21 x^8`` (x = r / rc), zero with two derivatives at rc."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.cutoff).clamp(max=1.0)
        return 1 - 28 * x**6 + 48 * x**7 - 21 * x**8


class ScalarMLP(nn.Sequential):
    """MLP on invariants: Linear -> SiLU -> ... -> Linear (``last_bias=False``: no bias at the end, e.g.
    before a softmax, which ignores it)."""

    def __init__(self, sizes: list[int], last_bias: bool = True):
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b, bias=last_bias or k < len(sizes) - 2))
            if k < len(sizes) - 2:
                layers.append(nn.SiLU())
        super().__init__(*layers)


def scatter_softmax(logits: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of (E, H) ``logits`` over the groups of equal ``index`` (E,) (n groups)."""
    heads = logits.shape[1]
    expanded = index[:, None].expand(-1, heads)
    group_max = logits.new_full((n, heads), -torch.inf).scatter_reduce(
        0, expanded, logits, reduce='amax', include_self=True
    )
    weights = torch.exp(logits - group_max[index].detach())
    total = logits.new_zeros(n, heads).index_add(0, index, weights)
    return weights / total[index].clamp_min(1e-30)


class EquivariantLayerNorm(nn.Module):
    """Layer norm that keeps equivariance: scalars centred and scaled, each L scaled by the RMS norm
    of its channels; a learnable scale per channel (and a bias on scalars)."""

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-6):
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.irreps.num_irreps))
        n_scalar = sum(mul for mul, ir in self.irreps if ir.l == 0)
        self.bias = nn.Parameter(torch.zeros(n_scalar))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, irreps.dim) -> (n, irreps.dim)."""
        out, start, channel, scalar = [], 0, 0, 0
        for mul, ir in self.irreps:
            block = x[:, start : start + mul * ir.dim].reshape(-1, mul, ir.dim)
            if ir.l == 0:
                block = block - block.mean(dim=1, keepdim=True)
            norm = block.pow(2).sum(-1).mean(-1, keepdim=True)[:, :, None]
            block = block * torch.rsqrt(norm + self.eps) * self.weight[channel : channel + mul, None]
            if ir.l == 0 and ir.p == 1:
                block = block + self.bias[scalar : scalar + mul, None]
                scalar += mul
            out.append(block.reshape(-1, mul * ir.dim))
            start += mul * ir.dim
            channel += mul
        return torch.cat(out, dim=1)


class GatedFeedForward(nn.Module):
    """Equivariant feed-forward: Linear -> gate (SiLU on scalars, sigmoid gates on L > 0) -> Linear."""

    def __init__(self, irreps: o3.Irreps, expansion: int = 2):
        super().__init__()
        irreps = o3.Irreps(irreps)
        scalars = o3.Irreps([(mul * expansion, ir) for mul, ir in irreps if ir.l == 0])
        gated = o3.Irreps([(mul * expansion, ir) for mul, ir in irreps if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, (0, 1))]) if gated.num_irreps else o3.Irreps('')
        self.gate = e3nn_nn.Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid], gated)
        self.linear_in = IrrepsLinear(irreps, self.gate.irreps_in)
        self.linear_out = IrrepsLinear(self.gate.irreps_out, irreps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(self.gate(self.linear_in(x)))


class TraceGrad(nn.Module):
    """TraceGrad (arXiv 2405.05722) on equivariant features f.

    Invariants are traces of tensor products of channel mixtures, ``z_c = <(W1 f)_c, (W2 f)_c>`` for every
    irrep channel c (the trace of the product of two (2L+1)-vectors); an MLP maps them to an invariant
    T (its head is also a prediction of the trace of the target block, supervised when wanted); the
    gradient ∂T/∂f is equivariant and is fed back, ``f + Linear(∂T/∂f)``.

    :returns: ``(f_new (n, dim), T (n,))``.
    """

    def __init__(self, irreps: o3.Irreps, hidden: int):
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.left = IrrepsLinear(self.irreps, self.irreps)
        self.right = IrrepsLinear(self.irreps, self.irreps)
        self.mlp = ScalarMLP([self.irreps.num_irreps, hidden, hidden, 1])
        self.feedback = IrrepsLinear(self.irreps, self.irreps)
        channel_of_dim = torch.cat(
            [torch.arange(mul).repeat_interleave(ir.dim) + offset for (mul, ir), offset in self._offsets()]
        )
        self.register_buffer('channel_of_dim', channel_of_dim)

    def _offsets(self):
        offset = 0
        for mul, ir in self.irreps:
            yield (mul, ir), offset
            offset += mul

    def invariants(self, f: torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (n, num_irreps) traces."""
        product = self.left(f) * self.right(f)
        return product.new_zeros(f.shape[0], self.irreps.num_irreps).index_add(
            1, self.channel_of_dim, product
        )

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        training_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaf = f if f.requires_grad else f.detach().requires_grad_(True)
            trace = self.mlp(self.invariants(leaf)).squeeze(-1)
            (grad,) = torch.autograd.grad(trace.sum(), leaf, create_graph=training_graph)
        if not training_graph:
            trace = trace.detach()
        return f + self.feedback(grad), trace
