"""Synthetic recovery of nickelate e_g parameters from ARPES (issue 7 acceptance), INR method vs baseline.

Data: the two-orbital ``nickelate-eg`` model (a = 3.83 Å, t = 0.40 eV, Δ = 0.10 eV, μ = −0.60 eV) on a
3D k grid (k_x, k_y over the zone, k_z over half of it) × energy, Lorentzian half width 30 meV, 15 meV
energy and 0.015 1/Å momentum resolution (FWHM), 20 K, a constant background and Poisson noise.

Experiments (all on the same data; one surrogate, trained once on the full grid):

1. recovery: INR (``--starts`` random starts, the 3 best distinct surrogate minima refined exactly) and
   the baseline, each from the full data, from a random quarter of the points (the baseline fills the
   rest with a SIREN fitted to the quarter) and with E > E_F − 0.1 eV only. Errors of t (%), Δ and μ
   (meV), their 1σ from the loss curvature, dispersion RMSE, Fermi-surface agreement, wall times.
2. global minimum: of ``--global-starts`` random starts within the model's bounds, how many reach the
   true parameters (t within 2 %, Δ and μ within 5 meV) for the INR method (every start refined), for
   exact-model descent without the surrogate (every start), and for the baseline.

    OMP_NUM_THREADS=1 python benchmarks/arpes_recovery.py [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch

from aiida_nextham.arpes.fit import fit, random_starts, refine
from aiida_nextham.arpes.fitdata import prepare_data
from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
from aiida_nextham.arpes.surrogate import train_surrogate
from aiida_nextham.arpes.tightbinding import get_model

A = 3.83
TRUE = {'t': 0.40, 'delta': 0.10, 'mu': -0.60}
BROADENING = Broadening(
    gamma0=0.03, temperature=20.0, energy_resolution=0.015, k_resolution=0.015, background=0.3
)
#: acceptance: hoppings within 2 %, energies within 5 meV
TOLERANCE = {'t': ('relative', 0.02), 'delta': ('absolute', 0.005), 'mu': ('absolute', 0.005)}


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as stream:
            return next(line.split(':', 1)[1].strip() for line in stream if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def within_tolerance(parameters: dict, factor: float = 1.0) -> bool:
    """t within 2 %, Δ and μ within 5 meV of the truth (times ``factor``)."""
    for name, (kind, tol) in TOLERANCE.items():
        error = parameters[name] - TRUE[name]
        if abs(error / TRUE[name] if kind == 'relative' else error) > factor * tol:
            return False
    return True


def errors(parameters: dict) -> dict:
    """t in %, energies in meV."""
    return {
        't_%': 100 * (parameters['t'] - TRUE['t']) / TRUE['t'],
        'delta_meV': 1000 * (parameters['delta'] - TRUE['delta']),
        'mu_meV': 1000 * (parameters['mu'] - TRUE['mu']),
    }


def fit_time(result) -> float:
    """Wall time of a normal run: surrogate search (or peaks + least squares), the refinements, errors."""
    keys = ('prepare', 'surrogate_search', 'refine', 'uncertainty', 'denoise', 'peaks', 'least_squares')
    return sum(result.timings.get(key, 0.0) for key in keys)


def summary_row(label: str, result) -> dict:
    truth = result.metrics['truth']
    return {
        'run': label,
        **errors(result.parameters),
        'sigma': {k: result.uncertainties[k] for k in TRUE},
        'dispersion_rmse_meV': 1000 * truth['dispersion_rmse'],
        'fs_distance_1/A': truth['fermi_contour_distance_mean'],
        'iou': truth['occupied_iou_mean'],
        'n_points': result.metrics['n_points'],
        'time_s': fit_time(result),
        'within_tolerance': within_tolerance(result.parameters),
    }


def print_table(rows: list[dict]) -> None:
    header = (
        f'{"run":<22}{"t err %":>9}{"Δ err meV":>11}{"μ err meV":>11}{"σ_t %":>8}{"σ_Δ meV":>9}{"σ_μ meV":>9}'
        f'{"RMSE meV":>10}{"FS dist":>9}{"IoU":>7}{"points":>9}{"time s":>8}  ok'
    )
    print(header)
    for r in rows:
        s = r['sigma']
        print(
            f'{r["run"]:<22}{r["t_%"]:>9.3f}{r["delta_meV"]:>11.2f}{r["mu_meV"]:>11.2f}'
            f'{100 * s["t"] / TRUE["t"]:>8.3f}{1000 * s["delta"]:>9.2f}{1000 * s["mu"]:>9.2f}'
            f'{r["dispersion_rmse_meV"]:>10.2f}{r["fs_distance_1/A"]:>9.4f}{r["iou"]:>7.3f}'
            f'{r["n_points"]:>9d}{r["time_s"]:>8.1f}  {"yes" if r["within_tolerance"] else "NO"}'
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--quick', action='store_true', help='A smaller grid and surrogate (a smoke test).')
    parser.add_argument('--starts', type=int, default=8, help='Starts of the recovery fits.')
    parser.add_argument('--global-starts', type=int, default=20, help='Starts of the global-minimum test.')
    parser.add_argument('--counts', type=float, default=1000.0, help='Expected counts at the maximum.')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', default=None, help='Write all figures to this JSON file.')
    args = parser.parse_args()

    n_k, n_z, n_e = (16, 3, 41) if args.quick else (24, 5, 71)
    surrogate_options = {'steps': 600, 'n_spectra': 150} if args.quick else {'steps': 2500, 'n_spectra': 400}
    search = {'steps': 100 if args.quick else 250, 'batch_size': 1024}
    print(
        f'# ARPES synthetic recovery, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} '
        f'({cpu_name()}, {os.cpu_count()} cores), torch {torch.__version__}, '
        f'{torch.get_num_threads()} thread(s)'
    )

    model = get_model('nickelate-eg', a=A)
    model.set_parameters(TRUE)
    zone = math.pi / A
    grid = SimulationGrid(
        kx=np.linspace(-zone, zone, n_k),
        ky=np.linspace(-zone, zone, n_k),
        kz=np.linspace(0, zone, n_z),
        eV=np.linspace(-0.7, 0.1, n_e),
    )
    t0 = time.perf_counter()
    da = simulate_dataset(model, grid, BROADENING, seed=args.seed, counts=args.counts)
    data = prepare_data(da)
    print(
        f'# data: {dict(da.sizes)} = {da.size} points, Poisson noise ({args.counts:g} counts at the maximum, '
        f'mean {float(da.mean()):.1f}), {time.perf_counter() - t0:.1f} s'
    )
    print(
        f'# truth: {TRUE}; broadening: gamma0 {BROADENING.gamma0} eV, energy resolution '
        f'{BROADENING.energy_resolution} eV, k resolution {BROADENING.k_resolution} 1/Å, '
        f'T {BROADENING.temperature} K, background {BROADENING.background}'
    )

    family = get_model('nickelate-eg', a=A)  # fitted from default parameters, bounds: the model's own
    print(f'# bounds: {family.bounds()}')
    surrogate = train_surrogate(family, data, seed=args.seed, **surrogate_options)
    info = surrogate.info
    print(
        f'# surrogate: {info["n_spectra"]} spectra, {info["steps"]} steps, '
        f'simulate {info["time_simulate"]:.1f} s, train {info["time_train"]:.1f} s, '
        f'validation error ‖Î − I‖/‖I‖ = {info["validation_error"]:.3f} (median of 8 random θ)'
    )

    common = {'seed': args.seed, 'surrogate': surrogate, 'search_options': search}
    results = {
        'inr_full': fit(data, family, starts=args.starts, **common),
        'inr_quarter': fit(data, family, starts=args.starts, fraction=0.25, **common),
        'inr_emin': fit(data, family, starts=args.starts, emin=-0.1, **common),
        'baseline_full': fit(data, family, method='baseline', starts=args.global_starts, seed=args.seed),
        'baseline_quarter': fit(
            data, family, method='baseline', starts=args.starts, fraction=0.25, seed=args.seed
        ),
        'baseline_emin': fit(data, family, method='baseline', starts=args.starts, emin=-0.1, seed=args.seed),
    }
    rows = [summary_row(label, result) for label, result in results.items()]
    print('\n## Recovery (errors: fitted − true; σ: 1-sigma from the loss curvature)')
    print_table(rows)
    quarter = results['inr_quarter'].parameters
    print(
        'INR from a random quarter within 1.5× the tolerance: '
        + ('yes' if within_tolerance(quarter, 1.5) else 'NO')
    )
    full, cut = results['inr_full'], results['inr_emin']
    print(
        f'E > E_F − 0.1 eV: {cut.metrics["n_points"]} of {full.metrics["n_points"]} points, '
        f'fit {fit_time(cut):.1f} s vs {fit_time(full):.1f} s '
        f'(speed-up {fit_time(full) / fit_time(cut):.2f}×), '
        f'exact refinement {cut.timings["refine"]:.2f} s vs {full.timings["refine"]:.2f} s'
    )

    print(f'\n## Global minimum: {args.global_starts} random starts within the bounds')
    inr_all = fit(data, family, starts=args.global_starts, refine_best=None, **common)
    inr_hits = sum(within_tolerance(s['end']) for s in inr_all.starts)
    surrogate_near = sum(
        max(abs(s['surrogate_end'][k] - TRUE[k]) / (hi - lo) for k, (lo, hi) in family.bounds().items())
        < 0.03
        for s in inr_all.starts
    )
    starts = random_starts(family, args.global_starts, args.seed)
    t0 = time.perf_counter()
    exact_ends = [refine(family, data, dict(zip(family.parameter_names, s, strict=True)))[0] for s in starts]
    t_exact = time.perf_counter() - t0
    exact_hits = sum(within_tolerance(end) for end in exact_ends)
    baseline = results['baseline_full']
    baseline_hits = sum(within_tolerance(s['end']) for s in baseline.starts)
    baseline_best = sum(s['reached_best'] for s in baseline.starts)
    refine_times = [s['time'] for s in inr_all.starts]
    print(
        f'INR (surrogate descent, then every start refined exactly): {inr_hits}/{args.global_starts} '
        f'reach the true parameters; {surrogate_near}/{args.global_starts} surrogate end points within '
        f'3 % of the range; '
        f'the best start is {"" if within_tolerance(inr_all.parameters) else "NOT "}the true minimum; '
        f'search {inr_all.timings["surrogate_search"]:.1f} s + refinements {sum(refine_times):.1f} s'
    )
    print(
        f'exact-model L-BFGS without the surrogate, same starts: {exact_hits}/{args.global_starts} reach the '
        f'true parameters, {t_exact:.1f} s'
    )
    print(
        f'baseline (peaks + least squares): {baseline_hits}/{args.global_starts} within tolerance of the '
        f'true parameters; {baseline_best}/{args.global_starts} reach its own best minimum '
        f'({", ".join(f"{k} = {v:.4f}" for k, v in baseline.parameters.items())})'
    )

    if args.json:
        output = {
            'rows': rows,
            'global_minimum': {
                'starts': args.global_starts,
                'inr_hits': inr_hits,
                'inr_surrogate_near': surrogate_near,
                'exact_hits': exact_hits,
                'baseline_hits': baseline_hits,
                'baseline_reached_own_best': baseline_best,
            },
            'surrogate': info,
            'results': {label: result.to_dict() for label, result in results.items()},
        }
        with open(args.json, 'w') as stream:
            json.dump(output, stream, indent=1)


if __name__ == '__main__':
    main()
