"""Reciprocal-space loss targets of one structure: sampled k-points, true bands and eigenvectors.

For the true (H, S) at k-points Γ + random points, the generalized eigenproblem H(k) C = S(k) C E
gives band energies E (nk, nb) and S-orthonormal eigenvectors C (nk, n, nb), C† S C = 1, so that
C† H(k) C = diag(E). Bands are split into P (occupied plus bands up to ``window_above_fermi`` eV
above E_F) and Q (the rest), per k-point. Computing C costs one dense eigensolve per k, so it is
done once per structure at dataset preparation and cached on disk (:func:`cached_targets`).

Files are HDF5 (any suffix but ``.npz``) or ``.npz`` (read with ``allow_pickle=False``); never pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..hamiltonian.block import BlockHamiltonian

__all__ = [
    'TARGET_DEFAULTS',
    'TARGETS_VERSION',
    'ReciprocalTargets',
    'cached_targets',
    'sample_kpoints',
    'targets_cache_path',
]

#: version of the targets file layout (part of the cache key)
TARGETS_VERSION = 1
_FORMAT = 'nextham-reciprocal-targets'
_ARRAYS = ('kpoints', 'energies', 'eigenvectors', 'p_mask')
_SCALARS = ('fermi_level', 'window_above_fermi', 'seed')
#: defaults of :meth:`ReciprocalTargets.from_hamiltonian` (they are part of the cache key)
TARGET_DEFAULTS = {'n_kpoints': 8, 'seed': 0, 'window_above_fermi': 3.0, 'fermi_mesh': (4, 4, 4)}


def sample_kpoints(n_kpoints: int, seed: int, periodic: tuple[bool, bool, bool] = (True, True, True)):
    """Γ plus ``n_kpoints - 1`` uniform random fractional k-points in [-1/2, 1/2)³, shape (n_kpoints, 3).

    Components along non-periodic directions (no blocks with R ≠ 0 there) are set to 0.
    """
    if n_kpoints < 1:
        raise ValueError(f'n_kpoints must be at least 1, got {n_kpoints}')
    rng = np.random.default_rng(seed)
    kpoints = np.concatenate([np.zeros((1, 3)), rng.uniform(-0.5, 0.5, size=(n_kpoints - 1, 3))])
    return kpoints * np.asarray(periodic, dtype=np.float64)


def _fermi_level(bh: BlockHamiltonian, mesh: tuple[int, int, int]) -> float:
    """The stored Fermi level, or one from the electron count on a Monkhorst–Pack mesh."""
    if bh.fermi_level is not None:
        return float(bh.fermi_level)
    if bh.n_electrons is None:
        raise ValueError('the Hamiltonian has neither a Fermi level nor an electron count: cannot define P')
    from ..hamiltonian.spectra import band_energies, fermi_level, monkhorst_pack

    mesh = tuple(int(n) if periodic else 1 for n, periodic in zip(mesh, bh.periodic, strict=True))
    kpoints, weights = monkhorst_pack(mesh)
    energies = band_energies(bh, kpoints)
    degeneracy = 1 if bh.spin == 'spinor' else 2
    return fermi_level(energies, weights, bh.n_electrons, smearing=None, spin_degeneracy=degeneracy)


@dataclass(eq=False)
class ReciprocalTargets:
    """True bands and eigenvectors of one structure at sampled k-points (eV).

    :param kpoints: (nk, 3) fractional k-points (row 0 is Γ).
    :param energies: (nk, nb) band energies, ascending.
    :param eigenvectors: (nk, n, nb) complex, S(k)-orthonormal columns (n = size of H(k)).
    :param p_mask: (nk, nb) bool, True for bands in P (E <= E_F + window_above_fermi).
    :param fermi_level: E_F used for P (eV).
    :param window_above_fermi: eV above E_F still in P.
    :param seed: seed of the random k-points.
    """

    kpoints: np.ndarray
    energies: np.ndarray
    eigenvectors: np.ndarray
    p_mask: np.ndarray
    fermi_level: float
    window_above_fermi: float
    seed: int
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.kpoints = np.asarray(self.kpoints, dtype=np.float64).reshape(-1, 3)
        self.energies = np.asarray(self.energies, dtype=np.float64)
        self.eigenvectors = np.asarray(self.eigenvectors)
        self.p_mask = np.asarray(self.p_mask, dtype=bool)
        n_k, n_bands = self.energies.shape
        if self.eigenvectors.shape[::2] != (n_k, n_bands) or self.p_mask.shape != (n_k, n_bands):
            raise ValueError(
                f'inconsistent shapes: energies {self.energies.shape}, eigenvectors '
                f'{self.eigenvectors.shape}, p_mask {self.p_mask.shape}, kpoints {self.kpoints.shape}'
            )

    @property
    def n_kpoints(self) -> int:
        return len(self.kpoints)

    @property
    def n_bands(self) -> int:
        return self.energies.shape[1]

    def subspace(self, window_above_fermi: float | None = None) -> np.ndarray:
        """P mask (nk, nb) for another window (None: the stored one)."""
        if window_above_fermi is None:
            return self.p_mask
        return self.energies <= self.fermi_level + window_above_fermi

    @classmethod
    def from_hamiltonian(
        cls,
        bh: BlockHamiltonian,
        *,
        n_kpoints: int = TARGET_DEFAULTS['n_kpoints'],
        seed: int = TARGET_DEFAULTS['seed'],
        window_above_fermi: float = TARGET_DEFAULTS['window_above_fermi'],
        fermi_mesh: tuple[int, int, int] = TARGET_DEFAULTS['fermi_mesh'],
    ) -> ReciprocalTargets:
        """Diagonalise the true (H, S) of ``bh`` at Γ + ``n_kpoints - 1`` random k-points.

        E_F is ``bh.fermi_level`` or, when absent, computed from ``bh.n_electrons`` on a
        ``fermi_mesh`` Monkhorst–Pack mesh (mid-gap for insulators).
        """
        from ..hamiltonian.bloch import bloch_sum, eigh_generalized

        kpoints = sample_kpoints(n_kpoints, seed, bh.periodic)
        fermi = _fermi_level(bh, fermi_mesh)
        energies, vectors = [], []
        for k in kpoints:
            e, c = eigh_generalized(
                bloch_sum(bh, 'H', k), bloch_sum(bh, 'S', k), eigvals_only=False, kpoint=k
            )
            energies.append(e)
            vectors.append(c)
        energies = np.stack(energies)
        return cls(
            kpoints=kpoints,
            energies=energies,
            eigenvectors=np.stack(vectors).astype(np.complex128),
            p_mask=energies <= fermi + window_above_fermi,
            fermi_level=fermi,
            window_above_fermi=float(window_above_fermi),
            seed=int(seed),
        )

    # ------------------------------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz``: numpy archive, anything else: HDF5), atomically."""
        path = Path(path)
        tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
        scalars = {'fermi_level': self.fermi_level, 'window_above_fermi': self.window_above_fermi}
        header = json.dumps(
            {
                'format': _FORMAT,
                'version': TARGETS_VERSION,
                **scalars,
                'seed': self.seed,
                'metadata': self.metadata,
            }
        )
        try:
            if path.suffix == '.npz':
                with open(tmp, 'wb') as handle:
                    np.savez(
                        handle, header=np.array(header), **{name: getattr(self, name) for name in _ARRAYS}
                    )
            else:
                with h5py.File(tmp, 'w') as handle:
                    handle.attrs['header'] = header
                    for name in _ARRAYS:
                        handle.create_dataset(name, data=getattr(self, name))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReciprocalTargets:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if path.suffix == '.npz':
            with np.load(path, allow_pickle=False) as data:
                header = str(data['header'])
                arrays = {name: data[name] for name in _ARRAYS}
        else:
            with h5py.File(path, 'r') as handle:
                header = handle.attrs['header']
                arrays = {name: handle[name][()] for name in _ARRAYS}
        header = json.loads(header)
        if header.get('format') != _FORMAT or header.get('version') != TARGETS_VERSION:
            raise ValueError(
                f'{path}: not a reciprocal-targets file of version {TARGETS_VERSION} '
                f'(format {header.get("format")!r}, version {header.get("version")!r})'
            )
        return cls(**arrays, **{name: header[name] for name in _SCALARS}, metadata=header.get('metadata', {}))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def targets_cache_path(h5_path: str | Path, cache_dir: str | Path | None = None, **settings) -> Path:
    """Cache file of ``h5_path``'s targets: keyed by the file's SHA-256, the settings and the version.

    The file is HDF5 with the suffix ``.targets`` (so that ``*.h5`` globs over a dataset folder do
    not pick it up), named ``<stem>.<key>.targets``.
    """
    h5_path = Path(h5_path)
    defaults = TARGET_DEFAULTS
    unknown = set(settings) - set(defaults)
    if unknown:
        raise TypeError(f'unknown target settings {sorted(unknown)}; choose from {sorted(defaults)}')
    settings = {**defaults, **settings}
    settings['fermi_mesh'] = [int(n) for n in settings['fermi_mesh']]
    key = json.dumps(
        {'file': _file_digest(h5_path), 'settings': settings, 'version': TARGETS_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = h5_path.parent if cache_dir is None else Path(cache_dir)
    return folder / f'{h5_path.stem}.{digest}.targets'


def cached_targets(h5_path: str | Path, cache_dir: str | Path | None = None, **settings) -> ReciprocalTargets:
    """Targets of the block-Hamiltonian file ``h5_path``, computed once and then read from the cache.

    :param cache_dir: where cache files go (None: beside ``h5_path``).
    :param settings: keyword arguments of :meth:`ReciprocalTargets.from_hamiltonian`.
    """
    path = targets_cache_path(h5_path, cache_dir, **settings)
    if path.is_file():
        return ReciprocalTargets.load(path)
    from ..hamiltonian.hdf5 import read_hdf5

    targets = ReciprocalTargets.from_hamiltonian(read_hdf5(h5_path), **settings)
    targets.metadata = {
        'source': Path(h5_path).name,
        'settings': {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    targets.save(path)
    return targets
