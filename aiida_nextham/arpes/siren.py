"""SIREN: a multilayer perceptron with sine activations (Sitzmann et al., NeurIPS 2020, arXiv:2006.09661).

Layer l maps h ↦ sin(ω_l (W_l h + b_l)); the last layer is linear. The initialisation keeps every hidden
pre-activation ω (W h + b) close to a unit normal whatever the depth: the first layer draws
W ~ U(−1/n, 1/n) (n = input features) so that ω0·W x spans several periods of the sine over inputs in
[−1, 1]; later layers (and the linear output) draw W ~ U(−√(6/n)/ω, √(6/n)/ω), which with sine outputs
of variance ½ gives pre-activations of variance 1. The first layer's biases keep PyTorch's default
U(−1/√n, 1/√n) (random phases up to ω0/√n); later biases are drawn like the weights, so that ω b adds only
2/n to the unit variance (the default bound ×ω would add ω²/(3n), > 1 for ω = 30 and n = 256).
ω0 (``first_omega``) sets the highest frequency the network represents at initialisation: large for
sharp features (30 for images), smaller for smooth functions.

:class:`SirenField` wraps a SIREN with the affine maps from physical coordinates to [−1, 1] and from
the network output to physical values; :func:`fit_field` fits one to scattered samples (a continuous,
denoised representation of sparse or noisy data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ['SineLayer', 'Siren', 'SirenField', 'fit_field']


class SineLayer(nn.Module):
    """x (..., in_features) → sin(ω (W x + b)) (..., out_features), SIREN-initialised.

    :param first: first layer (W ~ U(−1/n, 1/n)) rather than hidden (W, b ~ U(−√(6/n)/ω, √(6/n)/ω)).
    """

    def __init__(self, in_features: int, out_features: int, omega: float, first: bool = False):
        super().__init__()
        self.omega = float(omega)
        self.linear = nn.Linear(in_features, out_features)
        if not first:  # hidden: weights and biases U(−√(6/n)/ω, √(6/n)/ω)
            bound = math.sqrt(6 / in_features) / self.omega
            with torch.no_grad():
                self.linear.weight.uniform_(-bound, bound)
                self.linear.bias.uniform_(-bound, bound)
        else:
            with torch.no_grad():
                self.linear.weight.uniform_(-1 / in_features, 1 / in_features)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """ω (W x + b), shape (..., out_features)."""
        return self.omega * self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.preactivation(x))


class Siren(nn.Module):
    """Sine MLP: (..., in_features) → (..., out_features).

    :param hidden_features: width of the hidden layers. :param hidden_layers: number of hidden sine
        layers after the first one. :param first_omega: ω0 of the first layer. :param hidden_omega: ω of
        the hidden layers (30 in the paper; it only rescales their weights, see the module docstring).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        hidden_features: int = 128,
        hidden_layers: int = 3,
        first_omega: float = 30.0,
        hidden_omega: float = 30.0,
    ):
        super().__init__()
        self.config = {
            'in_features': int(in_features),
            'out_features': int(out_features),
            'hidden_features': int(hidden_features),
            'hidden_layers': int(hidden_layers),
            'first_omega': float(first_omega),
            'hidden_omega': float(hidden_omega),
        }
        layers = [SineLayer(in_features, hidden_features, first_omega, first=True)]
        layers += [SineLayer(hidden_features, hidden_features, hidden_omega) for _ in range(hidden_layers)]
        self.layers = nn.ModuleList(layers)
        self.output = nn.Linear(hidden_features, out_features)
        bound = math.sqrt(6 / hidden_features) / hidden_omega
        with torch.no_grad():
            self.output.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output(x)


class SirenField(nn.Module):
    """A scalar field f(x) on a box: x (N, d) in physical units → f (N,), through a :class:`Siren`.

    Inputs are mapped affinely from [low, high] to [−1, 1]; the output is ``offset + scale`` × the
    network output. Parameters in float32 (the inputs are cast).

    :param low, high: (d,) box of the inputs. :param offset, scale: output units. :param siren: keyword
        arguments of :class:`Siren` (``in_features`` = d and ``out_features`` = 1 are set here).
    """

    def __init__(
        self,
        low: Sequence[float],
        high: Sequence[float],
        offset: float = 0.0,
        scale: float = 1.0,
        **siren,
    ):
        super().__init__()
        low, high = (torch.as_tensor(np.asarray(v, dtype=float), dtype=torch.float32) for v in (low, high))
        if low.shape != high.shape or low.ndim != 1 or not bool((high > low).all()):
            raise ValueError('low and high must be (d,) with high > low')
        self.register_buffer('low', low)
        self.register_buffer('high', high)
        self.offset, self.scale = float(offset), float(scale)
        self.siren = Siren(len(low), 1, **siren)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Physical inputs (N, d) → [−1, 1]^d."""
        return 2 * (x.to(self.low.dtype) - self.low) / (self.high - self.low) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset + self.siren(self.normalise(x))[..., 0] * self.scale

    def state(self) -> dict:
        """Everything to rebuild the field (tensors included), for ``torch.save``."""
        return {
            'low': self.low.tolist(),
            'high': self.high.tolist(),
            'offset': self.offset,
            'scale': self.scale,
            'siren': {k: v for k, v in self.siren.config.items() if k not in ('in_features', 'out_features')},
            'state_dict': self.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict) -> SirenField:
        field = cls(state['low'], state['high'], state['offset'], state['scale'], **state['siren'])
        field.load_state_dict(state['state_dict'])
        return field


def fit_field(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    steps: int = 2000,
    batch_size: int = 4096,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    **siren,
) -> tuple[SirenField, list[float]]:
    """Fit a :class:`SirenField` to samples y (N,) at points x (N, d) by Adam on the mean squared error.

    Minibatches of ``batch_size`` random samples; the learning rate decays by cosine annealing to lr/20.
    A SIREN fitted to noisy samples with a moderate ω0 and a limited number of steps is smoother than
    the noise (it fits low frequencies first), which is the denoising; it can be evaluated anywhere in
    the box, which fills gaps in sparse sampling.

    :param low, high: box of the inputs (default: the range of x). :param siren: :class:`Siren` options.
    :return: the field (offset and scale: mean and standard deviation of y, so the network fits values
        of order 1) and the loss history (MSE in units of y², one value per step).
    """
    from tqdm.auto import tqdm

    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f'need x (N, d) and y (N,) with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}')
    low = x.min(0).values if low is None else torch.as_tensor(low, dtype=torch.float32)
    high = x.max(0).values if high is None else torch.as_tensor(high, dtype=torch.float32)
    high = torch.where(high > low, high, low + 1)  # a constant input: any box
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    field = SirenField(low, high, float(y.mean()), float(y.std()) or 1.0, **siren)
    optimiser = torch.optim.Adam(field.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=lr / 20)
    history = []
    for _ in tqdm(range(steps), desc='SIREN fit', disable=not progress, leave=False):
        index = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=generator)
        loss = ((field(x[index]) - y[index]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
    return field.eval(), history
