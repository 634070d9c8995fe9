"""Phonons of diamond silicon with DFT forces, as an AiiDA work chain (``NexthamPhononWorkChain``).

Usage::

    OMP_NUM_THREADS=1 python examples/phonons_si.py [--profile NAME] [--supercell N N N]
        [--protocol fast|balanced|stringent] [--settings JSON] [-o OUTDIR]

Steps: load an AiiDA profile; get (or create) the local computer, the ``nextham`` code and the GTH-PBE
pseudopotential family; build the work chain from the ``fast`` protocol for the 2-atom primitive cell of
Si (a = 5.43 Å); run it; print the exit status, the stability flag and the frequencies at Γ, X and L;
write the band structure and DOS to ``OUTDIR/phonons_si.png``.

Small by default: the 1×1×1 supercell (2 atoms, one displaced cell, Γ-point PySCF forces) took 85 s wall
on one core (OMP_NUM_THREADS=1, load ≈ 2 on 2 cores; the engine 56 s of it: SCF 42 s, gradient 13 s).
It is a demonstration, not a converged result: Γ-only sampling of a 2-atom cell with gth-szv puts the
optical mode at Γ at 25.8 THz (experiment 15.53 THz), and a 1×1×1 supercell keeps only the force
constants that fit in one primitive cell, so the bands away from Γ are a sketch. For numbers worth
comparing with experiment use ``--supercell 3 3 3 --protocol balanced`` (16.50 THz at Γ; about 25 min
on one core): see docs/benchmarks.md, "Phonons".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from aiida_nextham.calculations.phonons import PHONON_SETTINGS  # the keys of the `settings` input
from aiida_nextham.dft.protocols import PROTOCOLS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'supercell sizes must be positive integers, got {text}')
    return value


def settings_json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f'--settings is not valid JSON: {exc}') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('--settings must be a JSON object, e.g. \'{"npoints": 51}\'')
    unknown = sorted(set(value) - set(PHONON_SETTINGS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f'unknown --settings key(s) {unknown}; accepted: {list(PHONON_SETTINGS)}'
        )
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', default=None, help='AiiDA profile (default: the default profile)')
    parser.add_argument(
        '--supercell', nargs=3, type=positive_int, default=[1, 1, 1], metavar='N', help='default: 1 1 1'
    )
    parser.add_argument('--protocol', choices=PROTOCOLS, default='fast', help='DFT protocol (default: fast)')
    parser.add_argument(
        '--settings',
        type=settings_json,
        default={},
        help=f'JSON object of phonon settings: {list(PHONON_SETTINGS)}',
    )
    parser.add_argument('-o', '--outdir', type=Path, default=Path('.'), help='where the PNG goes')
    return parser.parse_args(argv)


def frequencies_at(bands, label: str) -> np.ndarray:
    """Sorted frequencies (THz) at the first q-point of the path labelled ``label``."""
    index = next(i for i, name in bands.labels if name == label)
    return np.sort(bands.get_bands()[index])


def plot(node, path: Path) -> None:
    """Bands and DOS with the package's phonon plot, fed from the work chain's output nodes."""
    from aiida_nextham.hamiltonian.kpath import explicit_kpath
    from aiida_nextham.phonons.plotting import plot_phonons

    bands, dos, parameters = node.outputs.bands, node.outputs.dos, node.outputs.output_parameters
    kpath = explicit_kpath(bands.get_kpoints(), np.array(bands.cell), bands.labels)
    labelled = {i for i, _ in bands.labels}
    steps = np.diff(kpath.distances, prepend=0.0)
    steps[[i for i in labelled if i - 1 in labelled]] = 0.0  # a break in the path ('U|K'): no jump
    kpath.distances = np.cumsum(steps)
    _, dos_frequencies, _ = dos.get_x()
    ((_, dos_values, _),) = dos.get_y()
    result = SimpleNamespace(  # what plot_phonons reads from a PhononResult
        kpath=kpath,
        frequencies=bands.get_bands(),
        dos_frequencies=dos_frequencies,
        dos=dos_values,
        primitive=node.inputs.phonons.structure.get_ase(),
        dynamically_stable=parameters['dynamically_stable'],
        stability=parameters['stability'],
    )
    plot_phonons(result, path, title=f'Si phonons ({node.process_label}<{node.pk}>)')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # 1. Load the AiiDA profile (a profile that is already loaded is simply reused).
    import aiida

    profile = aiida.load_profile(args.profile, allow_switch=True)
    print(f'profile: {profile.name}')

    from aiida import orm
    from aiida.engine import run_get_node
    from ase.build import bulk

    from aiida_nextham.cli.setup import get_or_create_code, get_or_create_localhost
    from aiida_nextham.data.pseudo import install_pyscf_gth_family
    from aiida_nextham.workflows.phonons import NexthamPhononWorkChain

    # 2. The computer, the code that runs the `nextham` engine and the pseudopotentials (all idempotent:
    #    what exists is reused, as `aiida-nextham setup` does).
    computer, _ = get_or_create_localhost()
    code, _ = get_or_create_code(computer)
    family, _ = install_pyscf_gth_family('pbe')

    # 3. The crystal: the 2-atom primitive cell of diamond Si.
    structure = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))

    # 4. The work chain from a protocol: DFT forces (PySCF, Γ-point gradients of each displaced
    #    supercell), phonopy's finite displacements on the supercell, bands, DOS and thermal properties.
    builder = NexthamPhononWorkChain.get_builder_from_protocol(
        code, structure, protocol=args.protocol, supercell=args.supercell, settings=args.settings
    )
    builder.phonons.pseudos = family.get_pseudos(structure=structure)  # pseudopotentials in provenance

    # 5. Run it in this interpreter (no daemon needed) and look at the outcome.
    print(f'running NexthamPhononWorkChain: supercell {args.supercell}, protocol {args.protocol!r} ...')
    _, node = run_get_node(builder)
    print(f'{node.process_label}<{node.pk}> finished with exit status {node.exit_status}')
    if not node.is_finished_ok:
        print(f'failed: {node.exit_message}')
        print(f'see `verdi process report {node.pk}`')
        return 1

    # 6. The results: the stability flag, the frequencies at special points and a plot.
    parameters = node.outputs.output_parameters
    print(f'dynamically_stable: {parameters["dynamically_stable"]}')
    for label in ('GAMMA', 'X', 'L'):
        values = ', '.join(f'{value:.2f}' for value in frequencies_at(node.outputs.bands, label))
        print(f'{label:>5}: {values} THz')
    args.outdir.mkdir(parents=True, exist_ok=True)
    png = args.outdir / 'phonons_si.png'
    plot(node, png)
    print(f'band structure: {png}')

    # 7. Everything is in the provenance graph.
    print(f'inspect: verdi process show {node.pk}')
    print(f'graph:   verdi node graph generate {node.pk}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
