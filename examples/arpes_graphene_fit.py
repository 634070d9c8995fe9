"""Fit a real ARPES cut: bilayer graphene near K (SPECS Prodigy ``.xy``, He I, PHOIBOS 150).

Usage::

    OMP_NUM_THREADS=1 python examples/arpes_graphene_fit.py [DATA.xy] [-o OUTDIR] [--inr]

Writes ``OUTDIR/arpes_graphene_fit.png`` (data with the fitted bands), ``OUTDIR/arpes_graphene_fit.json``
(conventions, parameters, Fermi velocity, RMSE, timings) and ``OUTDIR/blg_k_cut_prepared.nc`` (the cut
in momentum, E − E_F and k along the slit, which ``nextham arpes-fit`` reads) with
``OUTDIR/bilayer_spec.json`` (the model for ``nextham arpes-fit --model hopping-list --init``).

Conventions (see docs/benchmarks.md, "ARPES: a real cut"):

- Energy: the file's "kinetic" energies put the Fermi edge at E_file ≈ hν (the analyser work function is
  already included), so E − E_F = E_file − E_F with E_F from a Fermi-edge fit; the photoelectron kinetic
  energy for k is hν − W + (E − E_F) with W the header's effective work function.
- Momentum: the slit angle φ (zero at the mirror axis of the bands, fitted) gives q = k₀ sin(φ − φ₀)
  along the slit; the cut is perpendicular to Γ–K through K (both branches equally bright: no dark
  corridor), so the model's lattice is rotated to put K = (0, 4π/3a, 0) on k_y and the cut runs along
  k_x at k_y = K. With a fixed polar angle the perpendicular momentum k₀ cos φ sin θ changes with the
  energy (≈ 0.05 Å⁻¹/eV); the baseline is refitted with that exact geometry (k_y per peak, the cut
  passing through K at E_F + ``--cross``) as a check.
- Model: AB (Bernal) bilayer, four π orbitals A1, B1, A2, B2; intralayer nearest-neighbour t, dimer
  coupling γ₁ (B1–A2), bands E − μ, so the Dirac point is at E_D = −μ; Δ = 0 except in ``baseline_gap``
  (layer asymmetry ±Δ/2, which one cut cannot separate from γ₁ and from missing K).
- Peaks: ``extract_peaks`` (threshold 0.3), less the spurious maxima above E_F − 0.05 eV and the MDC
  maxima at the ends of the k range; ``--inr`` also runs the package's INR fit (it fails here: see the docs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import constants
from scipy.optimize import curve_fit
from scipy.special import erfc

from aiida_nextham.arpes.baseline import extract_peaks, fit_peaks
from aiida_nextham.arpes.data import to_netcdf
from aiida_nextham.arpes.fit import fit, random_starts
from aiida_nextham.arpes.fitdata import prepare_data
from aiida_nextham.arpes.kspace import K_FACTOR, to_kspace
from aiida_nextham.arpes.readers import load
from aiida_nextham.arpes.tightbinding import HoppingListModel

DATA = Path(__file__).resolve().parents[1].parent / 'shared/realdata/arpes_pyarpes_arafune/src/arpes'
DATA = DATA / 'example_data/BLGr_K_cut.xy'
A = 2.46  # Å, graphene lattice constant
K_POINT = 4 * math.pi / (3 * A)  # |ΓK|, Å⁻¹
HBAR_EV_S = constants.hbar / constants.e
BOUNDS = {'t': (2.0, 3.5), 'g1': (0.2, 0.6), 'delta': (0.0, 0.4), 'mu': (-1.0, 1.0)}
INIT = {'t': 2.8, 'g1': 0.4, 'delta': 0.1, 'mu': -0.2}


def bilayer_spec(a: float = A, gap: bool = False) -> dict:
    """HoppingListModel arguments of AB bilayer graphene with Γ–K along k_y (K = (0, 4π/3a, 0)); with
    ``gap`` a layer asymmetry Δ (on-site ±Δ/2) is a parameter, else Δ = 0."""
    s3 = math.sqrt(3)
    lattice = [[0.0, a, 0.0], [-a * s3 / 2, a / 2, 0.0], [0.0, 0.0, 10.0]]
    hoppings = [
        {'R': r, 'i': i, 'j': j, 'amplitude': {'t': -1}}
        for i, j in (('A1', 'B1'), ('A2', 'B2'))
        for r in ([0, 0, 0], [-1, 0, 0], [0, -1, 0])
    ]
    hoppings.append({'R': [0, 0, 0], 'i': 'B1', 'j': 'A2', 'amplitude': 'g1'})
    names = [name for name in BOUNDS if gap or name != 'delta']
    return {
        'lattice': lattice,
        'orbitals': ['A1', 'B1', 'A2', 'B2'],
        'hoppings': hoppings,
        'onsite': [{'delta': 0.5}, {'delta': 0.5}, {'delta': -0.5}, {'delta': -0.5}] if gap else None,
        'bounds': {name: BOUNDS[name] for name in names},
        'values': {name: INIT[name] for name in names},
    }


def fermi_edge(da, e_axis: np.ndarray, phi_window: tuple[float, float]) -> tuple[float, float, float]:
    """E_F (file energy scale), its error and the edge width (Gaussian σ): a Fermi step × line plus a
    constant, erfc-broadened, fitted to the EDC summed over ``phi_window`` (where a band crosses E_F)."""
    edc = da.sel(phi=slice(*phi_window)).mean('phi').values
    sel = e_axis > e_axis.max() - 0.45

    def step(e, ef, sigma, amp, slope, bg):
        return (amp + slope * (e - ef)) * 0.5 * erfc((e - ef) / (math.sqrt(2) * sigma)) + bg

    p0 = [e_axis.max() - 0.15, 0.03, edc[sel].max() - edc[-1], 0.0, edc[-1]]
    p, cov = curve_fit(step, e_axis[sel], edc[sel], p0=p0, maxfev=20000)
    return float(p[0]), float(np.sqrt(cov[0, 0])), abs(float(p[1]))


def mirror_axis(da) -> float:
    """φ₀ (deg) that makes the image most symmetric under φ → 2φ₀ − φ (the K point of a ⊥ Γ–K cut)."""
    phi = da.phi.values
    image = da.values / da.values.max()
    best = (np.inf, 0.0)
    for phi0 in np.arange(-2.0, 2.0, 0.02):
        mirrored = np.array([np.interp(2 * phi0 - phi, phi, col) for col in image.T]).T
        inside = np.abs(2 * phi0 - phi) <= phi.max()
        best = min(best, (float(np.mean((image[inside] - mirrored[inside]) ** 2)), float(phi0)))
    return best[1]


def summary(parameters: dict, errors: dict) -> dict:
    """Derived quantities: v_F = (√3/2) t a / ħ in eV·Å and 10⁶ m/s, E_D = −μ, with errors."""
    v = math.sqrt(3) / 2 * A * parameters['t']
    dv = math.sqrt(3) / 2 * A * errors['t']
    to_si = 1e-10 / HBAR_EV_S / 1e6
    return {
        'vF_eV_A': v,
        'vF_eV_A_err': dv,
        'vF_1e6_m_s': v * to_si,
        'vF_1e6_m_s_err': dv * to_si,
        'E_D_eV': -parameters['mu'],  # midgap with Δ
        'E_D_eV_err': errors['mu'],
    }


def least_squares(model, peaks, n_starts: int) -> dict:
    """The baseline's least squares (:func:`fit_peaks`, multi-start) and the derived quantities."""
    fits = fit_peaks(model, peaks, random_starts(model, n_starts, 0, dict(model.get_parameters())))
    best = min(fits, key=lambda f: f.cost)
    errors = dict(zip(model.parameter_names, np.sqrt(np.diag(best.covariance)).tolist(), strict=True))
    return {
        'parameters': best.parameters,
        'uncertainties': errors,
        **summary(best.parameters, errors),
        'rmse_eV': dispersion_rmse(model, peaks, best.parameters),
        'loss': best.cost,
        'n_peaks': len(peaks),
        'n_peaks_by_kind': {kind: int((peaks.kind == kind).sum()) for kind in np.unique(peaks.kind)},
        'starts_at_best': int(sum(f.cost <= best.cost * (1 + 1e-6) for f in fits)),
    }


def clean_peaks(peaks, data, top: float = -0.05, edge: int = 2):
    """``peaks`` below E_F + ``top`` (eV) and, for MDC peaks, more than ``edge`` k steps from the ends."""
    kx = data.axes['kx']
    margin = edge * float(np.median(np.diff(kx)))
    keep = peaks.energy <= top
    inside = (peaks.k[:, 0] > kx.min() + margin) & (peaks.k[:, 0] < kx.max() - margin)
    keep &= (peaks.kind == 'edc') | inside
    return replace(peaks, **{name: getattr(peaks, name)[keep] for name in vars(peaks)})


def dispersion_rmse(model, peaks, parameters: dict, k=None) -> float:
    """RMS energy distance (eV) of the peaks to the nearest fitted band."""
    import torch

    with torch.no_grad():
        bands = model.bands(torch.as_tensor(peaks.k if k is None else k), parameters).numpy()
    return float(np.sqrt(np.mean(np.min(np.abs(bands - peaks.energy[:, None]), axis=1) ** 2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('data', nargs='?', type=Path, default=DATA)
    parser.add_argument('-o', '--outdir', type=Path, default=Path('.'))
    parser.add_argument('--emin', type=float, default=-1.2, help='fit E − E_F >= EMIN (eV)')
    parser.add_argument('--starts', type=int, default=8)
    parser.add_argument('--cross', type=float, default=0.0, help='E − E_F where the cut passes K (eV)')
    parser.add_argument('--threshold', type=float, default=0.3, help='peak threshold (extract_peaks)')
    parser.add_argument('--inr', action='store_true', help='also run the INR method (≈ 1.5 min on one core)')
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    raw = load(args.data)
    hv, work = raw.attrs['photon_energy'], raw.attrs['work_function']
    e_file = raw.eV.values
    ef, ef_err, ef_sigma = fermi_edge(raw, e_file, (0.8, 2.4))
    phi0 = mirror_axis(raw)
    # E − E_F on the energy axis; photon energy and work function as in the header
    da = raw.assign_coords(phi=raw.phi - phi0, eV=raw.eV - ef).assign_attrs(energy_axis='binding')
    cut = to_kspace(da, work_function=work)  # kx = q along the slit (Å⁻¹)
    cut = cut.sel(kx=slice(-0.27, 0.27)).dropna('kx', how='any')
    cut = cut.assign_coords(ky=K_POINT).assign_attrs(energy_axis='binding', work_function=work)
    cut.attrs['temperature'] = 300.0  # not in the header; only the Fermi step of the baseline uses it
    cut.attrs['energy_resolution'] = round(2.355 * ef_sigma, 4)
    prepared = args.outdir / 'blg_k_cut_prepared.nc'
    to_netcdf(cut, prepared)
    spec = bilayer_spec()
    fixed = {key: value for key, value in spec.items() if key != 'values'}
    (args.outdir / 'bilayer_spec.json').write_text(
        json.dumps({'name': 'hopping-list', 'fixed': fixed, 'parameters': spec['values']}, indent=1) + '\n'
    )

    data = prepare_data(cut, emin=args.emin)
    model = HoppingListModel(**spec)
    model_gap = HoppingListModel(**bilayer_spec(gap=True))
    results = {
        'data': args.data.name,
        'conventions': {
            'photon_energy_eV': hv,
            'work_function_eV': work,
            'E_F_file_eV': ef,
            'E_F_file_err_eV': ef_err,
            'hv_minus_E_F_eV': hv - ef,
            'edge_sigma_eV': ef_sigma,
            'phi0_deg': phi0,
            'K_invA': K_POINT,
            'k0_at_E_F_invA': K_FACTOR * math.sqrt(hv - work),
            'polar_angle_for_K_deg': math.degrees(math.asin(K_POINT / (K_FACTOR * math.sqrt(hv - work)))),
            'emin_eV': args.emin,
            'grid': {name: [float(v.min()), float(v.max()), len(v)] for name, v in data.axes.items()},
        },
        'fits': {},
    }

    # baseline: EDC/MDC peaks, then least squares (k_y = K for every point). The peaks are those of the
    # package's extract_peaks without the artefacts of a real cut: the maxima that dividing by the Fermi
    # step makes just above E_F, and MDC maxima at the ends of the k range (truncated curves).
    peaks = clean_peaks(extract_peaks(data, threshold=args.threshold), data)
    for name, tb in (('baseline', model), ('baseline_gap', model_gap)):
        t0 = time.perf_counter()
        results['fits'][name] = least_squares(tb, peaks, args.starts)
        results['fits'][name]['wall_s'] = time.perf_counter() - t0

    # the same peaks with the exact geometry: k_y = k₀(E) cos φ sin θ, θ such that k_y = K at E_F + cross
    t0 = time.perf_counter()
    k0 = K_FACTOR * np.sqrt(hv - work + peaks.energy)
    sin_theta = K_POINT / (K_FACTOR * math.sqrt(hv - work + args.cross))
    exact = replace(peaks, k=peaks.k.copy())
    exact.k[:, 1] = k0 * np.sqrt(1 - (peaks.k[:, 0] / k0) ** 2) * sin_theta
    results['fits']['baseline_exact_geometry'] = least_squares(model, exact, args.starts) | {
        'ky_range_invA': [float(exact.k[:, 1].min()), float(exact.k[:, 1].max())],
        'cross_eV': args.cross,
        'wall_s': time.perf_counter() - t0,
    }

    if args.inr:
        t0 = time.perf_counter()
        res_inr = fit(data, model, method='inr', starts=args.starts, seed=0, init=spec['values'])
        results['fits']['inr'] = {
            'parameters': res_inr.parameters,
            'uncertainties': res_inr.uncertainties,
            'nuisance': res_inr.nuisance,
            **summary(res_inr.parameters, res_inr.uncertainties),
            'rmse_eV': dispersion_rmse(model, peaks, res_inr.parameters),
            'timings': res_inr.timings,
            'wall_s': time.perf_counter() - t0,
        }

    plot(cut, {'plain': model, 'gap': model_gap}, results, peaks, args.outdir / 'arpes_graphene_fit.png')
    results['wall_s'] = time.perf_counter() - t_start
    (args.outdir / 'arpes_graphene_fit.json').write_text(json.dumps(results, indent=1) + '\n')
    for name, entry in results['fits'].items():
        p, e = entry['parameters'], entry['uncertainties']
        values = ', '.join(f'{k} = {p[k]:.3f} ± {e[k]:.3f}' for k in p)
        print(
            f'{name}: {values}; v_F = {entry["vF_1e6_m_s"]:.3f} ± {entry["vF_1e6_m_s_err"]:.3f} 10⁶ m/s, '
            f'RMSE {1e3 * entry["rmse_eV"]:.1f} meV'
        )
    print(f'E_F = {ef:.4f} eV (file scale; hν − E_F = {hv - ef:.4f}), φ₀ = {phi0:.2f}°', end=', ')
    print(f'{results["wall_s"]:.0f} s')
    return 0


def plot(cut, models: dict, results: dict, peaks, path: Path) -> None:
    """Data (k along the slit, E − E_F) with the peaks and the fitted bands of each method."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torch

    q = np.linspace(float(cut.kx.min()), float(cut.kx.max()), 300)
    k = np.stack([q, np.full_like(q, K_POINT), np.zeros_like(q)], -1)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ax.pcolormesh(cut.kx, cut.eV, cut.values.T, shading='auto', cmap='Greys', rasterized=True)
    ax.plot(peaks.k[:, 0], peaks.energy, '.', ms=1.5, color='tab:orange', alpha=0.5, label='EDC/MDC peaks')
    styles = {
        'baseline': ('tab:blue', '-'),
        'baseline_gap': ('tab:purple', '--'),
        'baseline_exact_geometry': ('tab:green', ':'),
        'inr': ('tab:red', '-.'),
    }
    for name, entry in results['fits'].items():
        tb = models['gap' if 'delta' in entry['parameters'] else 'plain']
        with torch.no_grad():
            bands = tb.bands(torch.as_tensor(k), entry['parameters']).numpy()
        color, style = styles[name]
        label = f'{name}: t = {entry["parameters"]["t"]:.2f} eV, γ₁ = {entry["parameters"]["g1"]:.2f} eV'
        for n in range(bands.shape[1]):
            ax.plot(q, bands[:, n], style, color=color, lw=1.2, label=label if n == 0 else None)
    ax.axhline(results['conventions']['emin_eV'], color='0.5', lw=0.6, ls='-.')
    ax.set_ylim(float(cut.eV.min()), float(cut.eV.max()))
    ax.set_xlabel('k along the slit, from K (1/Å)  [cut ⊥ Γ–K]')
    ax.set_ylabel('E − E_F (eV)')
    ax.set_title('Bilayer graphene near K (He I, 21.22 eV): AB-bilayer tight-binding fit', fontsize=9)
    ax.legend(fontsize=7, loc='lower center')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == '__main__':
    sys.exit(main())
