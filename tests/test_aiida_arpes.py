"""AiiDA layer of ARPES: ``ArpesData``, ``verdi data nextham arpes`` and ``NexthamArpesFitCalculation``.

Engine runs (``nextham arpes-fit`` on a 17 × 29 simulated nickelate cut): one INR fit (~6 s) and one
refusal of the engine (parameters outside the bounds, exit code 431).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.cmdline.commands.cmd_verdi import verdi
from aiida.common.exceptions import ModificationNotAllowed
from aiida.engine import run_get_node

from aiida_nextham.arpes.data import ArpesFormatError, make_intensity
from aiida_nextham.cli.data import data_nextham
from aiida_nextham.data.arpes import ArpesData
from aiida_nextham.data.hamiltonian import HamiltonianData

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
SI_H5 = Path(__file__).parent / 'data' / 'ml' / 'si2_rattled_0.h5'
I05 = 'arpes_erlabpy_data/i05/cut.nxs'
MERLIN = 'arpes_erlabpy_data/merlin/lxy.ibw'
A = 3.83
ZONE = math.pi / A
TRUE = {'t': 0.4, 'delta': 0.1, 'mu': -0.6}
OPTIONS = {'environment_variables': {'OMP_NUM_THREADS': '1'}}
#: a fast INR fit (the surrogate is poor; the exact refinement of every start does the work)
FAST_INR = {
    'model': 'nickelate-eg',
    'init': {'t': 0.41, 'delta': 0.09, 'mu': -0.59},
    'starts': 2,
    'refine': 0,
    'surrogate_steps': 20,
    'search_steps': 3,
    'emin': -0.5,
}


def imported_pk(result) -> int:
    match = re.search(r'ArpesData<(\d+)>', result.output)
    assert match, result.output
    return int(match.group(1))


@pytest.fixture(scope='module')
def cut():
    """A small noisy simulated nickelate cut (17 k_x × 29 energies, Poisson counts), in memory."""
    from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
    from aiida_nextham.arpes.tightbinding import get_model

    model = get_model('nickelate-eg', a=A)
    model.set_parameters(TRUE)
    grid = SimulationGrid(kx=np.linspace(-ZONE, ZONE, 17), ky=0.0, eV=np.linspace(-0.7, 0.1, 29))
    return simulate_dataset(model, grid, Broadening(gamma0=0.03), seed=5, counts=300)


@pytest.fixture
def cut_node(cut) -> ArpesData:
    return ArpesData(cut, label='nickelate cut').store()


# ------------------------------------------------------------------------------------------ ArpesData
@pytest.mark.realdata
def test_arpes_data_real_file_round_trip_and_query(realdata):
    from aiida_nextham.arpes.readers import load

    path = realdata / I05
    node = ArpesData.from_file(path, label='i05 cut')
    assert node.base.repository.list_object_names() == ['intensity.nc']
    node.store()
    attributes = node.base.attributes.all
    assert attributes['dims'] == ['phi', 'eV'] and attributes['shape'] == [835, 1034]
    assert attributes['energy_axis'] == 'kinetic' and attributes['momentum'] is False
    assert attributes['source_format'] == 'nexus' and attributes['source_file'] == 'cut.nxs'
    assert attributes['photon_energy'] == pytest.approx(94.000183)
    assert attributes['temperature'] == pytest.approx(6.9533)
    coordinates = attributes['coordinates']
    assert set(coordinates) == {'phi', 'eV'} and coordinates['eV']['units'] == 'eV'
    assert coordinates['eV']['size'] == 1034 and coordinates['eV']['min'] < coordinates['eV']['max']

    original = load(path)
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, ArpesData) and loaded.photon_energy == node.photon_energy
    da = loaded.get_dataarray()
    assert da.dims == original.dims and da.attrs == original.attrs
    np.testing.assert_array_equal(da.values, original.values)
    for dim in original.dims:
        np.testing.assert_array_equal(da[dim].values, original[dim].values)

    # found by attributes, without opening any file
    query = orm.QueryBuilder().append(
        ArpesData,
        filters={
            'attributes.source_format': 'nexus',
            'attributes.photon_energy': {'>': 90, '<': 100},
            'attributes.coordinates.eV.min': {'>': 80},
            'attributes.dims': {'contains': ['eV']},
            'attributes.temperature': {'<': 10},
        },
        project='id',
    )
    assert node.pk in query.all(flat=True)
    query = orm.QueryBuilder().append(
        ArpesData, filters={'attributes.photon_energy': {'>': 200}}, project='id'
    )
    assert node.pk not in query.all(flat=True)


def test_arpes_data_immutable_once_stored(cut_node, tmp_path):
    with pytest.raises(ModificationNotAllowed):
        cut_node.base.attributes.set('photon_energy', 21.2)
    with pytest.raises(ModificationNotAllowed):
        cut_node.base.repository.put_object_from_bytes(b'x', 'intensity.nc')
    exported = cut_node.export(tmp_path / 'copy.nc')
    assert exported.read_bytes() == cut_node.base.repository.get_object_content('intensity.nc', mode='rb')
    assert cut_node.base.attributes.get('model') == 'nickelate-eg'
    assert cut_node.energy_axis == 'binding' and cut_node.base.attributes.get('momentum') is True


def test_arpes_data_refuses_invalid(cut, tmp_path):
    text = tmp_path / 'notes.txt'
    text.write_text('nothing to see')
    with pytest.raises(ArpesFormatError, match='notes.txt'):
        ArpesData.from_file(text)
    fake = tmp_path / 'fake.nxs'
    fake.write_text('not HDF5')
    with pytest.raises(ArpesFormatError, match='is not HDF5'):
        ArpesData.from_file(fake)
    with pytest.raises(FileNotFoundError):
        ArpesData.from_file(tmp_path / 'missing.nc')
    with pytest.raises(ValueError, match='all NaN'):
        ArpesData(cut * np.nan)
    with pytest.raises(ValueError, match='not strictly monotonic'):
        ArpesData(cut.isel(kx=[0, 2, 1, 3]))
    with pytest.raises(ValueError, match='named'):
        ArpesData(cut.rename('counts'))
    with pytest.raises(ValueError, match='is eV a kinetic energy'):  # mislabelled energy axis
        ArpesData(cut.assign_attrs(photon_energy=0.05))


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.realdata
def test_cli_import_show_plot(realdata, tmp_path, run_cli_command):
    path = realdata / MERLIN
    result = run_cli_command(data_nextham, ['arpes', 'import', path, '--dry-run'])
    assert 'not stored' in result.output and 'eV 107 × y 16 × x 16' in result.output
    result = run_cli_command(verdi, ['data', 'nextham', 'arpes', 'import', path, '-L', 'merlin map'])
    node = orm.load_node(imported_pk(result))
    assert node.label == 'merlin map' and node.source_format == 'ibw' and node.dims == ['eV', 'y', 'x']

    result = run_cli_command(data_nextham, ['arpes', 'show', node.pk])
    assert 'merlin map' in result.output and 'photon_energy' in result.output
    assert re.search(r'coordinate eV\s+\S+ … \S+ eV \(107\)', result.output), result.output

    png = tmp_path / 'map.png'
    result = run_cli_command(data_nextham, ['arpes', 'plot', node.pk, '-o', png])
    assert png.read_bytes().startswith(PNG_MAGIC)
    run_cli_command(data_nextham, ['arpes', 'plot', node.pk, '-o', png], raises=True)  # needs --overwrite
    run_cli_command(data_nextham, ['arpes', 'plot', node.pk, '-o', png, '--overwrite'])


def test_cli_import_errors_and_1d_plot(tmp_path, run_cli_command):
    text = tmp_path / 'notes.txt'
    text.write_text('nothing to see')
    result = run_cli_command(data_nextham, ['arpes', 'import', text], raises=True)
    assert 'notes.txt' in result.output and 'supported' in result.output
    result = run_cli_command(data_nextham, ['arpes', 'import', text, '--format', 'nope'], raises=True)
    assert "unknown format 'nope'" in result.output
    edc = make_intensity(
        np.arange(5.0) + 1,
        {'eV': np.linspace(-0.4, 0.0, 5)},
        ('eV',),
        energy_axis='binding',
        source_format='test',
        source_file='edc',
    )
    node = ArpesData(edc).store()
    run_cli_command(data_nextham, ['arpes', 'plot', node.pk, '-o', tmp_path / 'edc.png'])
    assert (tmp_path / 'edc.png').read_bytes().startswith(PNG_MAGIC)


# -------------------------------------------------------------------------------------------- CalcJob
def _builder(code, data, parameters):
    from aiida_nextham.calculations.arpes_fit import NexthamArpesFitCalculation

    builder = NexthamArpesFitCalculation.get_builder()
    builder.code = code
    builder.data = data
    builder.parameters = orm.Dict(parameters)
    builder.metadata.options.environment_variables = OPTIONS['environment_variables']
    return builder


def test_calcjob_dry_run(nextham_code, cut_node, tmp_path, monkeypatch):
    """Files in the working directory, command line, retrieve list and submit script."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder into ./submit_test
    parameters = {**FAST_INR, 'fixed': {'a': A}, 'fraction': 0.5, 'seed': 3, 'gamma0': 0.03}
    builder = _builder(nextham_code, cut_node, parameters)
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = Path(node.dry_run_info['folder'])

    calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
    assert calcinfo['codes_info'][0]['cmdline_params'] == [
        'arpes-fit',
        'data.nc',
        '--model',
        'nickelate-eg',
        '--method',
        'inr',
        '--fixed',
        '{"a": 3.83}',
        '--init',
        'init.json',
        '--starts',
        '2',
        '--seed',
        '3',
        '--refine',
        '0',
        '--gamma0',
        '0.03',
        '--surrogate-steps',
        '20',
        '--search-steps',
        '3',
        '--fraction',
        '0.5',
        '--emin',
        '-0.5',
        '-o',
        'result.json',
        '--plot',
        'fit.png',
    ]
    assert calcinfo['retrieve_list'][:4] == ['result.json', 'fit.png', 'nextham.out', 'nextham.err']
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file() and '.aiida' not in p.parts
    )
    assert files == ['_aiidasubmit.sh', 'data.nc', 'init.json']
    assert (folder / 'data.nc').read_bytes() == cut_node.base.repository.get_object_content(
        'intensity.nc', mode='rb'
    )
    assert json.loads((folder / 'init.json').read_text()) == FAST_INR['init']
    submit = (folder / '_aiidasubmit.sh').read_text()
    assert "'arpes-fit' 'data.nc' '--model' 'nickelate-eg'" in submit
    assert "'--fixed' '{\"a\": 3.83}'" in submit and "> 'nextham.out' 2> 'nextham.err'" in submit
    assert 'export OMP_NUM_THREADS=' in submit


def test_calcjob_refusals_before_any_job(nextham_code, cut_node):
    n_jobs = orm.QueryBuilder().append(orm.CalcJobNode).count()

    def refused(match, parameters, data=cut_node):
        with pytest.raises(ValueError, match=match):  # on assignment (port validators) or at launch
            run_get_node(_builder(nextham_code, data, parameters))

    refused('model must name a tight-binding model', {'method': 'inr'})
    refused(r"unknown parameters \['start'\]", {'model': 'graphene', 'start': 3})
    refused('method must be one of', {'model': 'graphene', 'method': 'lsq'})
    refused('starts must be an integer >= 1', {'model': 'graphene', 'starts': 0})
    refused(r'fraction must be a number in \(0, 1\]', {'model': 'graphene', 'fraction': 1.5})
    refused('emin must be a finite number', {'model': 'graphene', 'emin': 'low'})
    refused('init: parameter values must be finite numbers', {'model': 'graphene', 'init': {'t': None}})
    refused('plot must be true or false', {'model': 'graphene', 'plot': 'yes'})
    fermi_map = make_intensity(
        np.ones((4, 5)),
        {'kx': np.arange(4.0), 'ky': np.arange(5.0)},
        ('kx', 'ky'),
        energy_axis=None,
        source_format='test',
        source_file='map',
    )
    refused('has no eV dimension', {'model': 'graphene'}, ArpesData(fermi_map).store())
    refused('the model hamiltonian needs the `hamiltonian` input', {'model': 'hamiltonian'})
    refused('do not give a path', {'model': 'hamiltonian', 'fixed': {'path': '/tmp/h.h5'}})
    builder = _builder(nextham_code, cut_node, {'model': 'graphene'})
    builder.hamiltonian = HamiltonianData.from_file(SI_H5).store()
    with pytest.raises(ValueError, match="used only by the model 'hamiltonian', not 'graphene'"):
        run_get_node(builder)
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == n_jobs


def test_calcjob_dry_run_hamiltonian_model(nextham_code, cut_node, tmp_path, monkeypatch):
    """The model seeded by a HamiltonianData: its file in the working directory, hamiltonian:FILE."""
    monkeypatch.chdir(tmp_path)
    hamiltonian = HamiltonianData.from_file(SI_H5).store()
    builder = _builder(nextham_code, cut_node, {'model': 'hamiltonian', 'fixed': {'orbitals': ['Si:p']}})
    builder.hamiltonian = hamiltonian
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    folder = Path(node.dry_run_info['folder'])
    calcinfo = json.loads((folder / '.aiida' / 'calcinfo.json').read_text())
    assert calcinfo['codes_info'][0]['cmdline_params'][:8] == [
        'arpes-fit',
        'data.nc',
        '--model',
        'hamiltonian:hamiltonian.h5',
        '--method',
        'inr',
        '--fixed',
        '{"orbitals": ["Si:p"]}',
    ]
    assert (folder / 'hamiltonian.h5').read_bytes() == hamiltonian.base.repository.get_object_content(
        'hamiltonian.h5', mode='rb'
    )


def test_calcjob_fit_outputs_and_provenance(nextham_code, cut_node):
    from aiida_nextham.calculations.arpes_fit import NexthamArpesFitCalculation

    results, node = run_get_node(_builder(nextham_code, cut_node, FAST_INR))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    output = results['output_parameters'].get_dict()
    assert set(output['parameters']) == {'t', 'delta', 'mu'}
    assert all(math.isfinite(value) for value in output['uncertainties'].values())
    assert output['method'] == 'inr' and output['model']['fixed'] == {'a': A}  # a from the data
    assert output['metrics']['truth']['relative_error']['t'] < 0.05
    assert output['options']['emin'] == -0.5 and output['data_uuid'] == cut_node.uuid
    assert 'surrogate_training' in output['timings'] and output['units']['energy'] == 'eV'

    bands = results['bands']
    assert bands.get_bands().shape == (17, 2)
    np.testing.assert_allclose(bands.get_kpoints()[:, 0], cut_node.get_dataarray()['kx'].values)
    np.testing.assert_allclose(bands.get_kpoints(cartesian=True), bands.get_kpoints(), atol=1e-12)
    assert results['plot'].get_content('rb').startswith(PNG_MAGIC)

    query = orm.QueryBuilder()
    query.append(ArpesData, filters={'id': cut_node.pk}, tag='data')
    query.append(NexthamArpesFitCalculation, with_incoming='data', tag='calc')
    query.append(orm.BandsData, with_incoming='calc', project='id')
    assert query.all(flat=True) == [bands.pk]


def test_calcjob_engine_refusal_becomes_exit_code(nextham_code, cut_node):
    """Start values outside the model's bounds: the engine exits with 31, the job with 431."""
    from aiida_nextham.calculations.arpes_fit import NexthamArpesFitCalculation

    parameters = {'model': 'nickelate-eg', 'method': 'baseline', 'init': {'t': 0.9}, 'starts': 1}
    results, node = run_get_node(_builder(nextham_code, cut_node, parameters))
    assert node.exit_status == NexthamArpesFitCalculation.exit_codes.ERROR_BAD_MODEL.status == 431
    assert 'outside the bounds of nickelate-eg' in node.exit_message and 't = 0.9' in node.exit_message
    assert 'output_parameters' not in results
