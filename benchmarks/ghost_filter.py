"""What limits the band error of a predicted H in a nearly dependent basis: the ghost filter's own cost
and the floor set by the model cutoff, measured on a DFT label (no model involved).

For each threshold τ of the ghost filter (``hamiltonian.bloch.filter_correction``) it compares, on a
Γ-centred k-mesh, the true full-basis bands within ±2 eV of E_F with the bands of

- ``exact``: the true H, filtered (the filter's bias alone);
- ``cutoff R``: the true blocks within R Å and H0 + μ̂S beyond (the far-field rule of the model,
  μ̂ fitted on the blocks within R) — a perfect model of cutoff R, filtered;
- ``cutoff R + noise``: the same plus Hermitian Gaussian noise of ``--noise`` meV on every block
  within R (a model error of that size, without structure).

Usage::

    python benchmarks/ghost_filter.py LABEL.h5 [--cutoff 6 --cutoff 8] [--noise 0.05] [--mesh 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.linalg

from aiida_nextham.hamiltonian.bloch import bloch_sum, filter_correction
from aiida_nextham.hamiltonian.block import BlockHamiltonian
from aiida_nextham.hamiltonian.hdf5 import read_hdf5
from aiida_nextham.hamiltonian.spectra import monkhorst_pack
from aiida_nextham.ml.metrics import ghost_bands

THRESHOLDS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def hermitian_noise(bh: BlockHamiltonian, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Flat blocks of Gaussian noise (eV) with M_ji(−R) = M_ij(R)ᵀ."""
    noise = rng.normal(scale=scale, size=bh.hamiltonian.size)
    offsets, partner = bh.block_offsets('H'), bh.partner_index()
    symmetric = noise.copy()
    for p in range(bh.n_pairs):
        q, shape = partner[p], bh.block_shape('H', p)
        mine = noise[offsets[p] : offsets[p + 1]].reshape(shape)
        theirs = noise[offsets[q] : offsets[q + 1]].reshape(shape[::-1])
        symmetric[offsets[p] : offsets[p + 1]] = (0.5 * (mine + theirs.T)).ravel()
    return symmetric


def perfect_model(bh: BlockHamiltonian, cutoff: float, noise: np.ndarray | None = None) -> BlockHamiltonian:
    """True blocks within ``cutoff`` (plus ``noise`` there), H0 + μ̂S beyond."""
    within = np.repeat(bh.distances() <= cutoff, np.diff(bh.block_offsets('H')))
    overlap, delta = bh.overlap, bh.hamiltonian - bh.h0
    shift = (overlap[within] * delta[within]).sum() / (overlap[within] ** 2).sum()
    inside = bh.hamiltonian + (noise if noise is not None else 0.0)
    return bh.replace(hamiltonian=np.where(within, inside, bh.h0 + shift * overlap))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('label')
    parser.add_argument('--cutoff', type=float, action='append', help='model cutoffs (Å); default 6 and 8')
    parser.add_argument('--noise', type=float, default=0.05, help='meV')
    parser.add_argument('--mesh', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    true = read_hdf5(args.label)
    variants = {'exact': true}
    for cutoff in args.cutoff or (6.0, 8.0):
        variants[f'cutoff {cutoff:g}'] = perfect_model(true, cutoff)
        noise = hermitian_noise(true, 1e-3 * args.noise, np.random.default_rng(args.seed))
        variants[f'cutoff {cutoff:g} + noise'] = perfect_model(true, cutoff, noise)
    kpoints, _ = monkhorst_pack((args.mesh,) * 3, gamma_centered=True)
    reference, energies = [], {(name, t): [] for name in variants for t in THRESHOLDS}
    smallest = np.inf
    for k in kpoints:
        s, h0 = bloch_sum(true, 'S', k), bloch_sum(true, 'H0', k)
        w = np.linalg.eigvalsh(s)
        smallest = min(smallest, w[0] / w[-1])
        reference.append(scipy.linalg.eigh(bloch_sum(true, 'H', k), s, eigvals_only=True))
        for name, bh in variants.items():
            h = bloch_sum(bh, 'H', k)
            for t in THRESHOLDS:
                energies[name, t].append(
                    scipy.linalg.eigh(filter_correction(h, h0, s, t), s, eigvals_only=True)
                )
    reference = np.array(reference)
    fermi = true.fermi_level
    window = np.abs(reference - fermi) <= 2.0
    print(
        f'{args.label}: {true.n_atoms} atoms, {true.n_orbitals} orbitals, {len(kpoints)} k-points, '
        f'smallest S(k) eigenvalue / largest {smallest:.1e}; noise {args.noise} meV'
    )
    print(f'{"variant":24s}{"τ":>8s}{"band mean (meV)":>17s}{"max (meV)":>11s}{"ghosts":>8s}')
    for (name, t), values in energies.items():
        values = np.array(values)
        error = 1000.0 * np.abs(values - reference)[window]
        ghosts = ghost_bands(values, reference, (fermi - 2.0, fermi + 2.0))['count']
        print(f'{name:24s}{t:8.0e}{error.mean():17.2f}{error.max():11.1f}{ghosts:8d}')


if __name__ == '__main__':
    main()
