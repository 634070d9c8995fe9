"""``NexthamArpesFitWorkChain``: tight-binding parameters from ARPES data with model selection.

One :class:`~aiida_nextham.calculations.arpes_fit.NexthamArpesFitCalculation` per candidate model runs the
engine's multi-start fit (random starts within the model's physical bounds, seeded, INR surrogate or
EDC/MDC baseline) on the same data with the same settings; a candidate whose fit fails with a
non-finite loss or an unclassified engine error is refitted once with other starts (another seed).
The candidates are then ranked by the Bayesian information criterion (``select_arpes_model``), which
penalises free parameters, and the best one's parameters, bands and plot become the outputs.

Candidates (``models``): registry names (``'nickelate-eg'``) or ``{'model', 'label', 'fixed', 'init'}``
objects, e.g. ``{'model': 'nickelate-eg', 'label': 'eg_tp', 'fixed': {'extra': ['tp']}}``; labels (default:
the name with ``-`` → ``_``) must be unique identifiers. A ``hamiltonian`` input adds the candidate
``hamiltonian`` (the model seeded by that Hamiltonian) unless it is listed already.
"""

from __future__ import annotations

import math
import re

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import WorkChain, calcfunction, while_

from ..calculations.arpes_fit import (
    HAMILTONIAN_MODEL,
    NexthamArpesFitCalculation,
    validate_arpes_fit_parameters,
)
from ..data.arpes import ArpesData
from ..data.hamiltonian import HamiltonianData

__all__ = ('CRITERIA', 'NexthamArpesFitWorkChain', 'information_criteria', 'select_arpes_model')

#: ranking criteria of the candidates
CRITERIA = ('bic', 'aic', 'loss')
#: keys of a candidate object in ``models``
_CANDIDATE_KEYS = ('model', 'label', 'fixed', 'init')
#: per-candidate keys that are not common fit settings
_PER_CANDIDATE = ('model', 'fixed', 'init')
#: input names of ``select_arpes_model`` that candidate labels must not take
_RESERVED = ('criterion', 'candidates')
#: exit statuses of the calculation after which the candidate is refitted with another seed
RETRY_STATUSES = (
    NexthamArpesFitCalculation.exit_codes.ERROR_FIT_FAILED.status,
    NexthamArpesFitCalculation.exit_codes.ERROR_ENGINE_FAILED.status,
)
#: seed offset of a refit
_RETRY_SEED_OFFSET = 1000
_LABEL = re.compile(r'^[A-Za-z_]\w*$')


def _default_label(model: str) -> str:
    return re.sub(r'\W', '_', model)


def candidate_list(models: list, with_hamiltonian: bool) -> list[dict]:
    """``models`` items as ``{'model', 'label', 'fixed', 'init'}`` (``hamiltonian`` appended if needed)."""
    out = []
    for item in models:
        item = {'model': item} if isinstance(item, str) else dict(item)
        item.setdefault('label', _default_label(item['model']))
        item.setdefault('fixed', {})
        item.setdefault('init', {})
        out.append(item)
    if with_hamiltonian and not any(c['model'] == HAMILTONIAN_MODEL for c in out):
        out.append({'model': HAMILTONIAN_MODEL, 'label': HAMILTONIAN_MODEL, 'fixed': {}, 'init': {}})
    return out


def _validate_models(value: orm.List | None, _=None) -> str | None:
    """Port validator of ``models``: the structure of each candidate and unique identifier labels."""
    if value is None:
        return None
    models = value.get_list()
    if not models:
        return 'models: give at least one candidate model'
    for item in models:
        if isinstance(item, str):
            if not item.strip():
                return 'models: an empty model name'
            continue
        if not isinstance(item, dict):
            return f'models: each candidate is a model name or a dictionary, got {item!r}'
        unknown = sorted(set(item) - set(_CANDIDATE_KEYS))
        if unknown:
            return f'models: unknown key(s) {unknown} in {item}; accepted: {list(_CANDIDATE_KEYS)}'
        if not isinstance(item.get('model'), str) or not item['model'].strip():
            return f'models: the candidate {item} does not name its model'
        for key in ('fixed', 'init'):
            if not isinstance(item.get(key, {}), dict):
                return f'models: {key} of {item["model"]} must be a dictionary, got {item[key]!r}'
    labels = [c['label'] for c in candidate_list(models, False)]
    bad = [label for label in labels if not isinstance(label, str) or not _LABEL.match(label)]
    if bad:
        return f'models: labels must be identifiers (letters, digits, _), got {bad}'
    reserved = sorted(set(labels) & set(_RESERVED))
    if reserved:
        return f'models: the label(s) {reserved} are reserved; choose others'
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        return f'models: the label(s) {duplicates} are used twice; give each candidate its own label'
    return None


def _validate_parameters(value: orm.Dict | None, _=None) -> str | None:
    """Port validator of ``parameters``: the calculation's settings except the per-candidate ones."""
    if value is None:
        return None
    parameters = value.get_dict()
    per_candidate = sorted(set(parameters) & set(_PER_CANDIDATE))
    if per_candidate:
        return f'parameters: {per_candidate} are set per candidate in `models`, not here'
    return validate_arpes_fit_parameters(orm.Dict({**parameters, 'model': 'any'}))


def _validate_criterion(value: orm.Str | None, _=None) -> str | None:
    if value is not None and value.value not in CRITERIA:
        return f'criterion must be one of {CRITERIA}, got {value.value!r}'
    return None


def _validate_inputs(inputs: dict, _=None) -> str | None:
    """The model ``hamiltonian`` needs a Hamiltonian."""
    models = inputs.get('models')
    if models is None or _validate_models(models):
        return None
    wanted = any(c['model'] == HAMILTONIAN_MODEL for c in candidate_list(models.get_list(), False))
    if wanted and 'hamiltonian' not in inputs:
        return (
            'the candidate model hamiltonian needs the `hamiltonian` input (the HamiltonianData seeding it)'
        )
    return None


def information_criteria(result: dict) -> dict:
    """−2 ln L (up to a constant common to all models of the same data), the number of fitted parameters
    k, the number of data n, BIC = −2 ln L + k ln n and AIC = −2 ln L + 2k, from a fit's output parameters.

    Exact INR refinement: Poisson counts, −2 ln L = the total deviance (``loss`` is per point); Gaussian
    data, −2 ln L = n ln(SSE) + const with SSE ∝ ``loss``. Baseline: the peak residuals as Gaussian,
    −2 ln L = n ln(2 cost / n) with n the number of peaks (approximate: the cost is soft-L1).
    k counts the tight-binding and the fitted nuisance (broadening) parameters.
    """
    metrics = result.get('metrics') or {}
    loss = result.get('loss')
    k = len(result.get('parameters') or {}) + len(result.get('nuisance') or {})
    if result.get('method') == 'baseline':
        n = int(metrics.get('n_peaks') or 0)
        likelihood = 'peaks'
    else:
        n = int(metrics.get('n_points') or 0)
        likelihood = metrics.get('likelihood', 'gaussian')
    out = {'n_data': n, 'n_fitted': k, 'likelihood': likelihood}
    if loss is None or not math.isfinite(loss) or n <= 0 or (likelihood != 'poisson' and loss <= 0):
        return {**out, 'minus2_log_likelihood': None, 'bic': None, 'aic': None}
    if likelihood == 'poisson':
        m2ll = loss * n
    elif likelihood == 'peaks':
        m2ll = n * math.log(2 * loss / n)
    else:
        m2ll = n * math.log(loss)
    return {**out, 'minus2_log_likelihood': m2ll, 'bic': m2ll + k * math.log(n), 'aic': m2ll + 2 * k}


@calcfunction
def select_arpes_model(criterion: orm.Str, candidates: orm.Dict, **fits: orm.Dict) -> orm.Dict:
    """Rank the candidates' fits (``fits``: output parameters by label) by ``criterion`` (see
    :func:`information_criteria`); ``candidates`` holds every candidate's model, constructor arguments,
    exit status and message (failed ones included, unranked)."""
    name = criterion.value
    table = {}
    for label, info in candidates.get_dict().items():
        row = {**info, 'selected': False}
        if label in fits:
            result = fits[label].get_dict()
            row.update(
                loss=result.get('loss'),
                n_params=len(result.get('parameters') or {}),
                parameters=result.get('parameters'),
                uncertainties=result.get('uncertainties'),
                **information_criteria(result),
            )
        table[label] = row
    ranked = [label for label, row in table.items() if label in fits and row.get(name) is not None]
    ranked.sort(key=lambda label: table[label][name])
    if ranked:
        best = table[ranked[0]][name]
        table[ranked[0]]['selected'] = True
        for label in ranked:
            table[label][f'delta_{name}'] = table[label][name] - best
    return orm.Dict(
        {
            'criterion': name,
            'selected': ranked[0] if ranked else None,
            'ranking': ranked,
            'candidates': table,
            'units': {'energy': 'eV', 'criteria': 'dimensionless (−2 ln L + penalty)'},
        }
    )


class NexthamArpesFitWorkChain(WorkChain):
    """Fit several candidate tight-binding models to ARPES data and select the best by BIC."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(
            NexthamArpesFitCalculation,
            namespace='fit',
            exclude=('data', 'parameters', 'hamiltonian'),
            namespace_options={'help': 'Inputs of every NexthamArpesFitCalculation: code, metadata.options.'},
        )
        spec.inputs['fit'].validator = None
        spec.input('data', valid_type=ArpesData, help='The ARPES data (an ArpesData with an eV dimension).')
        spec.input(
            'models',
            valid_type=orm.List,
            validator=_validate_models,
            help="Candidate models: names ('nickelate-eg') or {'model', 'label', 'fixed', 'init'} objects; "
            "'hamiltonian' is the model seeded by the `hamiltonian` input.",
        )
        spec.input(
            'hamiltonian',
            valid_type=HamiltonianData,
            required=False,
            help="A DFT or predicted Hamiltonian: adds the candidate 'hamiltonian' (its on-site energies, "
            'hopping scales and μ fitted) unless listed already.',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            validator=_validate_parameters,
            help='Fit settings common to all candidates (as NexthamArpesFitCalculation parameters: method, '
            'starts, seed, fraction, emin, refine, gamma0, work_function, surrogate_steps, search_steps, '
            'plot; model, fixed and init are per candidate).',
        )
        spec.input(
            'criterion',
            valid_type=orm.Str,
            default=lambda: orm.Str('bic'),
            validator=_validate_criterion,
            help="Ranking of the candidates: 'bic' (default), 'aic' or 'loss' (no penalty).",
        )
        spec.input(
            'max_retries',
            valid_type=orm.Int,
            default=lambda: orm.Int(1),
            help='Refits, with another seed, of a candidate whose fit ended with a non-finite loss or an '
            'unclassified engine error.',
        )
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.setup,
            cls.check_models,
            while_(cls.should_fit)(cls.run_fits, cls.inspect_fits),
            cls.select,
            cls.results,
        )
        spec.output(
            'parameters',
            valid_type=orm.Dict,
            help="The selected candidate's fitted parameters with uncertainties, loss, metrics, model spec "
            '(the output_parameters of its calculation).',
        )
        spec.output('bands', valid_type=orm.BandsData, required=False, help='Bands of the selected fit.')
        spec.output('plot', valid_type=orm.SinglefileData, required=False, help='PNG of the selected fit.')
        spec.output(
            'model_selection',
            valid_type=orm.Dict,
            help='Per candidate: model, exit status, loss, n_params, n_fitted, −2 ln L, BIC, AIC, delta to '
            'the best; the criterion, ranking and selected label.',
        )
        spec.output_namespace(
            'candidates',
            valid_type=orm.Dict,
            dynamic=True,
            required=False,
            help='output_parameters of every successful candidate, by label.',
        )
        spec.default_output_node = 'parameters'
        spec.exit_code(401, 'ERROR_UNKNOWN_MODEL', message='unknown tight-binding model(s): {message}')
        spec.exit_code(410, 'ERROR_ALL_FITS_FAILED', message='all {n} candidate fits failed: {message}')
        spec.exit_code(
            411, 'ERROR_SELECTION_FAILED', message='no candidate could be ranked by {criterion}: {message}'
        )

    # ------------------------------------------------------------------------------------ outline
    def setup(self):
        self.ctx.candidates = candidate_list(self.inputs.models.get_list(), 'hamiltonian' in self.inputs)
        self.ctx.attempts = {c['label']: 0 for c in self.ctx.candidates}
        self.ctx.pending = [c['label'] for c in self.ctx.candidates]
        self.ctx.calculations = {}  # label -> pk of the last calculation
        self.ctx.succeeded = []

    def check_models(self):
        """Model names against the registry (before any job)."""
        from ..arpes.tightbinding import FILE_MODELS, MODELS

        known = {*MODELS, *FILE_MODELS}
        unknown = sorted({c['model'] for c in self.ctx.candidates} - known)
        if unknown:
            message = f'{unknown}; known: {sorted(known)}'
            self.report(f'refused before any job: unknown model(s) {message}')
            return self.exit_codes.ERROR_UNKNOWN_MODEL.format(message=message)
        return None

    def should_fit(self) -> bool:
        return bool(self.ctx.pending)

    def run_fits(self):
        common = self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}
        by_label = {c['label']: c for c in self.ctx.candidates}
        for label in self.ctx.pending:
            candidate = by_label[label]
            attempt = self.ctx.attempts[label]
            parameters = {**common, 'model': candidate['model']}
            if candidate['fixed']:
                parameters['fixed'] = candidate['fixed']
            if candidate['init']:
                parameters['init'] = candidate['init']
            if attempt:
                parameters['seed'] = int(common.get('seed', 0)) + _RETRY_SEED_OFFSET * attempt
            inputs = AttributeDict(self.exposed_inputs(NexthamArpesFitCalculation, 'fit'))
            inputs.data = self.inputs.data
            inputs.parameters = orm.Dict(parameters)
            if candidate['model'] == HAMILTONIAN_MODEL:
                inputs.hamiltonian = self.inputs.hamiltonian
            inputs.metadata.call_link_label = f'fit_{label}' + (f'_retry{attempt}' if attempt else '')
            node = self.submit(NexthamArpesFitCalculation, **inputs)
            self.ctx.calculations[label] = node.pk
            self.to_context(**{f'fit_{label}': node})
            self.report(
                f'candidate {label}: launched NexthamArpesFitCalculation<{node.pk}> (attempt {attempt + 1})'
            )

    def inspect_fits(self):
        pending = []
        for label in self.ctx.pending:
            node = self.ctx[f'fit_{label}']
            if node.is_finished_ok:
                self.ctx.succeeded.append(label)
                continue
            self.report(
                f'candidate {label}: {node.process_label}<{node.pk}> failed: '
                f'[{node.exit_status}] {node.exit_message}'
            )
            if (
                node.exit_status in RETRY_STATUSES
                and self.ctx.attempts[label] < self.inputs.max_retries.value
            ):
                self.ctx.attempts[label] += 1
                pending.append(label)
        self.ctx.pending = pending

    def select(self):
        table = {}
        for candidate in self.ctx.candidates:
            label = candidate['label']
            node = orm.load_node(self.ctx.calculations[label])
            table[label] = {
                'model': candidate['model'],
                'fixed': candidate['fixed'],
                'calculation': node.uuid,
                'attempts': self.ctx.attempts[label] + 1,
                'exit_status': node.exit_status,
                'exit_message': node.exit_message,
            }
        if not self.ctx.succeeded:
            message = '; '.join(
                f'{label}: [{row["exit_status"]}] {row["exit_message"]}' for label, row in table.items()
            )
            return self.exit_codes.ERROR_ALL_FITS_FAILED.format(n=len(table), message=message)
        fits = {label: self.ctx[f'fit_{label}'].outputs.output_parameters for label in self.ctx.succeeded}
        self.ctx.selection = select_arpes_model(
            criterion=self.inputs.criterion,
            candidates=orm.Dict(table),
            **fits,
            metadata={'call_link_label': 'select_model'},
        )
        selected = self.ctx.selection['selected']
        if selected is None:
            self.out('model_selection', self.ctx.selection)  # the losses, for the diagnosis
            return self.exit_codes.ERROR_SELECTION_FAILED.format(
                criterion=self.inputs.criterion.value, message='no finite loss among the successful fits'
            )
        rows = self.ctx.selection['candidates']
        summary = ', '.join(
            f'{label}: {self.inputs.criterion.value} = {rows[label][self.inputs.criterion.value]:.6g}'
            for label in self.ctx.selection['ranking']
        )
        self.report(f'selected {selected} ({summary})')
        return None

    def results(self):
        selected = self.ctx.selection['selected']
        outputs = self.ctx[f'fit_{selected}'].outputs
        self.out('parameters', outputs.output_parameters)
        for name in ('bands', 'plot'):
            if name in outputs:
                self.out(name, outputs[name])
        self.out('model_selection', self.ctx.selection)
        for label in self.ctx.succeeded:
            self.out(f'candidates.{label}', self.ctx[f'fit_{label}'].outputs.output_parameters)
