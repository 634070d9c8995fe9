"""``aiida-nextham quickstart``: the H vs H0 band figure, band selection in compute_bands, the CLI wiring.

The first part of the quickstart (fast protocol: 12 Å blocks, 3³ SCF mesh) takes 1-3 minutes; the
example test runs ``examples/quickstart.sh`` with tiny engine settings (6 Å blocks, 2³ mesh, no
self-check) given through ``--overrides`` and ``--skip-ml``, so its bands are not physical but every
node, file and message is made. The ML part (dataset -> training -> prediction -> validation,
~5 minutes) is checked here for its inputs only; tests/test_aiida_pipeline.py runs the same chain of
processes end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aiida import orm

#: engine settings that make the quickstart's label cheap (6 Å: the smallest szv cutoff with S(k) > 0)
TINY_OVERRIDES = {'cutoff': 6.0, 'alias_margin': 1.0, 'selfcheck': False, 'threads': 1, 'kmesh': [2, 2, 2]}


@pytest.fixture
def label_hamiltonian(si_hamiltonian):
    """A stored label-like HamiltonianData: the synthetic Si H and S, and H0 = 0.8 H + 0.3 S (hermitian)."""
    from aiida_nextham.data.hamiltonian import HamiltonianData

    h0 = 0.8 * si_hamiltonian.hamiltonian + 0.3 * si_hamiltonian.overlap
    return HamiltonianData(si_hamiltonian.replace(h0=h0)).store()


def test_plot_band_comparison(tmp_path):
    from aiida_nextham.hamiltonian.kpath import KPath
    from aiida_nextham.hamiltonian.plotting import plot_band_comparison

    kpath = KPath(
        kpoints=np.linspace([0, 0, 0], [0.5, 0, 0], 11),
        distances=np.linspace(0.0, 1.0, 11),
        labels=[(0, 'G'), (10, 'X')],
    )
    x = kpath.distances[:, None]
    energies = np.hstack([-2 + x, 1 + x])  # VBM 1.0 at X
    reference = energies + 3.0  # rigidly shifted copy: aligned at its own zero it must coincide
    path = tmp_path / 'bands.png'
    figure = plot_band_comparison(
        kpath,
        energies,
        reference,
        path,
        zero=-1.0,
        reference_zero=2.0,
        labels=('DFT', 'H0'),
        zero_label='Fermi level',
        emin=-4,
        emax=4,
    )
    assert path.stat().st_size > 1000
    axes = figure.axes[0]
    solid = [line for line in axes.lines if line.get_linestyle() == '-' and len(line.get_xdata()) == 11]
    dashed = [line for line in axes.lines if line.get_linestyle() == '--']
    assert len(solid) == 2 and len(dashed) == 2
    for a, b in zip(solid, dashed, strict=True):
        np.testing.assert_allclose(a.get_ydata(), b.get_ydata())
    np.testing.assert_allclose(solid[0].get_ydata()[0], -1.0)  # -2 - (-1)
    assert [t.get_text() for t in axes.get_xticklabels()] == ['Γ', 'X']
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ['DFT', 'H0', 'Fermi level']
    assert axes.get_ylim() == (-4, 4)
    with pytest.raises(ValueError, match='shape'):
        plot_band_comparison(kpath, energies[:5], reference)


def test_compute_bands_selects_h0(label_hamiltonian):
    """``matrix='H0'`` diagonalises the stored H0 (with S); the default stays H; provenance records it."""
    from aiida_nextham.calculations.functions import compute_bands, get_band_path
    from aiida_nextham.hamiltonian.bloch import eigenvalues

    kpoints = get_band_path(label_hamiltonian, npoints=20)
    bh = label_hamiltonian.get_block_hamiltonian()
    kpts = kpoints.get_kpoints()
    results = {}
    for matrix in ('H', 'H0'):
        result, node = compute_bands.run_get_node(label_hamiltonian, kpoints, orm.Dict({'matrix': matrix}))
        assert node.is_finished_ok
        assert node.inputs.parameters['matrix'] == matrix
        results[matrix] = result
        assert result['output_parameters']['matrix'] == matrix
    np.testing.assert_allclose(
        results['H0']['bands'].get_bands(), eigenvalues(bh, kpts, name='H0'), atol=1e-10
    )
    np.testing.assert_allclose(results['H']['bands'].get_bands(), eigenvalues(bh, kpts), atol=1e-10)
    assert not np.allclose(results['H']['bands'].get_bands(), results['H0']['bands'].get_bands(), atol=1e-3)
    default = compute_bands(label_hamiltonian, kpoints)
    np.testing.assert_allclose(default['bands'].get_bands(), results['H']['bands'].get_bands())
    assert default['output_parameters']['matrix'] == 'H'
    # the H0 bands have their own Fermi level and gap (same electron count)
    assert (
        results['H0']['output_parameters']['n_electrons'] == results['H']['output_parameters']['n_electrons']
    )
    assert (
        results['H0']['output_parameters']['fermi_level'] != results['H']['output_parameters']['fermi_level']
    )

    with pytest.raises(ValueError, match='matrix must be one of'):
        compute_bands(label_hamiltonian, kpoints, orm.Dict({'matrix': 'S'}))


def test_select_matrix_without_h0(si_hamiltonian):
    from aiida_nextham.calculations.functions import select_matrix

    assert select_matrix(si_hamiltonian, 'H') is si_hamiltonian
    with pytest.raises(ValueError, match='no H0 blocks'):
        select_matrix(si_hamiltonian, 'H0')


def test_quickstart_command_help(run_cli_command):
    from aiida_nextham.cli import cmd_root

    result = run_cli_command(cmd_root, ['quickstart', '--help'])
    for option in ('--profile', '--output-dir', '--protocol', '--overrides', '--npoints', '--skip-ml'):
        assert option in result.output
    result = run_cli_command(cmd_root, ['quickstart', '--overrides', '[1, 2]'], raises=True)
    assert 'JSON object' in result.output


@pytest.mark.slow
def test_quickstart_example_end_to_end_tiny(aiida_profile, tmp_path):
    """``examples/quickstart.sh`` (what ``./dev quickstart`` runs), first part (``--skip-ml``), on the test
    profile with tiny engine settings, as a separate process.

    The ML part (steps 4-7) is covered piece by piece in tests/test_aiida_pipeline.py.
    """
    from aiida_nextham.cli.quickstart import GROUP_LABEL

    args = ['--protocol', 'fast', '--overrides', json.dumps(TINY_OVERRIDES), '--npoints', '30', '--skip-ml']
    env = {
        **os.environ,
        'NEXTHAM_PROFILE': aiida_profile.name,
        'NEXTHAM_OUT': str(tmp_path / 'out'),
        'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}',
    }
    script = Path(__file__).resolve().parents[1] / 'examples' / 'quickstart.sh'
    command = ['bash', str(script), *args]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output
    assert 'reusing the profile' in output
    for text in ('step 2/3', 'step 3/3', 'bands of H0', 'verdi process show', 'quickstart done'):
        assert text in output, output
    figure = tmp_path / 'out' / 'si_bands_h_vs_h0.png'
    assert figure.stat().st_size > 10_000
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    nodes = {key: orm.load_node(value['uuid']) for key, value in summary['nodes'].items()}
    assert set(nodes) == {'structure', 'workchain', 'hamiltonian', 'bands_h', 'bands_h0'}
    workchain = nodes['workchain']
    assert workchain.is_finished_ok and workchain.process_label == 'NexthamDftBaseWorkChain'
    assert workchain.inputs.dft.mode.value == 'label'
    assert workchain.inputs.dft.parameters['protocol'] == 'fast'
    assert workchain.inputs.dft.parameters['cutoff'] == 6.0
    assert nodes['hamiltonian'].creator.caller.pk == workchain.pk  # created by its CalcJob
    for key, matrix in (('bands_h', 'H'), ('bands_h0', 'H0')):
        creator = nodes[key].creator
        assert creator.process_label == 'compute_bands'
        assert creator.inputs.hamiltonian.pk == nodes['hamiltonian'].pk
        assert creator.inputs.parameters['matrix'] == matrix
    assert nodes['bands_h'].creator.inputs.kpoints.pk == nodes['bands_h0'].creator.inputs.kpoints.pk
    assert summary['gap_h'] == nodes['bands_h'].creator.outputs.output_parameters['gap']
    for node in nodes.values():
        assert str(node.pk) in output
    group = orm.load_group(GROUP_LABEL)
    assert {nodes[k].pk for k in ('structure', 'workchain', 'bands_h', 'bands_h0')} <= {
        n.pk for n in group.nodes
    }


@pytest.mark.slow
def test_quickstart_reports_failed_workchain(run_cli_command, aiida_profile, tmp_path):
    """A label that fails (here: a basis PySCF does not have) ends with the work chain's exit code.

    Run twice: each run reuses the profile, computer and code and makes its own structure and work chain.
    """
    from aiida_nextham.cli import cmd_root
    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain

    def count(cls):
        return orm.QueryBuilder().append(cls).count()

    overrides = json.dumps({**TINY_OVERRIDES, 'basis': 'gth-nonexistent'})
    args = ['quickstart', '--profile', aiida_profile.name, '-o', tmp_path, '--protocol', 'fast']
    args += ['--overrides', overrides]
    before = count(orm.StructureData), count(NexthamDftBaseWorkChain)
    for _ in range(2):
        result = run_cli_command(cmd_root, args, raises=True)
        assert 'failed with exit code 412' in result.output, result.output
        assert 'verdi process report' in result.output
        assert result.exit_code == 412
    for what in ('profile', 'computer `localhost`', 'code `nextham@localhost`'):
        assert f'reusing the {what}' in result.output
    assert (count(orm.StructureData), count(NexthamDftBaseWorkChain)) == (before[0] + 2, before[1] + 2)
    assert not (tmp_path / 'si_bands_h_vs_h0.png').exists()


def test_quickstart_rejects_bad_overrides(run_cli_command, aiida_profile, tmp_path):
    from aiida_nextham.cli import cmd_root

    args = ['quickstart', '--profile', aiida_profile.name, '-o', tmp_path, '--overrides', '{"damping": 1.5}']
    result = run_cli_command(cmd_root, args, raises=True)
    assert 'cannot build the DFT work chain' in result.output and 'damping' in result.output


def test_ml_structures_and_dataset_builder(aiida_localhost):
    """The ML part's structures are generated with provenance; the dataset labels them with job slots."""
    from aiida_nextham.cli.quickstart import (
        ML_CONFIG,
        ML_RECIPE,
        SUPERCELL_RECIPE,
        _dataset_builder,
        ml_structures,
        silicon_structure,
    )
    from aiida_nextham.cli.setup import get_or_create_code
    from aiida_nextham.data.pseudo import install_pyscf_gth_family
    from aiida_nextham.ml.run_config import RunConfig

    parent = silicon_structure().store()
    structures = ml_structures(parent)
    n_train = ML_RECIPE['n_structures'] - 1
    assert list(structures)[: n_train + 1] == [f'train_si2_{i}' for i in range(n_train)] + ['test_si2']
    (supercell,) = [key for key in structures if key.startswith('supercell_')]
    assert sorted(structures)[0] == supercell  # submitted first: the longest label starts first
    n_atoms = 2 * int(np.prod(SUPERCELL_RECIPE['supercell']))
    assert len(structures[supercell].sites) == n_atoms > 2 and supercell == f'supercell_si{n_atoms}'
    for structure in structures.values():
        assert structure.creator.process_label == 'generate_structures'
        assert structure.creator.inputs.parent.pk == parent.pk
    positions = [s.get_ase().positions for s in structures.values() if len(s.sites) == 2]
    assert all(abs(p - positions[0]).max() > 1e-3 for p in positions[1:])  # all different

    code, _ = get_or_create_code(aiida_localhost)
    family, _ = install_pyscf_gth_family('pbe')
    builder = _dataset_builder(code, family, parent, structures, max_concurrent=2)
    assert builder.base.dft.parameters['protocol'] == 'fast'
    assert builder.base.dft.parameters['basis'] == 'gth-szv'
    assert builder.base.dft.parameters['threads'] == 1
    assert 'flock -n 9' in builder.base.dft.metadata.options.prepend_text
    assert set(builder.structures) == set(structures)
    RunConfig.from_dict({**ML_CONFIG, 'data': {**ML_CONFIG['data'], 'paths': ['x.h5']}})  # a valid config
