"""Block Hamiltonians in real space: data model, conventions, HDF5 files, Bloch sums and spectra.

This package never imports aiida.
"""

from .basis import Basis, ElementBasis
from .bloch import IllConditionedOverlapError, OverlapWarning, bloch_sum, eigenvalues
from .block import BlockHamiltonian, HamiltonianError
from .hdf5 import read_hdf5, write_hdf5

__all__ = [
    'Basis',
    'BlockHamiltonian',
    'ElementBasis',
    'HamiltonianError',
    'IllConditionedOverlapError',
    'OverlapWarning',
    'bloch_sum',
    'eigenvalues',
    'read_hdf5',
    'write_hdf5',
]
