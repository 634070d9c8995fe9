"""Every work chain of the plugin through a real daemon (embedded stack: SQLite + aiida-core's ZeroMQ broker).

``tests/test_daemon.py`` runs ``NexthamDftBaseWorkChain`` through the daemon in batches; this test submits
one of each of the other work chains to a daemon with two workers, with the tiny settings of their
``run``-based tests, and their jobs on a ``core.direct`` computer holding at most two job slots:

- at once: ``NexthamDatasetWorkChain`` (two H2 cells, the engine's cheapest label), ``NexthamTrainWorkChain``
  (the three Si labels of tests/data/ml, a tiny model, 12 steps), ``NexthamPhononWorkChain`` (EMT forces,
  bcc Cu) and ``NexthamArpesFitWorkChain`` (a small simulated nickelate cut, two candidates, EDC/MDC
  baseline fits);
- once the training is done: ``NexthamPredictBandsWorkChain`` with its model on the structure of one of the
  labels (``fast`` protocol: H0 by PySCF), then ``NexthamValidateWorkChain`` of the predicted bands against
  the bands of that label at the same k-points (``compute_bands``, as in examples/pipeline_si.py).

Asserted: each work chain finishes OK, below it at least one CalcJob finished OK (the validation runs
calcfunctions only: one of those), its key outputs exist, and no process is left unfinished.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_support import STACKS, daemon_log_tail, throwaway_profile, wait_for
from tiny import LABELS, TINY_MODEL

WORKERS = 2
JOB_SLOTS = 2
#: seconds the whole set may take (measured: 99-122 s of work chains on 2 cores shared with other jobs)
TIMEOUT = 900
#: seconds for the daemon to start or stop
DAEMON_TIMEOUT = 120
#: engine settings of the dataset labels: one k-point, small blocks, no self-check, one thread
LABEL_OVERRIDES = {'kmesh': [1, 1, 1], 'cutoff': 4.0, 'alias_margin': 1.0, 'selfcheck': False, 'threads': 1}
#: the tiny training of tests/test_aiida_train.py (a few thousand parameters, 12 steps)
TRAIN_CONFIG = {
    'data': {'split': [0.34, 0.33, 0.33], 'seed': 0},
    'model': TINY_MODEL,
    'train': {
        'steps': 12,
        'batch_size': 1,
        'checkpoint_every': 12,
        'val_every': 6,
        'n_kpoints': 2,
        'dtype': 'float64',
        'warmup_steps': 2,
    },
}
#: phonons with EMT forces (no DFT): bcc Cu in a 2x2x2 supercell, a coarse mesh and path
PHONON_SETTINGS = {'npoints': 11, 'mesh': [2, 2, 2], 'tstep': 100.0}
#: ARPES: EDC/MDC baseline fits, one start each
ARPES_CANDIDATES = ['nickelate-eg', {'model': 'nickelate-eg', 'label': 'eg_tp', 'fixed': {'extra': ['tp']}}]
ARPES_PARAMETERS = {'method': 'baseline', 'starts': 1, 'seed': 0}
#: points of the predicted band path
NPOINTS = 20
#: the key outputs of each work chain
OUTPUTS = {
    'NexthamDatasetWorkChain': ('hamiltonians', 'summary'),
    'NexthamTrainWorkChain': ('model', 'metrics'),
    'NexthamPhononWorkChain': ('bands', 'output_parameters'),
    'NexthamArpesFitWorkChain': ('parameters', 'model_selection'),
    'NexthamPredictBandsWorkChain': ('band_structure', 'hamiltonian', 'output_parameters'),
    'NexthamValidateWorkChain': ('band_metrics', 'plot'),
}
UNFINISHED = ('created', 'waiting', 'running')


def _setup(workdir: Path) -> dict:
    """Computer, code, GTH family and job options in the loaded profile."""
    from aiida_nextham.cli.dataset import _lock_dir, job_slot_script
    from aiida_nextham.cli.setup import find_nextham_executable, get_or_create_code, get_or_create_localhost
    from aiida_nextham.data.pseudo import install_pyscf_gth_family

    computer, _ = get_or_create_localhost('localhost-daemon-workchains', workdir=str(workdir))
    executable = os.environ.get('NEXTHAM_TEST_EXECUTABLE') or find_nextham_executable()
    code, _ = get_or_create_code(computer, executable=Path(executable))
    family, _ = install_pyscf_gth_family('pbe')
    options = {
        'max_wallclock_seconds': 600,
        'environment_variables': {'OMP_NUM_THREADS': '1'},
        'prepend_text': job_slot_script(JOB_SLOTS, _lock_dir(computer)),
    }
    return {'code': code, 'family': family, 'options': options}


def _set_options(namespace, options: dict) -> None:
    """Set ``options`` one by one in a builder's ``metadata.options`` (its defaults, e.g. resources, stay)."""
    for key, value in options.items():
        setattr(namespace.metadata.options, key, value)


def _dataset_builder(code, family, options):
    from aiida import orm
    from ase import Atoms

    from aiida_nextham.workflows.dataset import NexthamDatasetWorkChain
    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain

    structures = {
        f'h2_{i}': orm.StructureData(
            ase=Atoms('H2', positions=[[0, 0, 0], [bond, 0, 0]], cell=[3, 3, 3], pbc=True)
        )
        for i, bond in enumerate((0.72, 0.76))
    }
    base = NexthamDftBaseWorkChain.get_builder_from_protocol(
        code,
        structures['h2_0'],
        protocol='fast',
        overrides=LABEL_OVERRIDES,
        pseudo_family=family.label,
    )
    builder = NexthamDatasetWorkChain.get_builder()
    builder.structures = structures
    builder.base.dft.code = code
    builder.base.dft.parameters = base.dft.parameters
    if base.dft.get('kpoints') is not None:
        builder.base.dft.kpoints = base.dft.kpoints
    builder.base.pseudo_family = orm.Str(family.label)
    _set_options(builder.base.dft, options)
    builder.metadata.label = 'daemon: dataset'
    return builder


def _train_builder(code, labels, options):
    from aiida_nextham.workflows.train import NexthamTrainWorkChain

    builder = NexthamTrainWorkChain.get_builder_from_group(labels, code, TRAIN_CONFIG, options=options)
    builder.metadata.label = 'daemon: train'
    return builder


def _phonon_builder(code, options):
    from aiida import orm
    from ase.build import bulk

    from aiida_nextham.workflows.phonons import NexthamPhononWorkChain

    builder = NexthamPhononWorkChain.get_builder()
    builder.phonons.code = code
    builder.phonons.structure = orm.StructureData(ase=bulk('Cu', 'bcc', a=2.87))
    builder.phonons.supercell = orm.List([2, 2, 2])
    builder.phonons.calculator = orm.Str('emt')
    builder.phonons.settings = orm.Dict(PHONON_SETTINGS)
    _set_options(builder.phonons, options)
    builder.metadata.label = 'daemon: phonons'
    return builder


def _arpes_builder(code, options):
    from aiida import orm

    from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
    from aiida_nextham.arpes.tightbinding import get_model
    from aiida_nextham.data.arpes import ArpesData
    from aiida_nextham.workflows.arpes_fit import NexthamArpesFitWorkChain

    model = get_model('nickelate-eg', a=3.83)
    grid = SimulationGrid(kx=np.linspace(-0.8, 0.8, 9), ky=0.0, eV=np.linspace(-0.7, 0.1, 11))
    data = ArpesData(simulate_dataset(model, grid, Broadening(gamma0=0.03), seed=1, counts=100)).store()
    builder = NexthamArpesFitWorkChain.get_builder()
    builder.fit.code = code
    _set_options(builder.fit, options)
    builder.data = data
    builder.models = orm.List(ARPES_CANDIDATES)
    builder.parameters = orm.Dict(ARPES_PARAMETERS)
    builder.metadata.label = 'daemon: arpes_fit'
    return builder


def _predict_builder(code, family, model, structure, options):
    from aiida import orm

    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain

    builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
        code, model, structure, protocol='fast', pseudo_family=family.label, options=options
    )
    builder.kpath = orm.Dict({'path': 'auto', 'npoints': NPOINTS})
    builder.metadata.label = 'daemon: predict_bands'
    return builder


# ---------------------------------------------------------------------------------------- queries
def _refresh() -> None:
    """Drop any read snapshot (SQLite) so the daemon's commits are seen."""
    from aiida.manage import get_manager

    get_manager().get_profile_storage().get_session().rollback()


def _states(pks: list[int]) -> dict[int, tuple[str, str | None, int | None]]:
    """``{pk: (process_label, process_state, exit_status)}``, fresh from the database."""
    from aiida import orm

    _refresh()
    query = orm.QueryBuilder().append(
        orm.ProcessNode,
        filters={'id': {'in': list(pks)}},
        project=['id', 'attributes.process_label', 'attributes.process_state', 'attributes.exit_status'],
    )
    return {pk: (label, state, status) for pk, label, state, status in query.iterall()}


def _terminated(pks: list[int]) -> bool:
    return all(state in ('finished', 'excepted', 'killed') for _, state, _ in _states(pks).values())


def _unfinished_processes() -> list[tuple[int, str, str]]:
    """Every process of the profile still created, waiting or running (``verdi process list``)."""
    from aiida import orm

    _refresh()
    query = orm.QueryBuilder().append(
        orm.ProcessNode,
        filters={'attributes.process_state': {'in': list(UNFINISHED)}},
        project=['id', 'attributes.process_label', 'attributes.process_state'],
    )
    return [tuple(row) for row in query.all()]


def _describe(pks: list[int], client) -> str:
    """The states of the work chains and of every unfinished or failed process below them, the reports
    of the failed ones and the daemon log tail (for failure messages)."""
    from aiida import orm

    _refresh()
    lines = []
    for pk in pks:
        node = orm.load_node(pk)
        lines.append(_line(node))
        for child in node.called_descendants:
            if not child.is_finished_ok:
                lines.append('    ' + _line(child))
        if node.is_terminated and not node.is_finished_ok:
            for log in orm.Log.collection.get_logs_for(node)[-10:]:
                lines.append(f'    report: {log.message}')
    lines.append(f'unfinished processes: {_unfinished_processes()}')
    return '\n'.join(lines) + '\n' + daemon_log_tail(client)


def _line(node) -> str:
    state = node.process_state.value if node.process_state else None
    text = f'{node.process_label}<{node.pk}> {state} exit {node.exit_status}: {node.exit_message}'
    if state == 'waiting' and hasattr(node, 'get_scheduler_state'):
        text += f' (scheduler: {node.get_scheduler_state() or "not submitted"})'
    return text


def _await(pks: list[int], client, what: str, timeout: float) -> None:
    wait_for(lambda: _terminated(pks), timeout, what, interval=2.0, details=lambda: _describe(pks, client))


def _left(start: float) -> float:
    """Seconds left of TIMEOUT since ``start`` (at least a minute)."""
    return max(TIMEOUT - (time.monotonic() - start), 60.0)


def _check(pk: int, client) -> None:
    """Finished OK, with a CalcJob (or, for the validation, a calcfunction) below it finished OK, and with
    its key outputs."""
    from aiida import orm

    node = orm.load_node(pk)
    assert node.is_finished_ok, (
        f'{node.process_label}<{pk}>: {node.process_state}, exit status {node.exit_status}: '
        f'{node.exit_message}\n{_describe([pk], client)}'
    )
    below = node.called_descendants
    kind = orm.CalcFunctionNode if node.process_label == 'NexthamValidateWorkChain' else orm.CalcJobNode
    done = [child for child in below if isinstance(child, kind) and child.is_finished_ok]
    assert done, (
        f'{node.process_label}<{pk}>: no {kind.__name__} finished OK among {[_line(c) for c in below]}'
    )
    missing = [name for name in OUTPUTS[node.process_label] if name not in node.outputs]
    assert not missing, f'{node.process_label}<{pk}>: outputs {missing} missing; has {sorted(node.outputs)}'


def _check_contents(train, dataset, phonons, arpes, predict, validate) -> None:
    """A glance at the outputs: the settings above were used and the results are those of such runs."""
    from aiida import orm

    outputs = orm.load_node(dataset).outputs
    assert sorted(outputs.hamiltonians) == ['h2_0', 'h2_1'] and outputs.summary['n_ok'] == 2
    metrics = orm.load_node(train).outputs.metrics.get_dict()
    assert metrics['status'] == 'finished' and metrics['steps'] == TRAIN_CONFIG['train']['steps']
    outputs = orm.load_node(phonons).outputs
    assert outputs.bands.get_bands().shape[0] == PHONON_SETTINGS['npoints']
    assert outputs.output_parameters['dynamically_stable'] is False  # bcc Cu with EMT: imaginary modes at N
    selection = orm.load_node(arpes).outputs.model_selection.get_dict()
    assert selection['selected'] in ('nickelate_eg', 'eg_tp') and len(selection['candidates']) == 2
    bands = orm.load_node(predict).outputs.band_structure
    assert bands.get_bands().shape == (NPOINTS, 8)  # Si2 in gth-szv: 8 orbitals
    metrics = orm.load_node(validate).outputs.band_metrics.get_dict()
    assert metrics['n_values'] > 0 and metrics['kpoints_max_deviation'] < 1e-8


@pytest.mark.slow
@pytest.mark.parametrize('stack', STACKS[:1])
def test_every_workchain_through_the_daemon(stack, tmp_path, aiida_config_factory):
    """One of each work chain submitted to a daemon with 2 workers; all finish OK, nothing left running."""
    from aiida import orm
    from aiida.engine import submit
    from aiida.engine.daemon.client import get_daemon_client

    from aiida_nextham.calculations.functions import compute_bands
    from aiida_nextham.data.hamiltonian import HamiltonianData
    from aiida_nextham.workflows.validate import NexthamValidateWorkChain

    assert len(LABELS) == 3, 'run tests/data/ml/generate.py'
    # every work chain of the plugin but the base one (tests/test_daemon.py) is here
    entry_points = importlib.metadata.entry_points(group='aiida.workflows')
    classes = {ep.load().__name__ for ep in entry_points if ep.name.startswith('nextham.')}
    assert classes - {'NexthamDftBaseWorkChain'} == set(OUTPUTS)
    start = time.monotonic()
    laps = {}

    def lap(name: str) -> None:
        laps[name] = round(time.monotonic() - start - sum(laps.values()))

    with throwaway_profile(stack, tmp_path / 'config', aiida_config_factory) as profile:
        assert profile.process_control_backend == 'core.zeromq'
        setup = _setup(tmp_path / 'work')
        code, family, options = setup['code'], setup['family'], setup['options']
        labels = [HamiltonianData.from_file(path, format='nextham').store() for path in LABELS]
        client = get_daemon_client(profile.name)
        client.start_daemon(number_workers=WORKERS, timeout=DAEMON_TIMEOUT)
        assert client.get_numprocesses()['numprocesses'] == WORKERS
        lap('setup')

        # the independent ones at once
        train = submit(_train_builder(code, labels, options)).pk
        independent = [
            train,
            submit(_dataset_builder(code, family, options)).pk,
            submit(_phonon_builder(code, options)).pk,
            submit(_arpes_builder(code, options)).pk,
        ]
        _await([train], client, 'the training to terminate', TIMEOUT)
        _check(train, client)
        lap('training')

        # prediction with the trained model on the structure of a label, then its validation
        _refresh()
        model = orm.load_node(train).outputs.model
        label = labels[-1]
        structure = label.get_structure().store()
        predict = submit(_predict_builder(code, family, model, structure, options)).pk
        _await([predict], client, 'the prediction to terminate', _left(start))
        _check(predict, client)
        lap('prediction')

        predicted = orm.load_node(predict).outputs
        reference = compute_bands(label, predicted.band_structure.creator.inputs.kpoints)
        builder = NexthamValidateWorkChain.get_builder()
        builder.predicted = predicted.band_structure
        builder.reference = reference['bands']
        builder.predicted_parameters = predicted.output_parameters
        builder.reference_parameters = reference['output_parameters']
        builder.parameters = orm.Dict({'window': [-2.0, 2.0]})
        builder.metadata.label = 'daemon: validate'
        validate = submit(builder).pk

        pks = [*independent, predict, validate]
        _await(pks, client, 'every work chain to terminate', _left(start))
        lap('the rest')
        for pk in pks:
            _check(pk, client)

        # one of each, and nothing left behind
        assert sorted(name for name, _, _ in _states(pks).values()) == sorted(OUTPUTS)
        assert not _unfinished_processes(), _describe(pks, client)
        _check_contents(*pks)
        client.stop_daemon(wait=True, timeout=DAEMON_TIMEOUT)
    print(f'\n{stack}: {laps} s, total {round(time.monotonic() - start)} s')
