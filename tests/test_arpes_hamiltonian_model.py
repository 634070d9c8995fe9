"""The tight-binding model seeded by a block Hamiltonian (``aiida_nextham.arpes.hamiltonian_model``).

Data: a real PySCF Hamiltonian of rattled Si (gth-szv, 8 orbitals, 8 Å cutoff, tests/data/ml) and the
synthetic random s+p Si Hamiltonian of conftest (positive-definite S).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aiida_nextham.arpes.fit import fit
from aiida_nextham.arpes.hamiltonian_model import HamiltonianModel, HamiltonianModelError, parse_orbitals
from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
from aiida_nextham.arpes.tightbinding import ModelSpec, get_model
from aiida_nextham.hamiltonian.bloch import bloch_sum, eigenvalues
from aiida_nextham.hamiltonian.hdf5 import read_hdf5, write_hdf5

SI = Path(__file__).parent / 'data' / 'ml' / 'si2_rattled_0.h5'
#: the rattled cell's nearest-neighbour distances spread over ±0.15 Å
TOLERANCE = 0.3


def cartesian(bh, kpoints: np.ndarray) -> np.ndarray:
    return kpoints @ (2 * np.pi * np.linalg.inv(bh.lattice).T)


def random_kpoints(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3)) - 0.5


@pytest.fixture(scope='module')
def si():
    return read_hdf5(SI)


def test_initial_bands_equal_the_block_hamiltonian(si, si_h5, si_hamiltonian):
    """At the initial parameters: H c = ε S c of the file at any k, to 1e-8 eV (real and synthetic files)."""
    kf = random_kpoints(40)
    model = get_model('hamiltonian', path=str(SI), shell_tolerance=TOLERANCE)
    assert model.n_bands == 8 and model.fermi_level == si.fermi_level
    assert model.parameter_names == ('e_Si_3p', 's_Si_Si_1', 's_Si_Si_2', 'mu')  # 3s is the reference
    assert model.hopping_shells_info['s_Si_Si_1']['distance'] == pytest.approx(2.35, abs=0.01)
    assert model.hopping_shells_info['s_Si_Si_2']['distance'] == pytest.approx(3.84, abs=0.01)
    bands = model.bands(torch.tensor(cartesian(si, kf))).detach().numpy()
    np.testing.assert_allclose(bands + si.fermi_level, eigenvalues(si, kf), rtol=0, atol=1e-8)

    # no Fermi level in the file: computed from the electron count (8 electrons: mid-gap or in the bands)
    synthetic = HamiltonianModel(si_h5)
    assert si_hamiltonian.fermi_level is None and np.isfinite(synthetic.fermi_level)
    bands = synthetic.bands(torch.tensor(cartesian(si_hamiltonian, kf))).detach().numpy()
    reference = eigenvalues(si_hamiltonian, kf) - synthetic.fermi_level
    np.testing.assert_allclose(bands, reference, rtol=0, atol=1e-8)
    assert np.sum(reference < 0) == pytest.approx(4 * len(kf), abs=len(kf))  # 4 of 8 bands occupied


def test_spinor_hamiltonian(tmp_path):
    """Complex spinor blocks (2, 2, ni, nj) and S ⊗ 1₂: exact bands; a subset keeps both spins."""
    from ase.build import bulk

    from aiida_nextham.hamiltonian.basis import Basis
    from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

    basis = Basis.from_shells({'Si': [0, 1]})
    bh = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), basis, cutoff=4.0, seed=3, spin='spinor')
    path = write_hdf5(bh.replace(fermi_level=0.3), tmp_path / 'spinor.h5')
    model = HamiltonianModel(path)
    kf = random_kpoints(10, seed=4)
    bands = model.bands(torch.tensor(cartesian(bh, kf))).detach().numpy()
    assert bands.shape == (10, 16)
    np.testing.assert_allclose(bands, eigenvalues(bh, kf) - 0.3, rtol=0, atol=1e-8)
    p_only = HamiltonianModel(path, orbitals=['Si:p'])
    assert p_only.n_bands == 12 and p_only.selected.tolist() == [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15]


def test_parameters_mean_what_they_say(si):
    """μ, a hopping scale and an on-site energy reproduce the Hamiltonian modified in real space."""
    model = get_model('hamiltonian', path=str(SI), shell_tolerance=TOLERANCE)
    initial = model.get_parameters()
    changes = {'mu': 0.1, 's_Si_Si_1': 1.05, 'e_Si_3p': initial['e_Si_3p'] + 0.2}
    model.set_parameters(changes)

    # the same change made to the blocks: H -> E_F S + s (H - E_F S) for nearest neighbours,
    # H_ij -> H_ij + (δ_i + δ_j) S_ij / 2 with δ = 0.2 eV on the 3p orbitals
    ef, distances = si.fermi_level, si.distances()
    delta = np.array([0.0, 0.2, 0.2, 0.2])
    blocks = []
    for p in range(si.n_pairs):
        h, s = si.block('H', p), si.block('S', p)
        if 2.0 < distances[p] < 2.7:
            h = ef * s + 1.05 * (h - ef * s)
        blocks.append(h + 0.5 * (delta[:, None] + delta[None, :]) * s)
    modified = si.replace(hamiltonian=np.concatenate([b.reshape(-1) for b in blocks]))
    kf = random_kpoints(30, seed=1)
    bands = model.bands(torch.tensor(cartesian(si, kf))).detach().numpy()
    np.testing.assert_allclose(bands, eigenvalues(modified, kf) - ef - 0.1, rtol=0, atol=1e-8)


def test_orbital_subset_is_the_lowdin_block(si):
    """Selecting the 3p orbitals: eigenvalues of the 3p block of S^-1/2 H S^-1/2 (full basis, per k)."""
    model = get_model('hamiltonian', path=str(SI), orbitals=['Si:p'], shell_tolerance=TOLERANCE)
    assert model.n_bands == 6 and model.parameter_names == ('e_Si_3p', 's_Si_Si_1', 's_Si_Si_2', 'mu')
    p_orbitals = [1, 2, 3, 5, 6, 7]  # atom 0: 3s, 3p×3; atom 1: 3s, 3p×3
    assert model.selected.tolist() == p_orbitals
    kf = random_kpoints(10, seed=2)
    expected = []
    for k in kf:
        h, s = bloch_sum(si, 'H', k), bloch_sum(si, 'S', k)
        w, u = np.linalg.eigh(s)
        x = u @ np.diag(w**-0.5) @ u.conj().T
        lowdin = (x @ h @ x)[np.ix_(p_orbitals, p_orbitals)]
        expected.append(np.linalg.eigvalsh(lowdin) - si.fermi_level)
    bands = model.bands(torch.tensor(cartesian(si, kf))).detach().numpy()
    np.testing.assert_allclose(bands, expected, rtol=0, atol=1e-8)
    # a selection by shell name and by index is the same
    by_index = get_model('hamiltonian', path=str(SI), orbitals=p_orbitals, shell_tolerance=TOLERANCE)
    by_name = get_model('hamiltonian', path=str(SI), orbitals=['Si:3p'], shell_tolerance=TOLERANCE)
    k = torch.tensor(cartesian(si, kf))
    torch.testing.assert_close(by_index.bands(k), model.bands(k), rtol=0, atol=1e-12)
    torch.testing.assert_close(by_name.bands(k), model.bands(k), rtol=0, atol=1e-12)
    # only the s shell: its on-site energy is free (3p is now the fixed one), no degeneracy with mu
    s_only = get_model('hamiltonian', path=str(SI), orbitals=['Si:s'], hopping_shells=1)
    assert s_only.parameter_names == ('e_Si_3s', 's_Si_Si_1', 'mu') and s_only.n_bands == 2


def test_gradients_reach_every_parameter(si):
    """Autograd gradients of the bands agree with central finite differences for every free parameter."""
    model = get_model('hamiltonian', path=str(SI), shell_tolerance=TOLERANCE)
    k = torch.tensor(cartesian(si, random_kpoints(12, seed=3)))
    weights = torch.linspace(0.5, 1.5, model.n_bands, dtype=torch.float64)

    def objective() -> torch.Tensor:
        return (model.bands(k) ** 2 * weights).sum()

    objective().backward()
    step = 1e-6
    for name, parameter in model.params.items():
        assert parameter.grad is not None and torch.isfinite(parameter.grad), name
        value = float(parameter.detach())
        with torch.no_grad():
            model.set_parameters({name: value + step})
            plus = float(objective())
            model.set_parameters({name: value - step})
            minus = float(objective())
            model.set_parameters({name: value})
        numerical = (plus - minus) / (2 * step)
        assert abs(numerical) > 1e-3, name  # every parameter changes the bands
        assert float(parameter.grad) == pytest.approx(numerical, rel=1e-5), name


def test_spec_round_trip_and_file_check(si, tmp_path):
    path = tmp_path / 'si.h5'
    shutil.copy(SI, path)
    model = get_model('hamiltonian', path=str(path), orbitals=['Si:p'], shell_tolerance=TOLERANCE)
    model.set_parameters({'mu': 0.05, 's_Si_Si_2': 0.9})
    spec = ModelSpec.from_json(model.spec().to_json())
    assert spec.fixed['fermi_level'] == si.fermi_level and len(spec.fixed['sha256']) == 64
    rebuilt = spec.build()
    k = torch.tensor(cartesian(si, random_kpoints(5)))
    torch.testing.assert_close(rebuilt.bands(k), model.bands(k), rtol=0, atol=0)
    assert rebuilt.bounds() == model.bounds()
    # another Hamiltonian under the same name is refused
    write_hdf5(si.replace(fermi_level=0.0), path)
    with pytest.raises(HamiltonianModelError, match='has changed since the model was made'):
        spec.build()


def test_bad_input_is_refused_clearly(si_h5, tmp_path):
    assert issubclass(HamiltonianModelError, ValueError)
    path = str(SI)
    cases = [
        ({'orbitals': ['Fe:d']}, r'no Fe in Si2 \(elements: Si\)'),
        ({'orbitals': ['Xx']}, "unknown element 'Xx'"),
        ({'orbitals': ['Si:d']}, "'Si:d' matches nothing: Si has the shells 3s, 3p"),
        ({'orbitals': [8]}, 'orbital index 8 out of range'),
        ({'orbitals': []}, 'the orbital selection is empty'),
        ({'onsite': ['Si:s', 'Si:p']}, 'degenerate with mu'),
        ({'bounds': {'t': (0, 1)}}, r"bounds for unknown parameter\(s\) \['t'\]"),
        ({'hopping_shells': -1}, 'hopping_shells must be >= 0'),
    ]
    for options, message in cases:
        with pytest.raises(HamiltonianModelError, match=message):
            get_model('hamiltonian', path=path, **options)
    with pytest.raises(HamiltonianModelError, match='no block-Hamiltonian file'):
        get_model('hamiltonian', path=str(tmp_path / 'missing.h5'))
    (tmp_path / 'text.h5').write_text('not HDF5')
    with pytest.raises(HamiltonianModelError, match='not a readable HDF5 file'):
        get_model('hamiltonian', path=str(tmp_path / 'text.h5'))
    no_level = read_hdf5(si_h5).replace(n_electrons=None)
    with pytest.raises(HamiltonianModelError, match='neither a Fermi level nor an electron count'):
        HamiltonianModel(write_hdf5(no_level, tmp_path / 'no_level.h5'))
    assert parse_orbitals('Ni:d, O:p') == ['Ni:d', 'O:p'] and parse_orbitals('0,1,5') == [0, 1, 5]
    with pytest.raises(HamiltonianModelError, match='no orbitals'):
        parse_orbitals(' , ')


def test_synthetic_spectrum_recovery():
    """ARPES simulated with μ = +0.1 eV and a nearest-neighbour scale of 1.05 (Poisson counts) is fitted
    back from the DFT seed by the package's own fit (INR surrogate + exact refinement).

    Only the nearest-neighbour scale and μ are free: along Γ–X within 1.6 eV of E_F the second-neighbour
    scale and the 3p energy are ~99 % correlated with μ (a nearly rigid shift there), so freeing them
    trades accuracy of μ for nothing the data can decide.
    """
    t0 = time.process_time()  # CPU time: the machine may be shared
    options = {'path': str(SI), 'onsite': [], 'hopping_shells': 1, 'shell_tolerance': TOLERANCE}
    model = get_model('hamiltonian', **options)
    seed = model.get_parameters()
    assert seed == {'s_Si_Si_1': 1.0, 'mu': 0.0}
    true = {'s_Si_Si_1': 1.05, 'mu': 0.1}
    model.set_parameters(true)
    grid = SimulationGrid(kx=np.linspace(-0.8, 0.8, 25), ky=0.0, eV=np.linspace(-1.6, 0.1, 35))
    data = simulate_dataset(model, grid, Broadening(gamma0=0.04), seed=1, counts=500)

    result = fit(
        data,
        get_model('hamiltonian', **options),
        starts=2,
        init=seed,
        refine_best=None,
        surrogate_options={'steps': 20, 'n_spectra': 10},
        search_options={'steps': 3},
    )
    elapsed = time.process_time() - t0
    got, error = result.parameters, result.uncertainties
    assert got['mu'] == pytest.approx(0.1, abs=0.003)
    assert got['s_Si_Si_1'] == pytest.approx(1.05, abs=0.002)
    for name in true:  # within 4 standard errors, which are finite and small
        assert 0 < error[name] < 0.005 and abs(got[name] - true[name]) < 4 * error[name] + 5e-4, name
    assert result.metrics['truth']['dispersion_rmse'] < 0.005
    assert result.build_model().name == 'hamiltonian'
    assert elapsed < 20, elapsed


def test_model_is_usable_like_any_other(si):
    """deepcopy (fit, surrogate), batched parameter overrides (functional gradients) and dataclass specs."""
    import copy

    model = get_model('hamiltonian', path=str(SI), shell_tolerance=TOLERANCE)
    clone = copy.deepcopy(model)
    k = torch.tensor(cartesian(si, random_kpoints(4)))
    torch.testing.assert_close(clone.bands(k), model.bands(k))
    mu = torch.tensor([[0.0], [0.1]], dtype=torch.float64)  # two parameter sets × 4 k-points
    batched = model.bands(k, {'mu': mu})
    assert batched.shape == (2, 4, 8)
    torch.testing.assert_close(batched[1], model.bands(k) - 0.1)
    assert dataclasses.asdict(model.spec())['name'] == 'hamiltonian'


def test_engine_cli_hamiltonian_model(tmp_path, run_cli_command):
    """``hamiltonian:PATH`` and ``--orbitals`` in arpes-simulate and arpes-fit; bands in RESULT.json."""
    import json

    from aiida_nextham.engine.cli import cli  # (importing arpes_command first is circular)

    params = tmp_path / 'true.json'
    params.write_text(json.dumps({'mu': 0.05}))
    data = tmp_path / 'cut.nc'
    fixed = json.dumps({'onsite': [], 'hopping_shells': 1, 'shell_tolerance': TOLERANCE})
    grid = ['--kx', '-0.6', '0.6', '9', '--energy', '-1.5', '0.1', '17', '--gamma0', '0.08']
    simulate = ['arpes-simulate', f'hamiltonian:{SI}', params, '--orbitals', 'Si:p', '--fixed', fixed]
    run_cli_command(cli, [*simulate, *grid, '-o', data])
    result = tmp_path / 'result.json'
    args = ['arpes-fit', data, '--model', f'hamiltonian:{SI}', '--orbitals', 'Si:3p', '--fixed', fixed]
    fast = ['--starts', '2', '--refine', '0', '--surrogate-steps', '20', '--surrogate-spectra', '10']
    run_cli_command(cli, [*args, *fast, '--search-steps', '3', '-o', result])
    report = json.loads(result.read_text())
    assert report['model']['fixed']['orbitals'] == ['Si:3p'] and report['model']['name'] == 'hamiltonian'
    assert report['options']['init'] == {'s_Si_Si_1': 1.0, 'mu': 0.0}  # the file's Hamiltonian first
    assert report['parameters']['mu'] == pytest.approx(0.05, abs=0.005)
    assert report['metrics']['truth']['true_parameters']['mu'] == 0.05  # the true model was rebuilt
    bands = np.array(report['bands']['energies'])
    assert bands.shape == (9, 6)
    assert np.array(report['bands']['kpoints'])[:, 0] == pytest.approx(np.linspace(-0.6, 0.6, 9))

    # data simulated from a file that is gone: the fit works, without truth metrics
    copy = tmp_path / 'copy.h5'
    shutil.copy(SI, copy)
    orphan = tmp_path / 'orphan.nc'
    simulate = ['arpes-simulate', f'hamiltonian:{copy}', params, '--fixed', fixed]
    run_cli_command(cli, [*simulate, *grid, '-o', orphan])
    copy.unlink()
    args = ['arpes-fit', orphan, '--model', f'hamiltonian:{SI}', '--fixed', fixed, '--method', 'baseline']
    output = run_cli_command(cli, [*args, '--starts', '1', '-o', tmp_path / 'orphan.json']).output
    assert 'no truth metrics, the true model of the data is unavailable' in output
    assert 'truth' not in json.loads((tmp_path / 'orphan.json').read_text())['metrics']

    fit_args = ['arpes-fit', data, '-o', tmp_path / 'refused.json']
    refused = run_cli_command(
        cli, [*fit_args, '--model', f'hamiltonian:{SI}', '--orbitals', 'Fe:d'], raises=True
    )
    assert refused.exit_code == 31 and 'no Fe in Si2' in refused.output
    refused = run_cli_command(cli, [*fit_args, '--model', 'graphene', '--orbitals', 'C:p'], raises=True)
    assert 'only a hamiltonian:PATH model has orbitals' in refused.output
