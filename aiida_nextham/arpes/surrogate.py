"""A SIREN surrogate of the ARPES forward model for one model family and one experiment.

The surrogate is a :class:`~.siren.SirenField` of the grid coordinates and the tight-binding parameters,
Î(k, E; θ) ≈ R ⊗ [A(k, E; θ) f(E)], the forward model with unit amplitude and no background, for the
instrument (temperature, resolutions) and linewidth of the data it is made for. It is trained on spectra
simulated by the exact forward model for random θ drawn uniformly within the model's bounds (inputs are
normalised: the grid box and the parameter bounds map to [−1, 1]). A data set is then fitted through it
by :func:`search`: gradient descent on θ from many starts at once, the amplitude S and background b of
I = S Î + b B (B: the resolution-broadened Fermi–Dirac step, exact) solved in closed form at every step
(variable projection), so the descent sees θ only.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .fitdata import FitData
from .simulate import ArpesForwardModel, Broadening
from .siren import SirenField
from .tightbinding import ModelSpec, TightBindingModel

__all__ = ['Surrogate', 'search', 'train_surrogate']

#: the most grid points per axis of the simulated training spectra (momentum axes, energy axis)
TRAINING_GRID = (32, 96)


class Surrogate(nn.Module):
    """Î(x; θ): x (N, n_axes) grid coordinates in the order of ``axes``, θ (S, n_params) → (S, N).

    :param field: the SIREN field of n_axes + n_params inputs.
    :param model: the model family (its name, fixed arguments, parameter names and bounds).
    :param axes: names of the coordinate inputs (a subsequence of :data:`~.fitdata.AXES`).
    :param broadening: the instrument and linewidth the spectra were simulated with.
    :param info: training record (sizes, timings, validation error).
    """

    def __init__(
        self,
        field: SirenField,
        model: ModelSpec,
        axes: tuple[str, ...],
        broadening: Broadening,
        info: dict | None = None,
    ):
        super().__init__()
        self.field = field
        self.spec = model
        self.names = tuple(model.build().parameter_names)
        self.axes = tuple(axes)
        self.broadening = broadening
        self.info = dict(info or {})

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        n, s = x.shape[0], theta.shape[0]
        inputs = torch.cat(
            [x.to(torch.float32).expand(s, n, -1), theta.to(torch.float32)[:, None, :].expand(s, n, -1)], -1
        )
        return self.field(inputs)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) of θ, each (n_params,) float32."""
        d = len(self.axes)
        return self.field.low[d:], self.field.high[d:]

    def check(self, model: TightBindingModel, data: FitData) -> None:
        """Raise ValueError unless this surrogate was made for ``model``'s family and bounds and for the
        grid of ``data`` (its box must contain the data's coordinates)."""
        if model.name != self.spec.name or tuple(model.parameter_names) != self.names:
            raise ValueError(
                f'the surrogate is for {self.spec.name} {list(self.names)}, '
                f'not {model.name} {list(model.parameter_names)}'
            )
        low, high = self.bounds()
        bounds = np.array([model.bounds()[name] for name in self.names], dtype=np.float32)
        if not (np.allclose(bounds[:, 0], low.numpy()) and np.allclose(bounds[:, 1], high.numpy())):
            raise ValueError('the surrogate was trained for other parameter bounds')
        if tuple(data.axes) != self.axes:
            raise ValueError(f'the surrogate has axes {list(self.axes)}, the data {list(data.axes)}')
        for i, (name, axis) in enumerate(data.axes.items()):
            lo, hi = float(self.field.low[i]), float(self.field.high[i])
            tol = 1e-6 * max(1.0, abs(lo), abs(hi))
            if axis.min() < lo - tol or axis.max() > hi + tol:
                raise ValueError(
                    f'the data extend beyond the surrogate box along {name} ([{lo:.4g}, {hi:.4g}])'
                )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        state = {
            'field': self.field.state(),
            'model': self.spec.to_json(indent=None),
            'axes': list(self.axes),
            'broadening': json.dumps(asdict(self.broadening)),
            'info': json.dumps(self.info),
        }
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Surrogate:
        state = torch.load(path, weights_only=True)
        return cls(
            SirenField.from_state(state['field']),
            ModelSpec.from_json(state['model']),
            tuple(state['axes']),
            Broadening(**json.loads(state['broadening'])),
            json.loads(state['info']),
        ).eval()


def _training_axes(data: FitData) -> dict[str, np.ndarray]:
    """The data's axes, each resampled to at most :data:`TRAINING_GRID` points over the same range."""
    out = {}
    for name, axis in data.axes.items():
        limit = TRAINING_GRID[1] if name == 'eV' else TRAINING_GRID[0]
        out[name] = axis if len(axis) <= limit else np.linspace(axis[0], axis[-1], limit)
    return out


def train_surrogate(
    model: TightBindingModel,
    data: FitData,
    *,
    gamma0: float | None = None,
    n_spectra: int = 400,
    points_per_spectrum: int = 4096,
    steps: int = 2000,
    batch_size: int = 4096,
    lr: float = 1e-3,
    hidden_features: int = 128,
    hidden_layers: int = 3,
    first_omega: float = 10.0,
    seed: int = 0,
    progress: bool = False,
) -> Surrogate:
    """Train a surrogate of ``model``'s family for the grid and instrument of ``data``.

    Spectra are simulated on the data's box (each axis at most :data:`TRAINING_GRID` points) for
    ``n_spectra`` random θ within the bounds; of each, ``points_per_spectrum`` points are kept, half
    uniformly and half with probability ∝ intensity (the bands). Adam on the mean squared error,
    cosine-annealed learning rate; 8 further spectra measure the validation error
    (``info['validation_error']``: ‖Î − I‖ / ‖I‖ on their full grids).

    :param gamma0: Lorentzian half width of the simulated spectra (eV; default that of ``data``).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    broadening = replace(
        data.broadening,
        amplitude=1.0,
        background=0.0,
        background_slope=0.0,
        **({'gamma0': float(gamma0)} if gamma0 is not None else {}),
    )
    axes = _training_axes(data)
    grid = replace(data, axes=axes, intensity=None, mask=None)
    mesh = torch.as_tensor(np.stack(np.meshgrid(*axes.values(), indexing='ij'), -1).reshape(-1, len(axes)))
    names = model.parameter_names
    bounds = torch.tensor([model.bounds()[name] for name in names], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model)
    forward = ArpesForwardModel(work, broadening)

    def spectrum(theta: torch.Tensor) -> torch.Tensor:
        work.set_parameters(dict(zip(names, theta.tolist(), strict=True)))
        with torch.no_grad():
            return grid.evaluate(forward).reshape(-1)

    thetas = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * torch.rand(
        n_spectra + 8, len(names), generator=generator, dtype=torch.float64
    )
    x, y = [], []
    for theta in tqdm(thetas[:n_spectra], desc='surrogate spectra', disable=not progress, leave=False):
        intensity = spectrum(theta)
        half = points_per_spectrum // 2
        uniform = torch.randint(0, len(intensity), (points_per_spectrum - half,), generator=generator)
        weight = intensity.clamp_min(0) + 1e-12
        bands = torch.multinomial(weight / weight.sum(), half, replacement=True, generator=generator)
        index = torch.cat([uniform, bands])
        x.append(torch.cat([mesh[index], theta.expand(len(index), -1)], 1))
        y.append(intensity[index])
    x, y = torch.cat(x).float(), torch.cat(y).float()
    t_simulate = time.perf_counter() - t0

    low = torch.cat([mesh.min(0).values, bounds[:, 0]]).float()
    high = torch.cat([mesh.max(0).values, bounds[:, 1]]).float()
    high = torch.where(high > low, high, low + 1)  # a one-point axis
    torch.manual_seed(seed)
    field = SirenField(
        low,
        high,
        0.0,
        float(y.std()),
        hidden_features=hidden_features,
        hidden_layers=hidden_layers,
        first_omega=first_omega,
    )
    optimiser = torch.optim.Adam(field.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=lr / 20)
    for _ in tqdm(range(steps), desc='surrogate training', disable=not progress, leave=False):
        index = torch.randint(0, len(y), (batch_size,), generator=generator)
        loss = ((field(x[index]) - y[index]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    field.eval()
    t_train = time.perf_counter() - t0 - t_simulate

    errors = []
    with torch.no_grad():
        for theta in thetas[n_spectra:]:
            exact = spectrum(theta).float()
            approx = field(torch.cat([mesh, theta.expand(len(mesh), -1)], 1).float())
            errors.append(float((approx - exact).norm() / exact.norm().clamp_min(1e-30)))
    info = {
        'n_spectra': n_spectra,
        'points_per_spectrum': points_per_spectrum,
        'steps': steps,
        'training_grid': {name: len(axis) for name, axis in axes.items()},
        'final_mse_relative': float(loss.detach()) / float(y.var()),
        'validation_error': float(np.median(errors)),
        'time_simulate': t_simulate,
        'time_train': t_train,
    }
    for p in field.parameters():
        p.requires_grad_(False)
    return Surrogate(field, model.spec(), tuple(axes), broadening, info)


def search(
    surrogate: Surrogate,
    data: FitData,
    starts: np.ndarray,
    *,
    steps: int = 300,
    batch_size: int = 2048,
    lr: float = 0.03,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent on θ through the surrogate from every start at once.

    Each step uses ``batch_size`` random masked data points (the same for all starts); θ moves in the
    normalised box [−1, 1] by Adam (learning rate cosine-annealed from ``lr`` to lr/10) and is clipped to
    the bounds. The loss of a start is ‖y − S Î(θ) − b B‖² / ‖y‖² with the best S and b for its θ.

    :param starts: (n_starts, n_params) physical parameter values within the bounds.
    :return: final θ (n_starts, n_params) and their losses (n_starts,), evaluated on up to 8192 random
        data points.
    """
    from tqdm.auto import tqdm

    x = torch.as_tensor(data.points(), dtype=torch.float32)
    y = torch.as_tensor(data.values(), dtype=torch.float32)
    b = torch.as_tensor(np.broadcast_to(data.fermi_step(), data.mask.shape)[data.mask], dtype=torch.float32)
    low, high = surrogate.bounds()
    u = (2 * (torch.as_tensor(starts, dtype=torch.float32) - low) / (high - low) - 1).clamp(-1, 1)
    u.requires_grad_(True)
    optimiser = torch.optim.Adam([u], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=lr / 10)
    generator = torch.Generator().manual_seed(seed)

    def losses(index: torch.Tensor) -> torch.Tensor:
        theta = low + (u + 1) / 2 * (high - low)
        return _projected_loss(surrogate(x[index], theta), b[index], y[index])

    for _ in tqdm(range(steps), desc='surrogate search', disable=not progress, leave=False):
        index = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=generator)
        loss = losses(index).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            u.clamp_(-1, 1)
    with torch.no_grad():
        loss = losses(torch.randperm(len(y), generator=generator)[:8192])
        theta = low + (u + 1) / 2 * (high - low)
    return theta.double().numpy(), loss.double().numpy()


def _projected_loss(p: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """min over S, c of ‖y − S p − c b‖² / ‖y‖², per row of p (S, N); b, y (N,)."""
    pp, pb, bb = (p * p).sum(1), (p * b).sum(1), (b * b).sum()
    py, by = (p * y).sum(1), (b * y).sum()
    det = (pp * bb - pb**2).clamp_min(1e-12 * (pp * bb).clamp_min(1e-30))
    scale = (bb * py - pb * by) / det
    offset = (pp * by - pb * py) / det
    residual = y - scale[:, None] * p - offset[:, None] * b
    return (residual**2).sum(1) / (y**2).sum().clamp_min(1e-30)
