"""The ``nextham`` engine command: convert, info, bands, formats, and its error handling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aiida_nextham.engine.cli import atomic_output, cli, default_mesh, parse_mesh
from aiida_nextham.hamiltonian.hdf5 import read_hdf5, write_hdf5

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
MOTE2 = 'deeph_new_MoTe2_bands_deephdock/tests/compute/eigen/eigen.bak/MoTe2'


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_one_line_error(result, *fragments):
    """Exit code != 0, exactly one non-empty stderr line starting with ``Error:``, no traceback."""
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('Error: '), result.stderr
    assert 'Traceback' not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def assert_same_hamiltonian(a, b):
    np.testing.assert_array_equal(a.lattice, b.lattice)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.pairs, b.pairs)
    np.testing.assert_array_equal(a.hamiltonian, b.hamiltonian)
    np.testing.assert_array_equal(a.overlap, b.overlap)
    assert a.spin == b.spin
    assert a.n_electrons == b.n_electrons


# ------------------------------------------------------------------------------------------ helpers
def test_parse_mesh():
    assert parse_mesh('4x5x6') == (4, 5, 6)
    assert parse_mesh('4 5 6') == (4, 5, 6)
    assert parse_mesh('3') == (3, 3, 3)
    assert parse_mesh(None) is None
    for bad in ('4x4', '0x1x1', 'axbxc'):
        with pytest.raises(ValueError, match='mesh'):
            parse_mesh(bad)


def test_default_mesh(si_hamiltonian):
    mesh = default_mesh(si_hamiltonian)
    assert len(set(mesh)) == 1 and 6 <= mesh[0] <= 12  # fcc Si: isotropic, ~8
    # no hopping along a3 (a layer): a single k-point in that direction
    layer = si_hamiltonian.select_pairs(si_hamiltonian.pairs[:, 2] == 0)
    assert default_mesh(layer)[2] == 1


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / 'out.json'
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError('boom')
    assert list(tmp_path.iterdir()) == []
    with atomic_output(dest) as tmp:
        tmp.write_text('{}')
    assert dest.read_text() == '{}' and list(tmp_path.iterdir()) == [dest]


# ----------------------------------------------------------------------------------------- commands
def test_formats():
    result = invoke('formats')
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert 'nextham' in names


def test_info(si_h5):
    result = invoke('info', si_h5)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary['formula'] == 'Si2'
    assert summary['n_atoms'] == 2 and summary['n_orbitals'] == 8
    assert summary['format'] == 'nextham'
    assert summary['n_electrons'] == 8.0


def test_convert_nextham(si_hamiltonian, si_h5, tmp_path):
    dest = tmp_path / 'copy.h5'
    result = invoke('convert', si_h5, dest)
    assert result.exit_code == 0, result.output
    assert_same_hamiltonian(read_hdf5(dest), si_hamiltonian)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['copy.h5']


def test_convert_to_deeph_and_back(si_hamiltonian, si_h5, tmp_path):
    folder = tmp_path / 'si_deeph'
    result = invoke('convert', si_h5, folder, '--to', 'deeph')
    assert result.exit_code == 0, result.output
    assert folder.is_dir()
    assert json.loads(invoke('info', folder).stdout)['format'] == 'deeph'
    back = tmp_path / 'back.h5'
    result = invoke('convert', folder, back)
    assert result.exit_code == 0, result.output
    assert_same_hamiltonian(read_hdf5(back), si_hamiltonian)
    # an existing folder is never replaced
    assert_one_line_error(invoke('convert', si_h5, folder, '--to', 'deeph'), 'already exists')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['back.h5', 'si_deeph']


def test_bands_json(si_hamiltonian, si_h5, tmp_path):
    from aiida_nextham.engine.cli import resolve_fermi_level
    from aiida_nextham.hamiltonian.spectra import band_energies

    output = tmp_path / 'bands.json'
    result = invoke('bands', si_h5, '--npoints', 30, '--mesh', '3x3x3', '-o', output)
    assert result.exit_code == 0, result.output
    data = json.loads(output.read_text())
    assert {'kpoints', 'distances', 'labels', 'energies', 'fermi_level'} <= set(data)
    kpoints = np.array(data['kpoints'])
    energies = np.array(data['energies'])
    assert kpoints.shape[1] == 3 and len(data['distances']) == len(kpoints)
    assert energies.shape == (len(kpoints), si_hamiltonian.n_states)
    np.testing.assert_array_equal(energies, band_energies(si_hamiltonian, kpoints))
    assert data['labels'] and data['labels'][0][0] == 0
    expected = resolve_fermi_level(si_hamiltonian, mesh=(3, 3, 3))['fermi_level']
    assert data['fermi_level'] == pytest.approx(expected, abs=1e-12)
    assert data['fermi_level_source'] == 'mesh' and data['mesh'] == [3, 3, 3]


def test_bands_spinor_uses_spin_degeneracy_one(tmp_path):
    from ase.build import bulk

    from aiida_nextham.hamiltonian.basis import Basis
    from aiida_nextham.hamiltonian.spectra import band_energies, fermi_level, monkhorst_pack
    from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

    basis = Basis.from_shells({'Si': [0, 1]})
    bh = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), basis, cutoff=3.0, seed=3, spin='spinor')
    bh = bh.replace(n_electrons=7.0)  # odd: only possible with spinors
    path = write_hdf5(bh, tmp_path / 'spinor.h5')
    result = invoke('bands', path, '--npoints', 10, '--mesh', '2', '-o', tmp_path / 'b.json')
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / 'b.json').read_text())
    assert np.array(data['energies']).shape[1] == 16 and data['spin'] == 'spinor'
    kpoints, weights = monkhorst_pack((2, 2, 2))
    expected = fermi_level(band_energies(bh, kpoints), weights, 7.0, spin_degeneracy=1)
    assert data['fermi_level'] == pytest.approx(expected, abs=1e-12)


def test_bands_fermi_level_fallbacks(si_hamiltonian, tmp_path):
    stored = write_hdf5(si_hamiltonian.replace(n_electrons=None, fermi_level=1.25), tmp_path / 'stored.h5')
    result = invoke('bands', stored, '--npoints', 10, '-o', tmp_path / 'a.json')
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / 'a.json').read_text())
    assert data['fermi_level'] == 1.25 and data['fermi_level_source'] == 'file'

    unknown = write_hdf5(si_hamiltonian.replace(n_electrons=None), tmp_path / 'unknown.h5')
    result = invoke('bands', unknown, '--npoints', 10, '-o', tmp_path / 'b.json')
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / 'b.json').read_text())['fermi_level'] is None


def test_bands_explicit_kpoints(si_hamiltonian, si_h5, tmp_path):
    from aiida_nextham.hamiltonian.spectra import band_energies

    kpoints = np.array([[0.0, 0.0, 0.0], [0.25, 0.0, 0.25], [0.5, 0.0, 0.5]])
    kfile = tmp_path / 'kpoints.txt'
    np.savetxt(kfile, kpoints)
    output = tmp_path / 'bands.json'
    result = invoke('bands', si_h5, '--kpoints', kfile, '--mesh', '2', '-o', output)
    assert result.exit_code == 0, result.output
    data = json.loads(output.read_text())
    np.testing.assert_allclose(data['kpoints'], kpoints)
    np.testing.assert_array_equal(data['energies'], band_energies(si_hamiltonian, np.array(data['kpoints'])))


def test_bands_plot(si_h5, tmp_path):
    output, plot = tmp_path / 'bands.json', tmp_path / 'bands.png'
    result = invoke('bands', si_h5, '--npoints', 20, '--mesh', '2', '-o', output, '--plot', plot)
    assert result.exit_code == 0, result.output
    content = plot.read_bytes()
    assert content.startswith(PNG_MAGIC) and len(content) > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bands.json', 'bands.png']


# ------------------------------------------------------------------------------------------- errors
def test_error_missing_file(tmp_path):
    assert_one_line_error(invoke('info', tmp_path / 'missing.h5'), 'missing.h5')
    assert_one_line_error(invoke('convert', tmp_path / 'missing', tmp_path / 'x.h5'), 'missing')
    assert_one_line_error(invoke('bands', tmp_path / 'missing.h5', '-o', tmp_path / 'x.json'), 'missing.h5')
    assert list(tmp_path.iterdir()) == []


def test_error_wrong_kind_of_file(tmp_path):
    text = tmp_path / 'notes.txt'
    text.write_text('not a Hamiltonian\n')
    assert_one_line_error(invoke('info', text), 'notes.txt')
    truncated = tmp_path / 'broken.h5'
    truncated.write_bytes(b'\x89HDF\r\n\x1a\n' + b'\0' * 64)
    assert_one_line_error(invoke('info', truncated))
    assert_one_line_error(invoke('info', text, '--format', 'nextham'), 'notes.txt')
    assert_one_line_error(invoke('info', text, '--format', 'no-such-format'), 'no-such-format')


def test_error_bad_options(si_h5, tmp_path):
    assert_one_line_error(invoke('bands', si_h5, '--mesh', '4x4', '-o', tmp_path / 'x.json'), 'mesh')
    assert_one_line_error(invoke('bands', si_h5, '-o', tmp_path / 'nowhere' / 'x.json'), 'nowhere')
    assert list(tmp_path.iterdir()) == []


def test_error_ill_conditioned_overlap_writes_nothing(si_hamiltonian, tmp_path):
    singular = write_hdf5(
        si_hamiltonian.replace(overlap=np.zeros_like(si_hamiltonian.overlap)), tmp_path / 's.h5'
    )
    output = tmp_path / 'bands.json'
    assert_one_line_error(
        invoke('bands', singular, '--npoints', 5, '-o', output, '--plot', tmp_path / 'b.png')
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.h5']


def test_debug_shows_traceback(tmp_path):
    result = invoke('--debug', 'info', tmp_path / 'missing.h5')
    assert result.exit_code != 0
    assert result.exception is not None and not isinstance(result.exception, SystemExit)


# --------------------------------------------------------------------------------------- subprocess
def _console_script() -> str:
    script = Path(sys.executable).parent / 'nextham'
    found = str(script) if script.exists() else shutil.which('nextham')
    if found is None:
        pytest.fail('the `nextham` console script is not installed (pip install -e .)')
    return found


def test_console_script_info(si_h5, tmp_path):
    env = {**os.environ, 'NEXTHAM_DEBUG': ''}
    done = subprocess.run(
        [_console_script(), 'info', str(si_h5)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)['formula'] == 'Si2'

    done = subprocess.run(
        [_console_script(), 'info', str(tmp_path / 'missing.h5')],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip().startswith('Error: ') and len(done.stderr.strip().splitlines()) == 1
    assert 'Traceback' not in done.stderr and done.stdout == ''


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_convert_and_info_real_deeph(realdata, tmp_path):
    from aiida_nextham.hamiltonian.importers import read

    source = realdata / MOTE2
    result = invoke('info', source)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary['formula'] == 'MoTe2' and summary['format'] == 'deeph'

    dest = tmp_path / 'mote2.h5'
    result = invoke('convert', source, dest)
    assert result.exit_code == 0, result.output
    assert_same_hamiltonian(read_hdf5(dest), read(source))
