"""Equivariant machine-learned force field: energy model, predictor, model files and training.

``ForceFieldPredictor.from_files(model_dir).predict(atoms)`` -> ``{'energy': eV, 'forces': (N, 3) eV/Å}``.
"""

from .model import (
    AtomsGraph,
    ElementCoverageError,
    ForceFieldConfig,
    ForceFieldModel,
    ForceFieldPredictor,
    atoms_graph,
    collate_graphs,
    load_forcefield,
    read_forcefield_metadata,
    save_forcefield,
)

__all__ = [
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
