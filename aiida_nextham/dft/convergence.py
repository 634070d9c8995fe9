"""Self-check deviation versus dense k-mesh and neighbour cutoff, from one SCF.

Use it to pick ``cutoff`` and ``dense_kmesh`` (or ``alias_margin``) for a new material::

    python -m aiida_nextham.dft.convergence si.cif --protocol balanced --mode label \\
        --meshes 5,6,7,8 --cutoffs 8,10,12 -o table.json
"""

from __future__ import annotations

import json
import time

import numpy as np
from ase import Atoms

from ..hamiltonian.synthetic import neighbour_pairs
from .checks import check_elements, check_structure
from .config import DftConfig, shortest_superlattice_vector
from .errors import DftConfigError
from .realspace import check_pairs_resolved, half_mesh
from .run import kspace, prepare, realspace_blocks, selfcheck
from .selfcheck import offmesh_kpoints

__all__ = ['selfcheck_table']


def selfcheck_table(
    atoms: Atoms,
    config: DftConfig,
    meshes: list[tuple[int, int, int]],
    cutoffs: list[float],
    mode: str = 'label',
) -> list[dict]:
    """One row per (dense mesh, cutoff): self-check deviations (meV), pair count and build time (s).

    Combinations whose mesh cannot resolve the cutoff's pairs are skipped. The self-check k-points
    are the same for every row.
    """
    check_structure(atoms)
    check_elements(atoms.get_chemical_symbols(), config.basis, config.pseudo)
    lattice = atoms.cell.array
    kmesh = config.scf_mesh(lattice)
    start = time.perf_counter()
    prepared = prepare(atoms, config, mode, kmesh)
    scf_time = time.perf_counter() - start
    check_k = offmesh_kpoints(config.selfcheck_kpoints, config.seed, [kmesh, *meshes])
    reference = kspace(prepared, [check_k])
    main = 'H' if mode == 'label' else 'H0'
    rows = []
    for mesh in meshes:
        kpoints, weights = half_mesh(mesh)
        start = time.perf_counter()
        matrices = {name: value[0] for name, value in kspace(prepared, [kpoints]).items()}
        build = time.perf_counter() - start
        for cutoff in cutoffs:
            pairs = neighbour_pairs(atoms, cutoff)
            try:
                check_pairs_resolved(pairs, mesh)
            except DftConfigError:
                continue
            bh = realspace_blocks(atoms, prepared.basis, pairs, matrices, kpoints, weights, mode)
            check = selfcheck(
                bh,
                check_k,
                reference[main][0],
                reference['S'][0],
                float(prepared.cell.nelectron),
                config,
                main,
            )
            rows.append(
                {
                    'dense_kmesh': list(mesh),
                    'shortest_supercell_vector': shortest_superlattice_vector(lattice, mesh),
                    'cutoff': cutoff,
                    'n_pairs': int(len(pairs)),
                    'selfcheck_deviation': check.as_dict()['max_deviation'],
                    'selfcheck_deviation_all_bands': check.as_dict()['max_deviation_all'],
                    'problem': check.problem,
                    'kspace_build_time': build,
                    'scf_time': scf_time,
                    'kmesh': list(kmesh),
                }
            )
    return rows


def _main(argv: list[str] | None = None) -> None:
    import argparse

    from ase.io import read

    from .protocols import get_protocol

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('structure')
    parser.add_argument('--protocol', default='balanced')
    parser.add_argument('--basis')
    parser.add_argument('--kmesh', type=int, nargs=3)
    parser.add_argument('--mode', default='label', choices=['h0', 'label'])
    parser.add_argument('--meshes', required=True, help='comma-separated sizes n (n×n×n)')
    parser.add_argument('--cutoffs', required=True, help='comma-separated cutoffs, Å')
    parser.add_argument('-o', '--output')
    args = parser.parse_args(argv)
    config = get_protocol(args.protocol, {'basis': args.basis, 'kmesh': args.kmesh})
    meshes = [(int(n),) * 3 for n in args.meshes.split(',')]
    cutoffs = [float(c) for c in args.cutoffs.split(',')]
    rows = selfcheck_table(read(args.structure), config, meshes, cutoffs, args.mode)
    text = json.dumps(rows, indent=1, default=lambda x: np.asarray(x).tolist())
    if args.output:
        with open(args.output, 'w') as handle:
            handle.write(text + '\n')
    for row in rows:
        deviation, every = (
            float('inf') if row[key] is None else row[key]
            for key in ('selfcheck_deviation', 'selfcheck_deviation_all_bands')
        )
        print(
            f'{row["dense_kmesh"]} cutoff {row["cutoff"]:5.1f} Å  pairs {row["n_pairs"]:5d}  '
            f'dev {deviation:10.4f} meV  all bands {every:10.4f} meV  build {row["kspace_build_time"]:6.1f} s'
            + (f'  ({row["problem"][:60]}...)' if row['problem'] else '')
        )


if __name__ == '__main__':
    _main()
