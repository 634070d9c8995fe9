"""Si (diamond) phonons from PySCF forces vs experiment: runs ``nextham phonons`` and compares Γ, X, L.

Usage (from the repository root; one DFT run at a time on a shared machine)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phonons_si.py --protocol fast \
        --out benchmarks/phonons/si_dft

Structure: 2-atom primitive cell, a = 5.43 Å (experiment: 5.431 Å at 300 K; no relaxation), 2×2×2
supercell (16 atoms), forces at the Γ point of the supercell (``--kmesh 1 1 1``, the fast analytic
gradient route; the same electronic sampling as a Γ-centred 2×2×2 k-mesh of the primitive cell).
Writes the command's outputs plus ``comparison.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

#: inelastic neutron scattering, room temperature (Nilsson & Nelin, PRB 6, 3777 (1972); Dolling 1963), THz
EXPERIMENT = {
    'GAMMA': {'LTO': 15.53},
    'X': {'TA': 4.49, 'LA': 12.32, 'TO': 13.90},
    'L': {'TA': 3.43, 'LA': 11.35, 'LO': 12.60, 'TO': 14.68},
}


def branches(label: str, frequencies: list[float]) -> dict[str, float]:
    """Named branches from the six sorted frequencies of diamond Si at Γ, X or L."""
    f = sorted(frequencies)
    if label == 'GAMMA':
        return {'LTO': float(np.mean(f[3:]))}
    if label == 'X':  # TA (2), LA=LO (2), TO (2)
        return {'TA': float(np.mean(f[:2])), 'LA': float(np.mean(f[2:4])), 'TO': float(np.mean(f[4:]))}
    return {'TA': float(np.mean(f[:2])), 'LA': f[2], 'LO': f[3], 'TO': float(np.mean(f[4:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--protocol', default='fast')
    parser.add_argument('--supercell', type=int, nargs=3, default=(2, 2, 2))
    parser.add_argument('--kmesh', type=int, nargs=3, default=(1, 1, 1))
    parser.add_argument('--a', type=float, default=5.43)
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    structure = args.out.parent / f'{args.out.name}_input.vasp'
    bulk('Si', 'diamond', a=args.a).write(structure, format='vasp', direct=True)
    command = [
        str(Path(sys.executable).with_name('nextham')), 'phonons', str(structure),
        '--supercell', *map(str, args.supercell), '--protocol', args.protocol,
        '--kmesh', *map(str, args.kmesh), '-o', str(args.out), '--plot', str(args.out) + '.png',
    ]  # fmt: skip
    print(' '.join(command), flush=True)
    start = time.perf_counter()
    summary = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    wall = time.perf_counter() - start
    rows = []
    for label, reference in EXPERIMENT.items():
        computed = branches(label, summary['special_points'][label])
        for branch, value in reference.items():
            rows.append({'point': label, 'branch': branch, 'dft': computed[branch], 'experiment': value})
    comparison = {
        'command': ' '.join(command),
        'lattice_constant': args.a,
        'protocol': args.protocol,
        'kmesh': list(args.kmesh),
        'supercell': list(args.supercell),
        'wall_time': wall,
        'timings': summary['timings'],
        'force_calculations': summary['backend'].get('calculations'),
        'dynamically_stable': summary['dynamically_stable'],
        'rows': rows,
        'mean_abs_deviation': float(np.mean([abs(r['dft'] - r['experiment']) for r in rows])),
    }
    (args.out / 'comparison.json').write_text(json.dumps(comparison, indent=1) + '\n')
    print('| point | branch | DFT (THz) | experiment (THz) | diff |')
    for r in rows:
        diff = r['dft'] - r['experiment']
        print(f'| {r["point"]} | {r["branch"]} | {r["dft"]:.2f} | {r["experiment"]:.2f} | {diff:+.2f} |')
    print(f'wall time {wall:.0f} s; mean |diff| {comparison["mean_abs_deviation"]:.2f} THz')


if __name__ == '__main__':
    main()
