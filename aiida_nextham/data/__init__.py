"""AiiDA data types of aiida-nextham."""

from .hamiltonian import HamiltonianData

__all__ = ('HamiltonianData',)
