"""Phonopy glue with an analytic force backend: fcc crystal with nearest-neighbour central springs.

For spring constant k (eV/Å²) and mass m (amu), the dynamical matrix of the fcc NN-spring model gives
exactly, with f0 = sqrt(k/m) · 15.6333 THz: X = (2π/a)(1,0,0): L √8 f0, T √4 f0 (twice);
L = (π/a)(1,1,1): L √8 f0, T √2 f0 (twice); Γ: three zeros.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

from aiida_nextham.phonons import (
    DftForceBackend,
    ForceBackend,
    MLForceBackend,
    PhononSettings,
    run_phonons,
    stability,
    supercell_matrix,
    write_phonon_files,
)

#: THz per sqrt((eV/Å²)/amu), from SI constants
F0 = np.sqrt(1.602176634e-19 / 1e-20 / 1.66053906660e-27) / (2 * np.pi) / 1e12
A = 4.0  # fcc lattice constant, Å
K = 2.0  # eV/Å²


class Springs:
    """Central harmonic springs between nearest neighbours (rest length ``rest``), forces in eV/Å."""

    name = 'springs'

    def __init__(self, k: float = K, rest: float = A / np.sqrt(2), cutoff: float = 0.85 * A):
        self.k, self.rest, self.cutoff = k, rest, cutoff
        self.calls = 0

    def forces(self, atoms):
        self.calls += 1
        i, d, vec = neighbor_list('idD', atoms, self.cutoff)
        contribution = (self.k * (d - self.rest) / d)[:, None] * vec
        forces = np.zeros((len(atoms), 3))
        np.add.at(forces, i, contribution)
        return forces


@pytest.fixture(scope='module')
def fcc_result():
    atoms = bulk('Cu', 'fcc', a=A)
    settings = PhononSettings(supercell=(3, 3, 3), path='G-X-W-K-G-L', npoints=61, mesh=(12, 12, 12))
    backend = Springs()
    result = run_phonons(atoms, backend, settings)
    return atoms, backend, result


def test_backend_protocol():
    assert isinstance(Springs(), ForceBackend)
    assert isinstance(DftForceBackend(), ForceBackend)


def test_fcc_springs_analytic_frequencies(fcc_result):
    atoms, backend, result = fcc_result
    f0 = np.sqrt(K / atoms.get_masses()[0]) * F0
    assert backend.calls == result.n_displacements == 1  # fcc: one symmetry-inequivalent displacement
    np.testing.assert_allclose(result.frequencies_at('GAMMA'), 0.0, atol=1e-6)  # acoustic sum rule
    np.testing.assert_allclose(result.frequencies_at('X'), f0 * np.sqrt([4, 4, 8]), rtol=2e-5)
    np.testing.assert_allclose(result.frequencies_at('L'), f0 * np.sqrt([2, 2, 8]), rtol=2e-5)
    assert result.dynamically_stable
    assert result.stability['acoustic_gamma_max_abs'] < 1e-6
    # DOS: 3 modes per atom, all between 0 and the maximum frequency √8 f0 (at X and L)
    assert np.trapezoid(result.dos, result.dos_frequencies) == pytest.approx(3.0, rel=2e-2)
    assert result.frequencies.max() == pytest.approx(f0 * np.sqrt(8), rel=2e-5)
    # thermal properties: Dulong-Petit, C_v -> 3 k_B per atom at high temperature; C_v(0) = 0
    heat_capacity = result.thermal['heat_capacity']
    assert heat_capacity[0] == pytest.approx(0.0, abs=1e-12)
    assert heat_capacity[-1] == pytest.approx(3 * 8.617333e-5, rel=1e-2)


def test_compressed_springs_are_dynamically_unstable():
    """Springs longer than the bonds push the atoms apart: a negative tension makes shear modes imaginary."""
    atoms = bulk('Cu', 'fcc', a=A)
    settings = PhononSettings(supercell=(3, 3, 3), npoints=41, mesh=(6, 6, 6))
    result = run_phonons(atoms, Springs(rest=3 * A / np.sqrt(2)), settings)
    assert not result.dynamically_stable
    assert result.stability['min_frequency'] < -1.0
    assert result.stability['n_imaginary'] > 0 and result.stability['imaginary_modes']
    np.testing.assert_allclose(result.frequencies_at('GAMMA'), 0.0, atol=1e-6)  # Γ acoustic still zero


def test_stability_ignores_gamma_acoustic_noise_only():
    from aiida_nextham.hamiltonian.kpath import KPath

    path = KPath(np.array([[0, 0, 0], [0.5, 0, 0]]), np.array([0.0, 1.0]))
    noisy_gamma = np.array([[-0.3, -0.01, 0.0, 5.0], [1.0, 2.0, 3.0, 5.0]])
    assert stability(path, noisy_gamma)['dynamically_stable']  # three lowest Γ modes are acoustic
    soft_zone_boundary = np.array([[0.0, 0.0, 0.0, 5.0], [-0.2, 2.0, 3.0, 5.0]])
    check = stability(path, soft_zone_boundary)
    assert not check['dynamically_stable'] and check['min_frequency'] == pytest.approx(-0.2)
    assert stability(path, soft_zone_boundary, tolerance=-0.3)['dynamically_stable']


def test_files_and_plot(fcc_result, tmp_path):
    import phonopy

    _, _, result = fcc_result
    paths = write_phonon_files(result, tmp_path)
    bands = json.loads(paths['bands'].read_text())
    assert np.array(bands['frequencies']).shape == result.frequencies.shape
    assert [label for _, label in bands['labels']] == ['GAMMA', 'X', 'W', 'K', 'GAMMA', 'L']
    thermal = json.loads(paths['thermal'].read_text())
    assert thermal['units']['free_energy'] == 'eV' and len(thermal['temperatures']) == 101
    # phonopy reads its own files back and reproduces the frequencies
    reloaded = phonopy.load(paths['params'], produce_fc=True, log_level=0)
    reloaded.run_qpoints(result.kpath.kpoints)
    np.testing.assert_allclose(reloaded.qpoints.frequencies, result.frequencies, atol=1e-6)
    assert paths['force_constants'].stat().st_size > 0 and paths['force_sets'].read_text().strip()
    from aiida_nextham.phonons import compare_bands, read_bands

    assert compare_bands(paths['bands'], paths['bands'])['mae'] == 0.0
    shifted = read_bands(paths['bands'])
    shifted['frequencies'][:, -1] += 0.3  # one of three bands: MAE 0.1 THz
    assert compare_bands(paths['bands'], shifted)['mae'] == pytest.approx(0.1)
    shifted['qpoints'] = shifted['qpoints'][::-1]
    with pytest.raises(ValueError, match='same q-path'):
        compare_bands(paths['bands'], shifted)
    result.plot(tmp_path / 'phonons.png')
    assert (tmp_path / 'phonons.png').stat().st_size > 10_000


def test_settings_validation():
    np.testing.assert_array_equal(supercell_matrix(2), 2 * np.eye(3, dtype=int))
    np.testing.assert_array_equal(supercell_matrix([2, 1, 3]), np.diag([2, 1, 3]))
    for bad in ([2, 2], [0, 1, 1], [1.5, 1, 1]):
        with pytest.raises(ValueError):
            supercell_matrix(bad)
    with pytest.raises(ValueError):
        PhononSettings(displacement=0)
    with pytest.raises(ValueError):
        PhononSettings(imaginary_tolerance=0.1)


def test_ml_backend_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        MLForceBackend(tmp_path / 'missing')
    backend = MLForceBackend(tmp_path)  # lazy: nothing is loaded until forces() is called
    assert backend.name == 'ml' and backend.describe() == {'model_dir': str(tmp_path)}


# ------------------------------------------------------------------------------- nextham phonons
@pytest.fixture(scope='module')
def si_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('si') / 'si.vasp'
    bulk('Si', 'diamond', a=5.43).write(path, format='vasp', direct=True)
    return path


@pytest.mark.parametrize(
    ('args', 'exit_code', 'message'),
    [
        (['--supercell', '0', '1', '1', '--protocol', 'fast'], 30, 'InvalidSettings'),
        (['--protocol', 'fast', '--path', 'G-Q'], 30, 'unknown k-point label'),
        (['--protocol', 'fast', '--imaginary-tolerance', '0.5'], 30, 'InvalidSettings'),
        (['--protocol', 'fast', '--basis', 'no-such-basis'], 23, 'UnsupportedElement'),
        (['--protocol', 'fast', '--model', '.'], 2, 'exactly one force source'),
        ([], 2, 'exactly one force source'),
        (['--calculator', 'emt', '--kmesh', '1', '1', '1'], 2, 'apply to --protocol only'),
    ],
)
def test_cli_bad_input(si_file, tmp_path, run_cli_command, args, exit_code, message):
    from aiida_nextham.engine.cli import cli

    out = tmp_path / 'out'
    result = run_cli_command(cli, ['phonons', si_file, '-o', out, *args], raises=True)
    assert result.exit_code == exit_code and message in result.output
    assert not out.exists()  # nothing half-written


def test_cli_bad_structure_and_model(tmp_path, si_file, run_cli_command):
    from aiida_nextham.engine.cli import cli

    garbage = tmp_path / 'garbage.cif'
    garbage.write_text('not a structure\n')
    result = run_cli_command(
        cli, ['phonons', garbage, '--protocol', 'fast', '-o', tmp_path / 'a'], raises=True
    )
    assert result.exit_code == 22 and 'BadStructure' in result.output
    empty_model = tmp_path / 'model'
    empty_model.mkdir()
    summary = tmp_path / 'summary.json'
    args = ['phonons', si_file, '--model', empty_model, '--supercell', '1', '1', '1', '-o', tmp_path / 'b']
    result = run_cli_command(cli, [*args, '--summary', summary], raises=True)
    assert result.exit_code == 31 and 'BadModel' in result.output
    assert json.loads(summary.read_text())['error'] == 'BadModel'
    (tmp_path / 'exists').mkdir()
    result = run_cli_command(
        cli, ['phonons', si_file, '--protocol', 'fast', '-o', tmp_path / 'exists'], raises=True
    )
    assert 'already exists' in result.output


def test_cli_dft_tiny(si_file, tmp_path, run_cli_command):
    """2-atom Si, 1×1×1 supercell, gth-szv at Γ (~40 s, more on a loaded machine): every file is written."""
    from aiida_nextham.engine.cli import cli

    out = tmp_path / 'phonons'
    args = ['phonons', si_file, '--supercell', '1', '1', '1', '--protocol', 'fast', '--kmesh', '1', '1', '1']
    args += [
        '--npoints',
        '11',
        '--mesh',
        '2',
        '2',
        '2',
        '--tstep',
        '100',
        '-o',
        out,
        '--plot',
        tmp_path / 'p.png',
    ]
    result = run_cli_command(cli, args)
    summary = json.loads((out / 'summary.json').read_text())
    assert json.loads(result.stdout)['dynamically_stable'] is summary['dynamically_stable'] is True
    assert {p.name for p in out.iterdir()} >= {
        'phonopy_disp.yaml', 'phonopy_params.yaml', 'FORCE_SETS', 'force_constants.hdf5',
        'bands.json', 'dos.json', 'thermal_properties.json', 'summary.json',
    }  # fmt: skip
    gamma = summary['special_points']['GAMMA']
    np.testing.assert_allclose(gamma[:3], 0.0, atol=1e-4)  # acoustic sum rule
    assert 10 < gamma[3] < 40  # an optical mode of a Si-like crystal
    (calculation,) = summary['backend']['calculations']
    assert calculation['route'] == 'gamma-multigrid' and calculation['converged']
    assert summary['backend']['config']['conv_tol'] == 1e-8 and summary['timings']['forces'] > 0
    assert (tmp_path / 'p.png').stat().st_size > 10_000


def test_cli_emt_bcc_copper_is_unstable(tmp_path, run_cli_command):
    """A real instability: bcc Cu (EMT) has imaginary TA modes at N; fcc Cu (EMT) is stable."""
    from aiida_nextham.engine.cli import cli

    for lattice, a, stable in (('bcc', 2.87, False), ('fcc', 3.61, True)):
        structure = tmp_path / f'{lattice}.vasp'
        bulk('Cu', lattice, a=a).write(structure, format='vasp', direct=True)
        out = tmp_path / lattice
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
            '8',
            '8',
            '8',
        ]
        result = run_cli_command(cli, [*args, '-o', out, '--plot', tmp_path / f'{lattice}.png'])
        summary = json.loads((out / 'summary.json').read_text())
        assert summary['dynamically_stable'] is stable and summary['backend']['name'] == 'ase:emt'
        assert ('UNSTABLE' in result.stderr) is (not stable)
        if not stable:
            worst = summary['stability']['imaginary_modes'][0]
            assert worst['frequency'] < -1.0 and np.allclose(np.abs(worst['qpoint']), [0, 0, 0.5])  # N


def test_cli_ml_force_field_end_to_end(si_file, tmp_path, run_cli_command):
    """``--model`` runs the equivariant force field (an untrained tiny one: plumbing, not accuracy)."""
    import torch

    from aiida_nextham.engine.cli import cli
    from aiida_nextham.ml.forcefield import ForceFieldConfig, ForceFieldModel, save_forcefield

    torch.manual_seed(0)
    config = ForceFieldConfig(elements=[14], cutoff=3.0, channels={0: 4, 1: 2}, sh_lmax=1, n_layers=1)
    model_dir = save_forcefield(ForceFieldModel(config).double(), tmp_path / 'model')
    backend = MLForceBackend(model_dir)
    displaced = bulk('Si', 'diamond', a=5.43) * (2, 2, 2)
    displaced.positions[0] += [0.02, 0.01, 0.0]
    forces = backend.forces(displaced)
    assert forces.shape == (16, 3) and np.abs(forces.sum(axis=0)).max() < 1e-8  # translation invariance
    out = tmp_path / 'ml'
    args = ['phonons', si_file, '--model', model_dir, '--supercell', '2', '2', '2', '--mesh', '4', '4', '4']
    run_cli_command(cli, [*args, '-o', out])
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['backend'] == {'name': 'ml', 'model_dir': str(model_dir)}
    assert summary['force_source'] == 'model' and summary['n_displacements'] == 1
    np.testing.assert_allclose(summary['special_points']['GAMMA'][:3], 0.0, atol=1e-6)
