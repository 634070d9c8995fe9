"""Band energies, k-point meshes, Fermi level, band gap and density of states. Energies in eV.

Conventions:

- ``energies`` is (nk, n_bands), ascending per k-point; ``weights`` is (nk,) and is normalised to
  sum to 1 (one Brillouin zone).
- Each band holds ``spin_degeneracy`` electrons per k-point: 2 for spinless (non-spin-polarised)
  Hamiltonians, 1 for spinor Hamiltonians whose bands are already spin-resolved.
- Insulators: when the ``n_electrons / spin_degeneracy`` lowest bands are separated from the rest
  by a gap at the sampled k-points, the Fermi level is put at **mid-gap**, (VBM + CBM) / 2, for
  every smearing. DFT codes often report the VBM instead; mid-gap is the T → 0 limit of
  Fermi–Dirac statistics and what DeepH-dock writes (its "counting" method).
- Metals: without smearing the Fermi level is the midpoint between the highest occupied and the
  lowest empty state of the sampled energies (DeepH-dock's "counting" method); with smearing it
  solves N(E_F) = n_electrons by bisection on the smeared occupations.
- Smearing functions of x = (ε − E) / width: ``'gaussian'`` (f = erfc(x)/2), ``'methfessel-paxton'``
  (order 1), ``'fermi-dirac'`` (width = k_B T).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erfc, expit

from .block import BlockHamiltonian

__all__ = [
    'SMEARINGS',
    'band_energies',
    'band_gap',
    'density_of_states',
    'electron_count',
    'fermi_level',
    'monkhorst_pack',
]

SMEARINGS = ('gaussian', 'methfessel-paxton', 'fermi-dirac')
_SQRT_PI = np.sqrt(np.pi)
#: |x| beyond which a smearing function is taken as exactly 0 (delta) or 0/1 (occupation)
_CUTOFF = {'gaussian': 8.0, 'methfessel-paxton': 8.0, 'fermi-dirac': 40.0}


def band_energies(
    bh: BlockHamiltonian, kpoints, progress: bool = False, ghost_filter: float | None = None
) -> np.ndarray:
    """Band energies (eV) at fractional k-points (array (nk, 3) or a KPath), shape (nk, n_states).

    :param ghost_filter: keep H − H0 only where S(k) is well conditioned (``bloch.filter_correction``).
    """
    from .bloch import eigenvalues

    kpoints = getattr(kpoints, 'kpoints', kpoints)
    return eigenvalues(bh, kpoints, progress=progress, ghost_filter=ghost_filter)


def monkhorst_pack(mesh, *, gamma_centered: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A full Monkhorst–Pack mesh (no symmetry reduction).

    :param mesh: three divisions (n1, n2, n3).
    :param gamma_centered: shift even meshes so that Γ is included (odd meshes always include it).
    :return: fractional k-points (n1 n2 n3, 3) in (-1/2, 1/2] and weights (n1 n2 n3,) summing to 1.
    """
    mesh = np.asarray(mesh, dtype=np.int64).reshape(3)
    if np.any(mesh < 1):
        raise ValueError(f'mesh divisions must be positive, got {mesh.tolist()}')
    axes = []
    for n in mesh:
        k = np.arange(n) / n if gamma_centered else (2 * np.arange(1, n + 1) - n - 1) / (2 * n)
        axes.append(k - np.ceil(k - 0.5 - 1e-12))  # wrap to (-1/2, 1/2]
    kpoints = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1).reshape(-1, 3)
    return kpoints, np.full(len(kpoints), 1.0 / len(kpoints))


# ------------------------------------------------------------------------------ smearing kernels
def _occupation(x: np.ndarray, smearing: str) -> np.ndarray:
    """Occupation (0..1, MP can overshoot slightly) of states at x = (ε − E) / width."""
    if smearing == 'gaussian':
        return 0.5 * erfc(x)
    if smearing == 'methfessel-paxton':
        return 0.5 * erfc(x) - x * np.exp(-(x**2)) / (2 * _SQRT_PI)
    if smearing == 'fermi-dirac':
        return expit(-x)
    raise ValueError(f'unknown smearing {smearing!r}; choose from {SMEARINGS} or None')


def _delta(x: np.ndarray, smearing: str) -> np.ndarray:
    """Smeared delta function −df/dx at x (integrates to 1 over x)."""
    if smearing == 'gaussian':
        return np.exp(-(x**2)) / _SQRT_PI
    if smearing == 'methfessel-paxton':
        return np.exp(-(x**2)) * (1.5 - x**2) / _SQRT_PI
    if smearing == 'fermi-dirac':
        return expit(x) * expit(-x)
    raise ValueError(f'unknown smearing {smearing!r}; choose from {SMEARINGS}')


def _prepare(energies, weights) -> tuple[np.ndarray, np.ndarray]:
    energies = np.atleast_2d(np.asarray(energies, dtype=np.float64))
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(weights) != len(energies):
        raise ValueError(f'{len(energies)} k-points of energies but {len(weights)} weights')
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError('k-point weights must be non-negative with a positive sum')
    return energies, weights / weights.sum()


def electron_count(
    energies: np.ndarray,
    weights: np.ndarray,
    fermi: float,
    smearing: str = 'gaussian',
    width: float = 0.05,
    spin_degeneracy: int = 2,
) -> float:
    """Electrons per cell below ``fermi`` with smeared occupations (``smearing=None``: step)."""
    energies, weights = _prepare(energies, weights)
    if smearing is None:
        occupied = (energies < fermi).astype(np.float64)
    else:
        occupied = _occupation((energies - fermi) / width, smearing)
    return float(spin_degeneracy * weights @ occupied.sum(axis=1))


# ---------------------------------------------------------------------------------- Fermi level
def _gap_edges(energies: np.ndarray, n_occupied: float) -> tuple[float, float] | None:
    """(VBM, CBM) when n_occupied is a whole number of bands inside the band range, else None."""
    n = int(round(n_occupied))
    if abs(n_occupied - n) > 1e-8 or not 0 < n < energies.shape[1]:
        return None
    return float(energies[:, n - 1].max()), float(energies[:, n].min())


def fermi_level(
    energies: np.ndarray,
    weights: np.ndarray,
    n_electrons: float,
    smearing: str | None = 'gaussian',
    width: float = 0.05,
    spin_degeneracy: int = 2,
) -> float:
    """Fermi level (eV) from the electron count per cell (see the module docstring).

    :param energies: (nk, n_bands) band energies on a Brillouin-zone mesh.
    :param weights: (nk,) k-point weights (normalised here).
    :param n_electrons: valence electrons per cell described by these bands.
    :param smearing: ``'gaussian'``, ``'methfessel-paxton'``, ``'fermi-dirac'`` or None.
    :param width: smearing width in eV (k_B T for Fermi–Dirac).
    :param spin_degeneracy: electrons per band and k-point: 2 spinless, 1 spinor.
    """
    energies, weights = _prepare(energies, weights)
    capacity = spin_degeneracy * energies.shape[1]
    if not 0 < n_electrons <= capacity:
        raise ValueError(
            f'{n_electrons} electrons do not fit in {energies.shape[1]} bands '
            f'× spin degeneracy {spin_degeneracy}'
        )
    edges = _gap_edges(energies, n_electrons / spin_degeneracy)
    if edges is not None and edges[1] > edges[0]:
        return 0.5 * (edges[0] + edges[1])
    if smearing is None:
        return _counting_fermi_level(energies, weights, n_electrons / spin_degeneracy)
    if width <= 0:
        raise ValueError(f'smearing width must be positive, got {width}')
    _occupation(np.zeros(1), smearing)  # validates the name

    def excess(mu: float) -> float:
        return electron_count(energies, weights, mu, smearing, width, spin_degeneracy) - n_electrons

    low = energies.min() - _CUTOFF[smearing] * width
    high = energies.max() + _CUTOFF[smearing] * width
    for _ in range(200):
        middle = 0.5 * (low + high)
        if excess(middle) < 0:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return 0.5 * (low + high)


def _counting_fermi_level(energies: np.ndarray, weights: np.ndarray, n_occupied: float) -> float:
    """Midpoint between the state that completes the count and the next one (weights sum to 1)."""
    order = np.argsort(energies, axis=None)
    flat = energies.reshape(-1)[order]
    filled = np.cumsum(np.repeat(weights, energies.shape[1])[order])
    last = min(int(np.searchsorted(filled, n_occupied - 1e-10)), len(flat) - 1)
    following = min(last + 1, len(flat) - 1)
    return 0.5 * float(flat[last] + flat[following])


# ------------------------------------------------------------------------------------- band gap
def band_gap(energies: np.ndarray, n_electrons: float, spin_degeneracy: int = 2) -> dict:
    """Band gap from band energies at the given k-points (a path or a mesh).

    :return: dict with ``gap`` (eV, 0 for metals), ``vbm``, ``cbm`` (eV), ``direct_gap`` (smallest
        gap at one k-point), ``k_vbm``, ``k_cbm`` (k-point indices) and ``is_metal``. When the
        electron count fills a fractional number of bands the system is a metal and the edge
        entries are None; when the two bands around the count overlap it is a metal (semimetal)
        with gap 0 and the band edges still reported.
    """
    energies = np.atleast_2d(np.asarray(energies, dtype=np.float64))
    n_occupied = n_electrons / spin_degeneracy
    n = int(round(n_occupied))
    if abs(n_occupied - n) > 1e-8:
        return {
            'gap': 0.0,
            'vbm': None,
            'cbm': None,
            'direct_gap': None,
            'k_vbm': None,
            'k_cbm': None,
            'is_metal': True,
        }
    if not 0 < n < energies.shape[1]:
        raise ValueError(f'{n_electrons} electrons fill {n} of {energies.shape[1]} bands: no gap to find')
    valence, conduction = energies[:, n - 1], energies[:, n]
    k_vbm, k_cbm = int(np.argmax(valence)), int(np.argmin(conduction))
    vbm, cbm = float(valence[k_vbm]), float(conduction[k_cbm])
    return {
        'gap': max(cbm - vbm, 0.0),
        'vbm': vbm,
        'cbm': cbm,
        'direct_gap': float((conduction - valence).min()),
        'k_vbm': k_vbm,
        'k_cbm': k_cbm,
        'is_metal': bool(cbm <= vbm),
    }


# ------------------------------------------------------------------------------ density of states
def density_of_states(
    energies: np.ndarray,
    weights: np.ndarray,
    grid: np.ndarray,
    smearing: str = 'gaussian',
    width: float = 0.05,
    spin_degeneracy: int = 2,
) -> np.ndarray:
    """Smeared density of states in states/eV/cell on an energy ``grid`` (nE,), shape (nE,).

    Integrates (over all energies) to n_bands × spin_degeneracy, weights being normalised.
    """
    energies, weights = _prepare(energies, weights)
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if width <= 0:
        raise ValueError(f'smearing width must be positive, got {width}')
    _delta(np.zeros(1), smearing)  # validates the name
    reach = _CUTOFF[smearing] * width
    flat = energies.reshape(-1)
    flat_weights = np.repeat(weights, energies.shape[1])
    keep = (flat > grid.min() - reach) & (flat < grid.max() + reach)
    flat, flat_weights = flat[keep], flat_weights[keep]
    dos = np.zeros(len(grid))
    chunk = max(1, (1 << 22) // max(len(grid), 1))
    for start in range(0, len(flat), chunk):
        x = (flat[start : start + chunk, None] - grid[None, :]) / width
        dos += flat_weights[start : start + chunk] @ _delta(x, smearing)
    return spin_degeneracy * dos / width
