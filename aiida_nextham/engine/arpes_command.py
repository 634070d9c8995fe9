"""``nextham arpes-simulate`` and ``nextham arpes-fit``: ARPES data from a tight-binding model, and
tight-binding parameters from ARPES data::

    nextham arpes-simulate nickelate-eg params.json -o data.nc --kz 0 0.82 4 --counts 1000
    nextham arpes-fit data.nc --model nickelate-eg [--method inr|baseline] [--fraction 0.25]
        [--emin -0.1] [--starts 20] -o result.json --plot fit.png
    nextham arpes-fit data.nc --model hamiltonian:predicted.h5 --orbitals Ni:d -o result.json

MODEL is a registry name of ``arpes.tightbinding`` or ``hamiltonian:PATH``, the model seeded by a
block-Hamiltonian file (:class:`~aiida_nextham.arpes.hamiltonian_model.HamiltonianModel`; ``--orbitals``
chooses the modelled orbitals, e.g. ``Ni:d`` or ``Si:3p,Si:3s`` or ``0,1,2``; other options through
``--fixed``, e.g. ``{"hopping_shells": 1}``). Without ``--init``, its first start is the file's own
Hamiltonian (all scales 1, μ = 0), so the DFT or predicted Hamiltonian seeds the fit; the constructor
arguments of simulated data are not inherited by it (the data may come from another Hamiltonian).

PARAMS.json is ``{"t": 0.4, "delta": 0.1, ...}`` or a model spec ``{"name": ..., "fixed": {...},
"parameters": {...}}`` (``fixed``: constructor arguments such as the lattice constant ``a``, ``extra``
optional parameters and ``bounds``). ``arpes-fit`` reads every format of ``arpes.readers.load``;
RESULT.json holds the :class:`~aiida_nextham.arpes.fit.FitResult` (parameters, uncertainties, loss,
metrics, timings, per-start results), the data file's name and ``bands``: the fitted model's bands at
the data's k_x (k_y nearest 0, the first k_z or hν), ``kpoints`` (n, 3) Cartesian 1/Å and ``energies``
(n, n_bands) E − E_F in eV — the cut of the plot, so that readers need neither the data nor the model.

Exit codes: :data:`EXIT_BAD_DATA` (unreadable file, no energy axis, nothing left to fit),
:data:`EXIT_BAD_MODEL` (unknown model, bad constructor arguments, unknown parameters or values outside
the bounds), :data:`EXIT_BAD_SURROGATE` (a ``--surrogate`` file that is unreadable or made for another
model or grid), :data:`EXIT_FIT_FAILED` (the fit ended with a non-finite loss); click's 2 for usage errors.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from .failures import EngineFailure

__all__ = [
    'EXIT_BAD_DATA',
    'EXIT_BAD_MODEL',
    'EXIT_BAD_SURROGATE',
    'EXIT_FIT_FAILED',
    'arpes_fit',
    'arpes_simulate',
]

#: the data file is unreadable, has no energy axis or leaves no points to fit
EXIT_BAD_DATA = 30
#: unknown model, bad constructor arguments, unknown parameters or parameter values outside the bounds
EXIT_BAD_MODEL = 31
#: the surrogate file is unreadable or was made for another model, bounds or grid
EXIT_BAD_SURROGATE = 32
#: the fit produced a non-finite loss or parameters
EXIT_FIT_FAILED = 33


def _bad_model(exc: Exception) -> EngineFailure:
    return EngineFailure('BadModel', str(exc).strip('"\''), EXIT_BAD_MODEL)


def _read_params(path: Path) -> tuple[dict, dict, str | None]:
    """(parameters, fixed, model name or None) from a PARAMS.json file (see the module docstring)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EngineFailure('BadModel', f'{path}: cannot read parameters: {exc}', EXIT_BAD_MODEL) from None
    if not isinstance(data, dict):
        raise EngineFailure('BadModel', f'{path}: expected a JSON object of parameters', EXIT_BAD_MODEL)
    name, fixed = None, {}
    if 'parameters' in data:
        unknown = sorted(set(data) - {'name', 'fixed', 'parameters'})
        if unknown:
            raise EngineFailure(
                'BadModel', f'{path}: unknown key(s) {unknown} in a model spec', EXIT_BAD_MODEL
            )
        name, fixed, data = data.get('name'), dict(data.get('fixed') or {}), data['parameters']
    bad = {k: v for k, v in data.items() if isinstance(v, bool) or not isinstance(v, int | float)}
    bad |= {k: v for k, v in data.items() if k not in bad and not math.isfinite(v)}
    if bad:
        raise EngineFailure(
            'BadModel', f'{path}: parameter values must be finite numbers: {bad}', EXIT_BAD_MODEL
        )
    return {k: float(v) for k, v in data.items()}, fixed, name


def _build_model(name: str, fixed: dict, parameters: dict | None = None):
    """The model with constructor arguments ``fixed``; ``parameters`` checked against its bounds and set."""
    from ..arpes.tightbinding import get_model

    try:
        model = get_model(name, **fixed)
    except (ValueError, TypeError) as exc:
        raise _bad_model(exc) from None
    if parameters:
        unknown = sorted(set(parameters) - set(model.parameter_names))
        if unknown:
            raise _bad_model(f'{name} has no parameter(s) {unknown}; it has {list(model.parameter_names)}')
        bounds = model.bounds()
        outside = [
            f'{k} = {v} not in [{bounds[k][0]}, {bounds[k][1]}]'
            for k, v in parameters.items()
            if not bounds[k][0] <= v <= bounds[k][1]
        ]
        if outside:
            raise _bad_model(f'parameters outside the bounds of {name}: {", ".join(outside)}')
        model.set_parameters(parameters)
    return model


HAMILTONIAN_PREFIX = 'hamiltonian:'


def _resolve_model(text: str, orbitals: str | None, absolute: bool = False) -> tuple[str, dict]:
    """``--model`` and ``--orbitals`` -> (registry name, constructor arguments they imply)."""
    name, fixed = text, {}
    if text.startswith(HAMILTONIAN_PREFIX):
        path = text.removeprefix(HAMILTONIAN_PREFIX)
        if not path:
            raise click.BadParameter('give the file: hamiltonian:PATH.h5', param_hint='--model')
        name, fixed['path'] = 'hamiltonian', str(Path(path).resolve()) if absolute else path
    if orbitals is not None:
        if name != 'hamiltonian':
            raise click.BadParameter('only a hamiltonian:PATH model has orbitals', param_hint='--orbitals')
        from ..arpes.hamiltonian_model import parse_orbitals

        try:
            fixed['orbitals'] = parse_orbitals(orbitals)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint='--orbitals') from None
    return name, fixed


def _fixed_option(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f'not JSON: {exc}', param_hint='--fixed') from None
    if not isinstance(value, dict):
        raise click.BadParameter('expected a JSON object such as {"a": 3.83}', param_hint='--fixed')
    return value


def _axis(spec: tuple[float, float, int] | None):
    """``(min, max, n)`` → n values, or the single value ``min`` for n = 1 (a cut); None stays None."""
    if spec is None:
        return None
    low, high, n = spec
    if n < 1:
        raise click.BadParameter(f'the number of points must be >= 1, got {n}')
    if n == 1:
        return float(low)
    if not high > low:
        raise click.BadParameter(f'the axis needs MAX > MIN, got {low} {high}')
    return [low + (high - low) * i / (n - 1) for i in range(n)]


ORBITALS_OPTION = click.option(
    '--orbitals',
    default=None,
    metavar='SELECTORS',
    help='hamiltonian:PATH models: the modelled orbitals, e.g. "Ni:d", "Si:3p,Si:3s" or "0,1,2" '
    '(default all).',
)
FIXED_OPTION = click.option(
    '--fixed',
    default=None,
    metavar='JSON',
    help='Model constructor arguments as JSON, e.g. \'{"a": 3.83, "extra": ["tp"]}\'.',
)
AXIS = click.Tuple([float, float, int])


@click.command('arpes-simulate')
@click.argument('model_name', metavar='MODEL')
@click.argument('params', type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    '-o',
    '--output',
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help='NetCDF file to write.',
)
@FIXED_OPTION
@ORBITALS_OPTION
@click.option(
    '--kx',
    type=AXIS,
    default=None,
    metavar='MIN MAX N',
    help='k_x axis in 1/Å (N = 1: a single value). Default: ±π/a, 41 points.',
)
@click.option(
    '--ky', type=AXIS, default=(0.0, 0.0, 1), show_default=True, metavar='MIN MAX N', help='k_y axis in 1/Å.'
)
@click.option('--kz', type=AXIS, default=None, metavar='MIN MAX N', help='k_z axis in 1/Å (default k_z = 0).')
@click.option(
    '--hv',
    type=AXIS,
    default=None,
    metavar='MIN MAX N',
    help='Photon energies in eV instead of --kz (k_z from the inner potential).',
)
@click.option(
    '--energy',
    type=AXIS,
    default=(-0.5, 0.1, 61),
    show_default=True,
    metavar='MIN MAX N',
    help='E - E_F axis in eV.',
)
@click.option(
    '--gamma0',
    type=click.FloatRange(min=0, min_open=True),
    default=0.02,
    show_default=True,
    help='Lorentzian half width (eV).',
)
@click.option('--gamma2', type=float, default=0.0, show_default=True, help='Width ∝ ω² coefficient (1/eV).')
@click.option('--lam', type=float, default=0.0, show_default=True, help='Re Σ = -λω coupling.')
@click.option('--temperature', type=click.FloatRange(min=0), default=20.0, show_default=True, help='K.')
@click.option(
    '--energy-resolution', type=click.FloatRange(min=0), default=0.015, show_default=True, help='FWHM, eV.'
)
@click.option(
    '--k-resolution',
    type=click.FloatRange(min=0),
    default=0.01,
    show_default=True,
    help='FWHM along k_x, k_y, 1/Å.',
)
@click.option(
    '--kz-resolution',
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help='FWHM along a k_z axis, 1/Å.',
)
@click.option('--background', type=float, default=0.0, show_default=True, help='Constant background.')
@click.option('--amplitude', type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option('--work-function', type=float, default=4.5, show_default=True, help='eV (photon-energy scans).')
@click.option(
    '--inner-potential', type=float, default=10.0, show_default=True, help='V0, eV (photon-energy scans).'
)
@click.option(
    '--counts',
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help='Poisson noise with this many expected counts at the maximum.',
)
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the noise.')
def arpes_simulate(model_name, params, output, fixed, orbitals, kx, ky, kz, hv, energy, **kw):
    """Simulate ARPES data of MODEL (a name or hamiltonian:PATH) with the parameters in PARAMS (JSON) and
    write them to a NetCDF file."""
    from ..arpes.data import to_netcdf
    from ..arpes.simulate import Broadening, SimulationGrid, simulate_dataset
    from .cli import atomic_output, check_destination

    check_destination(output)
    if kz is not None and hv is not None:
        raise click.UsageError('--kz and --hv are mutually exclusive')
    model_name, model_fixed = _resolve_model(model_name, orbitals, absolute=True)
    parameters, spec_fixed, spec_name = _read_params(params)
    if spec_name is not None and spec_name != model_name:
        raise _bad_model(f'{params} is a spec of model {spec_name!r}, not {model_name!r}')
    model = _build_model(model_name, {**spec_fixed, **model_fixed, **_fixed_option(fixed)}, parameters)
    if kx is None:
        extent = math.pi / model.a if hasattr(model, 'a') else 1.0
        kx = (-extent, extent, 41)
    grid_options = {'work_function': kw.pop('work_function'), 'inner_potential': kw.pop('inner_potential')}
    counts, seed = kw.pop('counts'), kw.pop('seed')
    try:
        grid = SimulationGrid(
            kx=_axis(kx), ky=_axis(ky), eV=_axis(energy), kz=_axis(kz), hv=_axis(hv), **grid_options
        )
        data = simulate_dataset(model, grid, Broadening(**kw), seed=seed, counts=counts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with atomic_output(output) as tmp:
        to_netcdf(data, tmp)
    shape = ' × '.join(f'{dim} {n}' for dim, n in data.sizes.items())
    click.echo(f'Wrote {output}: {model_name} {model.get_parameters()}, {shape}', err=True)


@click.command('arpes-fit')
@click.argument('data_path', metavar='DATA', type=click.Path(path_type=Path))
@click.option(
    '--model',
    'model_name',
    required=True,
    help='Tight-binding model name, e.g. nickelate-eg, or hamiltonian:PATH.h5 (a block-Hamiltonian file).',
)
@FIXED_OPTION
@ORBITALS_OPTION
@click.option(
    '--init',
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='PARAMS.json: the first start (and constructor arguments, if a spec).',
)
@click.option('--format', 'format_', default=None, help='Reader of DATA (default: from the suffix/content).')
@click.option(
    '--work-function',
    type=float,
    default=None,
    help='eV, for kinetic-energy or angle data whose file does not give it.',
)
@click.option(
    '--method',
    type=click.Choice(['inr', 'baseline']),
    default='inr',
    show_default=True,
    help='inr: SIREN-surrogate multi-start, then the exact model; baseline: EDC/MDC peaks + least squares.',
)
@click.option(
    '--fraction',
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help='Fit a random fraction of the data points.',
)
@click.option('--emin', type=float, default=None, help='Fit only E - E_F >= EMIN (eV), e.g. -0.1.')
@click.option(
    '--starts',
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help='Random starts within the bounds.',
)
@click.option('--seed', type=int, default=0, show_default=True, help='Seed of the starts and of --fraction.')
@click.option(
    '--refine',
    'refine_best',
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help='INR: distinct best surrogate minima refined with the exact model (0: all).',
)
@click.option(
    '--gamma0',
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help='Starting linewidth (eV; the surrogate is trained with it).',
)
@click.option(
    '--surrogate',
    'surrogate_path',
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='INR: load the surrogate from this file if it exists, else train it and save it there.',
)
@click.option(
    '--surrogate-steps',
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help='Surrogate training steps.',
)
@click.option(
    '--surrogate-spectra',
    type=click.IntRange(min=1),
    default=400,
    show_default=True,
    help='INR: simulated spectra the surrogate is trained on.',
)
@click.option(
    '--search-steps',
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help='Gradient steps of the surrogate descent.',
)
@click.option(
    '-o',
    '--output',
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help='RESULT.json to write.',
)
@click.option(
    '--plot',
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='Also write a PNG of the data with the fitted bands.',
)
def arpes_fit(
    data_path,
    model_name,
    fixed,
    orbitals,
    init,
    format_,
    work_function,
    method,
    fraction,
    emin,
    starts,
    seed,
    refine_best,
    gamma0,
    surrogate_path,
    surrogate_steps,
    surrogate_spectra,
    search_steps,
    output,
    plot,
):
    """Fit the parameters of a tight-binding model to the ARPES data in DATA."""
    from ..arpes.fit import fit
    from ..arpes.fitdata import prepare_data
    from ..arpes.readers import load
    from ..arpes.tightbinding import ModelSpec
    from .cli import atomic_output, check_destination

    model_name, model_fixed = _resolve_model(model_name, orbitals)
    for destination in (output, plot):
        if destination is not None:
            check_destination(destination)
    try:
        da = load(data_path, format_)
        data = prepare_data(da, work_function=work_function)
    except (OSError, ValueError) as exc:
        raise EngineFailure('BadData', f'{data_path}: {exc}', EXIT_BAD_DATA) from None
    spec_fixed = {}
    if 'model' in da.attrs:  # simulated data: the lattice constant and other constructor arguments
        try:
            spec = ModelSpec.from_json(da.attrs['model'])
            spec_fixed = spec.fixed if spec.name == model_name and model_name != 'hamiltonian' else {}
        except ValueError:
            spec_fixed = {}
        _drop_unbuildable_truth(data)
    parameters, init_fixed = {}, {}
    if init is not None:
        parameters, init_fixed, init_name = _read_params(init)
        if init_name is not None and init_name != model_name:
            raise _bad_model(f'{init} is a spec of model {init_name!r}, not {model_name!r}')
    if 'path' in model_fixed and init_fixed.get('path', model_fixed['path']) != model_fixed['path']:
        for key in ('sha256', 'fermi_level'):  # they described the spec's file, not this one
            init_fixed.pop(key, None)
    fixed = {**spec_fixed, **init_fixed, **model_fixed, **_fixed_option(fixed)}
    model = _build_model(model_name, fixed, parameters)
    if model_name == 'hamiltonian' and not parameters:  # the file's own Hamiltonian is the first start
        parameters = model.get_parameters()
    progress = sys.stderr.isatty()
    timings = {}
    surrogate = None
    if method == 'inr':
        surrogate = _surrogate(
            surrogate_path,
            model,
            data,
            emin,
            gamma0,
            surrogate_steps,
            seed,
            progress,
            timings,
            n_spectra=surrogate_spectra,
        )
    try:
        result = fit(
            data,
            model,
            method=method,
            starts=starts,
            seed=seed,
            init=parameters or None,
            fraction=fraction,
            emin=emin,
            refine_best=refine_best or None,
            gamma0=gamma0,
            surrogate=surrogate,
            search_options={'steps': search_steps},
            progress=progress,
        )
    except ValueError as exc:
        raise EngineFailure('BadData', str(exc), EXIT_BAD_DATA) from None
    if not all(math.isfinite(v) for v in [result.loss, *result.parameters.values()]):
        raise EngineFailure(
            'FitFailed', f'non-finite loss or parameters: {result.parameters}', EXIT_FIT_FAILED
        )
    result.timings = {**timings, **result.timings}
    if plot is not None:  # the plot first: if it fails, no JSON claims the run succeeded
        _plot(data, result, plot, data_path)
    report = {'data': str(data_path), **result.to_dict(), 'bands': _fitted_bands(data, result)}
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + '\n')
    values = ', '.join(f'{k} = {v:.5g} ± {result.uncertainties[k]:.2g}' for k, v in result.parameters.items())
    click.echo(f'{method}: {values}; wrote {output}' + (f' and {plot}' if plot else ''), err=True)


def _surrogate(
    path: Path | None,
    model,
    data,
    emin: float | None,
    gamma0: float | None,
    steps: int,
    seed: int,
    progress: bool,
    timings: dict,
    n_spectra: int = 400,
):
    """The INR surrogate: loaded from ``path`` if it exists, else trained on ``n_spectra`` spectra for the
    data's grid (cut at ``emin``) and, with a ``path``, saved there."""
    import time

    from ..arpes.surrogate import Surrogate, train_surrogate
    from .cli import atomic_output, check_destination

    if path is not None and path.exists():
        try:
            surrogate = Surrogate.load(path)
            surrogate.check(model, data.subset(1.0, emin))
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise EngineFailure('BadSurrogate', f'{path}: {exc}', EXIT_BAD_SURROGATE) from None
        return surrogate
    t0 = time.perf_counter()
    try:
        grid = data.subset(1.0, emin)
    except ValueError as exc:
        raise EngineFailure('BadData', str(exc), EXIT_BAD_DATA) from None
    surrogate = train_surrogate(
        model, grid, gamma0=gamma0, steps=steps, n_spectra=n_spectra, seed=seed, progress=progress
    )
    timings['surrogate_training'] = time.perf_counter() - t0
    if path is not None:
        check_destination(path)
        with atomic_output(path) as tmp:
            surrogate.save(tmp)
    return surrogate


def _plot(data, result, path: Path, data_path: Path) -> None:
    """The fit plot (with the true bands of simulated data of the same model)."""
    from ..arpes.plotting import plot_fit
    from ..arpes.tightbinding import ModelSpec
    from .cli import atomic_output

    fitted = result.build_model()
    true = None
    truth = result.metrics.get('truth')
    if truth:
        true = ModelSpec(**result.model).build()
        true.set_parameters(truth['true_parameters'])
    with atomic_output(path) as tmp:
        plot_fit(
            data, fitted, tmp, true=true, title=f'{data_path.name}: {result.method} fit of {fitted.name}'
        )


def _drop_unbuildable_truth(data) -> None:
    """Simulated data whose true model cannot be rebuilt here (e.g. a Hamiltonian file left behind on the
    machine that simulated them): drop the true parameters, so the fit reports no truth metrics instead
    of failing."""
    from ..arpes.tightbinding import ModelSpec

    attrs = data.attrs or {}
    if 'true_parameters' not in attrs:
        return
    try:
        ModelSpec.from_json(attrs['model']).build()
    except (OSError, ValueError, TypeError) as exc:
        click.echo(f'Warning: no truth metrics, the true model of the data is unavailable: {exc}', err=True)
        attrs.pop('true_parameters')


def _fitted_bands(data, result) -> dict:
    """The fitted model's bands along the plotted cut: k_x of the data, k_y nearest 0, the first k_z or hν."""
    import numpy as np

    from ..arpes.metrics import band_energies
    from ..arpes.plotting import cut_momenta

    kx = np.asarray(data.axes['kx'], dtype=np.float64)
    j = int(np.abs(data.axes['ky']).argmin())
    kpoints = cut_momenta(data, j, kx)
    energies = band_energies(result.build_model(), kpoints)
    return {
        'kpoints': kpoints.tolist(),
        'energies': energies.reshape(len(kpoints), -1).tolist(),
        'units': {'kpoints': '1/Angstrom', 'energies': 'eV'},
    }
