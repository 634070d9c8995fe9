"""E(3)-equivariant interatomic potential: per-atom energies from equivariant message passing.

Built from the same pieces as the Hamiltonian model (:mod:`aiida_nextham.ml.layers`): element embedding,
Bessel radial basis times the polynomial cutoff envelope, spherical harmonics of the edge vectors,
channel-wise tensor products with radial weights, equivariant linear maps and gated feed-forward blocks.
The graph is a periodic neighbour list of an ``ase.Atoms`` (ASE's ``primitive_neighbor_list``, as in
:mod:`aiida_nextham.ml.graph`): one directed edge per (i, j, R) with ``|r_j + R - r_i| < cutoff``.

Energy ``E = Σ_i [s · ε(x_i) + e_ref(Z_i)]`` with a learned readout ε of the invariant (0e) features, a
force scale ``s`` and per-element reference energies ``e_ref`` (both fitted to the training data, stored as
buffers). Forces ``F = -∂E/∂r`` and the stress ``σ = (1/V) ∂E/∂ε`` (strain ε, ASE's sign: positive is
tensile) come from autograd, so they are exactly conservative. Units: eV, Å, eV/Å, eV/Å³.

Feature irreps (``channels = {0: c0, 1: c1, 2: c2}``, natural parity): ``c0x0e + c1x1o + c2x2e``; edge
harmonics ``1x0e + 1x1o + 1x2e`` (``sh_lmax = 2``).

Model files follow :mod:`aiida_nextham.ml.serialization`: ``model.safetensors`` (weights and the fitted
buffers) + ``model.json`` (format ``nextham-forcefield``, config, element coverage, cutoff, provenance).
Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols
from ase.neighborlist import primitive_neighbor_list
from e3nn import o3
from safetensors.torch import load_file, save_file
from torch import nn

from ..layers import (
    BesselBasis,
    ChannelwiseTensorProduct,
    GatedFeedForward,
    IrrepsLinear,
    PolynomialEnvelope,
    ScalarMLP,
)
from ..serialization import METADATA, WEIGHTS, ModelFileError, _atomic, read_model_metadata

__all__ = [
    'FORCEFIELD_FORMAT',
    'AtomsGraph',
    'ElementCoverageError',
    'ForceFieldConfig',
    'ForceFieldModel',
    'ForceFieldPredictor',
    'atoms_graph',
    'collate_graphs',
    'load_forcefield',
    'read_forcefield_metadata',
    'save_forcefield',
]

FORCEFIELD_FORMAT = 'nextham-forcefield'
FORMAT_VERSION = 1


class ElementCoverageError(ValueError):
    """A structure contains elements the force field was not trained on."""


def _symbols(numbers) -> str:
    return ', '.join(f'{chemical_symbols[z]} (Z={z})' for z in sorted(set(int(z) for z in numbers)))


# ------------------------------------------------------------------------------------------- config
@dataclass
class ForceFieldConfig:
    """Architecture of a :class:`ForceFieldModel`.

    :param elements: atomic numbers covered (the embedding has one row per element).
    :param cutoff: neighbour cutoff, Å (messages vanish smoothly there, with two derivatives).
    :param channels: multiplicity of each feature irrep by l (parity (-1)^l).
    :param sh_lmax: largest l of the edge spherical harmonics.
    :param n_radial: Bessel radial functions.
    :param radial_hidden: hidden width of the MLP mapping radial features to tensor-product weights.
    :param n_layers: message-passing layers (receptive field ``n_layers × cutoff``).
    :param readout_hidden: hidden width of the per-atom energy readout.
    :param avg_neighbors: messages are summed and divided by sqrt(avg_neighbors) (set from the data).
    """

    elements: list[int] = field(default_factory=list)
    cutoff: float = 4.5
    channels: dict[int, int] = field(default_factory=lambda: {0: 32, 1: 16, 2: 8})
    sh_lmax: int = 2
    n_radial: int = 8
    radial_hidden: int = 32
    n_layers: int = 2
    readout_hidden: int = 32
    avg_neighbors: float = 16.0

    def __post_init__(self):
        self.elements = sorted(int(z) for z in self.elements)
        self.channels = {int(k): int(v) for k, v in self.channels.items() if int(v) > 0}
        if not self.elements or min(self.elements) < 1 or max(self.elements) > 118:
            raise ValueError(f'elements must be atomic numbers 1..118, got {self.elements}')
        if len(set(self.elements)) != len(self.elements):
            raise ValueError(f'elements repeat: {self.elements}')
        if self.cutoff <= 0:
            raise ValueError(f'cutoff must be positive, got {self.cutoff}')
        if self.channels.get(0, 0) < 1:
            raise ValueError('channels needs scalar (l=0) features')
        if min(self.channels) < 0 or self.sh_lmax < 0:
            raise ValueError('channels and sh_lmax need l >= 0')
        for name in ('n_radial', 'radial_hidden', 'n_layers', 'readout_hidden'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.avg_neighbors <= 0:
            raise ValueError(f'avg_neighbors must be positive, got {self.avg_neighbors}')

    @property
    def irreps(self) -> o3.Irreps:
        return o3.Irreps([(mul, (l, (-1) ** l)) for l, mul in sorted(self.channels.items())])

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> ForceFieldConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown force-field config key(s) {unknown}; known: {sorted(known)}')
        return cls(**data)


# -------------------------------------------------------------------------------------------- graph
@dataclass(eq=False)
class AtomsGraph:
    """Periodic neighbour graph of one or several structures (nodes and edges concatenated).

    :param numbers: (N,) int64 atomic numbers.
    :param positions: (N, 3) Cartesian positions, Å.
    :param cell: (B, 3, 3) lattice vectors as rows, Å (zeros for a molecule).
    :param edge_src: (E,) int64 atom i of each edge (messages are gathered at i).
    :param edge_dst: (E,) int64 atom j.
    :param edge_shift: (E, 3) cell R of atom j, as a float for the product with the cell.
    :param batch: (N,) int64 structure of each atom.
    :param n_structures: B.
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_shift: torch.Tensor
    batch: torch.Tensor
    n_structures: int = 1

    def to(self, device=None, dtype: torch.dtype | None = None) -> AtomsGraph:
        changes = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, torch.Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                value = value.to(device=device, dtype=cast)
            changes[item.name] = value
        return AtomsGraph(**changes)


def atoms_graph(atoms, cutoff: float, dtype: torch.dtype = torch.float64) -> AtomsGraph:
    """The neighbour graph of an ``ase.Atoms`` within ``cutoff`` Å (periodic along ``atoms.pbc``)."""
    positions = np.asarray(atoms.get_positions(), dtype=float)
    cell = np.asarray(atoms.cell.array, dtype=float)
    pbc = tuple(bool(p) for p in atoms.pbc)
    if any(pbc) and abs(np.linalg.det(cell)) < 1e-8:
        raise ValueError('a periodic structure needs a non-degenerate cell')
    i, j, shift = primitive_neighbor_list('ijS', pbc, cell, positions, float(cutoff), self_interaction=False)
    return AtomsGraph(
        numbers=torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.int64),
        positions=torch.as_tensor(positions, dtype=dtype),
        cell=torch.as_tensor(cell, dtype=dtype)[None],
        edge_src=torch.as_tensor(i, dtype=torch.int64),
        edge_dst=torch.as_tensor(j, dtype=torch.int64),
        edge_shift=torch.as_tensor(shift, dtype=dtype),
        batch=torch.zeros(len(atoms), dtype=torch.int64),
        n_structures=1,
    )


def collate_graphs(graphs: list[AtomsGraph]) -> AtomsGraph:
    """One graph of several structures (atom indices offset, ``batch`` numbering the structures)."""
    offsets = np.cumsum([0] + [len(g.numbers) for g in graphs[:-1]])
    starts = np.cumsum([0] + [g.n_structures for g in graphs[:-1]])
    return AtomsGraph(
        numbers=torch.cat([g.numbers for g in graphs]),
        positions=torch.cat([g.positions for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        edge_src=torch.cat([g.edge_src + int(o) for g, o in zip(graphs, offsets, strict=True)]),
        edge_dst=torch.cat([g.edge_dst + int(o) for g, o in zip(graphs, offsets, strict=True)]),
        edge_shift=torch.cat([g.edge_shift for g in graphs]),
        batch=torch.cat([g.batch + int(s) for g, s in zip(graphs, starts, strict=True)]),
        n_structures=int(sum(g.n_structures for g in graphs)),
    )


# -------------------------------------------------------------------------------------------- model
class Interaction(nn.Module):
    """One message-passing layer, ``x (N, irreps_in.dim) -> (N, irreps_out.dim)``.

    ``m_i = Σ_j TP(W x_j, Y(r̂_ij); w(r_ij)) / sqrt(avg_neighbors)`` with radial weights
    ``w = MLP(radial) · envelope`` (zero at the cutoff), then ``x' = S x + L m`` and a residual gated
    feed-forward block ``x' + FFN(x')``.
    """

    def __init__(self, irreps_in, irreps_out, sh_irreps, config: ForceFieldConfig):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.linear_in = IrrepsLinear(self.irreps_in, self.irreps_in, bias=False)
        self.tp = ChannelwiseTensorProduct(self.irreps_in, sh_irreps, self.irreps_out)
        self.radial_mlp = ScalarMLP([config.n_radial, config.radial_hidden, self.tp.weight_numel])
        self.linear_out = IrrepsLinear(self.tp.irreps_out, self.irreps_out, bias=False)
        self.self_connection = IrrepsLinear(self.irreps_in, self.irreps_out)
        self.ffn = GatedFeedForward(self.irreps_out)
        self.norm = 1.0 / math.sqrt(config.avg_neighbors)

    def forward(self, x, sh, radial, envelope, src, dst) -> torch.Tensor:
        """x (N, in), sh (E, sh dim), radial (E, n_radial), envelope (E,), src/dst (E,) -> (N, out)."""
        weights = self.radial_mlp(radial) * envelope[:, None]
        messages = self.tp(self.linear_in(x)[dst], sh, weights)
        aggregated = messages.new_zeros(x.shape[0], messages.shape[1]).index_add(0, src, messages)
        x = self.self_connection(x) + self.linear_out(aggregated * self.norm)
        return x + self.ffn(x)


class ForceFieldModel(nn.Module):
    """Energies (B,), forces (N, 3) and optionally stresses (B, 3, 3) of an :class:`AtomsGraph`."""

    def __init__(self, config: ForceFieldConfig):
        super().__init__()
        self.config = config
        hidden = config.irreps
        n_scalars = config.channels[0]
        self.sh_irreps = o3.Irreps.spherical_harmonics(config.sh_lmax)
        index = torch.full((119,), -1, dtype=torch.long)
        index[config.elements] = torch.arange(len(config.elements))
        self.register_buffer('element_index', index)
        self.embedding = nn.Embedding(len(config.elements), n_scalars)
        self.radial = BesselBasis(config.cutoff, config.n_radial)
        self.envelope = PolynomialEnvelope(config.cutoff)
        irreps_in = o3.Irreps(f'{n_scalars}x0e')
        self.layers = nn.ModuleList()
        for _ in range(config.n_layers):
            self.layers.append(Interaction(irreps_in, hidden, self.sh_irreps, config))
            irreps_in = hidden
        self.readout = ScalarMLP([n_scalars, config.readout_hidden, 1])
        #: fitted to the training data: eV per atom of each element, and eV per unit of readout
        self.register_buffer('reference_energies', torch.zeros(len(config.elements)))
        self.register_buffer('energy_scale', torch.ones(()))

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def element_indices(self, numbers: torch.Tensor) -> torch.Tensor:
        element = self.element_index[numbers]
        if (element < 0).any():
            outside = numbers[element < 0].tolist()
            raise ElementCoverageError(
                f'elements {_symbols(outside)} are outside the force field coverage '
                f'{_symbols(self.config.elements)}'
            )
        return element

    def atomic_energies(self, graph: AtomsGraph, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """(N,) per-atom energies, eV, at ``positions`` (N, 3) in cells ``cell`` (B, 3, 3)."""
        element = self.element_indices(graph.numbers)
        src, dst = graph.edge_src, graph.edge_dst
        offsets = torch.einsum('ei,eij->ej', graph.edge_shift, cell[graph.batch[src]])
        vectors = positions[dst] + offsets - positions[src]
        length = vectors.norm(dim=1)
        sh = o3.spherical_harmonics(self.sh_irreps, vectors, normalize=True, normalization='component')
        envelope = self.envelope(length)
        radial = self.radial(length) * envelope[:, None]
        x = self.embedding(element)
        for layer in self.layers:
            x = layer(x, sh, radial, envelope, src, dst)
        per_atom = self.readout(x[:, : self.config.channels[0]])[:, 0]
        return per_atom * self.energy_scale + self.reference_energies[element]

    def forward(
        self, graph: AtomsGraph, *, forces: bool = True, stress: bool = False, create_graph: bool = False
    ) -> dict[str, torch.Tensor]:
        """``{'energy': (B,), 'forces': (N, 3), 'stress': (B, 3, 3)}`` (eV, eV/Å, eV/Å³).

        :param create_graph: keep the graph of the forces (training on forces needs it).
        """
        positions, cell = graph.positions, graph.cell
        strain = None
        if stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum('ni,nij->nj', positions, symmetric[graph.batch])
            cell = cell + cell @ symmetric
        if forces and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        atomic = self.atomic_energies(graph, positions, cell)
        energy = atomic.new_zeros(graph.n_structures).index_add(0, graph.batch, atomic)
        result = {'energy': energy}
        inputs = ([positions] if forces else []) + ([strain] if stress else [])
        if inputs:
            grads = torch.autograd.grad(
                energy.sum(), inputs, create_graph=create_graph, retain_graph=create_graph
            )
            if forces:
                result['forces'] = -grads[0]
            if stress:
                volume = torch.linalg.det(graph.cell).abs()[:, None, None]
                result['stress'] = grads[-1] / volume
        return result


# ----------------------------------------------------------------------------------------- files
def save_forcefield(model: ForceFieldModel, folder: str | Path, provenance: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    config = model.config
    metadata = {
        'format': FORCEFIELD_FORMAT,
        'format_version': FORMAT_VERSION,
        'architecture': 'nextham-equivariant-forcefield',
        'config': config.as_dict(),
        'elements': [chemical_symbols[z] for z in config.elements],
        'cutoff': config.cutoff,
        'units': {'energy': 'eV', 'length': 'Å', 'forces': 'eV/Å', 'stress': 'eV/Å^3'},
        'reference_energies': dict(
            zip(
                [chemical_symbols[z] for z in config.elements],
                model.reference_energies.tolist(),
                strict=True,
            )
        ),
        'n_parameters': model.n_parameters,
        'dtype': str(next(model.parameters()).dtype).removeprefix('torch.'),
        'provenance': provenance or {},
    }
    _atomic(folder / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={'format': FORCEFIELD_FORMAT}))
    _atomic(folder / METADATA, lambda p: Path(p).write_text(json.dumps(metadata, indent=1)))
    return folder


def read_forcefield_metadata(folder: str | Path) -> dict:
    """The JSON metadata of a force-field folder (format and version checked)."""
    return read_model_metadata(folder, FORCEFIELD_FORMAT, FORMAT_VERSION)


def load_forcefield(folder: str | Path, device: str | torch.device = 'cpu') -> ForceFieldModel:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` (no pickles)."""
    folder = Path(folder)
    metadata = read_forcefield_metadata(folder)
    try:
        model = ForceFieldModel(ForceFieldConfig.from_dict(metadata['config']))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f'{folder / METADATA}: invalid force-field config ({exc})') from None
    model = model.to(device=device, dtype=getattr(torch, metadata.get('dtype', 'float64')))
    tensors = load_file(str(folder / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            f'{folder}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})'
        )
    return model.eval()


# ------------------------------------------------------------------------------------------ predictor
class ForceFieldPredictor:
    """Energies and forces of ``ase.Atoms`` from a trained force field (what phonon backends call)."""

    def __init__(self, model: ForceFieldModel, metadata: dict | None = None):
        self.model = model.eval()
        self.metadata = metadata or {}
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    @classmethod
    def from_files(cls, model_dir: str | Path, device: str = 'cpu') -> ForceFieldPredictor:
        return cls(load_forcefield(model_dir, device), read_forcefield_metadata(model_dir))

    @property
    def elements(self) -> list[str]:
        return [chemical_symbols[z] for z in self.model.config.elements]

    @property
    def cutoff(self) -> float:
        return self.model.config.cutoff

    def check_elements(self, atoms) -> None:
        outside = sorted(set(int(z) for z in atoms.numbers) - set(self.model.config.elements))
        if outside:
            raise ElementCoverageError(
                f'{atoms.get_chemical_formula()}: elements {_symbols(outside)} are outside the force '
                f'field coverage {_symbols(self.model.config.elements)}'
            )

    def predict(self, atoms, stress: bool = False) -> dict:
        """``{'energy': float eV, 'forces': (N, 3) eV/Å}`` (and ``'stress'`` (3, 3) eV/Å³ if asked)."""
        self.check_elements(atoms)
        graph = atoms_graph(atoms, self.cutoff, self.dtype).to(self.device)
        out = self.model(graph, forces=True, stress=stress)
        result = {
            'energy': float(out['energy'][0].detach()),
            'forces': out['forces'].detach().cpu().numpy().astype(float),
        }
        if stress:
            result['stress'] = out['stress'][0].detach().cpu().numpy().astype(float)
        return result

    def calculator(self):
        """An ASE calculator (energy, forces, stress) backed by this predictor."""
        from ase.calculators.calculator import Calculator, all_changes

        predictor = self

        class ForceFieldCalculator(Calculator):
            implemented_properties = ['energy', 'free_energy', 'forces', 'stress']

            def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                want_stress = 'stress' in properties and all(self.atoms.pbc)
                out = predictor.predict(self.atoms, stress=want_stress)
                self.results = {
                    'energy': out['energy'],
                    'free_energy': out['energy'],
                    'forces': out['forces'],
                }
                if want_stress:
                    s = out['stress']
                    self.results['stress'] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

        return ForceFieldCalculator()
