"""ARPES fitting: SIREN, surrogate, exact refinement, baseline, metrics and the arpes-* commands."""

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from aiida_nextham.arpes.baseline import Peaks, extract_peaks, fit_peaks
from aiida_nextham.arpes.data import make_intensity, to_netcdf
from aiida_nextham.arpes.fit import FitResult, fit, random_starts, refine
from aiida_nextham.arpes.fitdata import prepare_data
from aiida_nextham.arpes.metrics import (
    compare_models,
    contour_distance,
    dispersion_rmse,
    fermi_contours,
    occupied_iou,
)
from aiida_nextham.arpes.simulate import Broadening, SimulationGrid, simulate_dataset
from aiida_nextham.arpes.siren import Siren, SirenField, fit_field
from aiida_nextham.arpes.surrogate import Surrogate, search, train_surrogate
from aiida_nextham.arpes.tightbinding import get_model
from aiida_nextham.engine.cli import cli

A = 3.83
ZONE = math.pi / A
TRUE = {'t': 0.4, 'delta': 0.1, 'mu': -0.6}
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def nickelate(**values):
    model = get_model('nickelate-eg', a=A)
    model.set_parameters(values or TRUE)
    return model


@pytest.fixture(scope='module')
def small_data():
    """A small noisy 3D nickelate data set (12 × 12 × 3 k-points × 36 energies, Poisson counts)."""
    grid = SimulationGrid(
        kx=np.linspace(-ZONE, ZONE, 12),
        ky=np.linspace(-ZONE, ZONE, 12),
        kz=np.linspace(0, ZONE, 3),
        eV=np.linspace(-0.7, 0.1, 36),
    )
    broadening = Broadening(
        gamma0=0.03, energy_resolution=0.02, k_resolution=0.02, temperature=20, background=0.2
    )
    return simulate_dataset(nickelate(), grid, broadening, seed=1, counts=800)


def cut_data(counts=None, n_k=31, n_e=41):
    grid = SimulationGrid(kx=np.linspace(-ZONE, ZONE, n_k), ky=0.0, eV=np.linspace(-0.7, 0.1, n_e))
    return simulate_dataset(nickelate(), grid, Broadening(gamma0=0.03), seed=2, counts=counts)


# ------------------------------------------------------------------------------------------------- SIREN
def test_siren_initialisation_statistics():
    torch.manual_seed(0)
    n, omega = 256, 30.0
    net = Siren(3, 1, hidden_features=n, hidden_layers=4, first_omega=omega, hidden_omega=omega)
    first = net.layers[0].linear.weight.detach()
    assert float(first.abs().max()) <= 1 / 3 and float(first.std()) == pytest.approx(
        1 / 3 / math.sqrt(3), rel=0.05
    )
    bound = math.sqrt(6 / n) / omega
    for layer in net.layers[1:]:
        w, b = layer.linear.weight.detach(), layer.linear.bias.detach()
        assert float(w.abs().max()) <= bound and float(b.abs().max()) <= bound
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert float(net.output.weight.detach().abs().max()) <= bound
    x = torch.rand(8192, 3) * 2 - 1
    with torch.no_grad():
        h = net.layers[0](x)
        # ω0 W x spans many periods: arcsine-distributed output, variance ½, P(|h| > 0.9) = 1 − (2/π) asin 0.9
        assert float(h.var()) == pytest.approx(0.5, abs=0.02)
        assert float((h.abs() > 0.9).float().mean()) == pytest.approx(
            1 - 2 / math.pi * math.asin(0.9), abs=0.02
        )
        for depth, layer in enumerate(net.layers[1:]):
            z = layer.preactivation(h)
            # Var z = ω² n Var(W) E[h²] + ω² Var(b) = 2 E[h²] + 2/n: 1 after the first layer; z is normal
            # (a sum of n terms), so E[sin² z] = (1 − e^{−2 Var z}) / 2
            expected = 2 * float((h**2).mean()) + 2 / n
            assert float(z.var()) == pytest.approx(expected, rel=0.1)
            if depth == 0:
                assert float(z.var()) == pytest.approx(1.0, abs=0.1)
            h = torch.sin(z)
            assert float((h**2).mean()) == pytest.approx((1 - math.exp(-2 * float(z.var()))) / 2, abs=0.02)
        out = net.output(h)
    assert float(out.std()) < 1.0  # the linear output starts small


def test_siren_fits_functions_and_denoises():
    x = np.linspace(-1, 1, 400)[:, None]
    y = np.sin(3 * math.pi * x[:, 0]) * np.exp(-(x[:, 0] ** 2))
    field, history = fit_field(
        x, y, steps=400, batch_size=400, hidden_features=64, hidden_layers=2, first_omega=10
    )
    with torch.no_grad():
        pred = field(torch.as_tensor(x)).numpy()
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.02 and history[-1] < history[0] / 100

    g = np.linspace(-1, 1, 32)
    xy = np.stack(np.meshgrid(g, g, indexing='ij'), -1).reshape(-1, 2)
    f = np.cos(2 * math.pi * xy[:, 0]) * np.sin(math.pi * xy[:, 1])
    field2, _ = fit_field(
        xy, f, steps=500, batch_size=1024, hidden_features=64, hidden_layers=2, first_omega=10
    )
    with torch.no_grad():
        assert np.sqrt(np.mean((field2(torch.as_tensor(xy)).numpy() - f) ** 2)) < 0.05
        # round trip of the state
        again = SirenField.from_state(field2.state())
        torch.testing.assert_close(again(torch.as_tensor(xy)), field2(torch.as_tensor(xy)))

    noisy = y + np.random.default_rng(0).normal(0, 0.2, len(y))
    smooth, _ = fit_field(
        x, noisy, steps=300, batch_size=400, hidden_features=32, hidden_layers=2, first_omega=3
    )
    with torch.no_grad():
        rmse = np.sqrt(np.mean((smooth(torch.as_tensor(x)).numpy() - y) ** 2))
    assert rmse < 0.1  # half the noise: a denoised representation


# ---------------------------------------------------------------------------------------- data handling
def test_fraction_and_emin_subsetting(small_data):
    full = prepare_data(small_data)
    assert list(full.axes) == ['kx', 'ky', 'kz', 'eV'] and full.counts and full.mask.all()
    assert full.broadening.energy_resolution == 0.02 and full.broadening.k_resolution == 0.02
    quarter = prepare_data(small_data, fraction=0.25, seed=3)
    assert quarter.n_points == round(0.25 * full.n_points)
    assert np.array_equal(quarter.mask, prepare_data(small_data, fraction=0.25, seed=3).mask)
    assert not np.array_equal(quarter.mask, prepare_data(small_data, fraction=0.25, seed=4).mask)
    cut = prepare_data(small_data, emin=-0.1)
    assert cut.axes['eV'].min() >= -0.1 and cut.intensity.shape[:3] == full.intensity.shape[:3]
    assert cut.n_points == full.n_points * len(cut.axes['eV']) // len(full.axes['eV'])
    both = full.subset(0.5, -0.1, seed=0)
    assert both.n_points == round(0.5 * cut.n_points)
    with pytest.raises(ValueError, match='fewer than two energies'):
        prepare_data(small_data, emin=0.5)
    with pytest.raises(ValueError, match='fraction'):
        prepare_data(small_data, fraction=0.0)

    # a cut: kx × eV with scalar ky; NaN points are left out; descending axes are sorted
    data = cut_data()
    data[3, 5] = np.nan
    prepared = prepare_data(data.isel(kx=slice(None, None, -1)))
    assert prepared.intensity.shape == (31, 1, 41) and np.all(np.diff(prepared.axes['kx']) > 0)
    assert prepared.n_points == 31 * 41 - 1 and not prepared.counts
    no_energy = make_intensity(
        np.ones((4, 5)),
        {'kx': np.arange(4.0), 'ky': np.arange(5.0)},
        ('kx', 'ky'),
        energy_axis=None,
        source_format='test',
        source_file='x',
    )
    with pytest.raises(ValueError, match='no eV'):
        prepare_data(no_energy)
    with pytest.raises(ValueError, match='temperature'):
        prepare_data(xr.concat([data, data], 'temperature').assign_coords(temperature=[10.0, 20.0]))
    # kinetic energies referenced to E_F = hν (SpecsLab Prodigy style): all above E_F, a clear error
    kinetic = data.assign_coords(eV=data.eV + 21.2).assign_attrs(
        energy_axis='kinetic', photon_energy=21.2, work_function=4.3
    )
    with pytest.raises(ValueError, match='every energy lies above E_F'):
        prepare_data(kinetic)
    shifted = kinetic.assign_coords(eV=kinetic.eV - 21.2).assign_attrs(energy_axis='binding')
    assert prepare_data(shifted).axes['eV'][0] == pytest.approx(float(data.eV.min()))


# ---------------------------------------------------------------------------------- exact refinement
def test_refinement_recovers_nickelate(small_data):
    data = prepare_data(small_data)
    start = {'t': 0.42, 'delta': 0.07, 'mu': -0.56}
    params, nuisance, loss, objective = refine(nickelate(), data, start)
    assert params['t'] == pytest.approx(TRUE['t'], rel=0.01)
    assert params['delta'] == pytest.approx(TRUE['delta'], abs=0.005)
    assert params['mu'] == pytest.approx(TRUE['mu'], abs=0.005)
    assert nuisance['gamma0'] == pytest.approx(0.03, rel=0.1)
    assert 0.8 < loss < 1.2  # deviance per point of a correct Poisson model


def test_refinement_keeps_the_best_finite_point_when_the_loss_turns_nan(small_data, monkeypatch):
    """An overflow mid-run (here: NaN from the 8th evaluation on) must not leak NaN parameters or loss."""
    from aiida_nextham.arpes import fit as fit_module

    data = prepare_data(small_data)
    start = {'t': 0.42, 'delta': 0.07, 'mu': -0.56}
    calls = []
    loss_of = fit_module._Objective.loss

    def failing(self, p):
        calls.append(None)
        loss = loss_of(self, p)
        return loss * float('nan') if len(calls) >= 8 else loss

    monkeypatch.setattr(fit_module._Objective, 'loss', failing)
    params, nuisance, loss, _ = refine(nickelate(), data, start, max_iter=50)
    assert len(calls) > 8 and math.isfinite(loss)
    assert all(math.isfinite(v) for v in (*params.values(), *nuisance.values()))
    assert abs(params['t'] - TRUE['t']) < abs(start['t'] - TRUE['t'])  # the finite steps made progress


def test_fit_uncertainties_and_result_json(small_data):
    """The INR pipeline with a tiny surrogate; an init near the truth is refined exactly; the curvature
    errors are consistent with the actual errors; the result survives JSON."""
    data = prepare_data(small_data)
    model = nickelate(t=0.3, delta=0.0, mu=-0.3)
    surrogate = train_surrogate(
        model, data, n_spectra=30, points_per_spectrum=512, steps=30, hidden_features=32
    )
    init = {'t': 0.41, 'delta': 0.09, 'mu': -0.61}
    result = fit(
        data,
        model,
        starts=3,
        init=init,
        refine_best=None,
        surrogate=surrogate,
        search_options={'steps': 5, 'lr': 1e-3},
    )
    assert [s['stage'] for s in result.starts] == ['exact'] * 3
    assert result.loss == min(s['loss'] for s in result.starts)
    truth = result.metrics['truth']
    for name in TRUE:
        sigma = result.uncertainties[name]
        assert 0 < sigma < 0.01
        assert abs(truth['error'][name]) < 5 * sigma + 1e-4, name
    assert truth['dispersion_rmse'] < 0.003 and truth['occupied_iou_mean'] > 0.98
    assert result.metrics['curvature'] == 'hessian' and 0.8 < result.metrics['chi2_reduced'] < 1.2
    assert (
        result.metrics['n_reached_best'] >= 1 and result.starts[result.metrics['best_start']]['reached_best']
    )
    assert {'surrogate_search', 'refine', 'uncertainty', 'total'} <= set(result.timings)
    again = FitResult.from_dict(json.loads(result.to_json()))
    assert again.parameters == result.parameters and again.build_model().get_parameters() == result.parameters


def test_surrogate_save_load_and_checks(small_data, tmp_path):
    data = prepare_data(small_data)
    model = nickelate()
    surrogate = train_surrogate(
        model, data, n_spectra=8, points_per_spectrum=256, steps=5, hidden_features=16
    )
    loaded = Surrogate.load(surrogate.save(tmp_path / 's.pt'))
    x = torch.as_tensor(data.points()[:50])
    theta = torch.tensor([[0.4, 0.1, -0.6], [0.3, 0.0, -1.0]])
    torch.testing.assert_close(loaded(x, theta), surrogate(x, theta))
    assert loaded(x, theta).shape == (2, 50) and loaded.info == surrogate.info
    loaded.check(model, data.subset(emin=-0.1))  # inside the box
    with pytest.raises(ValueError, match='beyond the surrogate box'):
        loaded.check(model, prepare_data(small_data.assign_coords(kx=small_data.kx * 1.5)))
    with pytest.raises(ValueError, match='bounds'):
        loaded.check(get_model('nickelate-eg', a=A, bounds={'t': (0.2, 0.6)}), data)
    with pytest.raises(ValueError, match='surrogate is for'):
        loaded.check(get_model('nickelate-eg', a=A, extra=['tp']), data)
    ends, losses = search(loaded, data, random_starts(model, 4, seed=1), steps=3)
    low, high = np.array(list(model.bounds().values())).T
    assert (
        ends.shape == (4, 3) and losses.shape == (4,) and np.all((ends >= low - 1e-6) & (ends <= high + 1e-6))
    )


# ------------------------------------------------------------------------------------------- baseline
def test_baseline_recovers_parameters_from_noiseless_peaks():
    true = nickelate()
    k = (np.random.default_rng(0).random((400, 3)) * 2 - 1) * ZONE
    bands = true.bands(torch.as_tensor(k)).detach().numpy()
    keep = (bands > -0.7) & (bands < 0.05)
    kk, energy = np.repeat(k, 2, 0)[keep.reshape(-1)], bands.reshape(-1)[keep.reshape(-1)]
    n = len(energy)
    peaks = Peaks(kk, energy, np.full(n, 'edc'), np.zeros((n, 3)), np.full(n, 0.01), np.zeros(n))
    fits = fit_peaks(get_model('nickelate-eg', a=A), peaks, random_starts(true, 6, seed=0))
    best = min(fits, key=lambda f: f.cost)
    for name, value in TRUE.items():
        assert best.parameters[name] == pytest.approx(value, abs=1e-6)
    assert best.rms < 1e-6 and best.covariance.shape == (3, 3)
    with pytest.raises(ValueError, match='too few'):
        fit_peaks(
            true,
            Peaks(kk[:3], energy[:3], np.full(3, 'edc'), np.zeros((3, 3)), np.ones(3), np.zeros(3)),
            [[0.4, 0.1, -0.6]],
        )


def test_baseline_on_a_simulated_cut():
    data = prepare_data(cut_data(n_k=61, n_e=81))
    peaks = extract_peaks(data)
    assert set(peaks.kind) == {'edc', 'mdc_kx'} and len(peaks) > 50
    assert np.all(peaks.direction[peaks.kind == 'mdc_kx'] == [1, 0, 0])
    residual = np.abs(
        nickelate().bands(torch.as_tensor(peaks.k)).detach().numpy() - peaks.energy[:, None]
    ).min(1)
    assert np.median(residual) < 0.01
    result = fit(data, get_model('nickelate-eg', a=A), method='baseline', starts=4)
    assert result.parameters['t'] == pytest.approx(TRUE['t'], rel=0.03)
    assert result.parameters['mu'] == pytest.approx(TRUE['mu'], abs=0.03)
    assert result.metrics['n_peaks'] == len(peaks) and len(result.starts) == 4
    assert all(s['stage'] == 'least_squares' for s in result.starts)


# -------------------------------------------------------------------------------------------- metrics
def test_metrics_identical_and_analytic_cases():
    g = np.linspace(-1, 1, 201)
    r2 = g[:, None] ** 2 + g[None, :] ** 2
    small, large = r2 - 0.5**2, r2 - 0.6**2
    a, b = fermi_contours(small, g, g), fermi_contours(large, g, g)
    assert len(a) == 1 and np.allclose(np.hypot(*a[0].T), 0.5, atol=2e-3)
    assert contour_distance(a, a) == 0.0 and occupied_iou(small, small) == 1.0
    assert contour_distance(a, b) == pytest.approx(0.1, abs=2e-3)
    assert occupied_iou(small, large) == pytest.approx((0.5 / 0.6) ** 2, abs=0.01)
    assert contour_distance([], []) == 0.0 and contour_distance(a, []) == math.inf
    assert occupied_iou(np.ones((3, 3)), np.ones((3, 3))) == 1.0  # both empty

    one, shifted = get_model('single-band'), get_model('single-band')
    shifted.set_parameters({'mu': one.get_parameters()['mu'] + 0.01})
    k = np.random.default_rng(1).random((50, 3))
    assert dispersion_rmse(shifted, one, k) == pytest.approx(0.01, rel=1e-9)
    assert math.isnan(dispersion_rmse(shifted, one, k, window=(10.0, 11.0)))
    same = compare_models(nickelate(), nickelate(), g * ZONE, g * ZONE, kz=[0.0, 0.5])
    assert same['dispersion_rmse'] == 0.0 and same['fermi_contour_distance_mean'] == 0.0
    assert same['occupied_iou'] == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------ CLI
def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_error(result, exit_code, *fragments):
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


GRID = ['--kx', -ZONE, ZONE, 17, '--energy', -0.7, 0.1, 29, '--gamma0', 0.03, '--counts', 300]


def test_cli_simulate_fit_round_trip(tmp_path):
    params = tmp_path / 'params.json'
    params.write_text(json.dumps({'name': 'nickelate-eg', 'fixed': {'a': A}, 'parameters': TRUE}))
    data = tmp_path / 'data.nc'
    result = invoke('arpes-simulate', 'nickelate-eg', params, '-o', data, *GRID, '--seed', 5)
    assert result.exit_code == 0, result.output
    da = xr.open_dataarray(data, engine='scipy')
    assert (
        da.dims == ('kx', 'eV') and da.shape == (17, 29) and json.loads(da.attrs['true_parameters']) == TRUE
    )

    out, plot = tmp_path / 'baseline.json', tmp_path / 'baseline.png'
    result = invoke(
        'arpes-fit',
        data,
        '--model',
        'nickelate-eg',
        '--method',
        'baseline',
        '--starts',
        3,
        '-o',
        out,
        '--plot',
        plot,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {'parameters', 'uncertainties', 'loss', 'metrics', 'timings', 'starts', 'data'} <= set(report)
    assert report['model']['fixed'] == {'a': A}  # the lattice constant from the data's metadata
    assert plot.read_bytes().startswith(PNG_MAGIC)

    init = tmp_path / 'init.json'
    init.write_text(json.dumps({'t': 0.41, 'delta': 0.09, 'mu': -0.59}))
    out, surrogate = tmp_path / 'inr.json', tmp_path / 'surrogate.pt'
    args = [
        'arpes-fit',
        data,
        '--model',
        'nickelate-eg',
        '--init',
        init,
        '--starts',
        2,
        '--refine',
        0,
        '--surrogate-steps',
        20,
        '--search-steps',
        3,
        '--surrogate',
        surrogate,
        '--emin',
        -0.5,
        '-o',
        out,
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert 'surrogate_training' in report['timings'] and surrogate.exists()
    assert report['options']['emin'] == -0.5 and report['options']['init'] == json.loads(init.read_text())
    assert report['metrics']['truth']['relative_error']['t'] < 0.05
    result = invoke(*args)  # the saved surrogate is reused
    assert result.exit_code == 0 and 'surrogate_training' not in json.loads(out.read_text())['timings']


def test_cli_errors(tmp_path):
    params = tmp_path / 'params.json'
    params.write_text(json.dumps(TRUE))
    data = tmp_path / 'data.nc'
    assert_error(
        invoke('arpes-simulate', 'cuprate', params, '-o', data), 31, 'BadModel', 'unknown tight-binding model'
    )
    params.write_text(json.dumps({**TRUE, 't': 5.0}))
    assert_error(
        invoke('arpes-simulate', 'nickelate-eg', params, '-o', data), 31, 'outside the bounds', 't = 5.0'
    )
    params.write_text(json.dumps({**TRUE, 'tq': 0.1}))
    assert_error(invoke('arpes-simulate', 'nickelate-eg', params, '-o', data), 31, "no parameter(s) ['tq']")
    params.write_text('[1, 2]')
    assert_error(invoke('arpes-simulate', 'nickelate-eg', params, '-o', data), 31, 'JSON object')
    assert not data.exists()

    params.write_text(json.dumps(TRUE))
    assert invoke('arpes-simulate', 'nickelate-eg', params, '-o', data, *GRID).exit_code == 0
    out = tmp_path / 'r.json'
    assert_error(
        invoke('arpes-fit', data, '--model', 'cuprate', '-o', out), 31, 'unknown tight-binding model'
    )
    params.write_text(json.dumps({'t': 0.9}))
    assert_error(
        invoke('arpes-fit', data, '--model', 'nickelate-eg', '--init', params, '-o', out), 31, 'outside'
    )
    assert_error(
        invoke('arpes-fit', tmp_path / 'missing.nc', '--model', 'nickelate-eg', '-o', out), 30, 'BadData'
    )
    garbage = tmp_path / 'garbage.nc'
    garbage.write_text('not a netcdf file')
    assert_error(invoke('arpes-fit', garbage, '--model', 'nickelate-eg', '-o', out), 30, 'BadData')
    no_energy = tmp_path / 'map.nc'
    to_netcdf(
        make_intensity(
            np.ones((4, 5)),
            {'kx': np.arange(4.0), 'ky': np.arange(5.0)},
            ('kx', 'ky'),
            energy_axis=None,
            source_format='test',
            source_file='map',
        ),
        no_energy,
    )
    assert_error(invoke('arpes-fit', no_energy, '--model', 'nickelate-eg', '-o', out), 30, 'no eV')
    assert_error(invoke('arpes-fit', data, '--model', 'nickelate-eg', '--emin', 0.5, '-o', out), 30, 'emin')
    assert invoke('arpes-fit', data, '--model', 'nickelate-eg', '--fraction', 0, '-o', out).exit_code == 2
    wrong = tmp_path / 'wrong.pt'
    train_surrogate(
        get_model('graphene'),
        prepare_data(xr.open_dataarray(data, engine='scipy')),
        n_spectra=2,
        points_per_spectrum=16,
        steps=1,
        hidden_features=8,
    ).save(wrong)
    assert_error(
        invoke('arpes-fit', data, '--model', 'nickelate-eg', '--surrogate', wrong, '-o', out), 32, 'graphene'
    )
    assert not out.exists()
