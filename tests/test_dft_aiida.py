"""AiiDA layer of the DFT label engine: GTH families, NexthamDftCalculation, its parser and work chains.

Engine runs are kept tiny (2-atom Si, gth-szv, small meshes and cutoff); the parser tests read real
output folders written by the engine (``tests/data/dft_outputs``, regenerated with
``python tests/data/dft_outputs/generate.py``).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from aiida import orm
from aiida.common.files import md5_from_filelike
from aiida.engine import run_get_node

DATA = Path(__file__).parent / 'data'
OUTPUTS = DATA / 'dft_outputs'

#: minimal engine settings for test runs (fast protocol, cheap meshes); parameters of the CalcJob
TINY = {
    'protocol': 'fast',
    'cutoff': 4.0,
    'alias_margin': 1.0,
    'selfcheck': False,
    'threads': 1,
}


def _si(a: float = 5.43) -> orm.StructureData:
    from ase.build import bulk

    return orm.StructureData(ase=bulk('Si', 'diamond', a=a))


def _kpoints(mesh) -> orm.KpointsData:
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh(list(mesh))
    return kpoints


# ------------------------------------------------------------------------------------ pseudopotentials
def test_gth_family_install_offline_idempotent(gth_family, run_cli_command):
    from aiida_nextham.cli import cmd_root
    from aiida_nextham.data.pseudo import (
        GthPseudoData,
        GthPseudoFamily,
        get_pyscf_gth_file,
        install_pyscf_gth_family,
        pyscf_gth_family_label,
        split_gth_file,
    )

    assert gth_family.label == pyscf_gth_family_label('pbe')
    assert gth_family.label.startswith('GTH/PBE/pyscf-')
    assert isinstance(gth_family, GthPseudoFamily)
    si = gth_family.get_pseudo('Si')
    assert isinstance(si, GthPseudoData)
    assert (si.element, si.name, si.z_valence, si.functional) == ('Si', 'GTH-PBE-q4', 4, 'PBE')
    assert si.pyscf_name == 'Si GTH-PBE-q4'
    # the md5 is that of PySCF's entry, and the family holds PySCF's default entry of every element
    entries = {
        info['element']: (info, text)
        for info, text in split_gth_file(get_pyscf_gth_file('pbe').read_text())
        if info['aliases']
    }
    assert si.md5 == md5_from_filelike(io.BytesIO(entries['Si'][1].encode()))
    assert set(gth_family.elements) == set(entries)
    assert gth_family.get_pseudo('Cu').name == 'GTH-PBE-q11'  # PySCF's default, not the q19 variant

    n_nodes = orm.QueryBuilder().append(GthPseudoData).count()
    family, created = install_pyscf_gth_family('pbe')
    assert not created and family.pk == gth_family.pk
    result = run_cli_command(cmd_root, ['install', 'gth', '--functional', 'pbe'])
    assert 'already installed' in result.output
    assert orm.QueryBuilder().append(GthPseudoData).count() == n_nodes

    # a family of the same label with other content is refused, not silently reused
    with pytest.raises(ValueError, match='differs'):
        from aiida_nextham.data import pseudo as pseudo_module

        pseudo_module._check_family(family, [(entries['Si'][0], entries['Si'][1] + '# changed\n')])


def test_gth_pseudo_parsing_errors():
    from aiida.common.exceptions import ParsingError

    from aiida_nextham.data.pseudo import GthPseudoData

    with pytest.raises(ParsingError):
        GthPseudoData(io.BytesIO(b'not a pseudopotential\n'), filename='x.gth')
    two = (
        b'#PSEUDOPOTENTIAL\nH GTH-PBE-q1\n 1\n 0.2 2 -4.1 0.7\n 0\n'
        b'#PSEUDOPOTENTIAL\nHe GTH-PBE-q2\n 2\n 0.2 2 -9 1.7\n 0\n'
    )
    with pytest.raises(ParsingError, match='several'):
        GthPseudoData(io.BytesIO(two), filename='x.gth')


# ------------------------------------------------------------------------------------------- CalcJob
def _dry_run(builder) -> Path:
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    return Path(node.dry_run_info['folder'])


def _builder(code, family, structure, parameters=None, mode='label', mesh=(2, 2, 2)):
    from aiida_nextham.calculations.dft import NexthamDftCalculation

    builder = NexthamDftCalculation.get_builder()
    builder.code = code
    builder.structure = structure
    builder.pseudos = family.get_pseudos(structure=structure)
    builder.parameters = orm.Dict(dict(TINY if parameters is None else parameters))
    builder.kpoints = _kpoints(mesh)
    builder.mode = orm.Str(mode)
    return builder


def test_calcjob_dry_run_regression(nextham_code, gth_family, tmp_path, monkeypatch):
    """The written config, command line and pseudopotential file match the expected files."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder into ./submit_test
    folder = _dry_run(_builder(nextham_code, gth_family, _si()))
    expected = DATA / 'dft_dry_run'
    assert json.loads((folder / 'config.json').read_text()) == json.loads(
        (expected / 'config.json').read_text()
    )
    calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
    cmdline = calcinfo['codes_info'][0]['cmdline_params']
    assert cmdline == json.loads((expected / 'cmdline.json').read_text())
    assert {'hamiltonian.h5', 'nextham.err', 'nextham.out', 'summary.json'} <= set(calcinfo['retrieve_list'])
    # the pseudopotential file is the node's file, byte for byte (provenance by md5)
    pseudo = (folder / 'pseudo' / 'gth.dat').read_bytes()
    assert md5_from_filelike(io.BytesIO(pseudo)) == gth_family.get_pseudo('Si').md5
    # the structure is an extended XYZ file with the cell and pbc that ASE reads back
    from ase.io import read

    atoms = read(folder / 'structure.xyz')
    assert atoms.pbc.all() and len(atoms) == 2
    assert abs(atoms.cell.volume - _si().get_ase().cell.volume) < 1e-8
    submit = (folder / '_aiidasubmit.sh').read_text()
    assert "'dft' 'structure.xyz'" in submit or 'dft structure.xyz' in submit


def test_calcjob_rejects_bad_input_before_running(nextham_code, gth_family):
    """Empty, non-periodic, overlapping structures, missing pseudos, bad parameters: validator errors."""
    from ase import Atoms

    from aiida_nextham.calculations.dft import NexthamDftCalculation

    cases = {
        'no atoms': orm.StructureData(cell=[[5, 0, 0], [0, 5, 0], [0, 0, 5]]),
        'periodic': orm.StructureData(
            ase=Atoms('Si2', positions=[[0, 0, 0], [2.3, 0, 0]], cell=[8, 8, 8], pbc=[1, 1, 0])
        ),
        'apart': orm.StructureData(
            ase=Atoms('Si2', positions=[[0, 0, 0], [0.2, 0, 0]], cell=[8, 8, 8], pbc=True)
        ),
    }
    for message, structure in cases.items():
        builder = NexthamDftCalculation.get_builder()
        builder.code = nextham_code
        builder.pseudos = {'Si': gth_family.get_pseudo('Si')}
        with pytest.raises(ValueError, match=message):
            builder.structure = structure  # the builder validates on assignment, as a launch would

    builder = _builder(nextham_code, gth_family, _si())
    builder.pseudos = {}
    with pytest.raises(ValueError, match='no pseudopotential'):
        run_get_node(builder)
    with pytest.raises(ValueError, match='unknown parameters'):
        _builder(nextham_code, gth_family, _si(), parameters={'basis': 'gth-szv', 'max_cyles': 3})
    with pytest.raises(ValueError, match='damping must lie in'):
        _builder(nextham_code, gth_family, _si(), parameters={'damping': 1.5})
    with pytest.raises(ValueError, match='pseudo'):
        _builder(nextham_code, gth_family, _si(), parameters={'pseudo': 'gth-pbe'})
    with pytest.raises(ValueError, match='mode'):
        _builder(nextham_code, gth_family, _si(), mode='scf')


def test_workchain_bad_structure_exit_code(nextham_code, gth_family):
    """The base work chain reports what is wrong with an exit code before any calculation."""
    from ase import Atoms

    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain

    og = orm.StructureData(ase=Atoms('USi', positions=[[0, 0, 0], [2.3, 0, 0]], cell=[8, 8, 8], pbc=True))
    builder = NexthamDftBaseWorkChain.get_builder()
    builder.dft.code = nextham_code
    builder.dft.structure = og
    builder.dft.parameters = orm.Dict(TINY)
    builder.pseudo_family = orm.Str(gth_family.label)
    with pytest.raises(ValueError, match='does not contain pseudo for element `U`'):
        NexthamDftBaseWorkChain.get_builder_from_protocol(nextham_code, og, protocol='fast')
    _, node = run_get_node(builder)
    assert node.exit_status == 412 and "'U'" in node.exit_message
    assert not node.called


# -------------------------------------------------------------------------------------------- parser
def _parse_folder(folder: Path, code, family, parameters=None, mode='label'):
    """Parse a real engine output folder as if it had been retrieved by a NexthamDftCalculation."""
    from aiida.common.links import LinkType
    from aiida.plugins import ParserFactory

    structure = _si().store()
    node = orm.CalcJobNode(computer=code.computer, process_type='aiida.calculations:nextham.dft')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    inputs = {
        'code': code,
        'structure': structure,
        'parameters': orm.Dict(dict(TINY if parameters is None else parameters)).store(),
        'mode': orm.Str(mode).store(),
        'pseudos__Si': family.get_pseudo('Si'),
    }
    for label, value in inputs.items():
        node.base.links.add_incoming(value, LinkType.INPUT_CALC, label)
    node.store()
    retrieved = orm.FolderData()
    for path in sorted(folder.iterdir()):
        retrieved.base.repository.put_object_from_file(str(path), path.name)
    retrieved.base.links.add_incoming(node, LinkType.CREATE, 'retrieved')
    retrieved.store()
    results, calcfunction = ParserFactory('nextham.dft').parse_from_node(node, store_provenance=False)
    return results, calcfunction


@pytest.mark.parametrize(
    ('case', 'exit_status'),
    [
        ('success', 0),
        ('scf_not_converged', 410),
        ('selfcheck_failed', 411),
        ('unsupported_element', 412),
        ('bad_structure', 413),
    ],
)
def test_parser_real_outputs(case, exit_status, nextham_code, gth_family):
    folder = OUTPUTS / case
    assert folder.is_dir(), f'{folder} missing: run tests/data/dft_outputs/generate.py'
    results, calcfunction = _parse_folder(folder, nextham_code, gth_family)
    assert calcfunction.exit_status == exit_status, calcfunction.exit_message
    parameters = results['output_parameters'].get_dict()
    assert parameters['pseudos']['Si']['md5'] == gth_family.get_pseudo('Si').md5
    if exit_status == 0:
        hamiltonian = results['hamiltonian']
        assert hamiltonian.base.attributes.get('basis_set') == parameters['basis_set'] == 'gth-szv'
        assert hamiltonian.base.attributes.get('guess_key') == parameters['guess_key'] == 'atom'
        assert hamiltonian.get_block_hamiltonian().matrix('H0') is not None
        for key in (
            'energies',
            'fermi_level',
            'gap',
            'selfcheck_deviation',
            'scf_cycles',
            'converged',
            'timings',
        ):
            assert key in parameters, key
        assert parameters['converged'] is True
    else:
        assert 'hamiltonian' not in results
        assert parameters['error']


def test_parser_missing_and_corrupt_files(nextham_code, gth_family, tmp_path):
    folder = tmp_path / 'missing'
    folder.mkdir()
    (folder / 'nextham.err').write_text('Error: something broke\n')
    _, calcfunction = _parse_folder(folder, nextham_code, gth_family)
    assert calcfunction.exit_status == 300 and 'something broke' in calcfunction.exit_message

    folder = tmp_path / 'corrupt_summary'
    folder.mkdir()
    (folder / 'summary.json').write_text('{"energies": ')
    _, calcfunction = _parse_folder(folder, nextham_code, gth_family)
    assert calcfunction.exit_status == 301

    folder = tmp_path / 'corrupt_h5'
    shutil.copytree(OUTPUTS / 'success', folder)
    (folder / 'hamiltonian.h5').write_bytes(b'\x89HDF\r\n\x1a\n garbage')
    _, calcfunction = _parse_folder(folder, nextham_code, gth_family)
    assert calcfunction.exit_status == 302

    (folder / 'hamiltonian.h5').unlink()
    _, calcfunction = _parse_folder(folder, nextham_code, gth_family)
    assert calcfunction.exit_status == 300


# ---------------------------------------------------------------------------------- engine runs (slow)
@pytest.mark.slow
def test_calcjob_run_h0(nextham_code, gth_family):
    """A full run of the CalcJob through the engine on the local computer (h0 mode: no SCF)."""
    from aiida_nextham.data.hamiltonian import HamiltonianData

    results, node = run_get_node(_builder(nextham_code, gth_family, _si(), mode='h0', mesh=(1, 1, 1)))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    hamiltonian = results['hamiltonian']
    assert isinstance(hamiltonian, HamiltonianData)
    assert hamiltonian.n_atoms == 2 and hamiltonian.formula == 'Si2'
    assert hamiltonian.base.attributes.get('basis_set') == 'gth-szv'
    parameters = results['output_parameters'].get_dict()
    assert parameters['mode'] == 'h0' and parameters['basis_set'] == 'gth-szv'
    assert parameters['pseudos']['Si']['name'] == 'GTH-PBE-q4'
    assert parameters['config']['pseudo'] == 'pseudo/gth.dat'  # the engine read the provenance file
    assert parameters['timings']['total'] > 0


@pytest.mark.slow
def test_base_workchain_restarts_unconverged_scf(nextham_code, gth_family):
    """max_cycles=1 cannot converge: the handler raises it and the second calculation converges."""
    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain

    builder = NexthamDftBaseWorkChain.get_builder_from_protocol(
        nextham_code,
        _si(),
        protocol='fast',
        overrides={**_overrides(), 'max_cycles': 1},
        pseudo_family=gth_family.label,
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calcs = sorted(node.called, key=lambda n: n.ctime)
    assert [c.exit_status for c in calcs] == [410, 0]
    assert calcs[0].inputs.parameters['max_cycles'] == 1
    assert calcs[1].inputs.parameters['max_cycles'] == 50
    assert results['output_parameters']['converged'] is True
    assert results['hamiltonian'].get_block_hamiltonian().matrix('H') is not None


def _overrides() -> dict:
    """TINY as protocol overrides (kmesh goes to the kpoints input)."""
    return {**{k: v for k, v in TINY.items() if k != 'protocol'}, 'kmesh': [1, 1, 1]}


@pytest.mark.slow
def test_dataset_workchain_recipe(nextham_code, gth_family):
    """Two rattled, strained Si cells from a seeded recipe, labelled concurrently, collected in a Group."""
    from aiida_nextham.data.hamiltonian import HamiltonianData
    from aiida_nextham.workflows.dataset import NexthamDatasetWorkChain

    builder = NexthamDatasetWorkChain.get_builder()
    builder.parent_structure = _si()
    builder.recipe = orm.Dict({'n_structures': 2, 'rattle': 0.02, 'strain': 0.01, 'seed': 42, 'supercell': 1})
    builder.group_label = orm.Str('test/nextham-dataset')
    builder.base.pseudo_family = orm.Str(gth_family.label)
    builder.base.dft.code = nextham_code
    builder.base.dft.parameters = orm.Dict(TINY)
    builder.base.dft.kpoints = _kpoints((1, 1, 1))
    builder.base.dft.mode = orm.Str('h0')
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    summary = results['summary'].get_dict()
    assert summary['n_ok'] == 2 and summary['n_failed'] == 0
    group = orm.load_group('test/nextham-dataset')
    assert group.count() == 2 and all(isinstance(n, HamiltonianData) for n in group.nodes)
    # the generated structures are provenance-tracked and reproducible from the seed
    generator = [c for c in node.called if c.process_label == 'generate_structures'][0]
    assert generator.inputs.recipe['seed'] == 42
    positions = {tuple(map(tuple, h.get_structure_arrays()[1].round(6))) for h in group.nodes}
    assert len(positions) == 2


# ------------------------------------------------------------------------------------ recipe, setup
def test_generate_structures_seeded():
    from aiida_nextham.workflows.dataset import generate_structures, validate_recipe

    recipe = {'n_structures': 3, 'rattle': 0.05, 'strain': 0.02, 'seed': 7, 'supercell': [1, 1, 2]}
    parent = _si()
    first = generate_structures(parent, orm.Dict(recipe))
    again = generate_structures(parent, orm.Dict(recipe))
    assert sorted(first) == ['structure_0000', 'structure_0001', 'structure_0002']
    for key in first:
        assert len(first[key].sites) == 4
        assert first[key].get_ase().positions.tolist() == again[key].get_ase().positions.tolist()
    assert (
        first['structure_0000'].get_ase().positions.tolist()
        != first['structure_0001'].get_ase().positions.tolist()
    )
    assert first['structure_0000'].creator.process_label == 'generate_structures'
    assert 'seed' in validate_recipe({'n_structures': 2})
    assert 'unknown' in validate_recipe({'n_structures': 2, 'seed': 1, 'noise': 3})


def test_setup_command_is_idempotent(run_cli_command, aiida_profile):
    from aiida_nextham.cli import cmd_root

    args = ['setup', '--profile', aiida_profile.name]
    first = run_cli_command(cmd_root, args)
    assert 'reusing the profile' in first.output
    second = run_cli_command(cmd_root, args)
    for what in (
        'computer `localhost`',
        'code `nextham@localhost`',
        'pseudopotential family `GTH/PBE/pyscf-',
    ):
        assert f'reusing the {what}' in second.output, second.output
    code = orm.load_code('nextham@localhost')
    assert Path(code.filepath_executable).name == 'nextham' and code.default_calc_job_plugin == 'nextham.dft'


def test_builder_from_protocol(nextham_code, gth_family):
    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain

    protocols = NexthamDftBaseWorkChain.get_available_protocols()
    assert set(protocols) == {'fast', 'balanced', 'stringent'}
    assert NexthamDftBaseWorkChain.get_default_protocol() == 'balanced'
    builder = NexthamDftBaseWorkChain.get_builder_from_protocol(nextham_code, _si())
    parameters = builder.dft.parameters.get_dict()
    assert parameters['protocol'] == 'balanced' and parameters['basis'] == 'gth-dzvp'
    assert 'pseudo' not in parameters and 'kpoints' not in builder.dft
    assert builder.dft.pseudos['Si'].md5 == gth_family.get_pseudo('Si').md5
    assert builder.dft.mode.value == 'label'

    builder = NexthamDftBaseWorkChain.get_builder_from_protocol(
        nextham_code, _si(), protocol='fast', overrides={'kmesh': [2, 2, 2], 'max_cycles': 7}, mode='h0'
    )
    assert builder.dft.parameters['max_cycles'] == 7 and builder.dft.parameters['basis'] == 'gth-szv'
    assert builder.dft.kpoints.get_kpoints_mesh()[0] == [2, 2, 2]
    assert builder.dft.mode.value == 'h0'
    with pytest.raises(ValueError, match='protocol'):
        NexthamDftBaseWorkChain.get_builder_from_protocol(nextham_code, _si(), protocol='sloppy')


# ------------------------------------------------------------------------------ dataset command (CLI)
def test_dataset_command_rejects_bad_usage(run_cli_command, nextham_code, tmp_path):
    from aiida_nextham.cli import cmd_root

    path = tmp_path / 'si.cif'
    _si().get_ase().write(path)
    base = ['dataset', '-n', 1, '--seed', 0, '--code', nextham_code.pk]
    cases = {
        'exactly one': base,  # neither a file nor --structure-pk
        '--wait only applies': [*base, path, '--wait'],
        '--export-dir needs': [*base, path, '--daemon', '--export-dir', tmp_path / 'x'],
        'one integer or three': [*base, path, '--supercell', '2 2'],
        'not valid JSON': [*base, path, '--overrides', '{cutoff: 4}'],
    }
    for message, args in cases.items():
        result = run_cli_command(cmd_root, args, raises=True)
        assert message in result.output, (message, result.output)
    structure = _si().store()
    result = run_cli_command(cmd_root, [*base, path, '--structure-pk', structure.pk], raises=True)
    assert 'exactly one' in result.output


def test_job_slot_script_limits_concurrency(tmp_path):
    """The job-slot prologue lets at most N scripts past it at a time (flock on N slot files)."""
    import subprocess
    import time

    from aiida_nextham.cli.dataset import job_slot_script

    script = job_slot_script(2, str(tmp_path / 'slots'))
    log = tmp_path / 'log'
    body = f'{script}\necho start $(date +%s.%N) >> {log}; sleep 1; echo end $(date +%s.%N) >> {log}\n'
    start = time.monotonic()
    jobs = [subprocess.Popen(['bash', '-c', body]) for _ in range(3)]
    assert all(job.wait(timeout=30) == 0 for job in jobs)
    events = sorted(
        (float(stamp), 1 if kind == 'start' else -1)
        for kind, stamp in (line.split() for line in log.read_text().splitlines())
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2 and len(events) == 6
    assert time.monotonic() - start >= 2.0  # the third job waited for a slot


@pytest.mark.slow
def test_dataset_command_tiny(run_cli_command, nextham_code, gth_family, tmp_path):
    """`aiida-nextham dataset` from a CIF file: two H0 labels, one job slot, Group, summary, export."""
    from aiida_nextham.cli import cmd_root
    from aiida_nextham.data.hamiltonian import HamiltonianData
    from aiida_nextham.hamiltonian.hdf5 import read_hdf5

    path = tmp_path / 'si.cif'
    _si().get_ase().write(path)
    overrides = {k: v for k, v in _overrides().items() if k != 'threads'}
    export = tmp_path / 'export'
    args = [
        'dataset',
        path,
        '-n',
        2,
        '--rattle',
        0.02,
        '--seed',
        5,
        '--protocol',
        'fast',
        '--overrides',
        json.dumps(overrides),
        '--mode',
        'h0',
        '--group',
        'test/cli-dataset',
        '--code',
        nextham_code.pk,
        '--run',
        '--max-concurrent',
        1,
        '--export-dir',
        export,
    ]
    result = run_cli_command(cmd_root, args)
    assert 'test/cli-dataset' in result.output and '2 ok, 0 failed of 2' in result.output, result.output
    group = orm.load_group('test/cli-dataset')
    assert group.count() == 2 and all(isinstance(n, HamiltonianData) for n in group.nodes)
    node = orm.QueryBuilder().append(
        orm.WorkflowNode, filters={'attributes.process_label': 'NexthamDatasetWorkChain'}
    )
    dataset = node.order_by({orm.WorkflowNode: {'ctime': 'desc'}}).first(flat=True)
    assert dataset.is_finished_ok and f'Dict<{dataset.outputs.summary.pk}>' in result.output
    assert dataset.inputs.recipe.get_dict() == {
        'supercell': 1,
        'n_structures': 2,
        'rattle': 0.02,
        'strain': 0.0,
        'seed': 5,
    }
    assert dataset.inputs.parent_structure.label == 'si.cif'
    calcs = [n for n in dataset.called_descendants if isinstance(n, orm.CalcJobNode)]
    assert len(calcs) == 2
    for calc in calcs:
        assert 'flock -n 9' in calc.get_option('prepend_text')
        assert calc.inputs.parameters['threads'] == 1  # the command's default
    manifest = json.loads((export / 'dataset.json').read_text())
    assert sorted(manifest['files']) == ['structure_0000', 'structure_0001']
    assert manifest['recipe']['seed'] == 5 and manifest['mode'] == 'h0'
    assert manifest['pseudo_family'] == gth_family.label
    for key, entry in manifest['files'].items():
        bh = read_hdf5(export / entry['file'])
        node = orm.load_node(entry['hamiltonian_uuid'])
        assert node.base.extras.get('dataset_key') == key
        assert bh.n_pairs == node.get_block_hamiltonian().n_pairs
        assert entry['structure_uuid'] and entry['engine_seconds'] > 0
