"""Named failures of the label engine.

Each class carries a short ``code`` (the name written to the machine-readable summary, e.g.
``{"error": "ScfNotConverged"}``) and an ``exit_status`` used by ``nextham dft``, so a parser can
map a failed run to an AiiDA exit code without reading the message.
"""

from __future__ import annotations

__all__ = [
    'BadStructureError',
    'DftConfigError',
    'DftError',
    'ScfNotConvergedError',
    'SelfCheckError',
    'UnsupportedElementError',
]


class DftError(Exception):
    """Base class of the label engine's failures."""

    code = 'DftError'
    exit_status = 20

    def __init__(self, message: str, *, details: dict | None = None, result=None):
        super().__init__(message)
        #: JSON-serialisable facts about the failure (cycles, deviations, offending atoms, ...)
        self.details = dict(details or {})
        #: the partial :class:`~aiida_nextham.dft.result.DftResult`, when one exists
        self.result = result

    def as_dict(self) -> dict:
        """Machine-readable form: ``{'error': code, 'error_class': ..., 'message': ..., ...}``."""
        return {
            'error': self.code,
            'error_class': type(self).__name__,
            'exit_status': self.exit_status,
            'message': str(self),
            **self.details,
        }


class DftConfigError(DftError, ValueError):
    """The engine settings are invalid or inconsistent (e.g. a dense mesh too small for the cutoff)."""

    code = 'InvalidConfig'
    exit_status = 21


class BadStructureError(DftError, ValueError):
    """The structure cannot be computed: empty, non-periodic, zero-volume cell or overlapping atoms."""

    code = 'BadStructure'
    exit_status = 22


class UnsupportedElementError(DftError, ValueError):
    """An element has no pseudopotential or no basis set in the chosen families."""

    code = 'UnsupportedElement'
    exit_status = 23


class ScfNotConvergedError(DftError):
    """The self-consistent field did not converge within the allowed cycles."""

    code = 'ScfNotConverged'
    exit_status = 24


class SelfCheckError(DftError):
    """Band energies of the stored H(R), S(R) deviate from the DFT code's own beyond the tolerance."""

    code = 'SelfCheckFailed'
    exit_status = 25
