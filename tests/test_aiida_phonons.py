"""AiiDA layer of the phonons: NexthamPhononCalculation, its parser and NexthamPhononWorkChain.

Runs go through the real ``nextham phonons`` on the local computer: DFT forces with the tiny setting
(2-atom Si, 1×1×1 supercell, gth-szv, Γ point) and EMT forces (bcc Cu, a real dynamical instability).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_nextham.calculations.phonons import NexthamPhononCalculation
from aiida_nextham.workflows.phonons import NexthamPhononWorkChain

TINY_SETTINGS = {'npoints': 11, 'mesh': [2, 2, 2], 'tstep': 100.0}


def _structure(symbol='Si', lattice='diamond', a=5.43) -> orm.StructureData:
    return orm.StructureData(ase=bulk(symbol, lattice, a=a))


def test_workchain_dft_tiny_provenance(nextham_code, gth_family):
    """DFT forces end to end; the bands are created by a calculation whose inputs are the structure,
    the protocol and the pseudopotential nodes, and are returned by the work chain."""
    structure = _structure()
    builder = NexthamPhononWorkChain.get_builder_from_protocol(
        nextham_code, structure, protocol='fast', supercell=(1, 1, 1), settings=TINY_SETTINGS
    )
    builder.phonons.pseudos = gth_family.get_pseudos(structure=structure)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    bands = results['bands']
    assert bands.get_bands().shape == (11, 6) and bands.units == 'THz'
    assert [label for _, label in bands.labels][:2] == ['GAMMA', 'X']
    calculation = bands.creator
    assert calculation.process_class is NexthamPhononCalculation
    assert calculation.inputs.structure.uuid == structure.uuid
    assert calculation.inputs.protocol.value == 'fast'
    assert calculation.inputs.pseudos.Si.uuid == gth_family.get_pseudo('Si').uuid
    assert calculation.caller.uuid == node.uuid
    assert node.outputs.bands.uuid == bands.uuid
    parameters = results['output_parameters'].get_dict()
    assert parameters['dynamically_stable'] is True
    (force_run,) = parameters['backend']['calculations']
    assert force_run['route'] == 'gamma-multigrid' and force_run['converged']
    assert parameters['backend']['config']['pseudo'] == 'pseudo/gth.dat'  # the provenance file was used
    np.testing.assert_allclose(bands.get_bands()[0, :3], 0.0, atol=1e-4)  # acoustic sum rule at Γ
    assert set(results['phonopy_files'].base.repository.list_object_names()) == set(
        NexthamPhononCalculation._PHONOPY_FILES
    )
    _, frequencies, units = results['dos'].get_x()
    ((_, dos, _),) = results['dos'].get_y()
    assert units == 'THz' and len(dos) == len(frequencies) and dos.max() > 0
    thermal = results['thermal_properties'].get_dict()
    assert thermal['units']['free_energy'] == 'eV' and len(thermal['temperatures']) == 11


def test_workchain_unstable_structure_is_flagged(nextham_code):
    """bcc Cu with EMT forces: imaginary modes at N; a flag (and, on request, exit code 420), not a plot."""
    structure = _structure('Cu', 'bcc', 2.87)
    settings = {'mesh': [6, 6, 6], 'npoints': 41}
    builder = NexthamPhononWorkChain.get_builder_from_protocol(
        nextham_code, structure, supercell=(2, 2, 2), calculator='emt', settings=settings
    )
    assert 'protocol' not in builder.phonons and 'dft_parameters' not in builder.phonons
    results, node = run_get_node(builder)
    assert node.is_finished_ok
    parameters = results['output_parameters'].get_dict()
    assert parameters['dynamically_stable'] is False
    assert parameters['stability']['min_frequency'] < -1.0
    assert results['bands'].get_bands().min() < -1.0  # imaginary modes kept (as negative frequencies)
    assert results['bands'].creator.inputs.structure.uuid == structure.uuid
    assert any('UNSTABLE' in log.message for log in orm.Log.collection.get_logs_for(node))

    builder.fail_if_unstable = orm.Bool(True)
    results, node = run_get_node(builder)
    assert node.exit_status == NexthamPhononWorkChain.exit_codes.ERROR_DYNAMICALLY_UNSTABLE.status == 420
    assert node.outputs.output_parameters['dynamically_stable'] is False and 'bands' in node.outputs


def test_builder_keeps_the_gamma_route_under_overrides(nextham_code):
    """DFT overrides go on top of the Γ-point default (the k-point route only when asked for)."""
    structure = _structure()
    build = NexthamPhononWorkChain.get_builder_from_protocol
    builder = build(nextham_code, structure, dft_overrides={'cutoff': 9})
    assert builder.phonons.dft_parameters.get_dict() == {'kmesh': [1, 1, 1], 'cutoff': 9}
    builder = build(nextham_code, structure, dft_overrides={'kmesh': [2, 2, 2]})
    assert builder.phonons.dft_parameters.get_dict() == {'kmesh': [2, 2, 2]}
    with pytest.raises(ValueError, match='not both'):
        build(nextham_code, structure, model=orm.FolderData(), calculator='emt')


def test_engine_failure_maps_to_exit_code(nextham_code):
    """An unknown basis fails in the engine before any integral: CalcJob 412, work chain stops (413)."""
    builder = NexthamPhononWorkChain.get_builder_from_protocol(
        nextham_code,
        _structure(),
        protocol='fast',
        supercell=(1, 1, 1),
        dft_overrides={'basis': 'no-such-basis', 'kmesh': [1, 1, 1]},
    )
    _, node = run_get_node(builder)
    assert node.exit_status == NexthamPhononWorkChain.exit_codes.ERROR_BAD_INPUT.status
    (calculation,) = node.called
    assert calculation.exit_status == 412 and 'no-such-basis' in calculation.exit_message
    assert calculation.outputs.output_parameters['error'] == 'UnsupportedElement'


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'model': orm.FolderData}, 'exactly one force source'),
        ({'protocol': None}, 'exactly one force source'),
        ({'supercell': lambda: orm.List([2, 0, 2])}, 'three positive integers'),
        ({'settings': lambda: orm.Dict({'npoint': 11})}, 'unknown settings'),
        ({'settings': lambda: orm.Dict({'imaginary_tolerance': 0.3})}, 'imaginary_tolerance'),
        ({'dft_parameters': lambda: orm.Dict({'max_cycles': 0})}, 'max_cycles'),
        ({'protocol': lambda: orm.Str('ultra')}, 'unknown protocol'),
        ({'calculator': lambda: orm.Str('lj'), 'protocol': None}, 'unknown calculator'),
        ({'calculator': lambda: orm.Str('emt'), 'protocol': None, 'dft_parameters': orm.Dict}, 'DFT forces'),
    ],
)
def test_calcjob_validation(nextham_code, changes, message):
    """Bad inputs are rejected by the spec's validators, before anything runs."""
    inputs = {
        'code': nextham_code,
        'structure': _structure(),
        'supercell': orm.List([1, 1, 1]),
        'protocol': orm.Str('fast'),
    }
    for key, make in changes.items():
        if make is None:
            inputs.pop(key)
        else:
            inputs[key] = make()
    with pytest.raises(ValueError, match=message):
        run_get_node(NexthamPhononCalculation, **inputs)


def _parse_folder(folder: Path, code):
    """Parse a local output folder as if a NexthamPhononCalculation had retrieved it."""
    from aiida.common.links import LinkType
    from aiida.plugins import ParserFactory

    node = orm.CalcJobNode(computer=code.computer, process_type='aiida.calculations:nextham.phonons')
    node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
    inputs = {
        'code': code,
        'structure': _structure('Cu', 'bcc', 2.87).store(),
        'supercell': orm.List([2, 2, 2]).store(),
        'calculator': orm.Str('emt').store(),
    }
    for label, value in inputs.items():
        node.base.links.add_incoming(value, LinkType.INPUT_CALC, label)
    node.store()
    retrieved = orm.FolderData()
    retrieved.base.repository.put_object_from_tree(str(folder))
    retrieved.base.links.add_incoming(node, LinkType.CREATE, 'retrieved')
    retrieved.store()
    return ParserFactory('nextham.phonons').parse_from_node(node, store_provenance=False)


def test_parser_outputs_and_failures(nextham_code, tmp_path, run_cli_command):
    """A real output folder parses into every output; missing, corrupt and error outputs map to codes."""
    import json
    import shutil

    from aiida_nextham.engine.cli import cli

    structure = tmp_path / 'cu.vasp'
    bulk('Cu', 'bcc', a=2.87).write(structure, format='vasp', direct=True)
    good = tmp_path / 'good'
    good.mkdir()
    args = [
        'phonons',
        structure,
        '--calculator',
        'emt',
        '--supercell',
        '2',
        '2',
        '2',
        '--mesh',
        '4',
        '4',
        '4',
    ]
    run_cli_command(cli, [*args, '-o', good / 'phonons', '--summary', good / 'summary.json'])

    results, calcfunction = _parse_folder(good, nextham_code)
    assert calcfunction.exit_status == 0, calcfunction.exit_message
    assert results['output_parameters']['dynamically_stable'] is False
    assert results['bands'].get_bands().shape[1] == 3 and results['bands'].units == 'THz'
    assert 'FORCE_SETS' in results['phonopy_files'].base.repository.list_object_names()

    cases = {}
    for name in ('no_dos', 'corrupt_bands', 'no_summary', 'bad_model'):
        cases[name] = tmp_path / name
        shutil.copytree(good, cases[name])
    (cases['no_dos'] / 'phonons' / 'dos.json').unlink()
    (cases['corrupt_bands'] / 'phonons' / 'bands.json').write_text('{"frequencies": [[1, 2')
    (cases['no_summary'] / 'summary.json').unlink()
    (cases['no_summary'] / 'nextham.err').write_text('Error: killed by the scheduler\n')
    shutil.rmtree(cases['bad_model'] / 'phonons')
    (cases['bad_model'] / 'summary.json').write_text(
        json.dumps({'error': 'BadModel', 'message': 'no weights'})
    )
    expected = {'no_dos': 300, 'corrupt_bands': 302, 'no_summary': 300, 'bad_model': 304}
    for name, status in expected.items():
        results, calcfunction = _parse_folder(cases[name], nextham_code)
        assert calcfunction.exit_status == status, (name, calcfunction.exit_message)
        assert 'bands' not in results
    assert 'killed by the scheduler' in _parse_folder(cases['no_summary'], nextham_code)[1].exit_message


@pytest.mark.slow
def test_workchain_restarts_unconverged_scf(nextham_code):
    """max_cycles=1 cannot converge: exit 410, then the handler's retry (more cycles, damping) succeeds."""
    builder = NexthamPhononWorkChain.get_builder_from_protocol(
        nextham_code,
        _structure(),
        protocol='fast',
        supercell=(1, 1, 1),
        dft_overrides={'kmesh': [1, 1, 1], 'max_cycles': 1},
        settings=TINY_SETTINGS,
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    first, second = sorted(node.called, key=lambda n: n.ctime)
    assert first.exit_status == 410 and second.is_finished_ok
    assert (
        second.inputs.dft_parameters['max_cycles'] == 150 and second.inputs.dft_parameters['damping'] == 0.5
    )
    assert results['output_parameters']['dynamically_stable'] is True
