"""Label engines: H0, self-consistent H and S of a periodic structure as real-space blocks.

PySCF (``pyscf.pbc``, GTH pseudopotentials and basis sets, multigrid integration) is the default
engine. This package never imports aiida.
"""

from .config import DftConfig
from .errors import (
    BadStructureError,
    DftConfigError,
    DftError,
    ScfNotConvergedError,
    SelfCheckError,
    UnsupportedElementError,
)
from .protocols import PROTOCOLS, get_protocol
from .result import MODES, DftResult
from .run import run_engine

__all__ = [
    'MODES',
    'PROTOCOLS',
    'BadStructureError',
    'DftConfig',
    'DftConfigError',
    'DftError',
    'DftResult',
    'ScfNotConvergedError',
    'SelfCheckError',
    'UnsupportedElementError',
    'get_protocol',
    'run_engine',
]
