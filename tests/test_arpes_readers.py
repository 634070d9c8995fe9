"""ARPES data model, angle → momentum and file readers (aiida_nextham.arpes.data/kspace/readers).

Real files come from ../shared/realdata (arpes_erlabpy_data and arpes_pyarpes_arafune). Where erlabpy's
loader wrote a reference conversion (``expected/*.h5``) our intensities must equal it and our
coordinates must match after the documented convention mapping: erlabpy's ``alpha`` is our ``phi``;
length-1 dimensions are dropped; MERLIN live waves (lxy.ibw) hold hν − E_B, which we convert to
E − E_F (= erlabpy's eV − hν); HERS FITS axes follow the FITS rule value(p) = TRVAL + (p − TRPIX)·TDELT
with 1-based p, one step above erlabpy's; MERLIN core.pxt energies follow the wave scaling
(−0.04999542 eV per point) where erlabpy uses the header's 0.05 eV step (≤ 6.5 meV apart).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from aiida_nextham.arpes import data, kspace
from aiida_nextham.arpes.readers import FORMATS, ArpesFormatError, load

ERLAB = 'arpes_erlabpy_data'
PYARPES = 'arpes_pyarpes_arafune'
EXAMPLES = f'{PYARPES}/src/arpes/example_data'
BASIC = f'{PYARPES}/tests/resources/datasets/basic'

# file → (dims, shape, energy_axis, photon_energy)
REAL_FILES = {
    f'{ERLAB}/ssrl52/f_zap_0002.h5': (('x', 'z'), (21, 21), None, 111.0),
    f'{ERLAB}/erpes/test0001.pxt': (('eV', 'phi'), (6, 928), 'kinetic', 6.0187),
    f'{ERLAB}/mbs/FIX00001_00000.txt': (('phi', 'beta'), (718, 100), 'kinetic', None),
    f'{ERLAB}/lorea/002_sample.nxs': (('phi', 'eV'), (582, 400), 'kinetic', 57.99821801405272),
    f'{ERLAB}/hers/20211211_00005.fits': (('eV', 'pixel'), (213, 920), 'binding', 80.000186),
    f'{ERLAB}/da30/f0001f_001.ibw': (('eV', 'phi'), (221, 808), 'kinetic', None),
    f'{ERLAB}/da30/f0002.zip': (('beta', 'phi', 'eV'), (31, 928, 1064), 'kinetic', 6.0187),
    f'{ERLAB}/da30/f0003.pxt': (('eV', 'phi'), (563, 930), 'kinetic', 6.0187),
    f'{ERLAB}/merlin/core.pxt': (('eV',), (1421,), 'binding', 100.0),
    f'{ERLAB}/merlin/lxy.ibw': (('eV', 'y', 'x'), (107, 16, 16), 'binding', 100.0),
    f'{ERLAB}/snu1/data_001.itx': (('phi', 'eV'), (400, 101), 'kinetic', None),
    f'{ERLAB}/snu1/data_s.itx': (('step', 'eV'), (4, 101), 'kinetic', 21.2182),
    f'{ERLAB}/i05/cut.nxs': (('phi', 'eV'), (835, 1034), 'kinetic', 94.000183),
    f'{EXAMPLES}/BLGr_K_cut.xy': (('phi', 'eV'), (82, 137), 'kinetic', 21.2182),
    f'{EXAMPLES}/temperature_dependence.nc': (('temperature', 'eV', 'phi'), (34, 68, 52), 'binding', 55.4),
    f'{EXAMPLES}/GrIr_111_20230410_1.sp2': (('phi', 'eV'), (200, 1500), 'kinetic', None),
    f'{EXAMPLES}/cut.fits': (('pixel', 'eV'), (240, 240), 'binding', 5.9),
    f'{BASIC}/MERLIN_9.pxt': (('eV',), (561,), 'binding', 96.0),
    f'{BASIC}/MAESTRO_16.fits': (('eV',), (89,), 'binding', 199.99556),
}

# raw file → (expected file, {our coordinate: (expected coordinate, shift added to expected, atol)})
EXPECTED = {
    'ssrl52/f_zap_0002.h5': ('ssrl52/expected/f_zap_0002.h5', {'x': ('x', 0, 1e-12), 'z': ('z', 0, 1e-9)}),
    'erpes/test0001.pxt': ('erpes/expected/1.h5', {'eV': ('eV', 0, 1e-12), 'phi': ('alpha', 0, 1e-12)}),
    'mbs/FIX00001_00000.txt': (
        'mbs/expected/FIX00001_00000.h5',
        {'phi': ('alpha', 0, 1e-12), 'beta': ('beta', 0, 1e-12)},
    ),
    'lorea/002_sample.nxs': ('lorea/expected/002_sample.h5', {'phi': ('alpha', 0, 0), 'eV': ('eV', 0, 0)}),
    'hers/20211211_00005.fits': (
        'hers/expected/20211211_00005.h5',
        {'pixel': ('pixel', 1.001088, 1e-12), 'eV': ('eV', 4.716981e-3, 1e-12)},
    ),
    'da30/f0001f_001.ibw': (
        'da30/expected/f0001f_001.h5',
        {'eV': ('eV', 0, 1e-12), 'phi': ('alpha', 0, 1e-12)},
    ),
    'da30/f0002.zip': (
        'da30/expected/f0002.h5',
        {'beta': ('beta', 0, 0), 'phi': ('alpha', 0, 0), 'eV': ('eV', 0, 0)},
    ),
    'merlin/core.pxt': ('merlin/expected/core.h5', {'eV': ('eV', 0, 0.0066)}),
    'merlin/lxy.ibw': (
        'merlin/expected/lxy.h5',
        {'eV': ('eV', -100.0, 1e-12), 'y': ('y', 0, 1e-12), 'x': ('x', 0, 1e-12)},
    ),
    'i05/cut.nxs': ('i05/expected/cut.h5', {'phi': ('alpha', 0, 0), 'eV': ('eV', 0, 0)}),
}


def _intensity(values, dims, coords, **attrs) -> xr.DataArray:
    return data.make_intensity(
        np.asarray(values, dtype=float), coords, dims, source_format='test', source_file='t.nc', **attrs
    )


def _cut(**attrs) -> xr.DataArray:
    phi = np.linspace(-10, 10, 41)
    energy = np.linspace(20.0, 21.0, 11)
    values = np.outer(np.cos(np.deg2rad(phi)), energy)
    return _intensity(values, ('phi', 'eV'), {'phi': phi, 'eV': energy}, energy_axis='kinetic', **attrs)


def _expected(path):
    """(values, dims, coords, scalars) of an erlabpy netCDF-4 reference, read with h5py."""
    with h5py.File(path, 'r') as handle:
        (name,) = [
            key
            for key, item in handle.items()
            if 'DIMENSION_LIST' in item.attrs and item.attrs.get('CLASS') != b'DIMENSION_SCALE'
        ]
        item = handle[name]
        dims = [handle[refs[0]].name[1:] for refs in item.attrs['DIMENSION_LIST']]
        coords = {dim: handle[dim][()] for dim in dims}
        scalars = {key: float(value[()]) for key, value in handle.items() if value.ndim == 0}
        return item[()], dims, coords, scalars


# ---- data model ----------------------------------------------------------------------------------


def test_netcdf_round_trip_keeps_values_coords_and_attrs(tmp_path):
    da = _cut(
        photon_energy=21.2,
        work_function=4.3,
        temperature=20.0,
        metadata={'a': np.float32(1.5), 'b': [np.nan]},
    )
    data.to_netcdf(da, tmp_path / 'cut.nc')
    back = data.read_netcdf(tmp_path / 'cut.nc')
    xr.testing.assert_identical(back, da)
    assert json.loads(back.attrs['metadata']) == {'a': 1.5, 'b': [None]}
    assert back.attrs['source_file'] == 't.nc'
    xr.testing.assert_identical(load(tmp_path / 'cut.nc'), da)


def test_netcdf_round_trip_of_int64_counts(tmp_path):
    da = _cut().astype(np.int64)
    data.to_netcdf(da, tmp_path / 'counts.nc')
    back = data.read_netcdf(tmp_path / 'counts.nc')
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back.values, da.values)


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        (lambda da: da.rename('counts'), "named 'intensity'"),
        (lambda da: da.rename(phi='alpha'), "unknown dimension 'alpha'"),
        (lambda da: da.assign_coords(phi=np.r_[da.phi[1], da.phi[0], da.phi[2:]]), 'monotonic'),
        (lambda da: da * np.nan, 'all NaN'),
        (lambda da: da.isel(phi=slice(0, 0)), 'empty'),
        (lambda da: da.assign_attrs(energy_axis='absolute'), 'energy_axis'),
        (lambda da: da.drop_attrs(deep=False), 'energy_axis'),
        (lambda da: da.assign_coords(eV=da.eV - 30), 'kinetic energies must be positive'),
        (lambda da: da.assign_attrs(energy_axis='binding', photon_energy=10.0), 'above hv'),
        (lambda da: da.assign_attrs(work_function=None), 'not netCDF-safe'),
        (lambda da: da.assign_attrs(extra={'a': 1}), 'not netCDF-safe'),
        (lambda da: da.assign_attrs(flag=True), 'not netCDF-safe'),
        (lambda da: da.assign_attrs(work_function=-1.0), 'not physical'),
        (lambda da: da.assign_attrs(temperature='cold'), 'finite number'),
        (lambda da: da.assign_coords(phi=da.phi * 20), 'is it in degrees'),
        (lambda da: da.drop_vars('phi'), "'phi' has no coordinate"),
    ],
)
def test_validate_names_what_is_wrong(change, message):
    da = _cut()
    data.validate(da)
    with pytest.raises(ValueError, match=message):
        data.validate(change(da))


def test_to_netcdf_refuses_invalid_data(tmp_path):
    with pytest.raises(ValueError, match='not netCDF-safe'):
        data.to_netcdf(_cut().assign_attrs(nested={'a': 1}), tmp_path / 'x.nc')
    assert not (tmp_path / 'x.nc').exists()


def test_kinetic_binding_round_trip():
    da = _cut(photon_energy=25.0, work_function=4.5)
    binding = data.to_binding(da)
    assert binding.attrs['energy_axis'] == 'binding'
    np.testing.assert_allclose(binding.eV, da.eV - (25.0 - 4.5))
    kinetic = data.to_kinetic(binding)
    np.testing.assert_allclose(kinetic.eV, da.eV)
    np.testing.assert_array_equal(kinetic.values, da.values)
    with pytest.raises(ValueError, match='work function'):
        data.to_binding(_cut(photon_energy=25.0))
    with pytest.raises(ValueError, match='photon energy'):
        data.to_binding(_cut(), work_function=4.5)


def test_to_binding_of_a_photon_energy_scan_aligns_the_fermi_level():
    hv = np.array([30.0, 32.0, 34.0])
    kinetic = np.linspace(22.0, 30.0, 161)
    work = 4.0
    # a peak 0.5 eV below E_F, i.e. at E_kin = hv - W - 0.5
    values = np.exp(-(((kinetic[None, :] - (hv[:, None] - work - 0.5)) / 0.1) ** 2))
    da = _intensity(
        values, ('hv', 'eV'), {'hv': hv, 'eV': kinetic}, energy_axis='kinetic', work_function=work
    )
    binding = data.to_binding(da)
    peaks = binding.eV.values[np.nanargmax(binding.values, axis=1)]
    np.testing.assert_allclose(peaks, -0.5, atol=0.03)
    # one grid covering every slice (E_kin − (hν − W)), at the original step; NaN where a slice has no data
    assert float(binding.eV.min()) == pytest.approx(22.0 - (34.0 - work))
    assert float(binding.eV.max()) == pytest.approx(30.0 - (30.0 - work))
    assert float(binding.eV[1] - binding.eV[0]) == pytest.approx(0.05)
    assert np.isnan(binding.sel(hv=30.0).values[0]) and np.isfinite(binding.sel(hv=34.0).values[0])


# ---- angle → momentum ----------------------------------------------------------------------------


def test_k_parallel_and_perpendicular_formulas():
    assert kspace.K_FACTOR == pytest.approx(0.5123, abs=1e-4)
    assert kspace.k_parallel(100.0, 30.0) == pytest.approx(kspace.K_FACTOR * 10 * 0.5)
    assert kspace.k_perpendicular(100.0, 10.0) == pytest.approx(kspace.K_FACTOR * np.sqrt(110.0))
    assert kspace.k_perpendicular(100.0, 0.0, phi=60.0) == pytest.approx(kspace.K_FACTOR * 5.0)


def test_exact_k_of_a_binding_cut():
    da = _cut(photon_energy=25.0, work_function=4.5)
    points = kspace.exact_k(data.to_binding(da))
    assert set(points.dims) == {'phi', 'eV'}
    expected = kspace.K_FACTOR * np.sqrt(da.eV) * np.sin(np.deg2rad(da.phi))
    np.testing.assert_allclose(
        points.kx.transpose('eV', 'phi').values, expected.transpose('eV', 'phi').values
    )


def test_to_kspace_cut_puts_a_band_at_its_momentum():
    phi = np.linspace(-20, 20, 201)
    energy = np.linspace(40.0, 41.0, 5)
    kf = 0.4
    k = kspace.K_FACTOR * np.sqrt(energy[None, :]) * np.sin(np.deg2rad(phi[:, None]))
    values = np.exp(-(((k - kf) / 0.02) ** 2))
    da = _intensity(values, ('phi', 'eV'), {'phi': phi, 'eV': energy}, energy_axis='kinetic')
    out = kspace.to_kspace(da, shape={'kx': 401})
    assert out.dims == ('kx', 'eV') and out.sizes['kx'] == 401
    assert out.kx.min() == pytest.approx(float(k.min())) and out.kx.max() == pytest.approx(float(k.max()))
    peaks = out.kx.values[out.fillna(0).argmax('kx').values]
    np.testing.assert_allclose(peaks, kf, atol=0.005)


def test_to_kspace_map_and_photon_energy_scan():
    phi = np.linspace(-10, 10, 61)
    beta = np.linspace(-8, 8, 49)
    energy = np.array([-0.2, 0.0])
    e_kin = 60.0 - 4.0 + energy
    k0 = kspace.K_FACTOR * np.sqrt(e_kin)[None, None, :]
    kx = k0 * np.sin(np.deg2rad(phi))[:, None, None]
    ky = k0 * np.cos(np.deg2rad(phi))[:, None, None] * np.sin(np.deg2rad(beta))[None, :, None]
    values = np.exp(-(((kx - 0.3) ** 2 + (ky + 0.2) ** 2) / 0.03**2))
    coords = {'phi': phi, 'beta': beta, 'eV': energy}
    fermi_map = _intensity(
        values, ('phi', 'beta', 'eV'), coords, energy_axis='binding', photon_energy=60.0, work_function=4.0
    )
    out = kspace.to_kspace(fermi_map).fillna(0).isel(eV=1)
    i, j = np.unravel_index(int(np.argmax(out.values)), out.shape)
    assert (float(out.kx[i]), float(out.ky[j])) == pytest.approx((0.3, -0.2), abs=0.025)

    hv = np.linspace(40.0, 80.0, 81)
    v0 = 12.0
    e_kin = hv[:, None] - 4.0 + energy[None, :]
    kz = kspace.k_perpendicular(e_kin[:, None, :], v0, phi=phi[None, :, None])
    kx = kspace.k_parallel(e_kin[:, None, :], phi[None, :, None])
    values = np.exp(-(((kz - 4.2) ** 2 + kx**2) / 0.05**2))
    scan = _intensity(
        values,
        ('hv', 'phi', 'eV'),
        {'hv': hv, 'phi': phi, 'eV': energy},
        energy_axis='binding',
        work_function=4.0,
    )
    with pytest.raises(ValueError, match='inner potential'):
        kspace.to_kspace(scan)
    out = kspace.to_kspace(scan, inner_potential=v0)
    assert set(out.dims) == {'kz', 'kx', 'eV'} and out.attrs['inner_potential'] == v0
    best = out.fillna(0).isel(eV=1).argmax(...)
    assert float(out.kz[best['kz']]) == pytest.approx(4.2, abs=0.03)
    assert float(out.kx[best['kx']]) == pytest.approx(0.0, abs=0.03)


# ---- readers on the real files -------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize('name', sorted(REAL_FILES))
def test_every_real_file_loads(realdata, name):
    dims, shape, energy_axis, hv = REAL_FILES[name]
    da = load(realdata / name)
    data.validate(da)
    assert da.dims == dims
    assert da.shape == shape
    assert da.attrs.get('energy_axis') == energy_axis
    assert da.attrs.get('photon_energy') == hv
    assert da.attrs['source_file'] == name.rsplit('/', 1)[-1]
    assert da.attrs['source_format'] in {
        'ssrl52', 'ibw', 'pxt', 'itx', 'da30-zip', 'mbs', 'nexus', 'fits',
        'specs-xy', 'specs-sp2', 'pyarpes-netcdf',
    }  # fmt: skip
    json.loads(da.attrs.get('metadata', '{}'))


@pytest.mark.realdata
@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_real_files_match_the_reference_conversions(realdata, name):
    reference, mapping = EXPECTED[name]
    da = load(realdata / ERLAB / name)
    values, dims, coords, scalars = _expected(realdata / ERLAB / reference)
    kept = [i for i, n in enumerate(values.shape) if n > 1]
    values = values.reshape([values.shape[i] for i in kept])
    dims = [dims[i] for i in kept]
    ours = [next(mine for mine, (theirs, _, _) in mapping.items() if theirs == dim) for dim in dims]
    np.testing.assert_array_equal(da.transpose(*ours).values, values)
    for mine, (theirs, shift, atol) in mapping.items():
        np.testing.assert_allclose(da[mine].values, coords[theirs] + shift, rtol=0, atol=atol, err_msg=mine)
    if 'hv' in scalars and np.isfinite(scalars['hv']):
        assert da.attrs['photon_energy'] == pytest.approx(scalars['hv'])
    if 'sample_temp' in scalars:
        assert da.attrs['temperature'] == pytest.approx(scalars['sample_temp'])


@pytest.mark.realdata
def test_metadata_with_fixed_names_and_units(realdata):
    ssrl = load(realdata / ERLAB / 'ssrl52/f_zap_0002.h5')
    assert ssrl.attrs['work_function'] == 4.465
    assert ssrl.attrs['energy_resolution'] == pytest.approx(0.018557745)  # TotalResolution 18.56 meV
    assert json.loads(ssrl.attrs['metadata'])['Manipulator']['A'] == -44.0
    xy = load(realdata / EXAMPLES / 'BLGr_K_cut.xy')
    assert xy.attrs['work_function'] == 4.32
    assert float(xy.phi[0]) == -6.91463 and float(xy.eV[0]) == 19.7182
    assert float(xy.isel(phi=0, eV=0)) == 171.39596
    mbs = load(realdata / ERLAB / 'mbs/FIX00001_00000.txt')
    assert float(mbs.eV) == 52.8  # the fixed-mode window centre as a scalar coordinate
    maestro = load(realdata / BASIC / 'MAESTRO_16.fits')
    np.testing.assert_allclose(maestro.eV, -1.5 + 2.280046845264e-2 * np.arange(89))
    assert maestro.attrs['energy_resolution'] == 0.012927


@pytest.mark.realdata
def test_pyarpes_netcdf_angles_become_degrees(realdata):
    path = realdata / EXAMPLES / 'temperature_dependence.nc'
    da = load(path)
    with h5py.File(path, 'r') as handle:
        phi, theta = handle['phi'][()], handle['theta'][()]
        values = handle['__xarray_dataarray_variable__'][()]
    np.testing.assert_allclose(da.phi, np.rad2deg(phi))
    np.testing.assert_allclose(da.theta, np.rad2deg(theta))
    assert da.theta.dims == ('temperature',)
    np.testing.assert_array_equal(da.values, values)
    assert 'temperature' not in da.attrs  # it is a dimension here
    assert json.loads(da.attrs['metadata'])['coords']['chi'] == pytest.approx(-15.0)


@pytest.mark.realdata
def test_specs_and_igor_text_axes(realdata):
    sp2 = load(realdata / EXAMPLES / 'GrIr_111_20230410_1.sp2')
    np.testing.assert_allclose(sp2.eV, np.linspace(4.9, 5.7, 1500))
    np.testing.assert_allclose(sp2.phi, np.linspace(-12, 11.5, 200))
    assert float(sp2.sum()) == pytest.approx(83217.37524359999)
    itx = load(realdata / ERLAB / 'snu1/data_001.itx')
    np.testing.assert_allclose(itx.phi, np.linspace(-15, 15, 400))
    np.testing.assert_allclose(itx.eV, np.linspace(16, 17, 101))
    pxt = load(realdata / ERLAB / 'da30/f0003.pxt')
    assert float(pxt.eV[0]) == pytest.approx(5.999) and float(pxt.eV[1] - pxt.eV[0]) == pytest.approx(
        3.56037741e-5
    )


@pytest.mark.realdata
def test_real_file_netcdf_round_trip(realdata, tmp_path):
    da = load(realdata / ERLAB / 'i05/cut.nxs')
    data.to_netcdf(da, tmp_path / 'cut.nc')
    xr.testing.assert_identical(load(tmp_path / 'cut.nc'), da)
    cut = kspace.to_kspace(da.isel(eV=slice(None, None, 50)))
    assert cut.dims == ('kx', 'eV') and np.isfinite(cut.values).any()


# ---- files of the wrong type ---------------------------------------------------------------------


def test_hamiltonian_hdf5_is_refused_clearly():
    path = Path(__file__).parent / 'data' / 'ml' / 'si2_rattled_0.h5'
    with pytest.raises(
        ArpesFormatError, match='neither a NeXus NXentry, SSRL 5-2 /Data nor netCDF-4'
    ) as info:
        load(path)
    assert 'supported:' in str(info.value) and 'Igor binary wave (.ibw)' in str(info.value)


def test_text_with_an_igor_suffix_and_unknown_files(tmp_path):
    fake = tmp_path / 'fake.ibw'
    fake.write_text('just some text\n')
    with pytest.raises(ArpesFormatError, match="content is not Igor binary wave .*b'just some text"):
        load(fake)
    unknown = tmp_path / 'data.bin'
    unknown.write_bytes(b'\x00\x01garbage')
    with pytest.raises(ArpesFormatError, match="unknown suffix '.bin'"):
        load(unknown)
    with pytest.raises(ArpesFormatError, match="unknown format 'jpeg'"):
        load(fake, format='jpeg')
    with pytest.raises(FileNotFoundError):
        load(tmp_path / 'missing.nc')
    assert set(FORMATS) >= {
        'netcdf',
        'nexus',
        'ssrl',
        'ibw',
        'pxt',
        'itx',
        'da30',
        'mbs',
        'xy',
        'sp2',
        'fits',
    }


@pytest.mark.realdata
@pytest.mark.parametrize(
    ('name', 'message'),
    [
        (f'{ERLAB}/da30/f0001f_001.ibw', 'truncated'),
        (f'{ERLAB}/merlin/core.pxt', 'not a complete Igor packed experiment'),
        (f'{ERLAB}/snu1/data_001.itx', 'truncated'),
        (f'{ERLAB}/da30/f0002.zip', 'not a zip file'),
        (f'{ERLAB}/mbs/FIX00001_00000.txt', 'truncated'),
        (f'{ERLAB}/i05/cut.nxs', 'truncated file'),
        (f'{ERLAB}/ssrl52/f_zap_0002.h5', 'truncated file'),
        (f'{ERLAB}/hers/20211211_00005.fits', 'truncated'),
        (f'{BASIC}/MAESTRO_16.fits', 'truncated'),
        (f'{EXAMPLES}/BLGr_K_cut.xy', 'truncated'),
        (f'{EXAMPLES}/GrIr_111_20230410_1.sp2', 'truncated'),
        (f'{EXAMPLES}/temperature_dependence.nc', 'truncated file'),
    ],
)
def test_truncated_files_fail_clearly(realdata, tmp_path, name, message):
    raw = (realdata / name).read_bytes()
    path = tmp_path / name.rsplit('/', 1)[-1]
    path.write_bytes(raw[: int(len(raw) * 0.97)])
    with pytest.raises(ArpesFormatError, match=message):
        load(path)


@pytest.mark.realdata
def test_netcdf4_of_another_convention_is_refused(realdata, tmp_path):
    reference = realdata / ERLAB / 'i05/expected/cut.h5'
    with pytest.raises(ArpesFormatError, match='no known ARPES convention'):
        load(reference)
