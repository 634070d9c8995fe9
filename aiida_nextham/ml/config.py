"""Typed configuration of the NextHAM model, with a laptop-CPU default and a GPU preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from e3nn import o3

__all__ = ['PRESETS', 'ModelConfig']


@dataclass
class ModelConfig:
    """Sizes and switches of :class:`~aiida_nextham.ml.model.NexthamModel`.

    :param shells: element coverage, ``{Z: (l, ...)}`` (the orbital basis the model predicts for).
    :param node_channels: multiplicity of each L in the node features (both parities for L >= 1).
    :param edge_channels: multiplicity of each L in the edge (pair) features.
    :param value_channels: multiplicity of each L of the neighbour features entering the x_j ⊗ Y(r_ij)
        product (the attention values); the product is the dominant cost of a layer.
    :param sh_lmax: largest l of the spherical harmonics of edge vectors.
    :param n_layers: number of Transformer layers.
    :param n_heads: attention heads (every multiplicity must be divisible by it).
    :param n_radial: number of radial basis functions.
    :param radial_hidden: width of the MLPs acting on invariants.
    :param cutoff: largest edge length (Å); the envelope goes smoothly to zero there.
    :param use_h0: encode H0 blocks as input features (NextHAM); False is the structure-only
        (DeepH-E3-style) baseline that predicts H itself.
    :param tracegrad: add the TraceGrad block (invariant trace head + its gradient fed back).
    :param pair_channels: multiplicity of each L of the projections entering the bilinear x_i ⊗ x_j head.
    :param far_field_shift: blocks of stored pairs beyond ``cutoff`` get ΔH = μ̂S, with μ̂ the uniform
        shift of the structure's predicted blocks (see :func:`~aiida_nextham.ml.predictor.far_field`);
        False leaves them at H0. With H0 input only.
    """

    shells: dict[int, tuple[int, ...]] = field(default_factory=dict)
    node_channels: dict[int, int] = field(default_factory=lambda: {0: 32, 1: 16, 2: 8, 3: 4, 4: 4})
    edge_channels: dict[int, int] = field(default_factory=lambda: {0: 16, 1: 8, 2: 8, 3: 4, 4: 4})
    value_channels: dict[int, int] = field(default_factory=lambda: {0: 16, 1: 8, 2: 4, 3: 2, 4: 2})
    sh_lmax: int = 2
    n_layers: int = 2
    n_heads: int = 4
    n_radial: int = 8
    radial_hidden: int = 32
    cutoff: float = 8.0
    use_h0: bool = True
    tracegrad: bool = True
    pair_channels: dict[int, int] = field(default_factory=lambda: {0: 8, 1: 4, 2: 4})
    far_field_shift: bool = True

    def __post_init__(self):
        self.shells = {int(z): tuple(int(l) for l in ls) for z, ls in self.shells.items()}
        for name in ('node_channels', 'edge_channels', 'value_channels', 'pair_channels'):
            channels = {int(k): int(v) for k, v in getattr(self, name).items()}
            if any(v < 1 for v in channels.values()) or 0 not in channels:
                raise ValueError(f'{name} must give a positive multiplicity for L = 0 and every L listed')
            setattr(self, name, channels)
        for name in ('node_channels', 'edge_channels'):
            bad = {k: v for k, v in getattr(self, name).items() if v % self.n_heads}
            if bad:
                raise ValueError(f'{name} {bad}: multiplicities must be divisible by n_heads={self.n_heads}')
        if self.cutoff <= 0 or self.n_layers < 0 or self.sh_lmax < 1:
            raise ValueError('cutoff must be > 0, n_layers >= 0 and sh_lmax >= 1')

    @staticmethod
    def _irreps(channels: dict[int, int], types) -> o3.Irreps:
        """``channels[L]`` copies of every irrep type in ``types`` plus 0e; L beyond the dict reuse its last
        entry. Hidden features carry only the types of the output: any other type would start at zero."""
        last = channels[max(channels)]
        types = {o3.Irrep(ir) for ir in types} | {o3.Irrep('0e')}
        return o3.Irreps([(channels.get(ir.l, last), ir) for ir in types]).sort().irreps.simplify()

    def node_irreps(self, out: o3.Irreps) -> o3.Irreps:
        return self._irreps(self.node_channels, [ir for _, ir in out])

    def edge_irreps(self, out: o3.Irreps) -> o3.Irreps:
        return self._irreps(self.edge_channels, [ir for _, ir in out])

    def value_irreps(self, out: o3.Irreps) -> o3.Irreps:
        return self._irreps(self.value_channels, [ir for _, ir in out])

    def pair_irreps(self, out: o3.Irreps) -> o3.Irreps:
        """The output's irrep types up to the largest L of ``pair_channels``."""
        return self._irreps(self.pair_channels, [ir for _, ir in out if ir.l <= max(self.pair_channels)])

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for name in ('shells', 'node_channels', 'edge_channels', 'value_channels', 'pair_channels'):
            data[name] = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in data[name].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown model config keys {unknown}; known: {sorted(known)}')
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """``'small'`` (default; trains on a laptop CPU) or ``'large'`` (GPUs)."""
        if name not in PRESETS:
            raise ValueError(f'unknown preset {name!r}; choose from {sorted(PRESETS)}')
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    'small': {},
    'large': {
        'node_channels': {0: 128, 1: 64, 2: 32, 3: 16, 4: 16},
        'edge_channels': {0: 64, 1: 32, 2: 32, 3: 16, 4: 16},
        'pair_channels': {0: 32, 1: 16, 2: 16},
        'value_channels': {0: 64, 1: 32, 2: 16, 3: 8, 4: 8},
        'sh_lmax': 3,
        'n_layers': 4,
        'n_heads': 8,
        'n_radial': 16,
        'radial_hidden': 64,
    },
}
