"""Si phonons from the equivariant ML force field trained on DFT forces (issue 8 acceptance).

python benchmarks/forcefield_si.py label --n 8
    labels rattled (and slightly strained) 16-atom Si supercells (the 2×2×2 supercell of the 2-atom
    primitive cell, as in the DFT phonons) with the PySCF engine, appending one frame per structure to
    benchmarks/forcefield/si_rattled.extxyz (resumable: frames already there are kept).
python benchmarks/forcefield_si.py train
    trains the force field with ``nextham train-ff benchmarks/forcefield/train_ff.yaml`` (output in
    /tmp unless --output) and copies the final model to benchmarks/forcefield/model/.
python benchmarks/forcefield_si.py phonons
    ML phonons on the q-path of the DFT phonons (benchmarks/phonons/si_dft/), frequency MAE versus DFT
    and the wall-time ratio DFT-phonons / ML-phonons; JSON to stdout and benchmarks/forcefield/results.json.

Every structure uses the DFT settings of the DFT phonon benchmark (:func:`dft_config`). The displaced
supercells phonopy makes for the DFT phonons are *not* in the training set: the rattled cells are drawn
independently (seeded), so the ML phonons are a prediction, not a replay of the DFT force sets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / 'forcefield'
DATASET = DATA / 'si_rattled.extxyz'
DFT_PHONONS = HERE / 'phonons' / 'si_dft'
#: lattice constant of the DFT phonon benchmark, Å
LATTICE_CONSTANT = 5.43
SUPERCELL = (2, 2, 2)


#: the DFT phonon benchmark (benchmarks/phonons_si.py): ``nextham phonons --protocol fast --kmesh 1 1 1``
PROTOCOL = 'fast'
DFT_KMESH = (1, 1, 1)


def dft_config():
    """The DftConfig of the DFT phonons: the protocol with the phonon command's force defaults."""
    from aiida_nextham.dft import get_protocol
    from aiida_nextham.engine.phonons_command import PHONON_DFT_DEFAULTS

    return get_protocol(PROTOCOL, dict(PHONON_DFT_DEFAULTS))


def primitive():
    from ase.build import bulk

    return bulk('Si', 'diamond', a=LATTICE_CONSTANT)


def rattled_structure(index: int, seed: int = 2026):
    """Structure ``index``: the 16-atom supercell, strained (σ 0.5 %) and rattled (σ 0.02–0.05 Å)."""
    rng = np.random.default_rng([seed, index])
    atoms = primitive().repeat(SUPERCELL)
    sigma = (0.02, 0.03, 0.04, 0.05)[index % 4]
    strain = rng.normal(scale=0.005, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
    atoms.info.update(index=index, seed=seed, rattle_sigma=sigma, strain=strain.ravel().tolist())
    return atoms


def label(n: int, path: Path = DATASET, budget: float = math.inf) -> None:
    """Label structures 0..n-1 not yet in ``path`` (one DFT energy + forces each), appending frames.

    :param budget: minutes; no new structure is started when the next one would likely end after it.
    """
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_nextham.dft.forces import energy_and_forces

    path.parent.mkdir(parents=True, exist_ok=True)
    done = {int(a.info['index']) for a in ase.io.read(path, index=':')} if path.is_file() else set()
    config = dft_config()
    start, longest = time.perf_counter(), 0.0
    for index in range(n):
        if index in done:
            continue
        if time.perf_counter() - start + longest > 60 * budget:
            print(f'budget of {budget} min reached: stopping before structure {index}', flush=True)
            break
        atoms = rattled_structure(index)
        result = energy_and_forces(atoms, config, kmesh=DFT_KMESH)
        longest = max(longest, result.timings['total'])
        atoms.info.update(
            converged=bool(result.converged),
            kmesh=list(result.kmesh),
            dft_time=round(result.timings['total'], 1),
            engine='pyscf',
            protocol=PROTOCOL,
            basis=config.basis,
            pseudo=config.pseudo,
            xc=config.xc,
        )
        atoms.calc = SinglePointCalculator(atoms, energy=result.energy, forces=result.forces)
        ase.io.write(path, atoms, format='extxyz', append=True)
        print(
            json.dumps({'index': index, 'energy': result.energy, 'time': result.timings}),
            flush=True,
        )


def train(output: Path, config: Path = DATA / 'train_ff.yaml') -> dict:
    """``nextham train-ff`` on the dataset; the final model is copied to benchmarks/forcefield/model."""
    start = time.perf_counter()
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    command = [
        sys.executable,
        '-m',
        'aiida_nextham.engine.cli',
        'train-ff',
        str(config),
        '--output',
        str(output),
    ]
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f'train-ff failed:\n{process.stdout}\n{process.stderr}')
    summary = json.loads(process.stdout)
    summary['train_wall_time'] = time.perf_counter() - start
    target = DATA / 'model'
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(output / 'model', target)
    shutil.copy(output / 'learning_curves.png', DATA / 'learning_curves.png')
    return summary


def _nextham() -> str:
    return str(Path(sys.executable).with_name('nextham'))


def reference(folder: Path) -> dict:
    """The DFT phonons written by benchmarks/phonons_si.py; refused if made with another protocol."""
    comparison = json.loads((folder / 'comparison.json').read_text())
    if comparison['protocol'] != PROTOCOL or tuple(comparison['kmesh']) != DFT_KMESH:
        raise SystemExit(
            f'{folder}: DFT phonons with protocol {comparison["protocol"]} and k-mesh {comparison["kmesh"]}, '
            f'but the labels use {PROTOCOL} and {list(DFT_KMESH)}: the comparison would measure the '
            'protocol, not the force field'
        )
    if comparison['lattice_constant'] != LATTICE_CONSTANT or tuple(comparison['supercell']) != SUPERCELL:
        raise SystemExit(f'{folder}: another lattice constant or supercell than the labels')
    bands = json.loads((folder / 'bands.json').read_text())
    return {'comparison': comparison, 'bands': bands}


def heldout_displaced(model: Path, folder: Path) -> dict:
    """Force error of the model on phonopy's displaced supercells of the DFT run (never trained on)."""
    import phonopy
    from ase import Atoms

    from aiida_nextham.ml.forcefield import ForceFieldPredictor

    predictor = ForceFieldPredictor.from_files(model)
    phonon = phonopy.load(folder / 'phonopy_params.yaml', produce_fc=False, log_level=0)
    errors = []
    for cell, forces in zip(phonon.supercells_with_displacements, phonon.forces, strict=True):
        atoms = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        errors.append(predictor.predict(atoms)['forces'] - forces)
    errors = np.concatenate(errors)
    return {
        'n_supercells': len(phonon.forces),
        'force_mae': float(np.abs(errors).mean()),
        'force_max_abs': float(np.abs(errors).max()),
        'dft_force_max_abs': float(np.abs(np.asarray(phonon.forces)).max()),
    }


def run_phonon_command(source: list[str], output: Path) -> tuple[dict, float]:
    """``nextham phonons`` of the primitive cell (the DFT benchmark's settings); (summary, wall time)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    structure = output.parent / f'{output.name}_input.vasp'
    primitive().write(structure, format='vasp', direct=True)
    shutil.rmtree(output, ignore_errors=True)
    command = [
        _nextham(),
        'phonons',
        str(structure),
        '--supercell',
        *map(str, SUPERCELL),
        *source,
        '-o',
        str(output),
    ]
    tick = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if process.returncode != 0:
        raise SystemExit(f'{" ".join(command)} failed:\n{process.stdout}\n{process.stderr}')
    return json.loads(process.stdout), wall


def phonons(model: Path, folder: Path, run_dft: bool = False) -> dict:
    """ML phonons on the DFT q-path: frequency MAE versus DFT and the wall-time ratio DFT / ML.

    :param run_dft: rerun the DFT phonons in this process right after the ML ones (both times measured
        in one run, under the same load); otherwise the DFT wall time recorded with the reference is used.
    """
    ref = reference(folder)
    ml_summary, ml_wall = run_phonon_command(['--model', str(model)], DATA / 'si_ml_phonons')
    ml_bands = json.loads((DATA / 'si_ml_phonons' / 'bands.json').read_text())
    if not np.allclose(ml_bands['qpoints'], ref['bands']['qpoints'], atol=1e-10):
        raise SystemExit('the ML q-path differs from the DFT one')
    dft_frequencies = np.sort(np.asarray(ref['bands']['frequencies']), axis=1)
    difference = np.sort(np.asarray(ml_bands['frequencies']), axis=1) - dft_frequencies
    result = {
        'reference': str(folder),
        'model': str(model),
        'n_qpoints': len(ml_bands['qpoints']),
        'frequency_mae_thz': float(np.abs(difference).mean()),
        'frequency_max_abs_thz': float(np.abs(difference).max()),
        'special_points': {
            label: {'dft': dft, 'ml': ml_summary['special_points'][label]}
            for label, dft in json.loads((folder / 'summary.json').read_text())['special_points'].items()
        },
        'ml_dynamically_stable': ml_summary['dynamically_stable'],
        'dft_dynamically_stable': ref['comparison']['dynamically_stable'],
        'ml_wall_time': ml_wall,
        'heldout_phonopy_supercells': heldout_displaced(model, folder),
    }
    if run_dft:
        options = ['--protocol', PROTOCOL, '--kmesh', *map(str, DFT_KMESH)]
        dft_summary, dft_wall = run_phonon_command(options, DATA / 'si_dft_rerun')
        rerun = json.loads((DATA / 'si_dft_rerun' / 'bands.json').read_text())
        result['dft_rerun_vs_reference_max_abs_thz'] = float(
            np.abs(np.sort(np.asarray(rerun['frequencies']), axis=1) - dft_frequencies).max()
        )
        result['dft_wall_time'] = dft_wall
        result['wall_time_measured'] = 'DFT and ML phonons in this run, one after the other'
    else:
        result['dft_wall_time'] = ref['comparison']['wall_time']
        result['wall_time_measured'] = f'DFT: recorded in {folder / "comparison.json"}; ML: this run'
    result['wall_time_ratio_dft_over_ml'] = result['dft_wall_time'] / ml_wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest='command', required=True)
    p_label = sub.add_parser('label')
    p_label.add_argument('--n', type=int, default=8)
    p_label.add_argument('--budget', type=float, default=math.inf, help='minutes')
    p_train = sub.add_parser('train')
    p_train.add_argument('--output', type=Path, default=Path('/tmp/nextham-ff-si'))
    p_phonons = sub.add_parser('phonons')
    p_phonons.add_argument('--model', type=Path, default=DATA / 'model')
    p_phonons.add_argument('--reference', type=Path, default=DFT_PHONONS)
    p_phonons.add_argument('--run-dft', action='store_true', help='rerun the DFT phonons in this run')
    args = parser.parse_args()
    if args.command == 'label':
        label(args.n, budget=args.budget)
    elif args.command == 'train':
        shutil.rmtree(args.output, ignore_errors=True)
        print(json.dumps(train(args.output), indent=1))
    else:
        result = phonons(args.model, args.reference, args.run_dft)
        result['machine'] = f'{platform.node()}, {os.cpu_count()} cores (shared)'
        (DATA / 'results.json').write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
