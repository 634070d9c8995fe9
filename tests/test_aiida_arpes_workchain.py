"""``NexthamArpesFitWorkChain``: model selection among candidate tight-binding models, on the test profile.

Data: a Γ–X cut simulated from the model seeded by a real PySCF Si Hamiltonian (tests/data/ml, rattled
Si gth-szv) with μ = +0.1 eV and a nearest-neighbour scale of 1.05, Poisson counts. Candidates: that
model (from a HamiltonianData) and the single-band model. Each candidate is one engine run (~6 s).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from aiida_nextham.calculations.arpes_fit import NexthamArpesFitCalculation
from aiida_nextham.data.arpes import ArpesData
from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.workflows.arpes_fit import NexthamArpesFitWorkChain, information_criteria

SI = Path(__file__).parent / 'data' / 'ml' / 'si2_rattled_0.h5'
HAMILTONIAN_OPTIONS = {'onsite': [], 'hopping_shells': 1, 'shell_tolerance': 0.3}
TRUE = {'s_Si_Si_1': 1.05, 'mu': 0.1}
#: a fast fit: a poor surrogate, every start refined with the exact model
FAST = {
    'starts': 2,
    'refine': 0,
    'surrogate_steps': 20,
    'surrogate_spectra': 20,
    'search_steps': 3,
    'seed': 0,
}
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1'}}


@pytest.fixture(scope='module')
def si_cut():
    from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
    from aiida_nextham.arpes.tightbinding import get_model

    model = get_model('hamiltonian', path=str(SI), **HAMILTONIAN_OPTIONS)
    model.set_parameters(TRUE)
    grid = SimulationGrid(kx=np.linspace(-0.8, 0.8, 21), ky=0.0, eV=np.linspace(-1.6, 0.1, 31))
    return simulate_dataset(model, grid, Broadening(gamma0=0.08), seed=1, counts=500)


def _builder(code, data, models, **inputs):
    builder = NexthamArpesFitWorkChain.get_builder()
    builder.fit.code = code
    builder.fit.metadata.options.environment_variables = OPTIONS['environment_variables']
    builder.data = data
    builder.models = orm.List(models)
    builder.parameters = orm.Dict(FAST)
    for key, value in inputs.items():
        setattr(builder, key, value)
    return builder


def test_entry_point_and_information_criteria():
    assert WorkflowFactory('nextham.arpes_fit') is NexthamArpesFitWorkChain
    poisson = {'method': 'inr', 'loss': 1.2, 'parameters': {'a': 1, 'mu': 0}, 'nuisance': {'amplitude': 1}}
    poisson['metrics'] = {'n_points': 100, 'likelihood': 'poisson'}
    criteria = information_criteria(poisson)
    assert criteria['minus2_log_likelihood'] == pytest.approx(120.0)  # the total deviance
    assert criteria['bic'] == pytest.approx(120.0 + 3 * math.log(100))
    assert criteria['aic'] == pytest.approx(126.0) and criteria['n_fitted'] == 3
    gaussian = {**poisson, 'metrics': {'n_points': 100, 'likelihood': 'gaussian'}, 'loss': 0.5}
    assert information_criteria(gaussian)['minus2_log_likelihood'] == pytest.approx(100 * math.log(0.5))
    baseline = {'method': 'baseline', 'loss': 2.0, 'parameters': {'t': 1}, 'metrics': {'n_peaks': 40}}
    assert information_criteria(baseline)['bic'] == pytest.approx(40 * math.log(0.1) + math.log(40))
    assert information_criteria({**poisson, 'loss': None})['bic'] is None


def test_workchain_selects_the_true_model_with_provenance(nextham_code, si_cut):
    data = ArpesData(si_cut, label='Si cut').store()
    hamiltonian = HamiltonianData.from_file(SI).store()
    models = [
        {'model': 'hamiltonian', 'fixed': HAMILTONIAN_OPTIONS, 'init': {'s_Si_Si_1': 1.0, 'mu': 0.0}},
        {'model': 'single-band', 'fixed': {'a': 5.43}},
    ]
    results, node = run_get_node(_builder(nextham_code, data, models, hamiltonian=hamiltonian))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    selection = results['model_selection'].get_dict()
    assert selection['selected'] == 'hamiltonian' and selection['criterion'] == 'bic'
    assert selection['ranking'] == ['hamiltonian', 'single_band']
    rows = selection['candidates']
    assert rows['hamiltonian']['selected'] and not rows['single_band']['selected']
    assert rows['hamiltonian']['n_params'] == 2 and rows['single_band']['n_params'] == 4
    assert rows['hamiltonian']['n_fitted'] == 5 and rows['hamiltonian']['likelihood'] == 'poisson'
    assert rows['hamiltonian']['delta_bic'] == 0 and rows['single_band']['delta_bic'] > 100
    assert rows['hamiltonian']['bic'] < rows['single_band']['bic']
    assert rows['hamiltonian']['exit_status'] == 0 and rows['hamiltonian']['attempts'] == 1

    parameters = results['parameters'].get_dict()
    assert parameters['model']['name'] == 'hamiltonian'
    assert parameters['model']['fixed']['path'] == 'hamiltonian.h5'
    assert parameters['parameters']['mu'] == pytest.approx(0.1, abs=0.005)
    assert parameters['parameters']['s_Si_Si_1'] == pytest.approx(1.05, abs=0.005)
    assert all(0 < v < 0.01 for v in parameters['uncertainties'].values())
    assert parameters['options']['init'] == {'s_Si_Si_1': 1.0, 'mu': 0.0}
    assert results['bands'].get_bands().shape == (21, 8)
    assert set(results['candidates']) == {'hamiltonian', 'single_band'}
    assert results['candidates']['hamiltonian'].pk == results['parameters'].pk

    # provenance: the parameters Dict is created by a fit calculation whose inputs are the data and the
    # Hamiltonian, called by this work chain, and returned by it
    query = orm.QueryBuilder()
    query.append(ArpesData, filters={'id': data.pk}, tag='data')
    query.append(NexthamArpesFitCalculation, with_incoming='data', tag='calc', project='id')
    query.append(orm.WorkChainNode, with_outgoing='calc', filters={'id': node.pk})
    query.append(
        orm.Dict, with_incoming='calc', edge_filters={'label': 'output_parameters'}, tag='out', project='id'
    )
    rows_found = query.all()
    assert len(rows_found) == 2  # both candidates
    assert results['parameters'].pk in [row[1] for row in rows_found]
    calc = results['parameters'].creator
    assert isinstance(calc, orm.CalcJobNode) and calc.pk in [row[0] for row in rows_found]
    assert calc.inputs.hamiltonian.pk == hamiltonian.pk and calc.inputs.data.pk == data.pk
    returned = node.base.links.get_outgoing(link_label_filter='parameters').one().node
    assert returned.pk == results['parameters'].pk
    selection_node = results['model_selection']
    assert selection_node.creator.process_label == 'select_arpes_model'
    assert {link.link_label for link in selection_node.creator.base.links.get_incoming().all()} >= {
        'hamiltonian',
        'single_band',
        'criterion',
        'candidates',
    }


def test_workchain_refusals(nextham_code, cut_node_factory):
    data = cut_node_factory()
    n_jobs = orm.QueryBuilder().append(orm.CalcJobNode).count()

    # an unknown model name: refused with the named exit code before any job
    results, node = run_get_node(_builder(nextham_code, data, ['nickelate-eg', 'perovskite-xyz']))
    assert node.exit_status == NexthamArpesFitWorkChain.exit_codes.ERROR_UNKNOWN_MODEL.status == 401
    assert "['perovskite-xyz']" in node.exit_message and 'nickelate-eg' in node.exit_message
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == n_jobs

    # refused by validators at launch
    def refused(match, models, **inputs):
        with pytest.raises(ValueError, match=match):
            run_get_node(_builder(nextham_code, data, models, **inputs))

    refused('needs the `hamiltonian` input', ['hamiltonian'])
    refused(r"label\(s\) \['nickelate_eg'\] are used twice", ['nickelate-eg', {'model': 'nickelate-eg'}])
    refused('labels must be identifiers', [{'model': 'graphene', 'label': '2d'}])
    refused('give at least one candidate', [])
    refused(r"unknown key\(s\) \['extra'\]", [{'model': 'graphene', 'extra': ['tp']}])
    refused(r"\['model'\] are set per candidate", ['graphene'], parameters=orm.Dict({'model': 'graphene'}))
    refused('starts must be an integer >= 1', ['graphene'], parameters=orm.Dict({'starts': 0}))
    refused('criterion must be one of', ['graphene'], criterion=orm.Str('chi2'))
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == n_jobs


def test_workchain_all_fits_failed(nextham_code, cut_node_factory):
    """A start outside the bounds: the engine refuses (431, not retried); no candidate left: 410."""
    data = cut_node_factory()
    models = [{'model': 'nickelate-eg', 'init': {'t': 0.9}}]
    builder = _builder(nextham_code, data, models)
    builder.parameters = orm.Dict({'method': 'baseline', 'starts': 1})
    results, node = run_get_node(builder)
    assert node.exit_status == NexthamArpesFitWorkChain.exit_codes.ERROR_ALL_FITS_FAILED.status == 410
    assert 'all 1 candidate fits failed' in node.exit_message
    assert 'nickelate_eg: [431]' in node.exit_message and 't = 0.9' in node.exit_message
    assert len(node.called) == 1 and 'parameters' not in results


@pytest.fixture
def cut_node_factory():
    """A small simulated nickelate cut as a stored ArpesData."""

    def make() -> ArpesData:
        from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
        from aiida_nextham.arpes.tightbinding import get_model

        model = get_model('nickelate-eg', a=3.83)
        grid = SimulationGrid(kx=np.linspace(-0.8, 0.8, 9), ky=0.0, eV=np.linspace(-0.7, 0.1, 11))
        return ArpesData(simulate_dataset(model, grid, Broadening(gamma0=0.03), counts=100)).store()

    return make


def test_workchain_refits_a_failed_candidate_with_another_seed(aiida_localhost, cut_node_factory, tmp_path):
    """A fit that ends with a non-finite loss (433) is refitted once with seed + 1000.

    The code is a wrapper of ``nextham`` that fails like the engine's FitFailed for seed 0 only.
    """
    from aiida_nextham.cli.setup import find_nextham_executable

    script = tmp_path / 'flaky-nextham'
    script.write_text(
        '#!/bin/sh\n'
        'case " $* " in *" --seed 0 "*)\n'
        '  echo "Error: FitFailed: non-finite loss or parameters" >&2; exit 33;;\n'
        'esac\n'
        f'exec {find_nextham_executable()} "$@"\n'
    )
    script.chmod(0o755)
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable=str(script), label='flaky').store()
    builder = _builder(code, cut_node_factory(), ['nickelate-eg'])
    builder.parameters = orm.Dict({'method': 'baseline', 'starts': 1, 'seed': 0})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calls = sorted(node.called, key=lambda n: n.pk)
    fits = [n for n in calls if n.process_label == 'NexthamArpesFitCalculation']
    assert [n.exit_status for n in fits] == [433, 0]
    assert [n.inputs.parameters['seed'] for n in fits] == [0, 1000]
    incoming = {link.link_label for link in fits[1].base.links.get_incoming().all()}
    assert {'data', 'parameters', 'code'} <= incoming
    assert (
        fits[1].base.links.get_incoming(link_label_filter='CALL_CALC').all() == []
    )  # labels are on CALL links
    call_labels = {link.link_label for link in node.base.links.get_outgoing().all() if link.node in fits}
    assert call_labels == {'fit_nickelate_eg', 'fit_nickelate_eg_retry1'}
    row = results['model_selection'].get_dict()['candidates']['nickelate_eg']
    assert row['attempts'] == 2 and row['exit_status'] == 0 and row['selected']
    assert results['parameters'].get_dict()['options']['seed'] == 1000
