"""AiiDA layer: ``HamiltonianData``, the ``compute_bands`` calcfunction and ``verdi data nextham``."""

from __future__ import annotations

import re

import numpy as np
import pytest
from aiida import orm
from aiida.cmdline.commands.cmd_verdi import verdi
from aiida.common.links import LinkType

from aiida_nextham.calculations.functions import compute_bands, get_band_path
from aiida_nextham.cli import cmd_root
from aiida_nextham.cli.data import data_nextham
from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.hamiltonian.block import HamiltonianError
from aiida_nextham.hamiltonian.hdf5 import SCHEMA_VERSION, read_hdf5
from aiida_nextham.hamiltonian.importers import read

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
MOTE2 = 'deeph_new_MoTe2_bands_deephdock/tests/compute/eigen/eigen.bak/MoTe2'


def assert_same_hamiltonian(a, b):
    for name in ('lattice', 'positions', 'numbers', 'pairs', 'hamiltonian', 'overlap'):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.spin, a.n_electrons, a.fermi_level) == (b.spin, b.n_electrons, b.fermi_level)
    assert a.basis.to_json() == b.basis.to_json()


def imported_pk(result) -> int:
    match = re.search(r'HamiltonianData<(\d+)>', result.output)
    assert match, result.output
    return int(match.group(1))


@pytest.fixture
def si_node(si_hamiltonian) -> HamiltonianData:
    return HamiltonianData(si_hamiltonian).store()


# ------------------------------------------------------------------------------- HamiltonianData
def test_hamiltonian_data_attributes_and_round_trip(si_hamiltonian):
    node = HamiltonianData(si_hamiltonian, label='si')
    assert node.base.repository.list_object_names() == ['hamiltonian.h5']
    node.store()
    attributes = node.base.attributes.all
    assert attributes['formula'] == 'Si2' and attributes['elements'] == ['Si']
    assert (attributes['n_atoms'], attributes['n_orbitals'], attributes['n_pairs']) == (
        2,
        8,
        si_hamiltonian.n_pairs,
    )
    assert attributes['spin'] == 'none' and attributes['basis'] == 'Si:1s1p'
    assert attributes['basis_set'] == 'synthetic-sp' and attributes['source_code'] == 'synthetic'
    assert attributes['has_overlap'] is True and attributes['has_h0'] is False
    assert attributes['n_electrons'] == 8.0 and attributes['fermi_level'] is None
    assert attributes['cutoff'] == 4.0 and attributes['schema_version'] == SCHEMA_VERSION

    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, HamiltonianData)
    assert_same_hamiltonian(loaded.get_block_hamiltonian(), si_hamiltonian)
    structure = loaded.get_structure()
    assert structure.get_formula() == 'Si2'
    np.testing.assert_allclose(structure.cell, si_hamiltonian.lattice)
    np.testing.assert_allclose([site.position for site in structure.sites], si_hamiltonian.positions)


def test_hamiltonian_data_validation(si_hamiltonian):
    broken = si_hamiltonian.hamiltonian.copy()
    broken[3] = np.nan
    with pytest.raises(HamiltonianError, match='NaN'):
        HamiltonianData(si_hamiltonian.replace(hamiltonian=broken))
    offsite = ~(
        (si_hamiltonian.pairs[:, 3] == si_hamiltonian.pairs[:, 4]) & ~si_hamiltonian.pairs[:, :3].any(1)
    )
    with pytest.raises(HamiltonianError, match='on-site'):
        HamiltonianData(si_hamiltonian.select_pairs(offsite))
    with pytest.raises(TypeError):
        HamiltonianData('not a Hamiltonian')


def test_hamiltonian_data_from_file(si_hamiltonian, si_h5, tmp_path):
    node = HamiltonianData.from_file(si_h5)
    assert node.base.attributes.get('source_format') == 'nextham'
    assert_same_hamiltonian(node.get_block_hamiltonian(), si_hamiltonian)
    text = tmp_path / 'notes.txt'
    text.write_text('nothing')
    with pytest.raises(HamiltonianError, match='notes.txt'):
        HamiltonianData.from_file(text)


# --------------------------------------------------------------------------------- compute_bands
def test_compute_bands_matches_in_memory_and_has_provenance(si_hamiltonian, si_node):
    from aiida_nextham.engine.cli import resolve_fermi_level
    from aiida_nextham.hamiltonian.spectra import band_energies

    kpoints = get_band_path(si_node, npoints=30)
    parameters = orm.Dict({'mesh': [3, 3, 3], 'dos': True, 'dos_step': 0.05})
    results, node = compute_bands.run_get_node(hamiltonian=si_node, kpoints=kpoints, parameters=parameters)
    assert node.is_finished_ok, node.exit_message

    bands = results['bands']
    assert isinstance(bands, orm.BandsData) and bands.is_stored and bands.units == 'eV'
    np.testing.assert_array_equal(bands.get_kpoints(), kpoints.get_kpoints())
    np.testing.assert_array_equal(bands.get_bands(), band_energies(si_hamiltonian, kpoints.get_kpoints()))
    assert bands.labels == kpoints.labels and bands.labels[0][0] == 0

    output = results['output_parameters'].get_dict()
    expected = resolve_fermi_level(si_hamiltonian, mesh=(3, 3, 3))['fermi_level']
    assert output['fermi_level'] == pytest.approx(expected, abs=1e-12)
    assert {'gap', 'vbm', 'cbm', 'is_metal'} <= set(output) and output['units'] == 'eV'

    dos = results['dos']
    energies = dos.get_x()[1]
    assert isinstance(dos, orm.XyData) and len(energies) == len(dos.get_y()[0][1])

    incoming = node.base.links.get_incoming(link_type=LinkType.INPUT_CALC)
    assert incoming.get_node_by_label('hamiltonian').uuid == si_node.uuid
    assert bands.creator.uuid == node.uuid
    assert node.process_label == 'compute_bands'


def test_compute_bands_rejects_foreign_cell(si_node):
    kpoints = orm.KpointsData()
    kpoints.set_cell(np.eye(3).tolist())
    kpoints.set_kpoints([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match='cell'):
        compute_bands(si_node, kpoints)
    with pytest.raises(ValueError, match='unknown parameters'):
        compute_bands(si_node, get_band_path(si_node, npoints=20), orm.Dict({'meshh': [2, 2, 2]}))


def test_compute_bands_ill_conditioned_overlap_exit_code(si_hamiltonian):
    singular = HamiltonianData(si_hamiltonian.replace(overlap=np.zeros_like(si_hamiltonian.overlap))).store()
    _, node = compute_bands.run_get_node(hamiltonian=singular, kpoints=get_band_path(singular, npoints=20))
    assert node.exit_status == 410 and 'overlap' in node.exit_message


# ----------------------------------------------------------------------------- verdi data nextham
def test_import_and_query(si_h5, run_cli_command):
    result = run_cli_command(data_nextham, ['import', si_h5, '--label', 'si-test'])
    node = orm.load_node(imported_pk(result))
    assert isinstance(node, HamiltonianData) and node.label == 'si-test'

    query = orm.QueryBuilder().append(
        HamiltonianData,
        filters={'attributes.formula': 'Si2', 'attributes.n_orbitals': 8, 'attributes.spin': 'none'},
        project='id',
    )
    assert node.pk in query.all(flat=True)
    query = orm.QueryBuilder().append(
        HamiltonianData, filters={'attributes.elements': {'contains': ['Si']}}, project='id'
    )
    assert node.pk in query.all(flat=True)


def test_import_through_verdi_and_root(si_h5, run_cli_command):
    """The entry point makes the group reachable as ``verdi data nextham`` and ``aiida-nextham data``."""
    result = run_cli_command(verdi, ['data', 'nextham', 'import', si_h5, '--dry-run'])
    assert 'dry run' in result.output
    result = run_cli_command(cmd_root, ['data', 'import', si_h5])
    assert isinstance(orm.load_node(imported_pk(result)), HamiltonianData)


def test_import_errors(tmp_path, run_cli_command):
    text = tmp_path / 'notes.txt'
    text.write_text('nothing')
    result = run_cli_command(data_nextham, ['import', text], raises=True)
    assert 'Critical:' in result.output and 'Traceback' not in result.output
    run_cli_command(data_nextham, ['import', tmp_path / 'missing.h5'], raises=True)


def test_show_and_list(si_node, run_cli_command):
    si_node.label = 'listed'
    result = run_cli_command(data_nextham, ['show', si_node.pk])
    assert 'Si2' in result.output and 'n_orbitals' in result.output
    result = run_cli_command(data_nextham, ['list', '--formula', 'Si2', '-e', 'Si', '--source', 'synthetic'])
    rows = [line.split() for line in result.output.splitlines()]
    assert any(row[:3] == [str(si_node.pk), 'listed', 'Si2'] for row in rows), result.output
    result = run_cli_command(data_nextham, ['list', '--formula', 'Xx2', '--raw'])
    assert result.output.strip() == ''


def test_export_round_trip(si_node, tmp_path, run_cli_command):
    dest = tmp_path / 'exported.h5'
    run_cli_command(data_nextham, ['export', si_node.pk, dest])
    assert_same_hamiltonian(read_hdf5(dest), si_node.get_block_hamiltonian())
    run_cli_command(data_nextham, ['export', si_node.pk, dest], raises=True)  # exists: needs --overwrite
    run_cli_command(data_nextham, ['export', si_node.pk, dest, '--overwrite'])

    folder = tmp_path / 'exported_deeph'
    run_cli_command(data_nextham, ['export', si_node.pk, folder, '--format', 'deeph'])
    exported, stored = read(folder), si_node.get_block_hamiltonian()
    for name in ('lattice', 'positions', 'numbers', 'pairs', 'hamiltonian', 'overlap'):
        np.testing.assert_array_equal(getattr(exported, name), getattr(stored, name), err_msg=name)


def test_verdi_bands_writes_png(si_node, tmp_path, run_cli_command):
    png = tmp_path / 'bands.png'
    result = run_cli_command(
        data_nextham, ['bands', si_node.pk, '--npoints', 20, '--mesh', '2x2x2', '-o', png]
    )
    content = png.read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 2000
    match = re.search(r'BandsData<(\d+)> computed by compute_bands<(\d+)>', result.output)
    assert match, result.output
    bands = orm.load_node(int(match.group(1)))
    assert isinstance(bands, orm.BandsData) and bands.creator.pk == int(match.group(2))
    assert bands.creator.base.links.get_incoming().get_node_by_label('hamiltonian').pk == si_node.pk


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_import_real_deeph_folder(realdata, tmp_path, run_cli_command):
    source = realdata / MOTE2
    node = orm.load_node(imported_pk(run_cli_command(data_nextham, ['import', source, '-L', 'MoTe2'])))
    attributes = node.base.attributes.all
    assert attributes['formula'] == 'MoTe2' and attributes['n_atoms'] == 3
    assert attributes['source_format'] == 'deeph' and attributes['elements'] == ['Mo', 'Te']
    query = orm.QueryBuilder().append(
        HamiltonianData,
        filters={'attributes.formula': 'MoTe2', 'attributes.source_format': 'deeph'},
        project='id',
    )
    assert node.pk in query.all(flat=True)

    dest = tmp_path / 'mote2.h5'
    run_cli_command(data_nextham, ['export', node.pk, dest])
    assert_same_hamiltonian(read_hdf5(dest), read(source))
