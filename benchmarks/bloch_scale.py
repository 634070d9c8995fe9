"""Scale benchmark of the Bloch-sum and eigenvalue paths on a synthetic 1000-atom Si supercell.

Prints figures (not a test)::

    python benchmarks/bloch_scale.py                 # 5x5x5 cubic diamond Si = 1000 atoms, 2s2p1d
    python benchmarks/bloch_scale.py --dense check --exact-check --no-sparse  # dense overlap checks
    python benchmarks/bloch_scale.py --dense none --gamma          # sparse path alone (its memory)

Stages: synthetic blocks, scatter index, Bloch sums (dense and CSR), dense generalized
eigenvalues (overlap check and ``eigh`` timed separately), sparse shift-invert (10 eigenvalues
nearest the middle of the spectrum), each with the peak RSS so far.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import time
from contextlib import contextmanager

import numpy as np
import scipy
import scipy.linalg
from ase.build import bulk

from aiida_nextham.hamiltonian import bloch, sparse
from aiida_nextham.hamiltonian.basis import Basis
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


@contextmanager
def stage(name: str, results: dict):
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    results[name] = elapsed
    print(f'{name:<48s} {elapsed:10.2f} s   peak RSS {peak_rss_gb():6.2f} GiB', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--reps', type=int, default=5, help='cubic 8-atom cells per axis (5 -> 1000 atoms)')
    parser.add_argument('--cutoff', type=float, default=6.5, help='pair cutoff in Å')
    parser.add_argument('--kpoint', type=float, nargs=3, default=(0.1, 0.2, 0.3), help='fractional k')
    parser.add_argument('--n', type=int, default=10, help='eigenvalues for the sparse path')
    parser.add_argument(
        '--dense', choices=['full', 'check', 'none'], default='full', help='dense stages: all, no eigh, none'
    )
    parser.add_argument('--no-sparse', action='store_true', help='skip the sparse stages')
    parser.add_argument('--exact-check', action='store_true', help='also time the exact eigvalsh S check')
    parser.add_argument(
        '--gamma', action='store_true', help='also run the sparse path at Γ (real arithmetic)'
    )
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()

    print(f'python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}')
    print(f'cores visible: {os.cpu_count()}, load average at start: {os.getloadavg()}')
    results: dict[str, float] = {}
    atoms = bulk('Si', 'diamond', a=5.431, cubic=True).repeat((args.reps,) * 3)
    basis = Basis.from_shells({'Si': [0, 0, 1, 1, 2]})
    with stage('synthetic blocks (random_block_hamiltonian)', results):
        bh = random_block_hamiltonian(atoms, basis, args.cutoff, seed=args.seed)
    print(
        f'atoms {bh.n_atoms}, orbitals {bh.n_orbitals}, cutoff {args.cutoff} Å, pairs {bh.n_pairs} '
        f'({bh.n_pairs / bh.n_atoms:.1f} per atom), '
        f'stored numbers H {bh.hamiltonian.size:,} + S {bh.overlap.size:,} '
        f'({(bh.hamiltonian.nbytes + bh.overlap.nbytes) / 1024**2:.0f} MiB)'
    )
    k = np.array(args.kpoint)
    with stage('scatter index (H and S)', results):
        bloch._scatter_index(bh, 'H')
        bloch._scatter_index(bh, 'S')
    with stage('Bloch sum H(k), S(k) sparse CSR', results):
        h_csr = bloch.bloch_sum(bh, 'H', k, sparse=True)
        bloch.bloch_sum(bh, 'S', k, sparse=True)
    print(f'nonzeros of H(k): {h_csr.nnz:,} ({h_csr.nnz / h_csr.shape[0] ** 2:.1%} of {h_csr.shape[0]}²)')
    del h_csr

    sigma = 0.0
    dense_values = None
    if args.dense != 'none':
        with stage('Bloch sum H(k), S(k) dense', results):
            h = bloch.bloch_sum(bh, 'H', k)
            s = bloch.bloch_sum(bh, 'S', k)
        with stage('dense overlap check (Cholesky + Lanczos)', results):
            s_min = bloch.smallest_overlap_eigenvalue(s)
        print(f'smallest eigenvalue of S(k): {s_min:.6f}')
        if args.exact_check:
            with stage('dense overlap check (eigvalsh, lowest only)', results):
                s_min = float(scipy.linalg.eigvalsh(s, subset_by_index=[0, 0])[0])
            print(f'smallest eigenvalue of S(k): {s_min:.6f}')
    if args.dense == 'full':
        with stage('dense eigh(H, S), eigenvalues only', results):
            dense_values = scipy.linalg.eigh(
                h, s, eigvals_only=True, overwrite_a=True, overwrite_b=True, check_finite=False
            )
    if args.dense != 'none':
        del h, s
        gc.collect()
    if dense_values is not None:
        sigma = float(np.median(dense_values))
        print(
            f'dense spectrum [{dense_values[0]:.3f}, {dense_values[-1]:.3f}] eV; '
            f'sigma = median = {sigma:.6f} eV'
        )

    if args.no_sparse:
        print(f'peak RSS {peak_rss_gb():.2f} GiB')
        return
    s_csr = bloch.bloch_sum(bh, 'S', k, sparse=True)
    with stage('sparse overlap check (LDLᴴ inertia + S nearest 0)', results):
        s_min = sparse.overlap_min_eigenvalue(s_csr)
    print(f'smallest eigenvalue of S(k) (sparse): {s_min:.4f}')
    del s_csr
    with stage(f'sparse: {args.n} eigenvalues near sigma (LU + ARPACK)', results):
        values = sparse.eigenvalues_near(bh, k, sigma, args.n, check_overlap=False)
    print('sparse eigenvalues:', np.array2string(values, precision=6))
    if dense_values is not None:
        nearest = np.sort(dense_values[np.argsort(np.abs(dense_values - sigma))[: args.n]])
        print(f'max |sparse - dense| = {np.abs(values - nearest).max():.2e} eV')
    if args.gamma:
        with stage(f'sparse at Γ (real): {args.n} eigenvalues, no check', results):
            values = sparse.eigenvalues_near(bh, np.zeros(3), sigma, args.n, check_overlap=False)
    print(f'peak RSS {peak_rss_gb():.2f} GiB')


if __name__ == '__main__':
    main()
