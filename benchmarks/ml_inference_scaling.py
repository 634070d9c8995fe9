"""Inference time and peak memory of the NextHAM model versus atom count (not a test).

Cubic diamond Si supercells (64 ... 4096 atoms) with synthetic H0 and S blocks in the real gth-dzvp
shell structure (s s p p d, 13 orbitals per atom) for every pair within the model cutoff (8 Å, ~107
neighbours per atom); the small model preset (untrained: the cost does not depend on the weights),
float32, a fixed edge chunk. Each size runs in its own process, so its peak RSS is its own::

    OMP_NUM_THREADS=2 python benchmarks/ml_inference_scaling.py                    # 64 ... 2000
    OMP_NUM_THREADS=2 python benchmarks/ml_inference_scaling.py --sizes 64 4096 --edge-chunk 8192

Prints one JSON line per size as it finishes, then the JSON table (also written with ``--output``):
inference wall time per phase, time per edge, peak RSS of the process and its increase during
inference, the number of chunks, the load average, and the log-log slope of time and memory
versus atoms (1 = linear).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

DEFAULT_SIZES = (64, 216, 512, 1000, 2000)
SHELLS = (0, 0, 1, 1, 2)  # gth-dzvp Si


def supercell_shape(n_atoms: int) -> tuple[int, int, int]:
    """Repetitions of the 8-atom cubic cell, as equal as possible, for ``n_atoms`` (a multiple of 8)."""
    if n_atoms % 8:
        raise SystemExit(f'{n_atoms} is not a multiple of 8 (cubic diamond cells)')
    cells = n_atoms // 8
    best = (cells, 1, 1)
    for a in range(1, cells + 1):
        for b in range(a, cells + 1):
            if cells % (a * b) == 0 and (c := cells // (a * b)) >= b:
                best = min(best, (a, b, c), key=lambda s: max(s) / min(s))
    return best


def synthetic_silicon(n_atoms: int, cutoff: float, seed: int = 0):
    """Block Hamiltonian of a cubic Si supercell: random hermitian H0 (= H), positive-definite S."""
    from ase.build import bulk

    from aiida_nextham.hamiltonian.basis import Basis
    from aiida_nextham.hamiltonian.block import BlockHamiltonian
    from aiida_nextham.hamiltonian.synthetic import neighbour_pairs

    atoms = bulk('Si', 'diamond', a=5.43, cubic=True).repeat(supercell_shape(n_atoms))
    atoms.rattle(0.02, seed=seed)
    basis = Basis.from_shells({'Si': list(SHELLS)}, name='gth-dzvp', code='pyscf')
    pairs = neighbour_pairs(atoms, cutoff)
    n = sum(2 * l + 1 for l in SHELLS)
    empty = np.zeros(len(pairs) * n * n)
    bh = BlockHamiltonian(atoms.cell.array, atoms.positions, atoms.numbers, basis, pairs, empty)
    partner = bh.partner_index()
    rng = np.random.default_rng(seed)
    decay = np.exp(-bh.distances() / 1.5)[:, None, None]
    onsite = (pairs[:, 3] == pairs[:, 4]) & ~pairs[:, :3].any(axis=1)
    h = rng.normal(size=(len(pairs), n, n)).astype(np.float64)
    h = 0.5 * (h + h[partner].transpose(0, 2, 1)) * decay
    s = rng.normal(size=(len(pairs), n, n))
    s = 0.5 * (s + s[partner].transpose(0, 2, 1)) * decay
    rows = np.bincount(pairs[~onsite, 3], weights=np.abs(s[~onsite]).sum(axis=2).max(axis=1))
    s *= 0.5 / rows.max()  # every row's off-site sum below 0.5: diagonally dominant, positive definite
    s[onsite] = np.eye(n)
    return BlockHamiltonian(
        atoms.cell.array,
        atoms.positions,
        atoms.numbers,
        basis,
        pairs,
        h.reshape(-1),
        overlap=s.reshape(-1),
        h0=h.reshape(-1),
        n_electrons=4.0 * n_atoms,
        metadata={'basis_set': 'gth-dzvp', 'source': 'synthetic'},
    )


def run_one(n_atoms: int, edge_chunk: int, cutoff: float, dtype: str) -> dict:
    """One size in this process: generate, predict, measure."""
    import torch

    from aiida_nextham.ml.config import ModelConfig
    from aiida_nextham.ml.inference import InferenceStats, predict_structures
    from aiida_nextham.ml.model import NexthamModel

    start = time.perf_counter()
    bh = synthetic_silicon(n_atoms, cutoff)
    generate = time.perf_counter() - start
    torch.manual_seed(0)
    config = ModelConfig.preset('small', shells={14: SHELLS}, cutoff=cutoff)
    model = NexthamModel(config).to(getattr(torch, dtype)).eval()
    predict_structures(model, [synthetic_silicon(8, cutoff)], edge_chunk_size=edge_chunk)  # warm-up
    stats = InferenceStats()
    start = time.perf_counter()
    (predicted,) = predict_structures(model, [bh], edge_chunk_size=edge_chunk, stats=stats)
    total = time.perf_counter() - start
    assert np.isfinite(predicted.hamiltonian).all()
    return {
        'n_atoms': n_atoms,
        'n_orbitals': int(bh.n_orbitals),
        'n_pairs': int(bh.n_pairs),
        'n_edges': stats.n_edges,
        'edge_chunk': edge_chunk,
        'n_chunks': stats.n_chunks,
        'generate_s': round(generate, 2),
        'inference_s': round(total, 2),
        'phases_s': {k: round(v, 2) for k, v in stats.times.items()},
        'us_per_edge': round(1e6 * total / max(stats.n_edges, 1), 1),
        'hamiltonian_mb': round(bh.hamiltonian.nbytes / 2**20, 1),
        'rss_before_inference_mb': stats.memory['rss_start_mb'],
        'inference_increase_mb': stats.memory['peak_increase_mb'],
        'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        'threads': torch.get_num_threads(),
        'load_average': [round(x, 2) for x in os.getloadavg()],
    }


def slope(x, y) -> float:
    """Exponent of a power-law fit y ~ x^p."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=list(DEFAULT_SIZES))
    parser.add_argument('--edge-chunk', type=int, default=4096)
    parser.add_argument('--cutoff', type=float, default=8.0)
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--budget', type=float, default=900.0, help='Skip sizes projected beyond it, s.')
    parser.add_argument('--output', default=None, help='Also write the JSON table here.')
    parser.add_argument('--one', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.edge_chunk, args.cutoff, args.dtype)))
        return
    rows, started = [], time.perf_counter()
    for n in sorted(args.sizes):
        if rows:  # linear projection from the last size, x1.3 margin
            projected = rows[-1]['wall_s'] * n / rows[-1]['n_atoms'] * 1.3
            if time.perf_counter() - started + projected > args.budget:
                print(json.dumps({'n_atoms': n, 'skipped': f'projected {projected:.0f} s beyond budget'}))
                continue
        command = [sys.executable, __file__, '--one', str(n), '--edge-chunk', str(args.edge_chunk)]
        command += ['--cutoff', str(args.cutoff), '--dtype', args.dtype]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f'size {n} failed with exit code {done.returncode}')
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row['wall_s'] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    atoms = [r['n_atoms'] for r in rows]
    table = {
        'machine': {
            'platform': platform.platform(),
            'cpus': os.cpu_count(),
            'python': sys.version.split()[0],
        },
        'settings': {
            'edge_chunk': args.edge_chunk,
            'cutoff': args.cutoff,
            'dtype': args.dtype,
            'model': 'small preset',
            'basis': 'Si gth-dzvp shells s s p p d',
        },  # fmt: skip
        'rows': rows,
        'scaling': {
            'time_exponent': round(slope(atoms, [r['inference_s'] for r in rows]), 3)
            if len(rows) > 1
            else None,
            'memory_exponent': round(slope(atoms, [r['inference_increase_mb'] for r in rows]), 3)
            if len(rows) > 1
            else None,
        },
    }
    text = json.dumps(table, indent=1)
    print(text)
    if args.output:
        with open(args.output, 'w') as handle:
            handle.write(text + '\n')


if __name__ == '__main__':
    main()
