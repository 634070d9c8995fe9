"""Phonons with phonopy (finite displacements) and pluggable force backends (DFT, ML force field).

This package never imports aiida.
"""

from .backends import (
    ASE_CALCULATORS,
    AseCalculatorBackend,
    DftForceBackend,
    ForceBackend,
    MLForceBackend,
    describe_backend,
)
from .calculation import (
    IMAGINARY_TOLERANCE,
    PhononResult,
    PhononSettings,
    make_phonopy,
    phonons_from_forces,
    run_phonons,
    stability,
    supercell_matrix,
)
from .files import compare_bands, read_bands, write_phonon_files

__all__ = [
    'ASE_CALCULATORS',
    'IMAGINARY_TOLERANCE',
    'AseCalculatorBackend',
    'DftForceBackend',
    'ForceBackend',
    'MLForceBackend',
    'PhononResult',
    'PhononSettings',
    'compare_bands',
    'describe_backend',
    'make_phonopy',
    'phonons_from_forces',
    'read_bands',
    'run_phonons',
    'stability',
    'supercell_matrix',
    'write_phonon_files',
]
