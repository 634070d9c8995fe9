"""``aiida-nextham dataset``: DFT labels of many generated structures with ``NexthamDatasetWorkChain``.

One command: parent structure (a file ASE reads, or a stored ``StructureData``) + recipe (supercell,
random displacements and strains, seed) -> a Group of ``HamiltonianData`` and a summary node, run in
this process (``--run``) or by the daemon (``--daemon``), optionally exported to a folder of HDF5
files for training.

Concurrency: the work chain launches every label at once. On a computer without a queueing system
(``core.direct``) that means every engine process starts at the same time, which a laptop or a small
VM cannot hold in memory (a 2-atom gth-dzvp label peaks at ~3 GB). ``--max-concurrent N`` makes the
job scripts take one of N job slots (``flock`` on files in the computer's work directory) before the
engine starts, so at most N engines run at a time; the slots are part of each calculation's
``prepend_text`` and so of its provenance.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import click
from aiida.cmdline.params import types
from aiida.cmdline.utils import decorators, echo

__all__ = ('cmd_dataset', 'export_dataset', 'job_slot_script')

#: engine settings of every label unless overridden (one OpenMP thread per engine process)
DEFAULT_THREADS = 1


def job_slot_script(max_concurrent: int, lock_dir: str) -> str:
    """Bash that blocks until it holds one of ``max_concurrent`` job slots (``flock`` on fd 9).

    The engine started after it inherits fd 9, so the slot is held until the job script ends.
    """
    return (
        f'# aiida-nextham dataset: at most {max_concurrent} engine runs at a time on this computer\n'
        f'mkdir -p "{lock_dir}"\n'
        'while :; do\n'
        f'  for slot in $(seq 1 {max_concurrent}); do\n'
        f'    exec 9>>"{lock_dir}/slot-$slot"\n'
        '    if flock -n 9; then break 2; fi\n'
        '    exec 9>&-\n'
        '  done\n'
        '  sleep 2\n'
        'done\n'
    )


def _lock_dir(computer) -> str:
    workdir = computer.get_workdir().replace('{username}', '${USER}')
    return f'{workdir.rstrip("/")}/.nextham-job-slots'


def _parse_supercell(value: str) -> int | list[int]:
    parts = value.replace(',', ' ').split()
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise click.BadParameter(f'give one integer or three, e.g. 2 or "2 2 1", not {value!r}') from None
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) != 3:
        raise click.BadParameter(f'give one integer or three, e.g. 2 or "2 2 1", not {value!r}')
    return numbers


def _load_structure(path: pathlib.Path | None, pk: int | None):
    from aiida import orm

    if (path is None) == (pk is None):
        raise click.UsageError('give a STRUCTURE file or --structure-pk (exactly one)')
    if pk is not None:
        from aiida.common.exceptions import NotExistent

        try:
            return orm.load_node(pk)
        except NotExistent:
            raise click.BadParameter(f'no node with PK {pk}', param_hint='--structure-pk') from None
    from ase.io import read

    try:
        atoms = read(path)
    except Exception as exc:
        raise click.BadParameter(f'ASE cannot read {path}: {exc}', param_hint='STRUCTURE') from None
    structure = orm.StructureData(ase=atoms)
    structure.label = path.name
    structure.description = f'read from {path.absolute()} by aiida-nextham dataset'
    return structure.store()


def _dataset_status(node) -> str:
    from aiida import orm

    children = [
        n
        for n in node.called
        if isinstance(n, orm.WorkflowNode) and n.process_label == 'NexthamDftBaseWorkChain'
    ]
    if not children:
        state = node.process_state.value if node.process_state else 'created'
        return f'{node.process_label}<{node.pk}> {state}'
    done = [n for n in children if n.is_terminated]
    ok = sum(1 for n in done if n.is_finished_ok)
    jobs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode) and not n.is_terminated]
    running = sum(1 for n in jobs if n.get_scheduler_state() is not None)
    return f'{len(done)}/{len(children)} labels done ({ok} ok), {running} engine jobs submitted and not done'


def _labels(node) -> dict[str, object]:
    """``{key: NexthamDftBaseWorkChain node}`` of a dataset work chain (key as in its outputs)."""
    from aiida.common.links import LinkType

    children = {}
    for link in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all():
        if link.node.process_label == 'NexthamDftBaseWorkChain':
            children[link.link_label.removeprefix('label_')] = link.node
    return children


def _label_record(child) -> dict:
    """What the ML side needs to know about one label, from its work chain's outputs."""
    record = {'workchain_uuid': child.uuid, 'structure_uuid': child.inputs.dft.structure.uuid}
    if 'output_parameters' not in child.outputs:
        return record
    parameters = child.outputs.output_parameters.get_dict()
    record.update(
        total_energy_eV=parameters.get('energies', {}).get('total'),
        fermi_level_eV=parameters.get('fermi_level'),
        gap_eV=(parameters.get('gap') or {}).get('gap'),
        selfcheck_deviation_meV=parameters.get('selfcheck_deviation'),
        scf_cycles=parameters.get('scf_cycles'),
        kmesh=parameters.get('kmesh'),
        dense_kmesh=parameters.get('dense_kmesh'),
        engine_seconds=parameters.get('timings', {}).get('total'),
    )
    return record


def export_dataset(node, directory: pathlib.Path) -> list[pathlib.Path]:
    """Write every Hamiltonian of a finished dataset work chain to ``directory/<key>.h5`` + ``dataset.json``.

    ``dataset.json`` lists, per file, the node UUIDs (Hamiltonian, structure), the energies, gap, Fermi
    level and self-check deviation, and once the recipe, parent structure and engine parameters.
    """
    directory.mkdir(parents=True, exist_ok=True)
    hamiltonians = dict(node.outputs.hamiltonians) if 'hamiltonians' in node.outputs else {}
    children = _labels(node)
    files, entries = [], {}
    for key, hamiltonian in sorted(hamiltonians.items()):
        path = hamiltonian.export(directory / f'{key}.h5', 'nextham')
        files.append(path)
        entries[key] = {
            'file': path.name,
            'hamiltonian_uuid': hamiltonian.uuid,
            'formula': hamiltonian.formula,
        }
        if key in children:
            entries[key].update(_label_record(children[key]))
    inputs = node.inputs
    manifest = {
        'dataset_workchain_uuid': node.uuid,
        'summary': node.outputs.summary.get_dict() if 'summary' in node.outputs else None,
        'recipe': inputs.recipe.get_dict() if 'recipe' in inputs else None,
        'parent_structure_uuid': inputs.parent_structure.uuid if 'parent_structure' in inputs else None,
        'engine_parameters': inputs.base.dft.parameters.get_dict()
        if 'parameters' in inputs.base.dft
        else None,
        'mode': inputs.base.dft.mode.value if 'mode' in inputs.base.dft else None,
        'pseudo_family': inputs.base.pseudo_family.value if 'pseudo_family' in inputs.base else None,
        'units': {'energy': 'eV', 'length': 'angstrom'},
        'files': entries,
    }
    (directory / 'dataset.json').write_text(json.dumps(manifest, indent=1) + '\n')
    return files


def _wait(node, interval: float, report=echo.echo_report) -> None:
    """Poll a process run by the daemon until it terminates, reporting progress every ``interval`` s."""
    start = time.monotonic()
    next_report = start + interval
    while not node.is_terminated:
        time.sleep(2.0)
        if time.monotonic() >= next_report:
            report(f'[{time.monotonic() - start:6.0f} s] {_dataset_status(node)}')
            next_report += interval


def _summarise(node, wall: float, export_dir: pathlib.Path | None) -> None:
    import numpy as np

    if 'summary' not in node.outputs:
        echo.echo_critical(
            f'{node.process_label}<{node.pk}> produced no summary (exit code {node.exit_status}: '
            f'{node.exit_message}); see `verdi process report {node.pk}`'
        )
    summary_node = node.outputs.summary
    summary = summary_node.get_dict()
    records = {key: _label_record(child) for key, child in _labels(node).items()}
    engine = np.array([r['engine_seconds'] for r in records.values() if r.get('engine_seconds') is not None])
    selfcheck = [r['selfcheck_deviation_meV'] for r in records.values() if r.get('selfcheck_deviation_meV')]
    gaps = [r['gap_eV'] for r in records.values() if r.get('gap_eV') is not None]
    rows = [
        ('Group', f'{summary["group_label"]}  (verdi group show {summary["group_label"]})'),
        ('Summary node', f'Dict<{summary_node.pk}>  {summary_node.uuid}'),
        ('Work chain', f'{node.process_label}<{node.pk}>  {node.uuid}  [{node.exit_status}]'),
        ('Labels', f'{summary["n_ok"]} ok, {summary["n_failed"]} failed of {summary["n_structures"]}'),
        ('Wall time', f'{wall:.0f} s in this command'),
    ]
    if engine.size:
        rows.append(
            (
                'Engine time per label',
                f'mean {engine.mean():.1f} s, min {engine.min():.1f} s, max {engine.max():.1f} s '
                f'(sum {engine.sum():.0f} s)',
            )
        )
    if selfcheck:
        rows.append(('Self-check deviation', f'max {max(selfcheck):.3g} meV'))
    if gaps:
        rows.append(('Gap', f'{min(gaps):.3f} .. {max(gaps):.3f} eV'))
    if summary['failed']:
        rows.append(('Failed', ', '.join(f'{k} [{v}]' for k, v in sorted(summary['failed'].items()))))
    if export_dir is not None:
        files = export_dataset(node, export_dir)
        rows.append(('Exported', f'{len(files)} HDF5 files + dataset.json to {export_dir}'))
    echo.echo_tabulate(rows, tablefmt='plain')
    if not node.is_finished_ok:
        echo.echo_critical(
            f'{node.process_label}<{node.pk}> failed with exit code {node.exit_status}: {node.exit_message}'
        )
    echo.echo_success(f'dataset in Group `{summary["group_label"]}`')


@click.command('dataset')
@click.argument(
    'structure', required=False, type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path)
)
@click.option(
    '--structure-pk', type=int, default=None, help='A stored StructureData as parent (instead of a file).'
)
@click.option(
    '--supercell', default='1', show_default=True, help='Repetitions of the parent cell: N or "N1 N2 N3".'
)
@click.option(
    '-n', '--n-structures', type=click.IntRange(min=1), required=True, help='Structures to generate.'
)
@click.option(
    '--rattle',
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help='Std. deviation of the random displacement of each Cartesian coordinate, Å.',
)
@click.option(
    '--strain',
    type=click.FloatRange(min=0, max=0.5, max_open=True),
    default=0.0,
    show_default=True,
    help='Largest component of the random symmetric strain.',
)
@click.option('--seed', type=click.IntRange(min=0), required=True, help='Seed of the structure generator.')
@click.option(
    '--protocol',
    type=click.Choice(['fast', 'balanced', 'stringent']),
    default='balanced',
    show_default=True,
    help='Label-engine protocol (fast: gth-szv; balanced and stringent: gth-dzvp).',
)
@click.option('--basis', default=None, help="GTH basis replacing the protocol's, e.g. gth-dzvp.")
@click.option(
    '--overrides', default=None, metavar='JSON', help="Engine settings replacing the protocol's, as JSON."
)
@click.option(
    '--mode',
    type=click.Choice(['label', 'h0']),
    default='label',
    show_default=True,
    help='label: H0, H and S (SCF); h0: H0 and S only.',
)
@click.option(
    '--group', 'group_label', default=None, help='Group collecting the Hamiltonians (default: new).'
)
@click.option(
    '--code', type=types.CodeParamType(), default=None, help='Code running `nextham` [nextham@localhost].'
)
@click.option(
    '--daemon/--run',
    'daemon',
    default=False,
    show_default=True,
    help='Submit to the daemon, or run in this process (waits until done).',
)
@click.option('--wait', is_flag=True, help='With --daemon: wait for the end (and export, summarise).')
@click.option(
    '--max-concurrent',
    type=click.IntRange(min=0),
    default=None,
    help='At most N engine runs at a time on a computer without a queue (core.direct); 0: no limit. '
    '[default: the number of CPU cores for a core.local computer, else no limit]',
)
@click.option(
    '--threads',
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    show_default=True,
    help='OpenMP threads of each engine run.',
)
@click.option(
    '--export-dir',
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help='Write every Hamiltonian to DIR/<key>.h5 plus DIR/dataset.json (the manifest) at the end.',
)
@decorators.with_dbenv()
def cmd_dataset(
    structure,
    structure_pk,
    supercell,
    n_structures,
    rattle,
    strain,
    seed,
    protocol,
    basis,
    overrides,
    mode,
    group_label,
    code,
    daemon,
    wait,
    max_concurrent,
    threads,
    export_dir,
):
    """Label N structures generated from STRUCTURE (supercell, rattle, strain, seed) with DFT.

    Runs a NexthamDatasetWorkChain: a seeded generate_structures calcfunction makes the structures
    (linked to the parent and recipe), one NexthamDftBaseWorkChain per structure computes its label
    (H0, H, S) and the HamiltonianData nodes are collected in a Group with a summary Dict.
    STRUCTURE is any file ASE reads (CIF, POSCAR, extended XYZ, ...).

    Example (20 rattled 8-atom Si cells, gth-dzvp, exported for training):

    \b
        aiida-nextham dataset si8.cif -n 20 --rattle 0.05 --seed 0 \\
            --protocol balanced --group si/rattled --export-dir si_rattled
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    from ..data.pseudo import install_pyscf_gth_family
    from ..workflows.dataset import NexthamDatasetWorkChain, validate_recipe
    from ..workflows.dft_base import NexthamDftBaseWorkChain
    from .quickstart import _parse_overrides, run_with_progress

    if wait and not daemon:
        raise click.UsageError('--wait only applies with --daemon (--run always waits)')
    if export_dir is not None and daemon and not wait:
        raise click.UsageError('--export-dir needs the end of the run: add --wait, or use --run')
    settings = _parse_overrides(overrides)
    if basis:
        settings['basis'] = basis
    settings.setdefault('threads', threads)
    recipe = {
        'supercell': _parse_supercell(supercell),
        'n_structures': n_structures,
        'rattle': float(rattle),
        'strain': float(strain),
        'seed': seed,
    }
    message = validate_recipe(recipe)
    if message:
        raise click.BadParameter(message)
    if group_label is not None:
        try:
            existing = orm.load_group(group_label)
        except NotExistent:
            existing = None
        if existing is not None and existing.count():
            echo.echo_warning(
                f'the Group `{group_label}` already holds {existing.count()} nodes; adding to it'
            )
    if code is None:
        try:
            code = orm.load_code('nextham@localhost')
        except NotExistent:
            echo.echo_critical('no code `nextham@localhost`: run `aiida-nextham setup` first, or pass --code')

    parent = _load_structure(structure, structure_pk)
    if not isinstance(parent, orm.StructureData):
        echo.echo_critical(f'node {structure_pk} is a {type(parent).__name__}, not a StructureData')

    try:
        xc = str(NexthamDftBaseWorkChain.get_protocol_parameters(protocol, settings).get('xc', 'pbe')).lower()
        family, _ = install_pyscf_gth_family(xc if xc != 'lda' else 'pade')
        base = NexthamDftBaseWorkChain.get_builder_from_protocol(
            code, parent, protocol=protocol, overrides=settings, mode=mode, pseudo_family=family.label
        )
    except (ValueError, TypeError) as exc:
        echo.echo_critical(f'cannot build the label work chain: {exc}')
    computer = code.computer
    if max_concurrent is None:
        max_concurrent = (os.cpu_count() or 1) if computer.transport_type == 'core.local' else 0
    prepend_text = None
    if max_concurrent > 0:
        if computer.scheduler_type != 'core.direct':
            echo.echo_warning(f'--max-concurrent ignored: {computer.label} has a queueing system')
            max_concurrent = 0
        else:
            prepend_text = job_slot_script(max_concurrent, _lock_dir(computer))

    builder = NexthamDatasetWorkChain.get_builder()
    builder.parent_structure = parent
    builder.recipe = orm.Dict(recipe)
    if group_label:
        builder.group_label = orm.Str(group_label)
    builder.base.dft.code = code
    builder.base.dft.parameters = base.dft.parameters
    builder.base.dft.mode = base.dft.mode
    if 'kpoints' in base.dft:
        builder.base.dft.kpoints = base.dft.kpoints
    builder.base.pseudo_family = orm.Str(family.label)
    if prepend_text:
        builder.base.dft.metadata.options.prepend_text = prepend_text
    builder.metadata.label = f'dataset of {n_structures} from {parent.get_formula()}'

    parameters = builder.base.dft.parameters.get_dict()
    echo.echo_report(
        f'{n_structures} structures from {parent.get_formula()} (StructureData<{parent.pk}>), '
        f'recipe {recipe}; '
        f'mode {mode}, protocol {protocol}, basis {parameters.get("basis")}, {parameters.get("threads")} '
        f'thread(s) per run, at most {max_concurrent or "all"} at a time'
    )
    start = time.monotonic()
    if daemon:
        from aiida.engine import submit
        from aiida.engine.daemon.client import get_daemon_client

        if not get_daemon_client().is_daemon_running:
            echo.echo_critical('the daemon is not running: `verdi daemon start`, or use --run')
        node = submit(builder)
        echo.echo_report(f'submitted {node.process_label}<{node.pk}>')
        if not wait:
            echo.echo(f'  verdi process status {node.pk}   # progress')
            echo.echo(f'  verdi process show {node.pk}     # outputs: summary, hamiltonians')
            return
        _wait(node, 30.0)
    else:
        _, node = run_with_progress(builder, interval=30.0, status=_dataset_status)
    _summarise(node, time.monotonic() - start, export_dir)
