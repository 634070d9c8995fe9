"""Training loss of the ΔH model: real-space block errors plus reciprocal-space band terms.

Everything works on one structure at a time on flat block arrays (the layout of
:class:`~aiida_nextham.hamiltonian.block.BlockHamiltonian`); a batch loss is the mean over its
structures. Inputs are in eV; reported values are meV (L1) or meV² (squared terms).

**Gauge.** H → H + μS shifts every band by μ and leaves all physics relative to E_F unchanged (most
of H − H0 is such a shift). With ``gauge=True`` each term is made exactly invariant under it:

- real space: the error e = H_pred − H_true is replaced by e − μ*S with the least-squares
  μ* = ⟨S, e⟩ / ⟨S, S⟩ (masked inner products). The same μ* is used for L1 (it is not the L1
  minimiser, the weighted median of e/S, but it is smooth in the prediction, whereas the median
  jumps between elements, and one μ serves the L1 and MSE terms alike). Since μ*(e + tS) = μ*(e) + t,
  e − μ*S is exactly invariant for either kind.
- reciprocal space: with C S-orthonormal, C†(H + μS)C = A + μ1, so D = A − diag(E) is replaced by
  D − μ*1 with μ* the weighted mean of Re diag(D) that minimises the P and Q terms (closed form).

μ* is kept in the autograd graph (not detached). The loss is then a function of the gauge-projected
error only, so its gradient has no component along the gauge direction S (the model is never pushed to
change its arbitrary shift); for the squared terms, where μ* is the exact minimiser, the gradient
equals that with a detached μ* (envelope theorem), so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..hamiltonian.block import BlockHamiltonian
from .bloch import BlochIndex, bloch_sum
from .targets import ReciprocalTargets

__all__ = [
    'HamiltonianLoss',
    'LossConfig',
    'ReciprocalTensors',
    'SpinorLayout',
    'element_mask',
    'optimal_shift',
    'real_space_terms',
    'reciprocal_terms',
]

MEV = 1000.0


# ------------------------------------------------------------------------------------- helpers
def element_mask(bh: BlockHamiltonian, pair_mask: np.ndarray, name: str = 'H') -> np.ndarray:
    """Per-pair bool mask (n_pairs,) → per-element mask of matrix ``name``'s flat layout (n_elements,)."""
    sizes = np.diff(bh.block_offsets(name))
    return np.repeat(np.asarray(pair_mask, dtype=bool), sizes)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def optimal_shift(error: torch.Tensor, overlap: torch.Tensor, weights: torch.Tensor | None = None):
    """μ* = ⟨S, e⟩_w / ⟨S, S⟩_w minimising Σ w |e − μ S|² (0-dim tensor, eV; 0 when S vanishes).

    :param error: (n_elements,) H_pred − H_true (real, or complex for spinor layouts).
    :param overlap: (n_elements,) S in the same layout.
    :param weights: (n_elements,) mask or weights, or None.
    """
    # S is real (spinor layouts may store it complex), so ⟨S, e⟩ only sees Re e
    overlap = overlap.real if overlap.is_complex() else overlap
    error = error.real if error.is_complex() else error
    w = torch.ones_like(overlap) if weights is None else weights.to(overlap.dtype)
    numerator = (w * overlap * error).sum()
    denominator = (w * overlap * overlap).sum()
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def real_space_terms(
    pred: torch.Tensor,
    true: torch.Tensor,
    overlap: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    gauge: bool = True,
) -> dict[str, torch.Tensor]:
    """Masked L1 (meV) and MSE (meV²) per matrix element of H_pred − H_true.

    :param pred: (n_elements,) predicted flat blocks (H or ΔH, eV).
    :param true: (n_elements,) true flat blocks of the same kind.
    :param overlap: (n_elements,) S in the same layout; needed when ``gauge``.
    :param mask: (n_elements,) bool or float weights (e.g. :func:`element_mask` of a distance cut).
    :return: ``{'l1', 'mse', 'shift'}`` 0-dim tensors; ``shift`` is μ* in eV (0 without gauge).
    """
    error = pred - true
    weights = None if mask is None else mask.to(error.real.dtype)
    shift = error.new_zeros((), dtype=error.real.dtype)
    if gauge:
        if overlap is None:
            raise ValueError('the gauge-aware loss needs the overlap S')
        shift = optimal_shift(error, overlap, weights)
        error = error - shift * overlap
    magnitude = error.abs()
    return {
        'l1': MEV * _weighted_mean(magnitude, weights),
        'mse': MEV**2 * _weighted_mean(magnitude.square(), weights),
        'shift': shift,
    }


# ------------------------------------------------------------------------------------------ spin
@dataclass(frozen=True)
class SpinorLayout:
    """Maps between a spinless flat layout and the spinor layout (blocks (2, 2, ni, nj)) of one structure.

    :param up: (n_spinless,) positions of the ↑↑ copy of every spinless element in the spinor array.
    :param down: (n_spinless,) positions of the ↓↓ copy.
    :param n_spinor: length of the spinor flat array.
    """

    up: np.ndarray
    down: np.ndarray
    n_spinor: int

    @classmethod
    def from_hamiltonian(cls, bh: BlockHamiltonian) -> SpinorLayout:
        """Layout of ``bh``'s pairs and basis (``bh.spin`` itself may be anything)."""
        counts = bh.orbital_counts
        area = counts[bh.pairs[:, 3]] * counts[bh.pairs[:, 4]]
        starts = np.concatenate([[0], np.cumsum(4 * area)])
        pair = np.repeat(np.arange(bh.n_pairs), area)
        local = np.arange(area.sum()) - np.repeat(np.cumsum(area) - area, area)
        up = starts[pair] + local
        return cls(up=up, down=up + 3 * area[pair], n_spinor=int(starts[-1]))

    def expand(self, spinless, dtype=None):
        """Spinless flat (n_spinless,) → spinor flat (n_spinor,): the same on ↑↑ and ↓↓, 0 on ↑↓, ↓↑.

        Works for numpy arrays and (differentiably) for torch tensors.
        """
        if isinstance(spinless, torch.Tensor):
            up = torch.as_tensor(self.up, device=spinless.device)
            down = torch.as_tensor(self.down, device=spinless.device)
            values = spinless.to(dtype or spinless.dtype)
            out = values.new_zeros(self.n_spinor)
            return out.index_copy(0, up, values).index_copy(0, down, values)
        out = np.zeros(self.n_spinor, dtype=dtype or np.asarray(spinless).dtype)
        out[self.up] = spinless
        out[self.down] = spinless
        return out

    def reduce(self, spinor, real: bool = True):
        """Spinor flat (n_spinor,) → spin-averaged diagonal (↑↑ + ↓↓)/2, spinless (n_spinless,).

        :param real: keep the real part only (a spin-independent correction is real).
        """
        if isinstance(spinor, torch.Tensor):
            up = torch.as_tensor(self.up, device=spinor.device)
            down = torch.as_tensor(self.down, device=spinor.device)
            average = 0.5 * (spinor[up] + spinor[down])
            return average.real if real and average.is_complex() else average
        average = 0.5 * (spinor[self.up] + spinor[self.down])
        return average.real if real else average


# ----------------------------------------------------------------------------- reciprocal space
@dataclass(frozen=True)
class ReciprocalTensors:
    """Torch form of :class:`~aiida_nextham.ml.targets.ReciprocalTargets` plus its Bloch index.

    :param index: Bloch index of the predicted H's flat layout.
    :param kpoints: (nk, 3) float64 fractional k-points.
    :param energies: (nk, nb) true band energies (eV).
    :param eigenvectors: (nk, n, nb) complex S-orthonormal true eigenvectors.
    :param p_mask: (nk, nb) bool, bands in P.
    :param fermi_level: E_F (eV) the mask was built with.
    """

    index: BlochIndex
    kpoints: torch.Tensor
    energies: torch.Tensor
    eigenvectors: torch.Tensor
    p_mask: torch.Tensor
    fermi_level: float

    @classmethod
    def from_targets(
        cls,
        targets: ReciprocalTargets,
        index: BlochIndex | BlockHamiltonian,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> ReciprocalTensors:
        """Convert once per structure; ``dtype`` is the real dtype of the predicted blocks."""
        if isinstance(index, BlockHamiltonian):
            index = BlochIndex.from_hamiltonian(index, 'H', device=device)
        elif device is not None:
            index = index.to(device)
        if index.size != targets.eigenvectors.shape[1]:
            raise ValueError(
                f'targets are for {targets.eigenvectors.shape[1]} states, the index for {index.size}'
            )
        complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        return cls(
            index=index,
            kpoints=torch.as_tensor(targets.kpoints, dtype=torch.float64, device=device),
            energies=torch.as_tensor(targets.energies, dtype=dtype, device=device),
            eigenvectors=torch.as_tensor(targets.eigenvectors, device=device).to(complex_dtype),
            p_mask=torch.as_tensor(targets.p_mask, device=device),
            fermi_level=float(targets.fermi_level),
        )

    def subspace(self, window_above_fermi: float | None = None) -> torch.Tensor:
        """P mask (nk, nb), for another window when given."""
        if window_above_fermi is None:
            return self.p_mask
        return self.energies <= self.fermi_level + window_above_fermi


def _block_mean(squares: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Mean of ``squares`` (nk, nb, nb) over entries with row in ``left`` and column in ``right`` (nk, nb)."""
    weights = left[:, :, None] * right[:, None, :]
    return (weights * squares).sum() / weights.sum().clamp_min(1.0)


def reciprocal_terms(
    pred: torch.Tensor,
    data: ReciprocalTensors,
    *,
    p_weight: float = 1.0,
    q_weight: float = 0.1,
    gauge: bool = True,
    window_above_fermi: float | None = None,
    normalize_columns: bool = False,
) -> dict[str, torch.Tensor]:
    """Band terms of A = C† H_pred(k) C against diag(E_true), in meV² per matrix entry.

    ``normalize_columns`` divides D_mn by |c_m| |c_n| (Euclidean norms of the coefficient vectors).
    In a nearly linearly dependent basis (gth-dzvp with long cutoffs: S(k) eigenvalues down to 1e-5)
    S-orthonormal eigenvectors have huge coefficients along the near-null directions of S, and
    C† δH C amplifies a meV error of H by up to 1/s_min; normalised, every entry is bounded by the
    spectral norm of δH and the loss stays on the scale of the real-space error, while bands of a
    well-conditioned basis (|c| ≈ 1) are weighted as before. The gauge μ* then weights band n by
    |c_n|⁻⁴ (still closed form).

    With D = A − diag(E) (minus μ*·1 with ``gauge``): ``pp`` = mean |D_PP|², ``qq`` = mean |D_QQ|²,
    ``pq`` = mean |D_PQ|² (P–Q coupling, which is what creates ghost states; computed as D_QP, equal
    in magnitude for hermitian H), each averaged over the entries of that block at all k-points.
    ``p_weight``/``q_weight`` only enter μ* (the minimiser of p_weight·pp + q_weight·qq); weighting
    the terms themselves is the caller's job. ``q_weight == 0`` skips the QQ block: only the
    columns of the lowest bands up to the last P band are formed (cost ∝ n² n_P instead of n³ per k),
    and ``qq`` is left out of the result.

    :param pred: (n_elements,) predicted flat blocks of the full H (not ΔH), eV, in the layout of
        ``data.index`` (spinless, or spinor for spinor targets).
    :return: ``{'pp', 'qq', 'pq', 'shift'}``; ``shift`` is μ* in eV (0-dim tensors).
    """
    p = data.subspace(window_above_fermi).to(data.energies.dtype)  # (nk, nb)
    q = 1.0 - p
    n_k, n_bands = p.shape
    if q_weight > 0:
        n_cols = n_bands
    else:  # every P band lies among the first n_cols bands at every k
        last = (p * torch.arange(1, n_bands + 1, dtype=p.dtype, device=p.device)).amax()
        n_cols = max(int(last), 1)
    h_k = bloch_sum(pred, data.index, data.kpoints)
    c = data.eigenvectors
    a = c.mH @ (h_k @ c[..., :n_cols])  # (nk, nb, n_cols)
    energies = data.energies[:, :n_cols]
    p_cols, q_cols = p[:, :n_cols], q[:, :n_cols]
    diagonal = a.diagonal(dim1=-2, dim2=-1).real - energies  # (nk, n_cols)
    if normalize_columns:
        norms = c.abs().square().sum(dim=1).sqrt().to(energies.dtype)  # (nk, nb)
        scale = norms[:, :, None] * norms[:, None, :n_cols]
    else:
        scale = torch.ones((), dtype=energies.dtype, device=energies.device)
    inverse_square = 1.0 / scale.diagonal(dim1=-2, dim2=-1).square() if normalize_columns else 1.0
    shift = diagonal.new_zeros(())
    if gauge:
        n_pp, n_qq = p.sum(-1).square().sum(), q.sum(-1).square().sum()
        weights = p_cols * (p_weight / n_pp.clamp_min(1.0)) + q_cols * (q_weight / n_qq.clamp_min(1.0))
        weights = weights * inverse_square  # the gauge moves normalised diagonal n by μ / |c_n|²
        if float(weights.sum()) > 0:
            shift = (weights * diagonal).sum() / weights.sum()
    eye = torch.eye(n_bands, n_cols, dtype=energies.dtype, device=energies.device)
    squares = ((a - eye * (energies + shift)[:, None, :]) / scale).abs().square() * MEV**2
    terms = {'pp': _block_mean(squares, p, p_cols), 'pq': _block_mean(squares, q, p_cols), 'shift': shift}
    if q_weight > 0:
        terms['qq'] = _block_mean(squares, q, q_cols)
    return terms


# ------------------------------------------------------------------------------------- combined
@dataclass
class LossConfig:
    """Weights of the loss terms (defaults: real-space L1 + MSE, gauge-aware, reciprocal term on).

    :param real_kind: ``'l1'``, ``'mse'`` or ``'both'``.
    :param l1_weight: weight of the real-space L1 term (meV).
    :param mse_weight: weight of the real-space MSE term (meV²).
    :param gauge: remove the optimal uniform shift μS in every term (see the module docstring).
    :param reciprocal_weight: overall weight of the reciprocal terms (0 switches them off; > 0 needs
        targets for every structure).
    :param p_weight: weight of |D_PP|² (occupied and near-gap bands).
    :param q_weight: weight of |D_QQ|² (remaining bands; usually small; 0 also skips its cost).
    :param pq_weight: weight of |D_PQ|² (the ghost-state suppressor).
    :param window_above_fermi: eV above E_F still in P; None uses the window the targets were built with.
    :param normalize_columns: divide the band terms by the coefficient norms of the eigenvectors
        (see :func:`reciprocal_terms`; on by default: labels in large Gaussian bases need it).
    """

    real_kind: Literal['l1', 'mse', 'both'] = 'both'
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    gauge: bool = True
    reciprocal_weight: float = 1.0
    p_weight: float = 1.0
    q_weight: float = 0.1
    pq_weight: float = 1.0
    window_above_fermi: float | None = None
    normalize_columns: bool = True

    def __post_init__(self):
        if self.real_kind not in ('l1', 'mse', 'both'):
            raise ValueError(f"real_kind must be 'l1', 'mse' or 'both', got {self.real_kind!r}")
        for name in ('l1_weight', 'mse_weight', 'reciprocal_weight', 'p_weight', 'q_weight', 'pq_weight'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be non-negative, got {getattr(self, name)}')


class HamiltonianLoss:
    """Loss of one structure: ``loss(h_pred, h_true, overlap, mask=..., reciprocal=...)``.

    Returns ``(total, terms)``: the differentiable 0-dim total and a dict of detached floats for
    logging (``total``, ``real_l1``, ``real_mse``, ``real_shift``, ``recip_pp``, ``recip_qq``,
    ``recip_pq``, ``recip_shift``; only those computed; shifts in eV).
    """

    def __init__(self, config: LossConfig | None = None):
        self.config = config or LossConfig()

    def __call__(
        self,
        h_pred: torch.Tensor,
        h_true: torch.Tensor,
        overlap: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        reciprocal: ReciprocalTensors | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """:param h_pred: (n_elements,) predicted full H (H0 + ΔH), eV, flat.
        :param h_true: (n_elements,) true H in the same layout.
        :param overlap: (n_elements,) S in the same layout (for the gauge).
        :param mask: (n_elements,) real-space mask or weights.
        :param reciprocal: targets of this structure (needed when ``reciprocal_weight > 0``).
        """
        cfg = self.config
        real = real_space_terms(h_pred, h_true, overlap, mask=mask, gauge=cfg.gauge)
        total = h_pred.real.new_zeros(())
        terms: dict[str, torch.Tensor] = {'real_shift': real['shift']}
        if cfg.real_kind in ('l1', 'both'):
            total = total + cfg.l1_weight * real['l1']
            terms['real_l1'] = real['l1']
        if cfg.real_kind in ('mse', 'both'):
            total = total + cfg.mse_weight * real['mse']
            terms['real_mse'] = real['mse']
        if cfg.reciprocal_weight > 0:
            if reciprocal is None:
                raise ValueError('reciprocal_weight > 0 needs the reciprocal targets of the structure')
            recip = reciprocal_terms(
                h_pred,
                reciprocal,
                p_weight=cfg.p_weight,
                q_weight=cfg.q_weight,
                gauge=cfg.gauge,
                window_above_fermi=cfg.window_above_fermi,
                normalize_columns=cfg.normalize_columns,
            )
            band = cfg.p_weight * recip['pp'] + cfg.pq_weight * recip['pq']
            if 'qq' in recip:
                band = band + cfg.q_weight * recip['qq']
            total = total + cfg.reciprocal_weight * band
            terms.update({f'recip_{key}': value for key, value in recip.items()})
        terms['total'] = total
        return total, {key: float(value.detach()) for key, value in terms.items()}
