"""Benchmarks of the NextHAM model (not tests): how well it learns, and what a training step costs.

python benchmarks/ml_model.py learn 'DATA/*.h5' --steps 400 --cutoff 6
    trains the same model three ways on the same structures, at equal steps: real-space loss only,
    real-space + reciprocal-space loss, and the structure-only baseline; prints the real-space MAE
    (within the model cutoff, raw and after the optimal μS), the band-energy error within ±2 eV
    of E_F at off-training k-points, and the ghost-band count, as JSON.
python benchmarks/ml_model.py speed --atoms 8 64
    forward+backward time per structure of the default model on Si (gth-dzvp shells), and the
    fraction of it spent in the reciprocal-space loss.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import time

import numpy as np
import torch

from aiida_nextham.ml.config import ModelConfig
from aiida_nextham.ml.dataset import HamiltonianDataset
from aiida_nextham.ml.loss import LossConfig
from aiida_nextham.ml.metrics import band_energy_error, count_ghost_bands, hamiltonian_mae
from aiida_nextham.ml.model import NexthamModel
from aiida_nextham.ml.predictor import fit_scales, predict_hamiltonian
from aiida_nextham.ml.targets import sample_kpoints
from aiida_nextham.ml.training import TrainConfig, Trainer


def _shells(bh) -> dict[int, tuple[int, ...]]:
    return {int(z): tuple(bh.basis[int(z)].shells) for z in set(bh.numbers.tolist())}


def _evaluate(model, samples, cutoff: float, seed: int) -> dict:
    """Mean metrics over the samples (bands at 8 seeded random k-points, not the training ones)."""
    rows = []
    kpoints = sample_kpoints(8, seed=10_000 + seed)
    for sample in samples:
        bh = sample.hamiltonian
        predicted = predict_hamiltonian(model, bh)
        inside = bh.distances() <= cutoff
        true_in, pred_in = bh.select_pairs(inside), predicted.select_pairs(inside)
        raw = hamiltonian_mae(pred_in, true_in, optimal_shift=False)
        shifted = hamiltonian_mae(pred_in, true_in)
        bands = band_energy_error(predicted, bh, kpoints, window=(-2.0, 2.0))
        ghosts = count_ghost_bands(predicted, bh, kpoints, window=(-2.0, 2.0))
        rows.append(
            {
                'mae_raw': raw['mae'],
                'mae': shifted['mae'],
                'onsite': shifted['onsite'],
                'offsite': shifted['offsite'],
                'band_mae': bands['mae'],
                'band_max': bands['max'],
                'ghosts': ghosts['count'],
            }
        )
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def learn(args) -> dict:
    dataset = HamiltonianDataset(sorted(glob.glob(args.data)), cutoff=args.cutoff)
    samples = [dataset[i] for i in range(len(dataset))]
    shells = _shells(samples[0].hamiltonian)
    runs = {
        'nextham_real': ({'use_h0': True}, 0.0),
        'nextham_real_recip': ({'use_h0': True}, args.reciprocal_weight),
        'structure_only_real': ({'use_h0': False}, 0.0),
    }
    results = {}
    for name, (model_options, reciprocal_weight) in runs.items():
        torch.manual_seed(args.seed)
        model = NexthamModel(ModelConfig(shells=shells, cutoff=args.cutoff, **model_options))
        fit_scales(model, samples)
        config = TrainConfig(
            steps=args.steps,
            batch_size=len(samples),
            lr=args.lr,
            seed=args.seed,
            n_kpoints=args.kpoints,
            loss=LossConfig(reciprocal_weight=reciprocal_weight),
        )
        start = time.perf_counter()
        trainer = Trainer(model, samples, config)
        trainer.fit(progress=args.progress)
        seconds = time.perf_counter() - start
        results[name] = {'train_seconds': seconds, **_evaluate(model, samples, args.cutoff, args.seed)}
        print(name, json.dumps(results[name]), flush=True)
    reference = [
        {
            'mae_raw': hamiltonian_mae(t, t.replace(hamiltonian=t.h0), optimal_shift=False)['mae'],
            'mae': hamiltonian_mae(t.replace(hamiltonian=t.h0), t)['mae'],
        }
        for t in (s.hamiltonian.select_pairs(s.hamiltonian.distances() <= args.cutoff) for s in samples)
    ]
    results['h0_alone'] = {key: float(np.mean([r[key] for r in reference])) for key in reference[0]}
    return results


def speed(args) -> dict:
    from ase.build import bulk

    from aiida_nextham.hamiltonian.basis import Basis
    from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian
    from aiida_nextham.ml.dataset import Sample
    from aiida_nextham.ml.graph import build_graph

    results = {}
    for n_atoms in args.atoms:
        repeat = {2: (1, 1, 1), 8: (1, 1, 1), 16: (2, 1, 1), 64: (2, 2, 2), 216: (3, 3, 3)}[n_atoms]
        atoms = bulk('Si', 'diamond', a=5.43, cubic=n_atoms != 2) * repeat
        atoms.rattle(0.05, seed=0)
        bh = random_block_hamiltonian(
            atoms, Basis.from_shells({'Si': [0, 0, 1, 1, 2]}), args.block_cutoff, seed=0
        )
        bh = bh.replace(h0=bh.hamiltonian * 0.95, n_electrons=4.0 * n_atoms)
        sample = Sample(build_graph(bh, args.cutoff, dtype=torch.float32), bh, None, 0)
        torch.manual_seed(0)
        model = NexthamModel(ModelConfig(shells={14: (0, 0, 1, 1, 2)}, cutoff=args.cutoff))
        fit_scales(model, [sample])
        timings = {}
        for label, weight in (('real_only', 0.0), ('real_recip', 1.0)):
            trainer = Trainer(
                model,
                [sample],
                TrainConfig(
                    steps=10**6,
                    batch_size=1,
                    n_kpoints=args.kpoints,
                    loss=LossConfig(reciprocal_weight=weight),
                ),
            )
            trainer.train_step()  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeats):
                trainer.train_step()
            timings[label] = (time.perf_counter() - start) / args.repeats
        results[n_atoms] = {
            'edges': sample.graph.n_edges,
            'pairs': bh.n_pairs,
            'orbitals': bh.n_orbitals,
            'step_seconds_real_only': timings['real_only'],
            'step_seconds_with_reciprocal': timings['real_recip'],
            'reciprocal_fraction': 1 - timings['real_only'] / timings['real_recip'],
        }
        print(n_atoms, json.dumps(results[n_atoms]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('learn')
    p.add_argument('data')
    p.add_argument('--steps', type=int, default=400)
    p.add_argument('--cutoff', type=float, default=6.0)
    p.add_argument('--lr', type=float, default=5e-3)
    p.add_argument('--kpoints', type=int, default=8)
    p.add_argument('--reciprocal-weight', type=float, default=1.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--progress', action='store_true')
    p = sub.add_parser('speed')
    p.add_argument('--atoms', type=int, nargs='+', default=[8, 64])
    p.add_argument('--cutoff', type=float, default=6.0)
    p.add_argument('--block-cutoff', type=float, default=8.0)
    p.add_argument('--kpoints', type=int, default=8)
    p.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    results = learn(args) if args.command == 'learn' else speed(args)
    machine = {
        'cpu_threads': torch.get_num_threads(),
        'platform': platform.platform(),
        'torch': torch.__version__,
    }
    print(json.dumps({'command': args.command, 'machine': machine, 'results': results}, indent=1))


if __name__ == '__main__':
    main()
