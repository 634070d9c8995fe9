"""``aiida-nextham quickstart``: a DFT label of silicon, H vs H0, then train -> predict -> validate.

Steps 1-3: sets up (or reuses) the profile exactly like ``aiida-nextham setup``, runs a
``NexthamDftBaseWorkChain`` in label mode for 2-atom diamond Si in this process, diagonalises the
self-consistent H and the zeroth-step H0 of the resulting ``HamiltonianData`` along one seekpath
path with the ``compute_bands`` calcfunction, and writes one PNG with both band structures.

Steps 4-7 (:func:`run_ml_part`, skipped with ``--skip-ml``), all with the ``fast`` protocol: DFT labels
of rattled 2-atom cells and of a 4-atom supercell generated from that structure
(``NexthamDatasetWorkChain``), a small model trained on CPU (``NexthamTrainWorkChain``), predictions of
the held-out cell and of the supercell (``NexthamPredictBandsWorkChain``), their validation against the
DFT labels (``validate_hamiltonian``, ``NexthamValidateWorkChain``, PNG overlays), the metrics and a
QueryBuilder provenance summary of the predicted supercell bands (:func:`provenance_summary`).
Every process runs in this interpreter (:func:`local_runner`). Every run makes new nodes; the
profile, computer, code and pseudopotential family are reused.
"""

from __future__ import annotations

import json
import pathlib
import signal
import time
import warnings

import click
from aiida.cmdline.utils import echo

from .setup import DEFAULT_PROFILE, cmd_setup

__all__ = (
    'GROUP_LABEL',
    'cmd_quickstart',
    'local_runner',
    'plot_quickstart_bands',
    'provenance_summary',
    'run_ml_part',
    'run_with_progress',
    'silicon_structure',
)

#: every quickstart run's work chain and band structures are added to this Group
GROUP_LABEL = 'nextham/quickstart'
#: lattice constant of the quickstart's diamond Si, Å
SI_LATTICE_CONSTANT = 5.43
#: the protocol the quickstart uses unless told otherwise
DEFAULT_PROTOCOL = 'balanced'
#: rough duration of the label on 2 cores, for the progress message
EXPECTED_TIME = {'fast': 'about a minute', 'balanced': '2-4 minutes', 'stringent': '10 minutes or more'}
#: energy window of the figure relative to each band structure's own zero, eV
PLOT_WINDOW = (-13.0, 6.0)

# ------------------------------------------------------------------------- the ML part (steps 4-7)
#: label-engine protocol of the ML part: gth-szv is well conditioned (no ghost states) and fast
ML_PROTOCOL = 'fast'
#: the small dataset: rattled, slightly strained 2-atom cells; the last one is held out of training
ML_RECIPE = {'supercell': 1, 'n_structures': 5, 'rattle': 0.05, 'strain': 0.01, 'seed': 7}
#: the larger cell predicted by the trained model and labelled by DFT for the comparison: 2x1x1, 4 atoms
#: (the fast label of an 8-atom cell takes ~6 minutes on one core, of a 16-atom cell far longer)
SUPERCELL_RECIPE = {'supercell': [2, 1, 1], 'n_structures': 1, 'rattle': 0.03, 'seed': 11}
#: training config: the `small` preset with fewer channels and steps (about a minute on one CPU core)
ML_CONFIG = {
    'data': {'split': [0.75, 0.25, 0.0], 'seed': 0},
    'model': {
        'preset': 'small',
        'cutoff': 6.0,
        'n_layers': 2,
        'node_channels': {'0': 16, '1': 8, '2': 8},
        'edge_channels': {'0': 16, '1': 8, '2': 8},
        'value_channels': {'0': 8, '1': 4, '2': 4},
        'pair_channels': {'0': 8, '1': 4, '2': 4},
        'n_heads': 4,
        'radial_hidden': 16,
    },
    'train': {
        'steps': 400,
        'batch_size': 2,
        'lr': 5.0e-3,
        'warmup_steps': 10,
        'n_kpoints': 4,
        'ema_decay': 0.9,
        'val_every': 25,
        'checkpoint_every': 100,
        'device': 'cpu',
    },
}
#: energy window of the band validation around the VBM, eV
VALIDATION_WINDOW = [-2.0, 2.0]


def silicon_structure(a: float = SI_LATTICE_CONSTANT):
    """An unstored ``StructureData`` of 2-atom (primitive fcc) diamond Si, built with ASE."""
    from aiida import orm
    from ase.build import bulk

    structure = orm.StructureData(ase=bulk('Si', 'diamond', a=a))
    structure.label = f'Si diamond a={a:g}'
    structure.description = f'2-atom primitive cell of diamond Si, a = {a:g} Å (ase.build.bulk)'
    return structure


def _status(node) -> str:
    """One line about where a running work chain is: its newest unfinished sub-process, if any."""
    from aiida import orm

    running = [
        child
        for child in node.called_descendants
        if isinstance(child, orm.ProcessNode) and not child.is_terminated
    ]
    if not running:
        return (
            f'{node.process_label}<{node.pk}> {node.process_state.value if node.process_state else "created"}'
        )
    child = max(running, key=lambda n: n.ctime)
    state = child.process_state.value if child.process_state else 'created'
    text = f'{child.process_label}<{child.pk}> {state}'
    if isinstance(child, orm.CalcJobNode):
        calc_state = child.get_state()
        job = child.get_scheduler_state()
        if calc_state is not None and calc_state.value.lower() == 'withscheduler':
            text += f': job {job.value if job is not None else "submitted"}'
        elif calc_state is not None:
            text += f': {calc_state.value.lower()}'
    return text


def local_runner():
    """A runner that executes processes in this interpreter, whether or not the broker is up.

    The embedded profile's ZeroMQ broker only runs while the daemon does; without it, the runner gets
    no broker connection (as process functions do): the process runs here all the same, but
    ``verdi process kill/pause`` cannot reach it (Ctrl-C kills it).
    """
    from aiida.manage import get_manager

    manager = get_manager()
    if manager.get_profile().process_control_backend == 'core.zeromq':
        from aiida.engine.daemon.client import get_daemon_client

        if not get_daemon_client().is_daemon_running:
            return manager.create_runner(communicator=None)
    return manager.get_runner()


def run_with_progress(builder, interval: float = 15.0, status=None, report=echo.echo_report):
    """Run the process of ``builder`` in this interpreter; every ``interval`` s report where it is.

    Like ``aiida.engine.run_get_node``, including the kill on Ctrl-C, plus a periodic progress line.

    :param status: ``status(node) -> str`` for the progress line (default: the newest running sub-process).

    :returns: ``(outputs, node)``.
    """
    from aiida.engine.utils import loop_scope

    status = status or _status
    runner = local_runner()
    start = time.monotonic()
    with loop_scope(runner.loop):
        process = runner.instantiate_process(builder)
        handle = None

        def tick():
            nonlocal handle
            report(f'[{time.monotonic() - start:5.0f} s] {status(process.node)}')
            handle = runner.loop.call_later(interval, tick)

        def kill(_signum, _frame):
            if not process.is_killing:
                echo.echo_warning(f'interrupted: killing {process.node.process_label}<{process.node.pk}>')
                process.kill(msg_text='killed by an interrupt of aiida-nextham')

        previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        handle = runner.loop.call_later(interval, tick)
        try:
            signal.signal(signal.SIGINT, kill)
            signal.signal(signal.SIGTERM, kill)
            process.execute()
        finally:
            handle.cancel()
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
    return process.outputs, process.node


def _zero(parameters: dict) -> tuple[float, str]:
    """Energy zero of one band structure: its VBM for an insulator, else its Fermi level."""
    if not parameters.get('is_metal') and parameters.get('vbm') is not None:
        return float(parameters['vbm']), 'vbm'
    if parameters.get('fermi_level') is not None:
        return float(parameters['fermi_level']), 'fermi_level'
    return 0.0, 'none'


def plot_quickstart_bands(
    kpath, bands_h, parameters_h: dict, bands_h0, parameters_h0: dict, path_png, title: str | None = None
):
    """One figure: the SCF bands (solid) and the H0 bands (dashed), each relative to its own zero.

    The zero of each is its valence-band maximum when it has a gap, else its Fermi level.

    :param kpath: the :class:`~aiida_nextham.hamiltonian.kpath.KPath` both band structures were computed on.
    :param bands_h, bands_h0: ``BandsData`` (eV) of H and of H0.
    :param parameters_h, parameters_h0: ``output_parameters`` of :func:`compute_bands` (vbm, fermi_level ...).
    :returns: the matplotlib ``Figure`` and the zero convention (``'vbm'`` or ``'fermi_level'``).
    """
    from ..hamiltonian.plotting import plot_band_comparison

    zero_h, kind_h = _zero(parameters_h)
    zero_h0, kind_h0 = _zero(parameters_h0)
    kind = kind_h if kind_h == kind_h0 else 'mixed'
    zero_label, ylabel = {
        'vbm': ('Fermi level (at each VBM)', r'$E - E_\mathrm{VBM}$ (eV)'),
        'fermi_level': ('Fermi level', r'$E - E_\mathrm{F}$ (eV)'),
    }.get(kind, ('Fermi level / VBM', 'E − own zero (eV)'))
    figure = plot_band_comparison(
        kpath,
        bands_h.get_bands(),
        bands_h0.get_bands(),
        path_png,
        zero=zero_h,
        reference_zero=zero_h0,
        labels=(
            _legend('DFT, self-consistent H', parameters_h),
            _legend('H0 (initial density)', parameters_h0),
        ),
        zero_label=zero_label,
        ylabel=ylabel,
        title=title,
        emin=PLOT_WINDOW[0],
        emax=PLOT_WINDOW[1],
    )
    return figure, kind


def _legend(name: str, parameters: dict) -> str:
    gap = parameters.get('gap')
    if parameters.get('is_metal') or gap is None:
        return f'{name}: metallic'
    return f'{name}: gap {gap:.2f} eV'


def _gap_text(parameters: dict) -> str:
    if parameters.get('is_metal'):
        return 'metallic (no gap)'
    if parameters.get('gap') is None:
        return 'unknown (no electron count)'
    text = f'{parameters["gap"]:.3f} eV'
    direct = parameters.get('direct_gap')
    if direct is not None and abs(direct - parameters['gap']) > 1e-3:
        text += f' (indirect; direct {direct:.3f} eV)'
    elif direct is not None:
        text += ' (direct)'
    return text


def _report_overlap_warnings(caught, n_kpoints: int, selfcheck: float | None = None) -> None:
    """One line for the nearly-singular-overlap warnings of the band calculations (not one per k-point).

    :param caught: the ``warnings.WarningMessage`` list of one band calculation.
    :param n_kpoints: k-points it diagonalised (path + mesh).
    :param selfcheck: the label's self-check deviation, meV.
    """
    import re

    from ..hamiltonian.bloch import S_MIN_WARN, OverlapWarning

    overlap = [str(w.message) for w in caught if issubclass(w.category, OverlapWarning)]
    for other in (w for w in caught if not issubclass(w.category, OverlapWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if not overlap:
        return
    values = [float(v) for text in overlap for v in re.findall(r'smallest eigenvalue ([-+.\deE]+)', text)]
    smallest = f', down to {min(values):.1e}' if values else ''
    check = f'{selfcheck:.2g} meV' if selfcheck is not None else 'see the label'
    echo.echo_report(
        f'S(k) has eigenvalues below {S_MIN_WARN:g} at {len(overlap)} of {n_kpoints} k-points{smallest}: '
        'usual for a basis with diffuse functions; the occupied and lowest conduction bands are accurate '
        f"(the label's self-check: {check}), high conduction bands may hold ghost states (docs/benchmarks.md)"
    )


def _parse_overrides(value: str | None) -> dict:
    if not value:
        return {}
    try:
        overrides = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f'not valid JSON: {exc}') from None
    if not isinstance(overrides, dict):
        raise click.BadParameter('must be a JSON object, e.g. \'{"basis": "gth-dzvp"}\'')
    return overrides


@click.command('quickstart')
@click.option(
    '--profile',
    'profile_name',
    default=DEFAULT_PROFILE,
    show_default=True,
    help='Profile to create (like `aiida-nextham setup`) or reuse.',
)
@click.option(
    '-o',
    '--output-dir',
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default='quickstart-output',
    show_default=True,
    help='Folder for the figure and summary.json (created; files of an earlier run are replaced).',
)
@click.option(
    '--protocol',
    type=click.Choice(['fast', 'balanced', 'stringent']),
    default=DEFAULT_PROTOCOL,
    show_default=True,
    help='Label-engine protocol: balanced (gth-dzvp, 2-4 min) or fast (gth-szv, 1 min, bad conduction band).',
)
@click.option(
    '--overrides',
    default=None,
    metavar='JSON',
    help="Engine settings replacing the protocol's, as JSON, e.g. '{\"cutoff\": 14.0}' (advanced).",
)
@click.option(
    '--npoints',
    type=click.IntRange(min=10),
    default=150,
    show_default=True,
    help='k-points on the band path.',
)
@click.option(
    '--skip-ml',
    is_flag=True,
    default=False,
    help='Only steps 1-3 (label and H vs H0 figure): no dataset, training, prediction or validation.',
)
@click.option(
    '--max-concurrent',
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help='Engine jobs of the ML dataset at a time (0: all at once).',
)
@click.pass_context
def cmd_quickstart(ctx, profile_name, output_dir, protocol, overrides, npoints, skip_ml, max_concurrent):
    """Set up a profile, label silicon with DFT, and plot its band structure next to that of H0.

    Runs the self-consistent PySCF label (H0, H and S in real space) of 2-atom diamond Si as a
    NexthamDftBaseWorkChain in this process, then the band structures of H and of H0 along the
    seekpath path with the compute_bands calcfunction, all with provenance. Writes
    OUTPUT_DIR/si_bands_h_vs_h0.png and OUTPUT_DIR/summary.json and prints the nodes.

    Then (unless --skip-ml) the machine-learning part, with the fast (gth-szv) protocol: DFT labels
    of rattled 2-atom cells and of a larger supercell (NexthamDatasetWorkChain), a small model trained
    on CPU (NexthamTrainWorkChain), predictions of a held-out cell and of the supercell
    (NexthamPredictBandsWorkChain), their validation against the DFT labels (validate_hamiltonian,
    NexthamValidateWorkChain) with OUTPUT_DIR/<key>_validation.png, the metrics and a provenance
    summary of the predicted bands. The first part takes 2-4 minutes on 2 cores with the default
    (balanced) protocol, under a minute with --protocol fast; the whole run under 10 minutes.
    """
    overrides = _parse_overrides(overrides)
    start = time.monotonic()
    timings = {}
    n_steps = 3 if skip_ml else 7
    echo.echo_report(f'step 1/{n_steps}: profile `{profile_name}` (created on first use, reused afterwards)')
    ctx.invoke(cmd_setup, profile_name=profile_name, postgres=False, rabbitmq=False, email=None)
    timings['setup'] = time.monotonic() - start

    import numpy as np
    from aiida import orm

    from ..calculations.functions import band_kpath, compute_bands, kpath_to_kpointsdata
    from ..data.pseudo import install_pyscf_gth_family
    from ..hamiltonian.bloch import OverlapWarning
    from ..workflows.dft_base import NexthamDftBaseWorkChain
    from .setup import get_or_create_code, get_or_create_localhost

    computer, _ = get_or_create_localhost()
    code, _ = get_or_create_code(computer)
    family, _ = install_pyscf_gth_family('pbe')

    structure = silicon_structure()
    try:
        builder = NexthamDftBaseWorkChain.get_builder_from_protocol(
            code, structure, protocol=protocol, overrides=overrides, mode='label', pseudo_family=family.label
        )
    except (ValueError, TypeError) as exc:
        echo.echo_critical(f'cannot build the DFT work chain: {exc}')
    builder.metadata.label = 'aiida-nextham quickstart: Si label'
    structure.store()
    parameters = builder.dft.parameters.get_dict()
    echo.echo_report(
        f'step 2/{n_steps}: DFT label of Si (StructureData<{structure.pk}>), protocol `{protocol}`: '
        f'{parameters.get("basis")}, PBE, GTH pseudopotentials, blocks up to {parameters.get("cutoff")} Å; '
        f'SCF, then H0, H and S on a dense k-mesh ({EXPECTED_TIME.get(protocol, "minutes")} on 2 cores)'
    )
    step = time.monotonic()
    results, node = run_with_progress(builder)
    timings['dft'] = time.monotonic() - step
    group, _ = orm.Group.collection.get_or_create(GROUP_LABEL)
    group.add_nodes([structure, node])
    if not node.is_finished_ok:
        echo.echo_error(
            f'{node.process_label}<{node.pk}> failed with exit code {node.exit_status}: {node.exit_message}'
        )
        echo.echo(f'  verdi process report {node.pk}    # what the work chain did')
        echo.echo(f'  verdi process show {node.pk}      # its inputs, outputs and sub-processes')
        ctx.exit(int(node.exit_status or 1))
    hamiltonian = results['hamiltonian']
    output = results['output_parameters'].get_dict()

    echo.echo_report(f'step 3/{n_steps}: band structures of H and H0 along the seekpath path (compute_bands)')
    step = time.monotonic()
    kpath = band_kpath(hamiltonian, npoints=npoints)
    kpoints = kpath_to_kpointsdata(kpath, hamiltonian.get_structure_arrays()[0])
    kpoints.label = 'quickstart band path'
    kpoints.store()
    bands = {}
    for matrix in ('H', 'H0'):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', OverlapWarning)
            result, calc = compute_bands.run_get_node(
                hamiltonian,
                kpoints,
                orm.Dict({'matrix': matrix}),
                metadata={'label': f'quickstart bands of {matrix}'},
            )
        if not calc.is_finished_ok:
            echo.echo_critical(
                f'compute_bands<{calc.pk}> ({matrix}) failed with exit code {calc.exit_status}: '
                f'{calc.exit_message}'
            )
        if matrix == 'H':  # H0 has the same S, hence the same warnings
            band_output = result['output_parameters'].get_dict()
            n_kpoints = band_output['n_kpoints'] + int(np.prod(band_output['mesh'] or [0]))
            _report_overlap_warnings(caught, n_kpoints, output.get('selfcheck_deviation'))
        result['bands'].label = f'Si bands of {matrix} ({protocol})'
        bands[matrix] = (result['bands'], result['output_parameters'].get_dict(), calc)
    group.add_nodes([bands['H'][0], bands['H0'][0]])
    timings['bands'] = time.monotonic() - step

    output_dir.mkdir(parents=True, exist_ok=True)
    figure_path = output_dir / 'si_bands_h_vs_h0.png'
    _, zero_kind = plot_quickstart_bands(
        kpath,
        bands['H'][0],
        bands['H'][1],
        bands['H0'][0],
        bands['H0'][1],
        figure_path,
        title=f'Si (diamond, a = {SI_LATTICE_CONSTANT} Å), PBE, {parameters.get("basis")}: DFT vs H0',
    )
    ml = None
    if not skip_ml:
        ml = run_ml_part(code, family, structure, output_dir, max_concurrent=max_concurrent)
        timings.update(ml['timings'])
    timings['total'] = time.monotonic() - start

    nodes = {
        'structure': structure,
        'workchain': node,
        'hamiltonian': hamiltonian,
        'bands_h': bands['H'][0],
        'bands_h0': bands['H0'][0],
    }
    summary = {
        'profile': profile_name,
        'protocol': protocol,
        'basis': parameters.get('basis'),
        'figure': str(figure_path.absolute()),
        'energy_zero': zero_kind,
        'nodes': {key: {'pk': n.pk, 'uuid': n.uuid, 'type': type(n).__name__} for key, n in nodes.items()},
        'gap_h': bands['H'][1].get('gap'),
        'gap_h0': bands['H0'][1].get('gap'),
        'fermi_level_h': bands['H'][1].get('fermi_level'),
        'fermi_level_h0': bands['H0'][1].get('fermi_level'),
        'selfcheck_deviation_meV': output.get('selfcheck_deviation'),
        'scf_cycles': output.get('scf_cycles'),
        'timings': {key: round(value, 1) for key, value in timings.items()},
    }
    if ml is not None:
        summary['ml'] = _ml_summary(ml)
    (output_dir / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')

    rows = [
        ('structure', f'StructureData<{structure.pk}>', structure.uuid, structure.get_formula()),
        ('work chain', f'{node.process_label}<{node.pk}>', node.uuid, f'finished [{node.exit_status}]'),
        ('Hamiltonian', f'HamiltonianData<{hamiltonian.pk}>', hamiltonian.uuid, 'H0, H, S blocks'),
        (
            'bands of H',
            f'BandsData<{bands["H"][0].pk}>',
            bands['H'][0].uuid,
            f'gap {_gap_text(bands["H"][1])}',
        ),
        (
            'bands of H0',
            f'BandsData<{bands["H0"][0].pk}>',
            bands['H0'][0].uuid,
            f'gap {_gap_text(bands["H0"][1])}',
        ),
    ]
    echo.echo('')
    echo.echo_tabulate(rows, headers=['', 'node', 'UUID', ''], tablefmt='plain')
    echo.echo('')
    echo.echo(f'Figure:  {figure_path}  (DFT solid, H0 dashed, each relative to its own {zero_kind})')
    echo.echo(f'Summary: {output_dir / "summary.json"}')
    if ml is not None:
        _print_ml(ml)
    parts = ', '.join(f'{key} {value:.0f} s' for key, value in timings.items() if key != 'total')
    echo.echo(f'Wall time {timings["total"]:.0f} s ({parts})')
    echo.echo('')
    echo.echo(f'Where to look (profile `{profile_name}`; add `-p {profile_name}` if it is not your default):')
    hints = [
        (f'verdi process show {node.pk}', 'the work chain: inputs, outputs, the CalcJob it ran'),
        (f'verdi process report {node.pk}', 'what it did, step by step'),
        (f'verdi calcjob outputcat {_calcjob_pk(node)} summary.json', "the engine's summary (timings, ...)"),
        (f'verdi data nextham show {hamiltonian.pk}', 'the Hamiltonian: basis, pairs, cutoff, ...'),
        (f'verdi data nextham bands {hamiltonian.pk}', 'its band structure, Fermi level, DOS'),
        (f'verdi process show {bands["H0"][2].pk}', 'the calcfunction that made the H0 bands'),
        (f'verdi node graph generate {hamiltonian.pk}', 'provenance graph of the Hamiltonian'),
        (f'verdi group show {GROUP_LABEL}', 'the nodes of every quickstart run'),
    ]
    width = max(len(command) for command, _ in hints)
    for command, comment in hints:
        echo.echo(f'  {command:<{width}}  # {comment}')
    echo.echo_success(f'quickstart done: {figure_path}')


def _calcjob_pk(workchain) -> int | str:
    from aiida import orm

    jobs = [n for n in workchain.called_descendants if isinstance(n, orm.CalcJobNode)]
    return max(jobs, key=lambda n: n.ctime).pk if jobs else '<PK>'


# ------------------------------------------------------------------------- the ML part (steps 4-7)
def _fail(node) -> None:
    """Stop the quickstart on a failed process, with where to look."""
    echo.echo_error(
        f'{node.process_label}<{node.pk}> failed with exit code {node.exit_status}: {node.exit_message}'
    )
    echo.echo(f'  verdi process report {node.pk}    # what it did')
    echo.echo(f'  verdi process show {node.pk}      # its inputs, outputs and sub-processes')
    raise click.exceptions.Exit(int(node.exit_status or 1))


def ml_structures(parent) -> dict:
    """The structures of the ML part, generated from ``parent`` with provenance (``generate_structures``).

    Keys: ``train_si2_<i>`` (training labels), ``test_si2`` (predicted, never trained on) and
    ``supercell_si<N>`` (the larger cell); the supercell sorts first, so its (longest) label starts first.
    """
    from aiida import orm

    from ..workflows.dataset import generate_structures

    rattled = generate_structures(parent, orm.Dict(ML_RECIPE))
    keys = sorted(rattled)
    structures = {f'train_si2_{i}': rattled[key] for i, key in enumerate(keys[:-1])}
    structures['test_si2'] = rattled[keys[-1]]
    supercell = generate_structures(parent, orm.Dict(SUPERCELL_RECIPE))['structure_0000']
    structures[f'supercell_si{len(supercell.sites)}'] = supercell
    return structures


def _dataset_builder(code, family, parent, structures: dict, max_concurrent: int):
    """``NexthamDatasetWorkChain`` labelling ``structures`` with the ``fast`` protocol, one thread each."""
    from aiida import orm

    from ..workflows.dataset import NexthamDatasetWorkChain
    from ..workflows.dft_base import NexthamDftBaseWorkChain
    from .dataset import _lock_dir, job_slot_script

    base = NexthamDftBaseWorkChain.get_builder_from_protocol(
        code, parent, protocol=ML_PROTOCOL, overrides={'threads': 1}, mode='label', pseudo_family=family.label
    )
    builder = NexthamDatasetWorkChain.get_builder()
    builder.structures = structures
    builder.base.dft.code = code
    builder.base.dft.parameters = base.dft.parameters
    builder.base.dft.mode = base.dft.mode
    builder.base.pseudo_family = orm.Str(family.label)
    if max_concurrent > 0 and code.computer.scheduler_type == 'core.direct':
        builder.base.dft.metadata.options.prepend_text = job_slot_script(
            max_concurrent, _lock_dir(code.computer)
        )
    builder.metadata.label = 'aiida-nextham quickstart: Si dataset'
    return builder


def _write_png(node, path: pathlib.Path) -> None:
    with node.open(mode='rb') as handle:
        path.write_bytes(handle.read())


def provenance_summary(bands) -> dict:
    """QueryBuilder walk from a predicted ``BandsData`` back to what made it.

    :returns: ``ancestors`` ({node type: count}), ``labels`` (the training HamiltonianData with the
        structures they label), ``config`` (the training config Dict), ``model``, ``pseudos``
        (GthPseudoData of the H0 build with their family) and ``structure`` (the predicted one).
    """
    from collections import Counter

    from aiida import orm

    from ..calculations.dft import NexthamDftCalculation
    from ..calculations.predict import NexthamPredictCalculation
    from ..calculations.train import NexthamTrainCalculation
    from ..data.hamiltonian import HamiltonianData
    from ..data.model import ModelData
    from ..data.pseudo import GthPseudoData, GthPseudoFamily

    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(orm.Node, with_descendants='bands', project='node_type')
    ancestors = Counter(node_type.rstrip('.').rsplit('.', 1)[-1] for node_type in query.all(flat=True))

    # bands <- predict <- model <- train <- labels <- DFT calculation <- structure; train <- config
    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='predict')
    query.append(ModelData, with_outgoing='predict', tag='model', project='id')
    query.append(NexthamTrainCalculation, with_outgoing='model', tag='train', project='id')
    query.append(orm.Dict, with_outgoing='train', edge_filters={'label': 'config'}, project='id')
    query.append(HamiltonianData, with_outgoing='train', tag='label', project='id')
    query.append(NexthamDftCalculation, with_outgoing='label', tag='dft')
    query.append(orm.StructureData, with_outgoing='dft', project='id')
    rows = query.all()
    labels = sorted({(label, structure) for *_, label, structure in rows})

    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='predict')
    query.append(GthPseudoData, with_outgoing='predict', tag='pseudo', project=['id', 'attributes.element'])
    query.append(GthPseudoFamily, with_node='pseudo', project='label')
    pseudos = sorted(tuple(row) for row in query.all())

    query = orm.QueryBuilder()
    query.append(orm.BandsData, filters={'id': bands.pk}, tag='bands')
    query.append(NexthamPredictCalculation, with_outgoing='bands', tag='predict')
    query.append(orm.KpointsData, with_outgoing='predict', tag='path')
    query.append(orm.CalcFunctionNode, with_outgoing='path', tag='seekpath')
    query.append(orm.StructureData, with_outgoing='seekpath', project='id')
    structures = query.all(flat=True)
    return {
        'ancestors': dict(sorted(ancestors.items())),
        'model': sorted({row[0] for row in rows}),
        'train': sorted({row[1] for row in rows}),
        'config': sorted({row[2] for row in rows}),
        'labels': [list(pair) for pair in labels],
        'pseudos': [list(row) for row in pseudos],
        'structure': structures,
    }


def run_ml_part(code, family, parent, output_dir: pathlib.Path, max_concurrent: int = 2, threads: int = 2):
    """Steps 4-7 of the quickstart: dataset, training, prediction, validation; returns the summary.

    :param max_concurrent: engine jobs of the dataset at a time (job slots on a ``core.direct`` computer).
    :param threads: OpenMP threads of the training and prediction jobs.
    """
    from aiida import orm

    from ..workflows.predict import NexthamPredictBandsWorkChain
    from ..workflows.train import NexthamTrainWorkChain
    from ..workflows.validate import NexthamValidateWorkChain, validate_hamiltonian
    from .dataset import _dataset_status

    group, _ = orm.Group.collection.get_or_create(GROUP_LABEL)
    timings = {}
    environment = {'OMP_NUM_THREADS': str(threads)}

    # step 4: the labels
    structures = ml_structures(parent)
    (supercell_key,) = [key for key in structures if key.startswith('supercell_')]
    builder = _dataset_builder(code, family, parent, structures, max_concurrent)
    n_train = sum(key.startswith('train_') for key in structures)
    echo.echo_report(
        f'step 4/7: DFT labels ({ML_PROTOCOL} protocol, gth-szv) of {len(structures)} structures '
        f'generated from StructureData<{parent.pk}>: {n_train} rattled 2-atom cells for training, '
        f'1 held out, and a {len(structures[supercell_key].sites)}-atom supercell (NexthamDatasetWorkChain, '
        f'{max_concurrent or "all"} at a time; 2-4 minutes)'
    )
    start = time.monotonic()
    results, dataset = run_with_progress(builder, interval=30.0, status=_dataset_status)
    timings['dataset'] = time.monotonic() - start
    group.add_nodes([dataset])
    labels = dict(results.get('hamiltonians', {}))
    if not dataset.is_finished_ok or set(labels) != set(structures):
        missing = sorted(set(structures) - set(labels))
        echo.echo_error(f'labels missing: {missing}' if missing else 'the dataset failed')
        _fail(dataset)

    # step 5: training
    train_group, _ = orm.Group.collection.get_or_create(f'{GROUP_LABEL}/train/{dataset.uuid}')
    train_group.description = f'training labels of the quickstart, from NexthamDatasetWorkChain<{dataset.pk}>'
    train_group.add_nodes([labels[key] for key in sorted(labels) if key.startswith('train_')])
    builder = NexthamTrainWorkChain.get_builder_from_group(
        train_group, code, ML_CONFIG, options={'environment_variables': environment}
    )
    builder.metadata.label = 'aiida-nextham quickstart: training'
    echo.echo_report(
        f'step 5/7: training a small model on {train_group.count()} labels (Group `{train_group.label}`), '
        f'CPU, {ML_CONFIG["train"]["steps"]} steps (NexthamTrainWorkChain, about a minute)'
    )
    start = time.monotonic()
    results, train = run_with_progress(builder, interval=20.0)
    timings['train'] = time.monotonic() - start
    group.add_nodes([train])
    if not train.is_finished_ok:
        _fail(train)
    model, train_metrics = results['model'], results['metrics'].get_dict()

    # step 6: predictions
    echo.echo_report(
        f'step 6/7: predicting the held-out cell and the supercell with ModelData<{model.pk}> '
        f'(NexthamPredictBandsWorkChain, {ML_PROTOCOL} protocol: H0 from PySCF, then the model)'
    )
    predictions = {}
    start = time.monotonic()
    for key in ('test_si2', supercell_key):
        builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
            code,
            model,
            structures[key],
            protocol=ML_PROTOCOL,
            pseudo_family=family.label,
            options={'environment_variables': environment},
        )
        builder.metadata.label = f'aiida-nextham quickstart: prediction {key}'
        results, node = run_with_progress(builder, interval=20.0)
        group.add_nodes([node])
        if not node.is_finished_ok:
            _fail(node)
        predictions[key] = (results, node)
    timings['predict'] = time.monotonic() - start

    # step 7: validation against the DFT labels
    echo.echo_report(
        'step 7/7: validation against the DFT labels (validate_hamiltonian, NexthamValidateWorkChain)'
    )
    start = time.monotonic()
    output_dir.mkdir(parents=True, exist_ok=True)
    validation = {}
    for key, (results, node) in predictions.items():
        reference = labels[key]
        h_metrics, h_node = validate_hamiltonian.run_get_node(
            results['hamiltonian'], reference, orm.Dict({'window': VALIDATION_WINDOW})
        )
        if not h_node.is_finished_ok:
            _fail(h_node)
        builder = NexthamValidateWorkChain.get_builder()
        builder.predicted = results['band_structure']
        builder.reference = reference
        builder.predicted_parameters = results['output_parameters']
        builder.parameters = orm.Dict({'window': VALIDATION_WINDOW})
        builder.metadata.label = f'aiida-nextham quickstart: validation {key}'
        outputs, v_node = run_with_progress(builder, interval=30.0)
        if not v_node.is_finished_ok:
            _fail(v_node)
        group.add_nodes([v_node])
        png = output_dir / f'{key}_validation.png'
        if 'plot' in outputs:
            _write_png(outputs['plot'], png)
        validation[key] = {
            'structure': structures[key],
            'prediction': node,
            'bands': results['band_structure'],
            'label': reference,
            'hamiltonian_metrics': h_metrics.get_dict(),
            'band_metrics': outputs['band_metrics'].get_dict(),
            'validation': v_node,
            'figure': png if 'plot' in outputs else None,
        }
    timings['validate'] = time.monotonic() - start
    provenance = provenance_summary(validation[supercell_key]['bands'])
    return {
        'dataset': dataset,
        'train': train,
        'model': model,
        'train_metrics': train_metrics,
        'validation': validation,
        'provenance': provenance,
        'timings': timings,
    }


def _ml_summary(ml: dict) -> dict:
    """The JSON-able part of :func:`run_ml_part`'s result for summary.json."""

    def ref(node):
        return {'pk': node.pk, 'uuid': node.uuid, 'type': type(node).__name__}

    validation = {}
    for key, item in ml['validation'].items():
        validation[key] = {
            'nodes': {
                name: ref(item[name]) for name in ('structure', 'prediction', 'bands', 'label', 'validation')
            },
            'hamiltonian_metrics': {
                k: v for k, v in item['hamiltonian_metrics'].items() if not isinstance(v, dict | list)
            },
            'band_metrics': {k: v for k, v in item['band_metrics'].items() if not isinstance(v, dict | list)},
            'figure': str(item['figure'].absolute()) if item['figure'] else None,
        }
    return {
        'recipe': ML_RECIPE,
        'supercell_recipe': SUPERCELL_RECIPE,
        'config': ML_CONFIG,
        'nodes': {name: ref(ml[name]) for name in ('dataset', 'train', 'model')},
        'train_metrics': ml['train_metrics'],
        'validation': validation,
        'provenance': ml['provenance'],
    }


def _fmt(value, spec: str = '.1f') -> str:
    return 'n/a' if value is None else format(value, spec)


def _print_ml(ml: dict) -> None:
    """The metrics table and the provenance summary of the ML part."""
    from aiida import orm

    echo.echo('')
    metrics = ml['train_metrics']
    echo.echo(
        f'Model: ModelData<{ml["model"].pk}> from {ml["train"].process_label}<{ml["train"].pk}>; '
        f'best validation MAE {_fmt(metrics.get("best_val_mae"), ".2f")} meV '
        f'at step {metrics.get("best_step")}'
    )
    rows = []
    for key, item in ml['validation'].items():
        h, b = item['hamiltonian_metrics'], item['band_metrics']
        rows.append(
            (
                key,
                f'{len(item["structure"].sites)}',
                _fmt(h.get('mae_raw')),
                _fmt(h.get('mae_shifted')),
                _fmt(b.get('band_mae')),
                f'{_fmt(b.get("gap_predicted"), ".3f")} / {_fmt(b.get("gap_reference"), ".3f")}',
                _fmt(b.get('gap_error')),
                f'{b.get("ghost_bands")} / {h.get("ghost_bands")}',
            )
        )
    window = f'[{VALIDATION_WINDOW[0]:g}, {VALIDATION_WINDOW[1]:g}] eV around the VBM'
    echo.echo(f'Validation against the DFT labels (bands along the seekpath path; window {window}):')
    headers = [
        'structure',
        'atoms',
        'MAE H (meV)',
        'MAE H-μS (meV)',
        'band MAE (meV)',
        'gap pred/DFT (eV)',
        'gap err (meV)',
        'ghosts path/mesh',
    ]
    echo.echo_tabulate(rows, headers=headers, tablefmt='simple')
    echo.echo(
        '  MAE H-μS: after the optimal uniform shift μS; ghosts: predicted eigenvalues more than 0.1 eV from '
        'every DFT one in the window (path: along the band path, mesh: on a k-mesh)'
    )
    for item in ml['validation'].values():
        if item['figure'] is not None:
            echo.echo(f'  figure: {item["figure"]}')

    provenance = ml['provenance']
    final = [item for key, item in ml['validation'].items() if key.startswith('supercell_')][0]
    echo.echo('')
    echo.echo(f'Provenance of the predicted supercell bands BandsData<{final["bands"].pk}> (QueryBuilder):')
    ancestors = ', '.join(f'{count} {kind}' for kind, count in provenance['ancestors'].items())
    echo.echo(f'  ancestors: {ancestors}')
    echo.echo(
        f'  model ModelData<{",".join(map(str, provenance["model"]))}> <- '
        f'NexthamTrainCalculation<{",".join(map(str, provenance["train"]))}>, '
        f'config Dict<{",".join(map(str, provenance["config"]))}>'
    )
    labels = ', '.join(f'HamiltonianData<{h}> (StructureData<{s}>)' for h, s in provenance['labels'])
    echo.echo(f'  DFT labels it was trained on: {labels}')
    pseudos = ', '.join(
        f'{element}: GthPseudoData<{pk}> in `{family}`' for pk, element, family in provenance['pseudos']
    )
    echo.echo(f'  pseudopotentials of its H0: {pseudos}')
    structure = orm.load_node(provenance['structure'][0]) if provenance['structure'] else None
    if structure is not None:
        echo.echo(
            f'  structure: StructureData<{structure.pk}> ({structure.get_formula()}), generated by '
            f'{structure.creator.process_label}<{structure.creator.pk}> from '
            f'StructureData<{structure.creator.inputs.parent.pk}>'
        )
