"""Force backends: anything that maps an ASE ``Atoms`` to its forces (N, 3) in eV/Å.

:class:`DftForceBackend` runs the PySCF engine (:func:`aiida_nextham.dft.forces.energy_and_forces`,
analytic gradients); :class:`MLForceBackend` runs a trained equivariant force field
(``aiida_nextham.ml.forcefield.ForceFieldPredictor``, imported only when first used). Tests and users
can pass any object with a ``name`` and a ``forces(atoms)`` method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from ase import Atoms

__all__ = [
    'ASE_CALCULATORS',
    'AseCalculatorBackend',
    'DftForceBackend',
    'ForceBackend',
    'MLForceBackend',
    'describe_backend',
]


@runtime_checkable
class ForceBackend(Protocol):
    """Computes forces of a periodic structure.

    ``name`` identifies the backend in summaries; ``forces`` returns a (len(atoms), 3) array in eV/Å
    in the order of the input atoms. An optional ``describe() -> dict`` adds provenance to summaries.
    """

    name: str

    def forces(self, atoms: Atoms) -> np.ndarray: ...


def describe_backend(backend: ForceBackend) -> dict:
    """``{'name': ..., **backend.describe()}`` (just the name when the backend has no ``describe``)."""
    describe = getattr(backend, 'describe', None)
    return {'name': backend.name, **(describe() if callable(describe) else {})}


class DftForceBackend:
    """Forces from the PySCF engine (SCF + analytic nuclear gradients, see :mod:`aiida_nextham.dft.forces`).

    :param config: engine settings (basis, pseudo, k-spacing, SCF thresholds, ...).
    :param kmesh: SCF k-mesh of each supercell; None: from ``config`` (k-spacing). ``(1, 1, 1)``
        selects the fast Γ-point multigrid gradient route, the practical choice for supercells.
    """

    name = 'dft'

    def __init__(self, config=None, kmesh: tuple[int, int, int] | None = None):
        from ..dft.config import DftConfig

        self.config = config or DftConfig()
        self.kmesh = tuple(int(n) for n in kmesh) if kmesh is not None else None
        #: every :class:`~aiida_nextham.dft.forces.ForceResult` computed, in order
        self.results: list = []

    def forces(self, atoms: Atoms) -> np.ndarray:
        from ..dft.forces import energy_and_forces

        result = energy_and_forces(atoms, self.config, kmesh=self.kmesh)
        self.results.append(result)
        return np.asarray(result.forces, dtype=float)

    def describe(self) -> dict:
        return {
            'engine': 'pyscf',
            'config': self.config.as_dict(),
            'kmesh': list(self.kmesh) if self.kmesh is not None else None,
            'calculations': [{k: v for k, v in r.as_dict().items() if k != 'forces'} for r in self.results],
        }


#: empirical ASE calculators available as force backends (cheap references, demos and tests)
ASE_CALCULATORS = ('emt',)


class AseCalculatorBackend:
    """Forces from an empirical ASE calculator: ``'emt'`` (effective-medium theory; Al, Cu, Ag, Au, Ni,
    Pd, Pt and H, C, N, O). Milliseconds per supercell: a real, physical force field for tests and demos.
    """

    def __init__(self, calculator: str = 'emt'):
        if calculator not in ASE_CALCULATORS:
            raise ValueError(f'unknown ASE calculator {calculator!r}; available: {ASE_CALCULATORS}')
        self.name = f'ase:{calculator}'
        self.calculator = calculator

    def forces(self, atoms: Atoms) -> np.ndarray:
        from ase.calculators.emt import EMT

        atoms = atoms.copy()
        atoms.calc = EMT()
        return np.asarray(atoms.get_forces(), dtype=float)

    def describe(self) -> dict:
        return {'calculator': self.calculator}


class MLForceBackend:
    """Forces from a trained equivariant force field in ``model_dir`` (safetensors + JSON).

    The model is loaded on the first call, so constructing the backend is cheap and fails only when
    the folder does not exist.
    """

    name = 'ml'

    def __init__(self, model_dir: str | Path, device: str = 'cpu'):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f'{self.model_dir}: no such model folder')
        self.device = device
        self._predictor = None

    @property
    def predictor(self):
        if self._predictor is None:
            from ..ml.forcefield import ForceFieldPredictor

            self._predictor = ForceFieldPredictor.from_files(self.model_dir, device=self.device)
        return self._predictor

    def forces(self, atoms: Atoms) -> np.ndarray:
        prediction = self.predictor.predict(atoms)
        forces = np.asarray(prediction['forces'], dtype=float)
        if forces.shape != (len(atoms), 3):
            raise ValueError(
                f'the force field returned forces of shape {forces.shape}, expected {(len(atoms), 3)}'
            )
        return forces

    def describe(self) -> dict:
        return {'model_dir': str(self.model_dir)}
