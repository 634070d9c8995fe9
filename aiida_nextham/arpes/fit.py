"""Tight-binding parameters from ARPES data: the INR method and the classic baseline.

``method='inr'``: a SIREN surrogate of the forward model (:mod:`.surrogate`, trained for the model family
and this experiment, or given) is descended from ``starts`` random points within the bounds (seeded; an
``init`` is the first start); the ``refine`` best distinct end points are then refined with the exact
differentiable forward model (:class:`~.simulate.ArpesForwardModel`) by L-BFGS in float64, fitting the
nuisance parameters (amplitude, background, linewidth ``gamma0`` by default) with θ; the best refined
point is the result.

``method='baseline'``: EDC/MDC peak positions and a least-squares fit of the bands to them
(:mod:`.baseline`), from the same kind of starts.

Options common to both: ``fraction`` (a seeded random fraction of the data points; the baseline, which
needs whole curves, first fills the grid with a SIREN fitted to them) and ``emin`` (only E ≥ E_F + emin).

Likelihood (exact refinement). Counts (:attr:`.FitData.counts`) are Poisson: NLL = Σ (λ − y ln λ),
minimised as the deviance per point; other data are Gaussian with one unknown σ: NLL = Σ (y − λ)²/(2σ²),
σ² = SSE/(n − p) at the minimum. Uncertainties: covariance = H⁻¹ with H the Hessian of the NLL with
respect to all fitted parameters (tight-binding and nuisance) at the minimum, from
``torch.autograd.functional.hessian``; where H is not positive definite the Gauss–Newton (Fisher) matrix
Jᵀ W J is used instead (W = 1/λ, or 1/σ²), and ``metrics['curvature']`` says which. For counts the
errors are multiplied by √(χ²/ν) when the Pearson χ² per degree of freedom exceeds 1. These are
statistical errors of a correct model; they do not include the model's own error.

Starts and the global minimum: a start *reached the best minimum* when its end point lies within
:data:`MATCH_TOLERANCE` (a fraction of each parameter's bound range) of the best one, compared after the
stage it ended in (exact refinement, surrogate descent, or least squares).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import xarray as xr
from torch.func import functional_call

from .data import _plain
from .fitdata import FitData, prepare_data
from .simulate import Broadening
from .tightbinding import ModelSpec, TightBindingModel

__all__ = [
    'MATCH_TOLERANCE',
    'METHODS',
    'NUISANCE',
    'FitResult',
    'fit',
    'random_starts',
    'refine',
]

METHODS = ('inr', 'baseline')
#: nuisance parameters of the exact refinement by default (amplitude and background are always fitted)
NUISANCE = ('amplitude', 'background', 'gamma0')
_FITTABLE = (
    'amplitude',
    'background',
    'background_slope',
    'gamma0',
    'gamma2',
    'lam',
    'energy_resolution',
    'k_resolution',
    'kz_resolution',
)
_POSITIVE = ('amplitude', 'gamma0', 'energy_resolution', 'k_resolution', 'kz_resolution')
#: largest distance from the best end point, per parameter as a fraction of its bound range, of a start
#: that "reached the best minimum", by the stage the start ended in
MATCH_TOLERANCE = {'exact': 0.01, 'least_squares': 0.01, 'surrogate': 0.03}


@dataclass
class FitResult:
    """Outcome of :func:`fit`; :meth:`to_dict` is JSON-serialisable (non-finite numbers become null).

    :param parameters, uncertainties: tight-binding parameters and their standard errors (eV).
    :param nuisance, nuisance_uncertainties: fitted broadening parameters (exact refinement only).
    :param loss: the best start's final loss (deviance or normalised SSE per point; baseline: ½Σρ(r²)).
    :param metrics: fit statistics, multi-start summary and, for simulated data, the errors against the
        true parameters (``truth``). :param timings: seconds per stage.
    :param starts: per start: ``start``, ``end``, ``loss``, ``stage``, ``reached_best`` and, for refined
        INR starts, the surrogate end point and loss, the fitted nuisance values and the refinement time.
    """

    method: str
    model: dict
    parameters: dict[str, float]
    uncertainties: dict[str, float]
    nuisance: dict[str, float] = field(default_factory=dict)
    nuisance_uncertainties: dict[str, float] = field(default_factory=dict)
    loss: float = math.nan
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    starts: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def build_model(self) -> TightBindingModel:
        """The fitted model."""
        return ModelSpec(**self.model).build()

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> FitResult:
        return cls(**data)


# ------------------------------------------------------------------------------------ exact refinement
class _Objective:
    """The data's likelihood under the exact forward model, as a function of a flat float64 vector p of
    physical values: the model's parameters, then ``nuisance``."""

    def __init__(
        self, model: TightBindingModel, data: FitData, nuisance: Sequence[str], broadening: Broadening
    ):
        self.data = data
        self.forward = data.forward_model(copy.deepcopy(model), broadening)
        self.names = tuple(model.parameter_names) + tuple(nuisance)
        self.keys = [f'model.params.{name}' for name in model.parameter_names] + list(nuisance)
        self.y = torch.as_tensor(data.values(), dtype=torch.float64)
        self.mask = torch.as_tensor(data.mask)
        self.poisson = data.counts
        self.floor = 1e-9 * float(self.y.abs().max().clamp_min(1e-30))
        self.y_log_y = float(torch.special.xlogy(self.y, self.y).sum() - self.y.sum())
        self.sum_y2 = float((self.y**2).sum().clamp_min(1e-30))
        self.sigma2 = None

    def intensity(self, p: torch.Tensor) -> torch.Tensor:
        """λ at the masked points, (n,)."""
        params = dict(zip(self.keys, p.unbind(), strict=True))
        full = self.data.evaluate(lambda *args, **kwargs: functional_call(self.forward, params, args, kwargs))
        return full[self.mask]

    def loss(self, p: torch.Tensor) -> torch.Tensor:
        """The minimised quantity: Poisson deviance per point, or SSE / Σy²."""
        lam = self.intensity(p)
        if self.poisson:
            lam = lam.clamp_min(self.floor)
            return 2 * ((lam - torch.special.xlogy(self.y, lam)).sum() + self.y_log_y) / len(self.y)
        return ((self.y - lam) ** 2).sum() / self.sum_y2

    def nll(self, p: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood up to a constant (Gaussian: with σ² fixed at :attr:`sigma2`)."""
        lam = self.intensity(p)
        if self.poisson:
            lam = lam.clamp_min(self.floor)
            return (lam - torch.special.xlogy(self.y, lam)).sum()
        return ((self.y - lam) ** 2).sum() / (2 * self.sigma2)

    def vector(self, theta: Mapping[str, float], nuisance: Mapping[str, float]) -> torch.Tensor:
        """p from parameter values; nuisance values not given are the forward model's current ones."""
        current = {
            name: float(getattr(self.forward, name).detach()) for name in self.names if name in _FITTABLE
        }
        values = {**current, **theta, **nuisance}
        return torch.tensor([float(values[name]) for name in self.names], dtype=torch.float64)

    def linear_start(self, theta: Mapping[str, float]) -> tuple[float, float]:
        """Amplitude and background (≥ 0) fitting the data best for the bands of ``theta`` (least squares)."""
        with torch.no_grad():
            columns = [
                self.intensity(self.vector(theta, {'amplitude': a, 'background': b, 'background_slope': 0.0}))
                for a, b in ((1.0, 0.0), (0.0, 1.0))
            ]
        a, y = torch.stack(columns, 1).numpy(), self.y.numpy()
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        if coef[0] <= 0:  # no band intensity where the data are: start from the mean level
            return float(np.abs(y).mean()) / max(float(a[:, 0].mean()), 1e-30), 0.0
        return float(coef[0]), max(float(coef[1]), 0.0)


def refine(
    model: TightBindingModel,
    data: FitData,
    start: Mapping[str, float],
    *,
    nuisance: Sequence[str] = NUISANCE,
    broadening: Broadening | None = None,
    max_iter: int = 300,
) -> tuple[dict[str, float], dict[str, float], float, _Objective]:
    """L-BFGS (strong Wolfe) on the exact forward model from ``start`` (the model's parameters).

    Amplitude and background start at their linear least-squares values; the other nuisance values at
    ``broadening`` (default: the data's). Tight-binding parameters stay within their bounds (a logistic
    map of an unbounded variable), positive nuisance parameters move on a log scale.

    :return: fitted parameters, fitted nuisance values, final loss, and the objective (for curvature).
    """
    nuisance = tuple(dict.fromkeys(('amplitude', 'background', *nuisance)))
    unknown = sorted(set(nuisance) - set(_FITTABLE))
    if unknown:
        raise ValueError(f'unknown nuisance parameter(s) {unknown}; known: {list(_FITTABLE)}')
    objective = _Objective(model, data, nuisance, broadening or data.broadening)
    names = model.parameter_names
    amplitude, background = objective.linear_start(start)
    p0 = objective.vector(start, {'amplitude': amplitude, 'background': background})
    bounds = model.bounds()
    k = len(names)
    low, high = (torch.tensor([bounds[n][i] for n in names], dtype=torch.float64) for i in (0, 1))
    scale = torch.tensor(
        [max(abs(float(v)), 0.1 * float(objective.y.abs().mean())) for v in p0[k:]], dtype=torch.float64
    )
    positive = torch.tensor([n in _POSITIVE for n in nuisance])
    inside = ((p0[:k] - low) / (high - low)).clamp(1e-6, 1 - 1e-6)

    def physical(z: torch.Tensor) -> torch.Tensor:
        theta = low + (high - low) * torch.sigmoid(z[:k])
        rest = torch.where(positive, p0[k:] * torch.exp(z[k:]), p0[k:] + scale * z[k:])
        return torch.cat([theta, rest])

    z = torch.cat([torch.logit(inside), torch.zeros(len(nuisance), dtype=torch.float64)]).requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [z],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn='strong_wolfe',
    )

    best = {'loss': math.inf, 'z': z.detach().clone()}

    def closure():
        optimiser.zero_grad()
        loss = objective.loss(physical(z))
        loss.backward()
        if float(loss.detach()) < best['loss']:  # NaN (e.g. an overflowing amplitude) never compares smaller
            best.update(loss=float(loss.detach()), z=z.detach().clone())
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        p = physical(z)
        loss = float(objective.loss(p))
        if not math.isfinite(loss) or loss > best['loss']:  # L-BFGS left for a worse or non-finite point
            p, loss = physical(best['z']), best['loss']
    values = dict(zip(objective.names, p.tolist(), strict=True))
    return {n: values[n] for n in names}, {n: values[n] for n in nuisance}, loss, objective


def _finite_or_inf(loss: float) -> float:
    return loss if math.isfinite(loss) else math.inf


def _covariance(objective: _Objective, p: torch.Tensor) -> tuple[np.ndarray, dict]:
    """Covariance of all fitted parameters at the minimum p (see the module docstring) and statistics."""
    with torch.no_grad():
        lam = objective.intensity(p)
    n, k = len(objective.y), len(p)
    dof = max(n - k, 1)
    if objective.poisson:
        lam = lam.clamp_min(objective.floor)
        chi2 = float((((objective.y - lam) ** 2) / lam).sum()) / dof
    else:
        objective.sigma2 = float(((objective.y - lam) ** 2).sum()) / dof
        chi2 = 1.0
    hessian = torch.autograd.functional.hessian(objective.nll, p)
    curvature = 'hessian'
    if not (torch.isfinite(hessian).all() and bool((torch.linalg.eigvalsh(hessian) > 0).all())):
        jacobian = torch.func.jacfwd(objective.intensity)(p)
        weight = 1 / lam if objective.poisson else torch.full_like(lam, 1 / objective.sigma2)
        hessian = jacobian.T @ (weight[:, None] * jacobian)
        curvature = 'gauss-newton'
    covariance = torch.linalg.pinv(hessian.detach()).numpy()
    if objective.poisson and chi2 > 1:
        covariance = covariance * chi2
    stats = {
        'likelihood': 'poisson' if objective.poisson else 'gaussian',
        'curvature': curvature,
        'chi2_reduced': chi2 if objective.poisson else None,
        'sigma': math.sqrt(objective.sigma2) if objective.sigma2 is not None else None,
        'correlation': _correlation(covariance).tolist(),
        'correlation_names': list(objective.names),
    }
    return covariance, stats


def _correlation(covariance: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.clip(np.diag(covariance), 1e-300, None))
    return covariance / np.outer(sd, sd)


# ------------------------------------------------------------------------------------------ multi-start
def random_starts(
    model: TightBindingModel, n: int, seed: int = 0, init: Mapping[str, float] | None = None
) -> np.ndarray:
    """(n, n_params) starting points uniform within the bounds (seeded); ``init`` replaces the first.

    :raises ValueError: ``init`` has unknown parameters or values outside the bounds.
    """
    if n < 1:
        raise ValueError(f'need at least one start, got {n}')
    names, bounds = model.parameter_names, model.bounds()
    low, high = (np.array([bounds[name][i] for name in names]) for i in (0, 1))
    starts = low + (high - low) * np.random.default_rng(seed).random((n, len(names)))
    if init:
        unknown = sorted(set(init) - set(names))
        if unknown:
            raise ValueError(f'{model.name} has no parameter(s) {unknown}; it has {list(names)}')
        value = {**model.get_parameters(), **{k: float(v) for k, v in init.items()}}
        outside = {k: v for k, v in value.items() if not bounds[k][0] <= v <= bounds[k][1]}
        if outside:
            raise ValueError(
                'initial parameters outside the bounds: '
                + ', '.join(f'{k} = {v} not in [{bounds[k][0]}, {bounds[k][1]}]' for k, v in outside.items())
            )
        starts[0] = [value[name] for name in names]
    return starts


def _normalised(model: TightBindingModel, theta: np.ndarray) -> np.ndarray:
    bounds = model.bounds()
    low, high = (np.array([bounds[name][i] for name in model.parameter_names]) for i in (0, 1))
    return (np.asarray(theta) - low) / (high - low)


def _summarise(model: TightBindingModel, starts: list[dict], best: int) -> dict:
    """Mark the starts that reached the best end point; counts and spread of the end points."""
    names = model.parameter_names
    end = np.array([[s['end'][n] for n in names] for s in starts])
    distance = np.abs(_normalised(model, end) - _normalised(model, end[best])).max(1)
    for s, d in zip(starts, distance, strict=True):
        s['reached_best'] = bool(d <= MATCH_TOLERANCE[s['stage']])
    reached = end[[s['reached_best'] for s in starts]]
    return {
        'n_starts': len(starts),
        'n_reached_best': int(len(reached)),
        'spread': dict(zip(names, reached.std(0).tolist(), strict=True)),
        'spread_all': dict(zip(names, end.std(0).tolist(), strict=True)),
    }


# ---------------------------------------------------------------------------------------------- fitting
def fit(
    data: xr.DataArray | FitData,
    model: TightBindingModel,
    *,
    method: str = 'inr',
    starts: int = 20,
    seed: int = 0,
    init: Mapping[str, float] | None = None,
    fraction: float = 1.0,
    emin: float | None = None,
    refine_best: int | None = 3,
    nuisance: Sequence[str] = NUISANCE,
    gamma0: float | None = None,
    surrogate=None,
    surrogate_options: Mapping | None = None,
    search_options: Mapping | None = None,
    baseline_options: Mapping | None = None,
    progress: bool = False,
) -> FitResult:
    """Fit ``model``'s parameters to ``data`` (see the module docstring).

    :param data: an ``intensity`` DataArray (prepared with :func:`.fitdata.prepare_data`) or a FitData.
    :param starts: number of starts (random within the bounds, ``seed``; ``init`` is the first).
    :param refine_best: INR: how many distinct best surrogate end points are refined exactly (None: all).
    :param nuisance: broadening parameters fitted in the exact refinement (amplitude and background
        always). :param gamma0: linewidth (eV) of the surrogate and of the refinement's start.
    :param surrogate: a trained :class:`~.surrogate.Surrogate` (default: trained here, timed separately).
    :param surrogate_options, search_options: keyword arguments of :func:`.surrogate.train_surrogate` and
        :func:`.surrogate.search`. :param baseline_options: ``threshold``, ``smooth`` (peaks), ``f_scale``
        (least squares), ``denoise_steps``.
    """
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r}; known: {list(METHODS)}')
    t_start = time.perf_counter()
    full = data if isinstance(data, FitData) else prepare_data(data)
    window = (float(full.axes['eV'].min()), float(full.axes['eV'].max()))
    data = full.subset(fraction, emin, seed)
    theta0 = random_starts(model, starts, seed, init)
    broadening = replace(data.broadening, **({'gamma0': float(gamma0)} if gamma0 is not None else {}))
    timings = {'prepare': time.perf_counter() - t_start}
    options = {
        'method': method,
        'starts': starts,
        'seed': seed,
        'init': dict(init) if init else None,
        'fraction': fraction,
        'emin': emin,
    }
    if method == 'inr':
        options.update(refine_best=refine_best, nuisance=list(nuisance))
        result = _fit_inr(
            model,
            data,
            theta0,
            broadening=broadening,
            nuisance=nuisance,
            refine_best=refine_best,
            surrogate=surrogate,
            surrogate_options=surrogate_options or {},
            search_options=search_options or {},
            seed=seed,
            progress=progress,
            timings=timings,
        )
    else:
        result = _fit_baseline(model, data, theta0, baseline_options or {}, seed, progress, timings)
    result.options = options
    result.metrics['n_points'] = data.n_points
    truth = _truth(result.build_model(), full, window)
    if truth:
        result.metrics['truth'] = truth
    timings['total'] = time.perf_counter() - t_start
    result.timings = timings
    return result


def _fit_inr(
    model: TightBindingModel,
    data: FitData,
    theta0: np.ndarray,
    *,
    broadening: Broadening,
    nuisance: Sequence[str],
    refine_best: int | None,
    surrogate,
    surrogate_options: Mapping,
    search_options: Mapping,
    seed: int,
    progress: bool,
    timings: dict,
) -> FitResult:
    from tqdm.auto import tqdm

    from .surrogate import search, train_surrogate

    names = model.parameter_names
    metrics = {}
    if surrogate is None:
        t0 = time.perf_counter()
        surrogate = train_surrogate(
            model, data, gamma0=broadening.gamma0, seed=seed, progress=progress, **surrogate_options
        )
        timings['surrogate_training'] = time.perf_counter() - t0
    surrogate.check(model, data)
    metrics['surrogate'] = surrogate.info

    t0 = time.perf_counter()
    ends, losses = search(surrogate, data, theta0, seed=seed, progress=progress, **search_options)
    timings['surrogate_search'] = time.perf_counter() - t0
    starts = [
        {
            'index': i,
            'start': dict(zip(names, theta0[i].tolist(), strict=True)),
            'end': dict(zip(names, ends[i].tolist(), strict=True)),
            'loss': float(losses[i]),
            'stage': 'surrogate',
        }
        for i in range(len(theta0))
    ]
    chosen = _distinct_best(model, ends, losses, len(ends) if refine_best is None else refine_best)

    t0 = time.perf_counter()
    refined = {}
    for i in tqdm(chosen, desc='exact refinement', disable=not progress, leave=False):
        t1 = time.perf_counter()
        params, nuis, loss, objective = refine(
            model, data, starts[i]['end'], nuisance=nuisance, broadening=broadening
        )
        refined[i] = (params, nuis, objective)
        starts[i].update(surrogate_end=starts[i]['end'], surrogate_loss=starts[i]['loss'])
        starts[i].update(end=params, loss=loss, stage='exact', nuisance=nuis, time=time.perf_counter() - t1)
    timings['refine'] = time.perf_counter() - t0
    best = min(refined, key=lambda i: _finite_or_inf(starts[i]['loss']))
    params, nuis, objective = refined[best]
    metrics.update(_summarise(model, starts, best))
    metrics['n_refined'] = len(refined)
    metrics['best_start'] = best

    t0 = time.perf_counter()
    p = torch.tensor([params[n] for n in names] + list(nuis.values()), dtype=torch.float64)
    covariance, stats = _covariance(objective, p)
    timings['uncertainty'] = time.perf_counter() - t0
    metrics.update(stats)
    errors = np.sqrt(np.clip(np.diag(covariance), 0, None)).tolist()
    spec = replace(model.spec(), parameters=params)
    return FitResult(
        method='inr',
        model=asdict(spec),
        parameters=params,
        uncertainties=dict(zip(names, errors[: len(names)], strict=True)),
        nuisance=nuis,
        nuisance_uncertainties=dict(zip(nuis, errors[len(names) :], strict=True)),
        loss=starts[best]['loss'],
        metrics=metrics,
        starts=starts,
    )


def _distinct_best(model: TightBindingModel, ends: np.ndarray, losses: np.ndarray, n: int) -> list[int]:
    """Indices of up to ``n`` lowest-loss end points, skipping those within the surrogate tolerance of an
    already chosen one (all of them when ``n`` ≥ the number of starts)."""
    if n >= len(ends):
        return list(np.argsort(losses))
    unit = _normalised(model, ends)
    chosen = []
    for i in np.argsort(losses):
        if all(np.abs(unit[i] - unit[j]).max() > MATCH_TOLERANCE['surrogate'] for j in chosen):
            chosen.append(int(i))
        if len(chosen) == n:
            break
    return chosen


def _fit_baseline(
    model: TightBindingModel,
    data: FitData,
    theta0: np.ndarray,
    options: Mapping,
    seed: int,
    progress: bool,
    timings: dict,
) -> FitResult:
    from tqdm.auto import tqdm

    from .baseline import denoise, extract_peaks, fit_peaks

    options = dict(options)
    names = model.parameter_names
    if not data.mask.all():
        t0 = time.perf_counter()
        data = denoise(data, steps=options.pop('denoise_steps', 1500), seed=seed, progress=progress)
        timings['denoise'] = time.perf_counter() - t0
    t0 = time.perf_counter()
    peak_options = {k: options.pop(k) for k in ('threshold', 'smooth') if k in options}
    peaks = extract_peaks(data, **peak_options)
    timings['peaks'] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = [
        fit_peaks(model, peaks, theta, **options)[0]
        for theta in tqdm(theta0, desc='least squares', disable=not progress, leave=False)
    ]
    timings['least_squares'] = time.perf_counter() - t0
    starts = [
        {'index': i, 'start': f.start, 'end': f.parameters, 'loss': f.cost, 'rms': f.rms}
        for i, f in enumerate(fits)
    ]
    for s in starts:
        s['stage'] = 'least_squares'
    best = int(np.argmin([f.cost for f in fits]))
    metrics = {
        **_summarise(model, starts, best),
        'best_start': best,
        'n_peaks': len(peaks),
        'rms': fits[best].rms,
    }
    metrics['n_peaks_by_kind'] = {kind: int((peaks.kind == kind).sum()) for kind in np.unique(peaks.kind)}
    errors = np.sqrt(np.clip(np.diag(fits[best].covariance), 0, None)).tolist()
    spec = replace(model.spec(), parameters=fits[best].parameters)
    return FitResult(
        method='baseline',
        model=asdict(spec),
        parameters=fits[best].parameters,
        uncertainties=dict(zip(names, errors, strict=True)),
        loss=fits[best].cost,
        metrics=metrics,
        starts=starts,
    )


def _truth(fitted: TightBindingModel, data: FitData, window: tuple[float, float]) -> dict | None:
    """Errors against the true model of simulated data (attrs ``model`` and ``true_parameters``), if it is
    of the fitted family: per parameter, and the band-structure agreement of :func:`.metrics.compare_models`
    on the data's k range (k_x range for both axes of a cut) within the data's energy window."""
    from .metrics import compare_models

    attrs = data.attrs or {}
    if 'model' not in attrs or 'true_parameters' not in attrs:
        return None
    true = ModelSpec.from_json(attrs['model']).build()
    if true.name != fitted.name or true.parameter_names != fitted.parameter_names:
        return None
    true.set_parameters(json.loads(attrs['true_parameters']))
    got, want = fitted.get_parameters(), true.get_parameters()
    kx = data.axes['kx']
    ky = data.axes['ky'] if len(data.axes['ky']) > 1 else kx
    grid = [np.linspace(axis.min(), axis.max(), 101) for axis in (kx, ky)]
    kz = data.axes['kz'] if 'kz' in data.axes else [0.0]
    error = {name: got[name] - want[name] for name in want}
    return {
        'true_parameters': want,
        'error': error,
        'relative_error': {name: error[name] / abs(want[name]) if want[name] else None for name in want},
        **compare_models(fitted, true, *grid, kz=kz, window=window),
    }
