"""Tight-binding models and the ARPES forward simulator (aiida_nextham.arpes.tightbinding / simulate)."""

import json
import math

import numpy as np
import pytest
import torch

from aiida_nextham.arpes.kspace import K_FACTOR
from aiida_nextham.arpes.simulate import (
    K_B,
    ArpesForwardModel,
    Broadening,
    SimulationGrid,
    fermi_dirac,
    gaussian_blur,
    kz_from_photon_energy,
    poisson_noise,
    simulate_dataset,
    spectral_function,
)
from aiida_nextham.arpes.tightbinding import (
    MODELS,
    HoppingListModel,
    ModelSpec,
    TightBindingModel,
    get_model,
)

A_NI = 3.83
SQ3 = math.sqrt(3.0)
GRAPHENE_LATTICE = [[2.46, 0, 0], [1.23, 2.46 * SQ3 / 2, 0], [0, 0, 10.0]]


def random_k(n: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * scale


def graphene_hopping_list() -> HoppingListModel:
    """Graphene as a hopping table: A–B bonds in cells 0, −a1, −a2 (amplitude −t), six A–A and B–B
    second neighbours listed once each (−tp), on-site ±delta/2."""
    nn_bonds = [
        {'R': r, 'i': 'A', 'j': 'B', 'amplitude': {'t': -1}} for r in ([0, 0, 0], [-1, 0, 0], [0, -1, 0])
    ]
    second = [
        {'R': r, 'i': o, 'j': o, 'amplitude': {'tp': -1}}
        for r in ([1, 0, 0], [0, 1, 0], [-1, 1, 0])
        for o in 'AB'
    ]
    return HoppingListModel(
        GRAPHENE_LATTICE,
        ['A', 'B'],
        nn_bonds + second,
        onsite=[{'delta': 0.5}, {'delta': -0.5}],
        bounds={'t': (2, 3.5)},
        values={'t': 2.7, 'tp': 0.15, 'delta': 0.2, 'mu': 0.3},
    )


def complex_hopping_list() -> HoppingListModel:
    """Three orbitals on an oblique lattice, complex and tied amplitudes (no symmetry at all)."""
    lattice = [[3.0, 0.1, 0.0], [0.4, 2.7, 0.0], [0.2, -0.3, 5.0]]
    hoppings = [
        {'R': [1, 0, 0], 'i': 0, 'j': 0, 'amplitude': {'t1': -1, 'lam': [0, 1]}},
        {'R': [0, 1, 0], 'i': 0, 'j': 1, 'amplitude': {'t1': [0.3, -0.8]}},
        {'R_cart': [3.4, 2.8, 0.0], 'i': 1, 'j': 2, 'amplitude': 't2'},
        {'R': [0, 0, 0], 'i': 2, 'j': 0, 'amplitude': [0.05, 0.02]},
        {'R': [0, 0, 1], 'i': 1, 'j': 1, 'amplitude': -0.07},
    ]
    return HoppingListModel(
        lattice,
        ['a', 'b', 'c'],
        hoppings,
        onsite=['e0', None, {'e0': -1, 't2': 0.5}],
        values={'t1': 0.8, 'lam': 0.1, 't2': 0.4, 'e0': 0.3, 'mu': 0.05},
    )


def all_models() -> dict[str, TightBindingModel]:
    models = {
        'single-band': get_model('single-band'),
        'single-band-tetragonal': get_model('single-band', lattice='tetragonal', c=6.6),
        'graphene': get_model('graphene', extra=['tp']),
        'nickelate-eg': get_model('nickelate-eg', extra=['tp', 'tp_pi', 'tpp']),
        'manganite-eg': get_model('manganite-eg', extra=['delta2', 'tp', 'tp_pi', 'tpp']),
        'hopping-list-graphene': graphene_hopping_list(),
        'hopping-list-complex': complex_hopping_list(),
    }
    models['graphene'].set_parameters({'tp': 0.12, 'delta': 0.1})
    models['nickelate-eg'].set_parameters({'tp': 0.03, 'tp_pi': -0.02, 'tpp': 0.015})
    models['manganite-eg'].set_parameters(
        {'delta': 0.08, 'delta2': 0.05, 'tp': -0.02, 'tp_pi': 0.03, 'tpp': 0.01}
    )
    return models


def reciprocal(lattice) -> torch.Tensor:
    """Reciprocal lattice vectors as rows (Å⁻¹)."""
    return 2 * math.pi * torch.linalg.inv(torch.as_tensor(lattice, dtype=torch.float64)).T


def model_lattice(name: str, model) -> np.ndarray:
    if name.startswith('hopping-list'):
        return model.lattice_vectors.numpy()
    if name == 'graphene':
        return np.array(GRAPHENE_LATTICE)
    a = model.a
    c = model.c if getattr(model, 'lattice', None) == 'tetragonal' else a
    return np.diag([a, a, c])


# --- tight-binding models ------------------------------------------------------------------------------


def eg_closed_form(k: np.ndarray, t: float, delta: float, mu: float, a: float) -> np.ndarray:
    cx, cy, cz = np.cos(k * a).T
    h11 = delta / 2 - 1.5 * t * (cx + cy)
    h22 = -delta / 2 - 0.5 * t * (cx + cy) - 2 * t * cz
    h12 = SQ3 / 2 * t * (cx - cy)
    root = np.sqrt(((h11 - h22) / 2) ** 2 + h12**2)
    return np.stack([(h11 + h22) / 2 - root, (h11 + h22) / 2 + root], -1) - mu


def test_nickelate_equals_closed_form():
    model = get_model('nickelate-eg', a=A_NI)
    assert model.parameter_names == ('t', 'delta', 'mu')
    params = {'t': 0.37, 'delta': 0.13, 'mu': -0.52}
    model.set_parameters(params)
    k = random_k(500, 2 * math.pi / A_NI)
    expected = eg_closed_form(k.numpy(), params['t'], params['delta'], params['mu'], A_NI)
    np.testing.assert_allclose(model.bands(k).detach().numpy(), expected, rtol=0, atol=1e-12)
    # Γ: H12 = 0, both orbitals at −3t ± Δ/2 (3z²−r² lower for Δ > 0); R: +3t ± Δ/2
    t, d, mu = params['t'], params['delta'], params['mu']
    gamma_r = model.bands(torch.tensor([[0.0, 0, 0], [math.pi / A_NI] * 3], dtype=torch.float64))
    np.testing.assert_allclose(
        gamma_r.detach().numpy(),
        [[-3 * t - d / 2 - mu, -3 * t + d / 2 - mu], [3 * t - d / 2 - mu, 3 * t + d / 2 - mu]],
    )
    h_gamma = model.hamiltonian(torch.zeros(3, dtype=torch.float64)).detach()
    assert h_gamma[0, 1] == 0 and h_gamma[0, 0] > h_gamma[1, 1]  # d_x²−y² above d_3z²−r² for Δ > 0


def eg_slater_koster(k: np.ndarray, a: float, shells: dict[int, tuple[float, float]]) -> np.ndarray:
    """Independent reference: Σ_d T(d) e^{ik·d} over cubic neighbour shells {|n|²: ((ddσ), (ddπ))} with the
    Slater–Koster e_g table, basis (x²−y², 3z²−r²), (ddδ) = 0."""
    h = np.zeros((len(k), 2, 2), dtype=complex)
    rng = range(-2, 3)
    for n in (np.array([i, j, l]) for i in rng for j in rng for l in rng):
        n2 = int(n @ n)
        if n2 not in shells:
            continue
        sigma, pi = shells[n2]
        l, m, nz = n / math.sqrt(n2)
        a2, b2 = l * l - m * m, nz * nz - (l * l + m * m) / 2
        t11 = 0.75 * a2**2 * sigma + (l * l + m * m - a2**2) * pi
        t22 = b2**2 * sigma + 3 * nz * nz * (l * l + m * m) * pi
        t12 = SQ3 / 2 * a2 * b2 * sigma + SQ3 * nz * nz * (m * m - l * l) * pi
        h += np.exp(1j * (k @ n) * a)[:, None, None] * np.array([[t11, t12], [t12, t22]])
    return h


@pytest.mark.parametrize('name', ['nickelate-eg', 'manganite-eg'])
def test_eg_further_neighbours(name):
    """At zero the optional hoppings reproduce the core model exactly; otherwise H(k) is the Slater–Koster
    sum over the ⟨100⟩, ⟨110⟩ and ⟨200⟩ shells (cubic symmetry checked by an independent construction)."""
    k = random_k(200, 2 * math.pi / A_NI, seed=1)
    core = get_model(name, a=A_NI)
    optional = ['tp', 'tp_pi', 'tpp'] + (['delta2'] if name == 'manganite-eg' else [])
    full = get_model(name, a=A_NI, extra=optional)
    assert set(full.parameter_names) == set(core.parameter_names) | set(optional)
    common = {'t': 0.45, 'delta': 0.07, 'mu': -0.3}
    core.set_parameters(common)
    full.set_parameters(common)
    assert torch.equal(full.hamiltonian(k), core.hamiltonian(k))
    assert torch.equal(full.bands(k), core.bands(k))

    extra = {'tp': 0.06, 'tp_pi': -0.04, 'tpp': 0.025} | ({'delta2': 0.09} if name == 'manganite-eg' else {})
    full.set_parameters(extra)
    shells = {1: (-common['t'], 0.0), 2: (-extra['tp'], -extra['tp_pi']), 4: (-extra['tpp'], 0.0)}
    expected = eg_slater_koster(k.numpy(), A_NI, shells)
    expected += np.array(
        [
            [common['delta'] / 2, extra.get('delta2', 0) / 2],
            [extra.get('delta2', 0) / 2, -common['delta'] / 2],
        ]
    )
    assert np.abs(expected.imag).max() < 1e-12
    np.testing.assert_allclose(full.hamiltonian(k).detach().numpy(), expected.real, rtol=0, atol=1e-12)


@pytest.mark.parametrize('name', list(all_models()))
def test_hermitian_and_periodic(name):
    model = all_models()[name]
    k = random_k(100, 2.0, seed=2)
    h = model.hamiltonian(k).detach()
    assert h.shape == (100, model.n_bands, model.n_bands)
    torch.testing.assert_close(h, h.mH, rtol=0, atol=1e-14)
    for g in reciprocal(model_lattice(name, model)):
        for sign in (1, -1):
            torch.testing.assert_close(model.hamiltonian(k + sign * g).detach(), h, rtol=0, atol=1e-12)
    bands = model.bands(k).detach()
    assert bands.shape == (100, model.n_bands) and torch.all(bands.diff(dim=-1) >= 0)


def rotate(k: torch.Tensor, matrix) -> torch.Tensor:
    return k @ torch.as_tensor(matrix, dtype=torch.float64).T


C4Z = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
C3_111 = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
MIRROR_X = [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize('name', ['single-band', 'single-band-tetragonal', 'nickelate-eg', 'manganite-eg'])
def test_square_lattice_symmetry(name):
    model = all_models()[name]
    k = random_k(200, 1.5, seed=3)
    if name == 'manganite-eg':
        model.set_parameters({'delta2': 0.0})  # a Q2 distortion breaks C4 (checked below)
    bands = model.bands(k).detach()
    for op in (C4Z, MIRROR_X, -torch.eye(3)):
        torch.testing.assert_close(model.bands(rotate(k, op)).detach(), bands, rtol=0, atol=1e-12)
    if name.endswith('-eg'):
        model.set_parameters({'delta': 0.0})  # cubic: C3 about [111] too
        cubic = model.bands(k).detach()
        torch.testing.assert_close(model.bands(rotate(k, C3_111)).detach(), cubic, rtol=0, atol=1e-12)
        gamma = model.bands(torch.zeros(3, dtype=torch.float64)).detach()
        assert abs(float(gamma[1] - gamma[0])) < 1e-14  # e_g degeneracy at Γ
    if name == 'manganite-eg':
        model.set_parameters({'delta2': 0.1})
        assert (model.bands(rotate(k, C4Z)) - model.bands(k)).abs().max() > 1e-3


def test_graphene_dirac_point_and_symmetry():
    model = get_model('graphene', a=2.46, extra=['tp'])
    a, t = 2.46, 2.8
    kpt = torch.tensor([4 * math.pi / (3 * a), 0.0, 0.0], dtype=torch.float64)
    model.set_parameters({'t': t, 'delta': 0.0, 'tp': 0.0, 'mu': 0.0})
    for corner in (kpt, -kpt, rotate(kpt, [[-0.5, -SQ3 / 2, 0], [SQ3 / 2, -0.5, 0], [0, 0, 1]])):
        assert torch.allclose(model.bands(corner), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # Dirac cone: |E| = (√3/2) t a |q| near K, the same in every direction
    q = 1e-5 * torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.6, -0.8, 0]], dtype=torch.float64)
    slope = model.bands(kpt + q).detach()[:, 1] / 1e-5
    torch.testing.assert_close(
        slope, torch.full((3,), SQ3 / 2 * t * a, dtype=torch.float64), rtol=1e-4, atol=0
    )
    # gap Δ at K, Dirac point at +3t′ − μ; C3 and C6 (Δ = 0) symmetry of the bands
    model.set_parameters({'delta': 0.2, 'tp': 0.1, 'mu': 0.4})
    np.testing.assert_allclose(
        model.bands(kpt).detach().numpy(), [0.3 - 0.1 - 0.4, 0.3 + 0.1 - 0.4], atol=1e-12
    )
    k = random_k(100, 2.0, seed=4)
    c3 = [[-0.5, -SQ3 / 2, 0], [SQ3 / 2, -0.5, 0], [0, 0, 1]]
    torch.testing.assert_close(model.bands(rotate(k, c3)), model.bands(k), rtol=0, atol=1e-12)
    model.set_parameters({'delta': 0.0})
    c6 = [[0.5, -SQ3 / 2, 0], [SQ3 / 2, 0.5, 0], [0, 0, 1]]
    torch.testing.assert_close(model.bands(rotate(k, c6)), model.bands(k), rtol=0, atol=1e-12)


def test_hopping_list_reproduces_closed_forms():
    graphene = get_model('graphene', extra=['tp'])
    graphene.set_parameters({'t': 2.7, 'tp': 0.15, 'delta': 0.2, 'mu': 0.3})
    table = graphene_hopping_list()
    k = random_k(300, 3.0, seed=5)
    torch.testing.assert_close(table.hamiltonian(k), graphene.hamiltonian(k), rtol=0, atol=1e-12)

    square = get_model('single-band', a=3.9)
    square.set_parameters({'t': 0.4, 'tp': -0.12, 'tpp': 0.05, 'mu': -0.2})
    bonds = [([1, 0, 0], 't'), ([0, 1, 0], 't'), ([1, 1, 0], 'tp'), ([1, -1, 0], 'tp'), ([2, 0, 0], 'tpp')]
    bonds += [([0, 2, 0], 'tpp')]
    table = HoppingListModel(
        np.diag([3.9, 3.9, 10.0]),
        ['d'],
        [{'R': r, 'i': 0, 'j': 0, 'amplitude': {p: -1.0}} for r, p in bonds],
        values=square.get_parameters(),
    )
    torch.testing.assert_close(table.bands(k), square.bands(k), rtol=0, atol=1e-12)


def test_hopping_list_validation():
    lattice = np.eye(3) * 3.0
    bond = {'R': [1, 0, 0], 'i': 0, 'j': 0, 'amplitude': 't'}
    with pytest.raises(ValueError, match='listed twice'):
        HoppingListModel(lattice, ['s'], [bond, {**bond, 'R': [-1, 0, 0]}])
    with pytest.raises(ValueError, match='not a lattice vector'):
        HoppingListModel(lattice, ['s'], [{'R_cart': [1.5, 0, 0], 'i': 0, 'j': 0, 'amplitude': 't'}])
    with pytest.raises(ValueError, match='onsite'):
        HoppingListModel(lattice, ['s'], [{**bond, 'R': [0, 0, 0]}])
    with pytest.raises(ValueError, match='real'):
        HoppingListModel(lattice, ['s'], [bond], onsite=[[0.0, 1.0]])


@pytest.mark.parametrize('name', list(all_models()))
def test_band_gradients_match_finite_differences(name):
    model = all_models()[name]
    names = model.parameter_names
    k = random_k(4, 1.5, seed=6)
    theta = torch.tensor(list(model.get_parameters().values()), dtype=torch.float64, requires_grad=True)

    def bands(theta):
        return model.bands(k, dict(zip(names, theta, strict=True)))

    assert torch.autograd.gradcheck(bands, (theta,), eps=1e-6, atol=1e-7)


def test_batched_parameters():
    model = get_model('nickelate-eg')
    k = random_k(7, 1.5, seed=7)
    t = torch.tensor([0.3, 0.5, 0.6], dtype=torch.float64)[:, None]
    batched = model.bands(k, {'t': t})  # (3, 7, 2)
    for i in range(3):
        model.set_parameters({'t': float(t[i])})
        torch.testing.assert_close(batched[i], model.bands(k))


def test_model_registry_and_spec_round_trip():
    assert set(MODELS) == {'single-band', 'graphene', 'nickelate-eg', 'manganite-eg', 'hopping-list'}
    k = random_k(20, 2.0, seed=8)
    for name, model in all_models().items():
        for p, (low, high) in model.bounds().items():
            assert low <= model.get_parameters()[p] <= high, (name, p)
        spec = ModelSpec.from_json(model.spec().to_json())
        assert spec == model.spec(), name
        rebuilt = spec.build()
        assert type(rebuilt) is type(model) and rebuilt.bounds() == model.bounds()
        torch.testing.assert_close(rebuilt.bands(k), model.bands(k), rtol=0, atol=0)
    with pytest.raises(ValueError, match='unknown tight-binding model'):
        get_model('cuprate')
    with pytest.raises(KeyError, match='tp'):
        get_model('nickelate-eg').set_parameters({'tp': 0.1})
    with pytest.raises(ValueError, match='optional'):
        get_model('graphene', extra=['tpp'])


# --- forward model ---------------------------------------------------------------------------------------


def test_spectral_function_integral_and_peak():
    bands = torch.tensor([-0.3, 0.0, 0.2], dtype=torch.float64)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    gamma = 0.05
    omega = torch.linspace(-60, 60, 120001, dtype=torch.float64)
    a = spectral_function(bands, omega, gamma, weights=weights)
    integral = float(torch.trapezoid(a, omega))
    expected = sum(
        float(w) / math.pi * (math.atan((60 - e) / gamma) - math.atan((-60 - e) / gamma))
        for e, w in zip(bands, weights, strict=True)
    )
    assert integral == pytest.approx(expected, rel=1e-7)
    assert integral == pytest.approx(float(weights.sum()), rel=2e-3)  # tails beyond ±60 eV: 2γ/(π·60)

    e, w = -0.123, torch.linspace(-0.5, 0.5, 100001, dtype=torch.float64)
    single = spectral_function(torch.tensor([e], dtype=torch.float64), w, gamma)
    assert float(w[single.argmax()]) == pytest.approx(e, abs=1e-5)
    assert float(single.max()) == pytest.approx(1 / (math.pi * gamma), rel=1e-8)
    half = w[single >= single.max() / 2]
    assert float(half[-1] - half[0]) == pytest.approx(2 * gamma, abs=2e-5)  # FWHM = 2Σ''
    renormalised = spectral_function(torch.tensor([e], dtype=torch.float64), w, gamma, lam=0.5)
    assert float(w[renormalised.argmax()]) == pytest.approx(e / 1.5, abs=1e-5)
    widening = spectral_function(torch.tensor([0.0, -0.4], dtype=torch.float64), w, gamma, gamma2=2.0)
    assert float(widening[w.abs().argmin()]) > float(widening[(w + 0.4).abs().argmin()])  # Σ'' = γ0 + γ2 ω²


def fwhm(x: torch.Tensor, y: torch.Tensor) -> float:
    """Full width at half maximum of a single peak, by linear interpolation of the half-maximum crossings."""
    x, y = x.numpy(), y.numpy()
    half = y.max() / 2
    above = np.nonzero(y >= half)[0]
    i, j = above[0], above[-1]
    left = np.interp(half, [y[i - 1], y[i]], [x[i - 1], x[i]])
    right = np.interp(half, [y[j + 1], y[j]], [x[j + 1], x[j]])
    return float(right - left)


def test_energy_resolution_conserves_integral_and_adds_in_quadrature():
    w = torch.linspace(-0.5, 0.5, 2001, dtype=torch.float64)
    w1, w2 = 0.03, 0.04
    peak = torch.exp(-4 * math.log(2) * ((w - 0.05) / w1) ** 2)
    spectra = torch.stack([peak, 3 * peak])  # blur along the last dim of a batch
    blurred = gaussian_blur(spectra, w, w2, dim=-1)
    torch.testing.assert_close(blurred.sum(-1), spectra.sum(-1), rtol=1e-12, atol=0)
    assert fwhm(w, blurred[0]) == pytest.approx(math.hypot(w1, w2), rel=2e-4)
    assert fwhm(w, gaussian_blur(peak, w, 0.0, dim=0)) == pytest.approx(w1, rel=2e-4)
    along_first = gaussian_blur(spectra.T.contiguous(), w, w2, dim=0)
    torch.testing.assert_close(along_first.T, blurred)


def test_fermi_dirac_and_cut_off():
    w = torch.tensor([-0.1, 0.0, 0.1], dtype=torch.float64)
    np.testing.assert_allclose(fermi_dirac(w, 0.0).numpy(), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(fermi_dirac(w, 300.0).numpy(), 1 / (np.exp(w.numpy() / (K_B * 300)) + 1))
    assert K_B == pytest.approx(8.617333e-5, rel=1e-6)

    model = get_model('single-band')
    model.set_parameters({'t': 0.0, 'tp': 0.0, 'tpp': 0.0, 'mu': 0.05})  # flat band at −50 meV
    broadening = Broadening(temperature=20.0, energy_resolution=0.01, background=0.2, background_slope=-0.5)
    forward = ArpesForwardModel(model, broadening)
    omega = torch.linspace(-0.2, 0.2, 401, dtype=torch.float64)
    with torch.no_grad():
        edc = forward(torch.tensor([0.0]), torch.tensor([0.0]), omega)[0, 0]
    occupied, empty = edc[(omega + 0.15).abs().argmin()], edc[omega > 0.08]
    assert float(empty.max()) < 1e-6 * float(occupied)
    assert float(edc[(omega + 0.05).abs().argmin()]) == pytest.approx(float(edc.max()), rel=1e-12)
    lorentzian = 0.02 / math.pi / (0.1**2 + 0.02**2)  # band 0.1 eV away, background 0.2 − 0.5·(−0.15)
    assert float(occupied) == pytest.approx(lorentzian + 0.275, rel=1e-2)


def test_poisson_noise_statistics():
    g = torch.Generator().manual_seed(11)
    intensity = torch.ones(400, 500, dtype=torch.float64)
    intensity[0, 0] = 2.0  # the maximum is 2 → counts; everything else has counts / 2 = 40
    noisy = poisson_noise(intensity, 80.0, g)
    rest = noisy.flatten()[1:]
    assert float(rest.mean()) == pytest.approx(40.0, abs=5 * math.sqrt(40 / rest.numel()))
    assert float(rest.var()) == pytest.approx(40.0, rel=0.02)
    assert torch.equal(noisy, poisson_noise(intensity, 80.0, torch.Generator().manual_seed(11)))
    assert torch.all(noisy == noisy.round())
    with pytest.raises(ValueError):
        poisson_noise(torch.zeros(3), 10.0)


def test_kz_from_photon_energy():
    assert K_FACTOR == pytest.approx(0.5123, abs=1e-4)
    kz = kz_from_photon_energy(80.0, -0.2, 0.0, 4.5, 12.0)
    assert float(kz) == pytest.approx(K_FACTOR * math.sqrt(80 - 4.5 - 0.2 + 12), rel=1e-14)
    # off normal emission: k∥ = K √E_kin sinθ, k_z = K √(E_kin cos²θ + V0)
    e_kin, theta = 80 - 4.5 - 0.2, math.radians(12)
    kpar = K_FACTOR * math.sqrt(e_kin) * math.sin(theta)
    kz = kz_from_photon_energy(80.0, -0.2, kpar, 4.5, 12.0)
    assert float(kz) == pytest.approx(K_FACTOR * math.sqrt(e_kin * math.cos(theta) ** 2 + 12), rel=1e-12)
    with pytest.raises(ValueError, match='horizon'):
        kz_from_photon_energy(10.0, 0.0, 3.0, 4.5, 0.0)


def test_photon_energy_scan_uses_kz_of_every_energy():
    model = get_model('nickelate-eg')
    forward = ArpesForwardModel(model, Broadening(energy_resolution=0.0, k_resolution=0.0, temperature=0.0))
    kx, ky = torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    hv, omega = (
        torch.tensor([60.0, 90.0], dtype=torch.float64),
        torch.linspace(-0.4, -0.01, 5, dtype=torch.float64),
    )
    with torch.no_grad():
        scan = forward(kx, ky, omega, hv=hv, work_function=4.4, inner_potential=11.0)
    assert scan.shape == (2, 1, 2, 5)
    i, j, n = 1, 0, 3
    kz = kz_from_photon_energy(hv[j], omega[n], math.hypot(0.3, 0.2), 4.4, 11.0)
    bands = model.bands(torch.stack([kx[i], ky[0], kz])).detach()
    expected = spectral_function(bands, omega[n], forward.gamma0.detach())
    assert float(scan[i, 0, j, n]) == pytest.approx(float(expected), rel=1e-12)


def test_momentum_padding_makes_windows_consistent():
    """A smaller window of the same grid gives the same intensities: the padding feeds the edges."""
    model = get_model('single-band')
    forward = ArpesForwardModel(model, Broadening(k_resolution=0.05, energy_resolution=0.02, background=0.1))
    kx = torch.linspace(-0.8, 0.8, 41, dtype=torch.float64)
    ky = torch.linspace(-0.4, 0.4, 11, dtype=torch.float64)
    omega = torch.linspace(-0.3, 0.05, 71, dtype=torch.float64)
    with torch.no_grad():
        full = forward(kx, ky, omega)
        window = forward(kx[10:30], ky[2:9], omega[20:60])
    torch.testing.assert_close(window, full[10:30, 2:9, 20:60], rtol=0, atol=1e-4 * float(full.max()))


def test_forward_gradients_match_finite_differences():
    model = get_model('nickelate-eg')
    forward = ArpesForwardModel(model, Broadening(gamma0=0.05, k_resolution=0.05, energy_resolution=0.04))
    kx = torch.linspace(-0.3, 0.3, 4, dtype=torch.float64)
    ky = torch.tensor([0.0, 0.1], dtype=torch.float64)
    omega = torch.linspace(-0.3, 0.05, 6, dtype=torch.float64)
    names = (
        'model.params.t',
        'model.params.delta',
        'gamma0',
        'energy_resolution',
        'k_resolution',
        'amplitude',
    )

    def intensity(*values):
        return torch.func.functional_call(forward, dict(zip(names, values, strict=True)), (kx, ky, omega))

    values = tuple(
        torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.4, 0.1, 0.05, 0.04, 0.05, 1.0)
    )
    assert torch.autograd.gradcheck(intensity, values, eps=1e-6, atol=1e-6)


def test_simulate_dataset_house_format():
    model = get_model('nickelate-eg', a=A_NI)
    model.set_parameters({'t': 0.42, 'delta': 0.08, 'mu': -0.55})
    a = math.pi / A_NI
    grid = SimulationGrid(
        kx=np.linspace(-a, a, 12),
        ky=np.linspace(-a, a, 10),
        kz=np.linspace(0, a, 4),
        eV=np.linspace(-0.5, 0.1, 60),
    )
    broadening = Broadening(temperature=30.0, energy_resolution=0.02)
    data = simulate_dataset(model, grid, broadening, seed=3, counts=500.0)
    assert (
        data.name == 'intensity' and data.dims == ('kx', 'ky', 'kz', 'eV') and data.shape == (12, 10, 4, 60)
    )
    assert data.dtype == np.float64
    assert data.attrs['energy_axis'] == 'binding' and data.attrs['source_format'] == 'simulated'
    assert data.attrs['temperature'] == 30.0 and data.attrs['energy_resolution'] == 0.02
    assert json.loads(data.attrs['true_parameters']) == {'t': 0.42, 'delta': 0.08, 'mu': -0.55}
    assert ModelSpec.from_json(data.attrs['model']).build().get_parameters() == model.get_parameters()
    assert Broadening(**json.loads(data.attrs['broadening'])) == broadening
    assert float(data.max()) > 100 and np.all(data.values == np.round(data.values))
    again = simulate_dataset(model, grid, broadening, seed=3, counts=500.0)
    assert np.array_equal(again.values, data.values)
    assert not np.array_equal(
        simulate_dataset(model, grid, broadening, seed=4, counts=500.0).values, data.values
    )
    clean = simulate_dataset(model, grid, broadening)
    assert 'counts' not in clean.attrs and np.all(clean.values >= 0)

    graphene = get_model('graphene')
    cut = simulate_dataset(
        graphene,
        SimulationGrid(kx=np.linspace(1.4, 2.0, 61), ky=0.0, eV=np.linspace(-0.8, 0.1, 91)),
        Broadening(),
    )
    assert cut.dims == ('kx', 'eV') and float(cut.ky) == 0.0 and 'kz' not in cut.coords
    kx_dirac = float(cut.sel(eV=-0.4, method='nearest').idxmax('kx'))  # Dirac point at −μ, at K
    assert kx_dirac == pytest.approx(4 * math.pi / (3 * 2.46), abs=0.011)

    scan = simulate_dataset(
        model,
        SimulationGrid(kx=np.linspace(-0.5, 0.5, 8), ky=0.0, hv=[60.0, 80.0], eV=np.linspace(-0.4, 0.1, 30)),
    )
    assert scan.dims == ('kx', 'hv', 'eV') and scan.attrs['inner_potential'] == 10.0
    fixed_hv = simulate_dataset(
        model, SimulationGrid(kx=np.linspace(-0.5, 0.5, 8), ky=0.0, hv=80.0, eV=np.linspace(-0.4, 0.1, 30))
    )
    assert fixed_hv.dims == ('kx', 'eV') and fixed_hv.attrs['photon_energy'] == 80.0
    np.testing.assert_allclose(fixed_hv.values, scan.sel(hv=80.0).values, rtol=1e-12)
