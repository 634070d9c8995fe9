"""AiiDA plugin for zeroth-step Hamiltonians, equivariant Hamiltonian models, ARPES and phonons."""

__version__ = '0.1.0'
