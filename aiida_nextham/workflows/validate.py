"""Validation of predictions against references from any code: calcfunctions and ``NexthamValidateWorkChain``.

- :func:`validate_hamiltonian`: a predicted ``HamiltonianData`` against a reference one (DFT labels)
  with the benchmark's metrics (:func:`aiida_nextham.ml.evaluation.evaluate_pairs`): MAE of H raw and
  after the optimal uniform shift μS, on-/off-site, band error in a window, gap error, ghost bands.
- :func:`validate_bands`: a predicted ``BandsData`` against a reference ``BandsData`` made by any code
  (PySCF labels, a Quantum ESPRESSO ``PwBandsWorkChain``, ...). The k-points must be the same
  (Cartesian, within a tolerance); bands are aligned at the Fermi level or the valence-band maximum;
  the band numbering may differ (e.g. semicore states or more empty bands on one side): bands are
  paired counting from the alignment energy and only the reference bands inside the energy window
  are compared. Returns a ``Dict`` of metrics and a PNG overlay (``SinglefileData``).
- :class:`NexthamValidateWorkChain` (``nextham.validate``): any pair of the two types; the bands of a
  Hamiltonian are computed (``compute_bands``) at the k-points of the other side.

Exit codes (calcfunctions and work chain): 410 k-points differ, 411 structures/bases differ, 412 no
alignment energy (Fermi level or electron count missing), 413 unsupported bands (spin-polarised,
units), 414 nothing to compare, 420 (work chain) the band calculation of a Hamiltonian failed.
"""

from __future__ import annotations

import io

import numpy as np
from aiida import orm
from aiida.engine import ExitCode, WorkChain, calcfunction

from ..data.hamiltonian import HamiltonianData

__all__ = (
    'VALIDATION_PARAMETERS',
    'NexthamValidateWorkChain',
    'band_metrics',
    'validate_bands',
    'validate_hamiltonian',
)

EXIT_KPOINTS_MISMATCH = 410
EXIT_STRUCTURE_MISMATCH = 411
EXIT_NO_ALIGNMENT = 412
EXIT_UNSUPPORTED_BANDS = 413
EXIT_NOT_COMPARABLE = 414

#: keys of the ``parameters`` input (shared by both calcfunctions), with their meaning
VALIDATION_PARAMETERS: dict[str, str] = {
    'window': '[E_min, E_max], eV relative to the reference alignment energy (default [-2, 2]).',
    'align': "'auto' (VBM when both electron counts are known and both sides have a gap, else the Fermi "
    "level; default), 'vbm', 'fermi' or 'none' (bands): alignment of the predicted bands.",
    'ghost_tolerance': 'ghosts are predicted states in the window beyond the number of reference states in '
    'the window widened by this many eV (default 0.1).',
    'kpoints_tolerance': 'largest accepted difference of the k-points, Å⁻¹ with 2π (default 1e-4).',
    'kdensity': 'Hamiltonians: k-points per Å⁻¹ (no 2π) of the evaluation mesh (default 20).',
    'predicted_fermi_level': 'Fermi level of the predicted bands, eV (default: from predicted_parameters).',
    'reference_fermi_level': 'Fermi level of the reference bands, eV (default: from reference_parameters).',
    'predicted_n_electrons': 'valence electrons per cell of the predicted bands.',
    'reference_n_electrons': 'valence electrons per cell of the reference bands (semicore states included).',
    'spin_degeneracy': 'electrons per band (2 without spin-orbit coupling, default; 1 for spinors).',
    'plot': 'also return the PNG overlay of the bands (default True).',
    'ghost_filter': 'bands of a predicted Hamiltonian with the ghost filter at this S(k) threshold, '
    'in [0, 1) (as `nextham predict --ghost-filter`; needs its H0; default 0: off); reference bands '
    'are never filtered.',
}
ALIGNMENTS = ('auto', 'vbm', 'fermi', 'none')
#: keys of a results Dict (ours, compute_bands', Quantum ESPRESSO's) holding the Fermi level (eV)
FERMI_KEYS = ('fermi_level', 'fermi_energy')
#: ... and the number of valence electrons
ELECTRON_KEYS = ('n_electrons', 'number_of_electrons')


def _settings(parameters: orm.Dict | None) -> dict:
    settings = parameters.get_dict() if parameters is not None else {}
    unknown = sorted(set(settings) - set(VALIDATION_PARAMETERS))
    if unknown:
        raise ValueError(f'unknown parameters {unknown}; accepted: {sorted(VALIDATION_PARAMETERS)}')
    window = settings.get('window', [-2.0, 2.0])
    if len(window) != 2 or not float(window[1]) > float(window[0]):
        raise ValueError(f'window must be [E_min, E_max] with E_max > E_min, got {window}')
    settings['window'] = (float(window[0]), float(window[1]))
    if settings.get('align', 'auto') not in ALIGNMENTS:
        raise ValueError(f'align must be one of {ALIGNMENTS}, got {settings["align"]!r}')
    ghost_filter = settings.get('ghost_filter', 0.0)
    if (
        isinstance(ghost_filter, bool)
        or not isinstance(ghost_filter, int | float)
        or not 0 <= ghost_filter < 1
    ):
        raise ValueError(f'ghost_filter must be a number in [0, 1), got {ghost_filter!r}')
    return settings


def _validate_parameters(value: orm.Dict | None, _=None) -> str | None:
    try:
        _settings(value)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


# ------------------------------------------------------------------------------------ Hamiltonians
@calcfunction
def validate_hamiltonian(
    predicted: HamiltonianData, reference: HamiltonianData, parameters: orm.Dict | None = None
) -> orm.Dict:
    """Benchmark metrics of a predicted block Hamiltonian against a reference (meV; gaps in eV).

    The Hamiltonians must describe the same structure in the same basis. Predicted blocks the
    reference does not store (a longer cutoff) are left out and counted (``n_pairs_dropped``).
    """
    from ..hamiltonian.block import HamiltonianError
    from ..ml.evaluation import evaluate_pairs
    from ..ml.metrics import hamiltonian_mae

    settings = _settings(parameters)
    pred, ref = predicted.get_block_hamiltonian(), reference.get_block_hamiltonian()
    same = (
        pred.n_atoms == ref.n_atoms
        and np.array_equal(pred.numbers, ref.numbers)
        and np.allclose(pred.lattice, ref.lattice, atol=1e-4)
        and np.allclose(pred.positions, ref.positions, atol=1e-4)
    )
    if not same:
        return ExitCode(
            EXIT_STRUCTURE_MISMATCH, 'the predicted and reference Hamiltonians describe different cells'
        )
    if pred.spin != ref.spin or not np.array_equal(pred.orbital_counts, ref.orbital_counts):
        return ExitCode(
            EXIT_STRUCTURE_MISMATCH,
            f'different bases or spin treatments: {pred.basis.name} ({pred.spin}) '
            f'vs {ref.basis.name} ({ref.spin})',
        )
    n_electrons = ref.n_electrons if ref.n_electrons is not None else pred.n_electrons
    if n_electrons is None:
        return ExitCode(EXIT_NO_ALIGNMENT, 'neither Hamiltonian records its electron count')
    index = ref.pair_index
    keep = np.array([tuple(int(x) for x in row) in index for row in pred.pairs], dtype=bool)
    if not keep.any():
        return ExitCode(EXIT_NOT_COMPARABLE, 'the Hamiltonians share no block')
    dropped = int((~keep).sum())
    if dropped:
        pred = pred.select_pairs(np.flatnonzero(keep))
    ref = ref.replace(n_electrons=n_electrons)
    try:
        (row,) = evaluate_pairs(
            [(pred, ref)],
            window=settings['window'],
            kdensity=float(settings.get('kdensity', 20.0)),
            ghost_tolerance=float(settings.get('ghost_tolerance', 0.1)),
            ghost_filter=float(settings.get('ghost_filter', 0.0)) or None,
        )
        by_pair = hamiltonian_mae(pred, ref)['by_pair']
    except (HamiltonianError, ValueError) as exc:
        return ExitCode(EXIT_NOT_COMPARABLE, f'{type(exc).__name__}: {exc}')
    return orm.Dict(
        _json(
            {
                **row,
                'mae_by_pair_shifted': by_pair,
                'n_pairs_compared': int(pred.n_pairs),
                'n_pairs_dropped': dropped,
                'window': list(settings['window']),
                'units': {
                    'mae': 'meV',
                    'band': 'meV',
                    'gap_error': 'meV',
                    'gap_true_eV': 'eV',
                    'shift_eV': 'eV',
                },
            }
        )
    )


# ------------------------------------------------------------------------------------------- bands
class _Refusal(Exception):
    """A named reason why two band structures cannot be compared (becomes an exit code)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _kpoints_cartesian(bands: orm.BandsData) -> tuple[np.ndarray, bool]:
    """k-points in Å⁻¹ (2π included) when the cell is known, else fractional; and which of the two."""
    kpoints = np.asarray(bands.get_kpoints(), dtype=np.float64).reshape(-1, 3)
    try:
        cell = bands.cell
    except AttributeError:
        cell = None
    if cell is None:
        return kpoints, False
    return kpoints @ (2 * np.pi * np.linalg.inv(np.asarray(cell, dtype=np.float64)).T), True


def _energies(bands: orm.BandsData, side: str) -> np.ndarray:
    energies = np.asarray(bands.get_bands(), dtype=np.float64)
    units = bands.base.attributes.get('units', None)
    if units not in (None, 'eV'):
        raise _Refusal(EXIT_UNSUPPORTED_BANDS, f'the {side} bands are in {units!r}, not eV')
    if energies.ndim != 2:
        raise _Refusal(
            EXIT_UNSUPPORTED_BANDS,
            f'the {side} bands have shape {energies.shape}: spin-polarised bands are not supported',
        )
    return energies


def _side_value(settings: dict, data: dict, bands: orm.BandsData, side: str, keys, name: str):
    if settings.get(f'{side}_{name}') is not None:
        return float(settings[f'{side}_{name}'])
    for key in keys:
        if data.get(key) is not None:
            return float(data[key])
    if name == 'fermi_level' and bands.base.attributes.get('fermi_level', None) is not None:
        return float(bands.base.attributes.get('fermi_level'))
    return None


def _gap(energies: np.ndarray, n_electrons: float | None, degeneracy: int) -> dict | None:
    from ..hamiltonian.spectra import band_gap

    if n_electrons is None:
        return None
    try:
        return band_gap(energies, n_electrons, degeneracy)
    except ValueError:
        return None


def band_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    window: tuple[float, float] = (-2.0, 2.0),
    align: str = 'auto',
    fermi: tuple[float | None, float | None] = (None, None),
    n_electrons: tuple[float | None, float | None] = (None, None),
    ghost_tolerance: float = 0.1,
    spin_degeneracy: int = 2,
) -> dict:
    """Metrics of predicted against reference band energies at the same k-points (numpy; eV in, meV out).

    :param pred, ref: (nk, nb) band energies, eV; the numbers of bands may differ.
    :param fermi: (predicted, reference) Fermi levels, eV (None: from the electron count on these
        k-points when ``'fermi'`` alignment needs them).
    :param n_electrons: (predicted, reference) valence electrons per cell.
    :raises _Refusal: when the alignment energy cannot be determined or nothing lies in the window.
    """
    from ..hamiltonian.spectra import fermi_level
    from ..ml.metrics import ghost_bands

    gaps = [_gap(e, n, spin_degeneracy) for e, n in zip((pred, ref), n_electrons, strict=True)]
    insulating = all(g is not None and not g['is_metal'] and g['vbm'] is not None for g in gaps)
    used = ('vbm' if insulating else 'fermi') if align == 'auto' else align
    fermi = list(fermi)
    for k, (energies, count) in enumerate(zip((pred, ref), n_electrons, strict=True)):
        if fermi[k] is None and count is not None:
            weights = np.full(len(energies), 1.0 / len(energies))
            fermi[k] = float(
                fermi_level(energies, weights, count, smearing=None, spin_degeneracy=spin_degeneracy)
            )
    if used == 'vbm':
        if not insulating:
            raise _Refusal(
                EXIT_NO_ALIGNMENT, 'VBM alignment needs both electron counts and a gap on both sides'
            )
        e_pred, e_ref = gaps[0]['vbm'], gaps[1]['vbm']
    elif used == 'fermi':
        if None in fermi:
            side = 'predicted' if fermi[0] is None else 'reference'
            raise _Refusal(EXIT_NO_ALIGNMENT, f'no Fermi level or electron count of the {side} bands')
        e_pred, e_ref = fermi
    else:  # 'none': absolute energies, window around the reference's Fermi level (else its VBM)
        e_ref = fermi[1] if fermi[1] is not None else (gaps[1] or {}).get('vbm')
        if e_ref is None:
            raise _Refusal(EXIT_NO_ALIGNMENT, 'no Fermi level or electron count of the reference bands')
        e_pred = e_ref
    shift = float(e_pred - e_ref)
    aligned = pred - shift

    # band pairing: count from the alignment energy (the numbering may differ, e.g. semicore states)
    if None not in n_electrons:
        offset = int(round(n_electrons[0] / spin_degeneracy)) - int(round(n_electrons[1] / spin_degeneracy))
    else:
        below = (aligned < e_ref).sum(axis=1) - (ref < e_ref).sum(axis=1)
        offset = int(np.round(np.median(below)))
    low, high = e_ref + window[0], e_ref + window[1]
    inside = (ref >= low) & (ref <= high)
    k_index, b_index = np.nonzero(inside)
    partner = b_index + offset
    matched = (partner >= 0) & (partner < pred.shape[1])
    difference = 1000.0 * np.abs(
        aligned[k_index[matched], partner[matched]] - ref[k_index[matched], b_index[matched]]
    )
    if not difference.size:
        raise _Refusal(EXIT_NOT_COMPARABLE, f'no pair of bands in the window [{low:.3f}, {high:.3f}] eV')
    # ghosts only where the reference has bands: its top band bounds the window
    ghost_high = min(high, float(ref[:, -1].min()))
    ghosts = ghost_bands(aligned, ref, (low, ghost_high), ghost_tolerance)
    gap_pred, gap_ref = ((g or {}).get('gap') for g in gaps)
    return {
        'alignment': used,
        'alignment_energy_predicted': float(e_pred),
        'alignment_energy_reference': float(e_ref),
        'shift': shift,
        'fermi_level_predicted': fermi[0],
        'fermi_level_reference': fermi[1],
        'window': list(window),
        'window_absolute': [low, high],
        'ghost_window_absolute': [low, ghost_high],
        'band_index_offset': offset,
        'band_mae': float(difference.mean()),
        'band_max': float(difference.max()),
        'n_values': int(difference.size),
        'n_unmatched': int((~matched).sum()),
        'gap_predicted': gap_pred,
        'gap_reference': gap_ref,
        'gap_error': None if gap_pred is None or gap_ref is None else 1000.0 * abs(gap_pred - gap_ref),
        'ghost_bands': int(ghosts['count']),
        'ghost_bands_distinct': len({band for _, band, _ in ghosts['where']}),
        'ghost_kpoints': int(ghosts['n_kpoints_affected']),
        'ghost_tolerance': float(ghost_tolerance),
        'n_kpoints': int(len(ref)),
        'n_bands_predicted': int(pred.shape[1]),
        'n_bands_reference': int(ref.shape[1]),
    }


def _path_axis(bands: orm.BandsData) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Abscissa of the k-points (cumulative |Δk|, breaks at consecutive labels) and the label ticks."""
    kpoints, _ = _kpoints_cartesian(bands)
    steps = np.linalg.norm(np.diff(kpoints, axis=0), axis=1)
    labels = sorted((int(i), str(label)) for i, label in (bands.labels or []))
    indices = [i for i, _ in labels]
    for a, b in zip(indices[:-1], indices[1:], strict=True):
        if b == a + 1:
            steps[a] = 0.0
    x = np.concatenate([[0.0], np.cumsum(steps)])
    ticks: dict[float, list[str]] = {}
    for i, label in labels:
        name = 'Γ' if label.upper() in ('G', 'GAMMA') else label
        names = ticks.setdefault(round(float(x[i]), 8), [])
        if name not in names:
            names.append(name)
    return x, [(position, '|'.join(names)) for position, names in ticks.items()]


def _overlay_png(reference: orm.BandsData, e_pred: np.ndarray, e_ref: np.ndarray, metrics: dict) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, ticks = _path_axis(reference)
    zero = metrics['alignment_energy_reference']
    low, high = metrics['window']
    figure = Figure(figsize=(6.0, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.axhspan(low, high, color='0.93', zorder=0)
    for n in range(e_ref.shape[1]):
        axes.plot(x, e_ref[:, n] - zero, color='k', lw=1.2, label='reference' if n == 0 else None)
    shifted = e_pred - metrics['shift'] - zero
    for n in range(shifted.shape[1]):
        axes.plot(x, shifted[:, n], color='tab:red', lw=1.0, ls='--', label='predicted' if n == 0 else None)
    axes.axhline(0.0, color='0.5', lw=0.6)
    for position, _ in ticks:
        axes.axvline(position, color='0.7', lw=0.5)
    axes.set_xticks([p for p, _ in ticks], [name for _, name in ticks])
    axes.set_xlim(x[0], x[-1])
    axes.set_ylim(low - 1.5, high + 1.5)
    axes.set_ylabel(f'E − E_{metrics["alignment"]} (eV)')
    axes.set_title(
        f'band MAE {metrics["band_mae"]:.1f} meV (window {low:g}..{high:g} eV), '
        f'ghosts {metrics["ghost_bands"]}',
        fontsize=9,
    )
    axes.legend(loc='upper right', fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=110)
    return buffer.getvalue()


@calcfunction
def validate_bands(
    predicted: orm.BandsData,
    reference: orm.BandsData,
    parameters: orm.Dict | None = None,
    predicted_parameters: orm.Dict | None = None,
    reference_parameters: orm.Dict | None = None,
) -> dict:
    """Compare a predicted band structure with a reference one at the same k-points.

    :param parameters: see ``VALIDATION_PARAMETERS`` (window, align, tolerances, explicit Fermi levels
        and electron counts).
    :param predicted_parameters, reference_parameters: results Dicts of the codes that made the bands
        (``fermi_level``/``fermi_energy`` in eV, ``n_electrons``/``number_of_electrons``), e.g. the
        ``results`` of a NexthamPredictCalculation, the ``output_parameters`` of ``compute_bands`` or
        of a Quantum ESPRESSO calculation.
    :returns: ``metrics`` (Dict: MAE and max in the window, meV; gap error, meV; ghost bands; the
        alignment used) and ``plot`` (SinglefileData, PNG overlay) unless ``parameters['plot']`` is false.
    """
    settings = _settings(parameters)
    try:
        e_pred, e_ref = _energies(predicted, 'predicted'), _energies(reference, 'reference')
        k_pred, cartesian_pred = _kpoints_cartesian(predicted)
        k_ref, cartesian_ref = _kpoints_cartesian(reference)
        if len(k_pred) != len(k_ref):
            raise _Refusal(
                EXIT_KPOINTS_MISMATCH,
                f'the predicted bands have {len(k_pred)} k-points, the reference bands {len(k_ref)}',
            )
        if cartesian_pred != cartesian_ref:  # one side without a cell: compare fractional coordinates
            k_pred = np.asarray(predicted.get_kpoints()).reshape(-1, 3)
            k_ref = np.asarray(reference.get_kpoints()).reshape(-1, 3)
        deviation = float(np.abs(k_pred - k_ref).max())
        tolerance = float(settings.get('kpoints_tolerance', 1e-4))
        if deviation > tolerance:
            worst = int(np.abs(k_pred - k_ref).max(axis=1).argmax())
            raise _Refusal(
                EXIT_KPOINTS_MISMATCH,
                f'the k-points differ by up to {deviation:.3g} (tolerance {tolerance:g}, '
                f'first at k-point {worst}): '
                'compute both band structures on the same path',
            )
        data = [p.get_dict() if p is not None else {} for p in (predicted_parameters, reference_parameters)]
        sides = (('predicted', predicted, data[0]), ('reference', reference, data[1]))
        fermi = tuple(_side_value(settings, d, b, s, FERMI_KEYS, 'fermi_level') for s, b, d in sides)
        counts = tuple(_side_value(settings, d, b, s, ELECTRON_KEYS, 'n_electrons') for s, b, d in sides)
        metrics = band_metrics(
            e_pred,
            e_ref,
            window=settings['window'],
            align=settings.get('align', 'auto'),
            fermi=fermi,
            n_electrons=counts,
            ghost_tolerance=float(settings.get('ghost_tolerance', 0.1)),
            spin_degeneracy=int(settings.get('spin_degeneracy', 2)),
        )
    except _Refusal as refusal:
        return ExitCode(refusal.status, str(refusal))
    metrics.update(
        kpoints_max_deviation=deviation,
        kpoints_compared='cartesian' if cartesian_pred and cartesian_ref else 'fractional',
        units={'energies': 'eV', 'band_mae': 'meV', 'band_max': 'meV', 'gap_error': 'meV', 'kpoints': '1/Å'},
    )
    results = {'metrics': orm.Dict(_json(metrics))}
    if settings.get('plot', True):
        png = _overlay_png(reference, e_pred, e_ref, metrics)
        results['plot'] = orm.SinglefileData(io.BytesIO(png), filename='bands_overlay.png')
    return results


# ------------------------------------------------------------------------------------- work chain
class NexthamValidateWorkChain(WorkChain):
    """Validate a prediction (HamiltonianData or BandsData) against a reference of either type."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'predicted',
            valid_type=(HamiltonianData, orm.BandsData),
            help='The prediction: a HamiltonianData or a BandsData.',
        )
        spec.input(
            'reference',
            valid_type=(HamiltonianData, orm.BandsData),
            help='The reference: DFT labels (HamiltonianData) or a BandsData from any code.',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            validator=_validate_parameters,
            help='Validation settings: ' + '; '.join(f'{k}: {v}' for k, v in VALIDATION_PARAMETERS.items()),
        )
        spec.input(
            'predicted_parameters',
            valid_type=orm.Dict,
            required=False,
            help='Results Dict of the prediction (Fermi level, electron count) for a `predicted` BandsData.',
        )
        spec.input(
            'reference_parameters',
            valid_type=orm.Dict,
            required=False,
            help='Results Dict of the reference code (e.g. Quantum ESPRESSO output_parameters) when '
            '`reference` is a BandsData.',
        )
        spec.input(
            'kpoints',
            valid_type=orm.KpointsData,
            required=False,
            help='Band path for comparing two Hamiltonians by their bands too (explicit, in their cell).',
        )
        spec.outline(cls.setup, cls.compare_hamiltonians, cls.compute_bands, cls.compare_bands)
        spec.output('hamiltonian_metrics', valid_type=orm.Dict, required=False, help='validate_hamiltonian.')
        spec.output('band_metrics', valid_type=orm.Dict, required=False, help='validate_bands metrics.')
        spec.output('plot', valid_type=orm.SinglefileData, required=False, help='PNG overlay of the bands.')
        spec.output('predicted_bands', valid_type=orm.BandsData, required=False, help='Bands of `predicted`.')
        spec.output('reference_bands', valid_type=orm.BandsData, required=False, help='Bands of `reference`.')
        spec.exit_code(410, 'ERROR_KPOINTS_MISMATCH', message='the k-points differ: {message}')
        spec.exit_code(411, 'ERROR_STRUCTURE_MISMATCH', message='different structures or bases: {message}')
        spec.exit_code(412, 'ERROR_NO_ALIGNMENT', message='cannot align the bands: {message}')
        spec.exit_code(413, 'ERROR_UNSUPPORTED_BANDS', message='unsupported band structure: {message}')
        spec.exit_code(414, 'ERROR_NOT_COMPARABLE', message='nothing to compare: {message}')
        spec.exit_code(420, 'ERROR_BANDS_FAILED', message='the bands of a Hamiltonian failed: {message}')

    def setup(self):
        self.ctx.bands = {}
        self.ctx.parameters = {}
        parameters = self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}
        self.ctx.ghost_filter = float(parameters.get('ghost_filter', 0.0))
        for side in ('predicted', 'reference'):
            node = self.inputs[side]
            if isinstance(node, orm.BandsData):
                self.ctx.bands[side] = node
                if f'{side}_parameters' in self.inputs:
                    self.ctx.parameters[side] = self.inputs[f'{side}_parameters']

    def _exit(self, node, default_status: int = EXIT_NOT_COMPARABLE):
        """The work chain's exit code for a failed calcfunction ``node``."""
        labels = {
            EXIT_KPOINTS_MISMATCH: 'ERROR_KPOINTS_MISMATCH',
            EXIT_STRUCTURE_MISMATCH: 'ERROR_STRUCTURE_MISMATCH',
            EXIT_NO_ALIGNMENT: 'ERROR_NO_ALIGNMENT',
            EXIT_UNSUPPORTED_BANDS: 'ERROR_UNSUPPORTED_BANDS',
            EXIT_NOT_COMPARABLE: 'ERROR_NOT_COMPARABLE',
        }
        label = labels.get(node.exit_status, labels[default_status])
        message = node.exit_message or f'{node.process_label}<{node.pk}> failed ({node.process_state})'
        self.report(f'{node.process_label}<{node.pk}>: {message}')
        return getattr(self.exit_codes, label).format(message=message)

    def compare_hamiltonians(self):
        if not all(isinstance(self.inputs[side], HamiltonianData) for side in ('predicted', 'reference')):
            return None
        kwargs = {'parameters': self.inputs.parameters} if 'parameters' in self.inputs else {}
        results, node = validate_hamiltonian.run_get_node(
            self.inputs.predicted, self.inputs.reference, **kwargs
        )
        if not node.is_finished_ok:
            return self._exit(node)
        self.out('hamiltonian_metrics', results)
        return None

    def compute_bands(self):
        """Bands of a Hamiltonian side at the k-points of the BandsData side (or of ``kpoints``)."""
        from ..calculations.functions import compute_bands

        if len(self.ctx.bands) == 2:
            return None
        if not self.ctx.bands:  # two Hamiltonians: bands only along an explicit path
            if 'kpoints' not in self.inputs:
                return None
            kpoints = self.inputs.kpoints
        else:
            kpoints = next(iter(self.ctx.bands.values()))
        for side in ('predicted', 'reference'):
            if side in self.ctx.bands:
                continue
            hamiltonian = self.inputs[side]
            lattice = hamiltonian.get_structure_arrays()[0]
            try:
                cell = np.asarray(kpoints.cell, dtype=np.float64)
            except AttributeError:
                cell = None
            if cell is None or not np.allclose(cell, lattice, atol=1e-4):
                return self.exit_codes.ERROR_KPOINTS_MISMATCH.format(
                    message=f'the k-points are not given in the cell of the {side} Hamiltonian (its lattice '
                    f'{np.round(lattice, 4).tolist()}); predict on the structure of the reference calculation'
                )
            extra = {}
            if side == 'predicted' and self.ctx.ghost_filter:
                extra['parameters'] = orm.Dict({'ghost_filter': self.ctx.ghost_filter})
            results, node = compute_bands.run_get_node(hamiltonian=hamiltonian, kpoints=kpoints, **extra)
            if not node.is_finished_ok:
                self.report(f'compute_bands<{node.pk}> failed: {node.exit_message}')
                return self.exit_codes.ERROR_BANDS_FAILED.format(
                    message=node.exit_message or 'see the report'
                )
            self.ctx.bands[side] = results['bands']
            self.ctx.parameters[side] = results['output_parameters']
            self.out(f'{side}_bands', results['bands'])
        return None

    def compare_bands(self):
        if len(self.ctx.bands) != 2:
            return None
        kwargs = {'parameters': self.inputs.parameters} if 'parameters' in self.inputs else {}
        for side in ('predicted', 'reference'):
            if side in self.ctx.parameters:
                kwargs[f'{side}_parameters'] = self.ctx.parameters[side]
        results, node = validate_bands.run_get_node(
            predicted=self.ctx.bands['predicted'], reference=self.ctx.bands['reference'], **kwargs
        )
        if not node.is_finished_ok:
            return self._exit(node)
        self.out('band_metrics', results['metrics'])
        if 'plot' in results:
            self.out('plot', results['plot'])
        return None
