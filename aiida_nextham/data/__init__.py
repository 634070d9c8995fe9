"""AiiDA data types of aiida-nextham."""

from .hamiltonian import HamiltonianData
from .model import ModelData

__all__ = ('HamiltonianData', 'ModelData')
