"""``aiida-nextham quickstart``: a DFT label of silicon and its band structure next to that of H0.

Sets up (or reuses) the profile exactly like ``aiida-nextham setup``, runs a
``NexthamDftBaseWorkChain`` in label mode for 2-atom diamond Si in this process, diagonalises the
self-consistent H and the zeroth-step H0 of the resulting ``HamiltonianData`` along one seekpath
path with the ``compute_bands`` calcfunction, and writes one PNG with both band structures.
Every run makes new nodes (structure, work chain, Hamiltonian, bands); the profile, computer, code
and pseudopotential family are reused.
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
@click.pass_context
def cmd_quickstart(ctx, profile_name, output_dir, protocol, overrides, npoints):
    """Set up a profile, label silicon with DFT, and plot its band structure next to that of H0.

    Runs the self-consistent PySCF label (H0, H and S in real space) of 2-atom diamond Si as a
    NexthamDftBaseWorkChain in this process, then the band structures of H and of H0 along the
    seekpath path with the compute_bands calcfunction, all with provenance. Writes
    OUTPUT_DIR/si_bands_h_vs_h0.png and OUTPUT_DIR/summary.json and prints the nodes.
    Takes 2-4 minutes on 2 cores with the default (balanced) protocol, under a minute with
    --protocol fast, whose single-zeta basis gets the conduction bands wrong.
    """
    overrides = _parse_overrides(overrides)
    start = time.monotonic()
    timings = {}
    echo.echo_report(f'step 1/3: profile `{profile_name}` (created on first use, reused afterwards)')
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
        f'step 2/3: DFT label of Si (StructureData<{structure.pk}>), protocol `{protocol}`: '
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

    echo.echo_report('step 3/3: band structures of H and H0 along the seekpath path (compute_bands)')
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
    echo.echo(
        f'Wall time {timings["total"]:.0f} s (profile {timings["setup"]:.0f} s, DFT {timings["dft"]:.0f} s, '
        f'bands {timings["bands"]:.0f} s)'
    )
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
