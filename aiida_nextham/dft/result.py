"""The result of one engine run: block Hamiltonian plus the numbers a user and a parser need."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hamiltonian.block import BlockHamiltonian
from .config import DftConfig
from .selfcheck import SelfCheck

__all__ = ['MODES', 'DftResult']

MODES = ('h0', 'label')


@dataclass
class DftResult:
    """What :func:`~aiida_nextham.dft.run_engine` returns (energies in eV, times in s).

    ``hamiltonian`` holds, in the internal orbital convention:

    - ``mode='label'``: ``hamiltonian`` = self-consistent H, ``h0`` = H0, ``overlap`` = S;
    - ``mode='h0'``: H0 in both ``hamiltonian`` and ``h0`` (the same array; so band tools and the
      model read it without special cases) and S; ``metadata['mode'] == 'h0'`` says which it is.

    :param energies: label mode: ``total`` and its parts (and ``free`` with smearing); h0 mode: empty.
    :param fermi_level: from the bands of the stored matrix on the dense mesh (mid-gap for
        insulators, see :func:`~aiida_nextham.hamiltonian.spectra.fermi_level`).
    :param gap: :func:`~aiida_nextham.hamiltonian.spectra.band_gap` on the dense mesh.
    :param converged: SCF convergence (None in h0 mode).
    :param scf_cycles: SCF cycles used (None in h0 mode).
    :param selfcheck: the self-check, or None when disabled.
    :param timings: wall times of the stages and ``total``.
    """

    mode: str
    hamiltonian: BlockHamiltonian
    config: DftConfig
    kmesh: tuple[int, int, int]
    dense_kmesh: tuple[int, int, int]
    n_electrons: float
    energies: dict[str, float] = field(default_factory=dict)
    fermi_level: float | None = None
    gap: dict = field(default_factory=dict)
    converged: bool | None = None
    scf_cycles: int | None = None
    selfcheck: SelfCheck | None = None
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def selfcheck_deviation(self) -> float | None:
        """Max band-energy deviation of the self-check, meV (None when not run or impossible)."""
        return None if self.selfcheck is None else self.selfcheck.as_dict()['max_deviation']

    def summary(self) -> dict:
        """JSON-serialisable summary (what ``nextham dft`` prints)."""
        bh = self.hamiltonian
        return {
            'mode': self.mode,
            'formula': bh.formula,
            'n_atoms': bh.n_atoms,
            'n_orbitals': bh.n_orbitals,
            'n_pairs': bh.n_pairs,
            'basis': self.config.basis,
            'pseudo': self.config.pseudo,
            'xc': self.config.xc,
            'cutoff': self.config.cutoff,
            'kmesh': list(self.kmesh),
            'dense_kmesh': list(self.dense_kmesh),
            'init_guess': self.config.init_guess,
            'density_fit': self.config.density_fit,
            'units': {'energy': 'eV', 'length': 'angstrom', 'selfcheck': 'meV', 'time': 's'},
            'energies': dict(self.energies),
            'fermi_level': self.fermi_level,
            'n_electrons': self.n_electrons,
            'gap': dict(self.gap),
            'converged': self.converged,
            'scf_cycles': self.scf_cycles,
            'selfcheck_deviation': self.selfcheck_deviation,
            'selfcheck': None if self.selfcheck is None else self.selfcheck.as_dict(),
            'timings': dict(self.timings),
            'versions': dict(self.versions),
            'config': self.config.as_dict(),
        }
