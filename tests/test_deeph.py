"""DeepH folders (legacy and new layout): conventions, real files, round trips and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.build import mx2
from scipy.linalg import block_diag
from scipy.spatial.transform import Rotation

from aiida_nextham.hamiltonian import Basis, BlockHamiltonian, HamiltonianError, importers
from aiida_nextham.hamiltonian.bloch import bloch_sum, eigenvalues
from aiida_nextham.hamiltonian.conventions import CONVENTIONS, atom_transform, wigner_d
from aiida_nextham.hamiltonian.importers.deeph import (
    is_deeph_legacy,
    is_deeph_new,
    read_deeph,
    read_deeph_legacy,
    read_deeph_new,
    write_deeph_legacy,
    write_deeph_new,
)
from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

MOTE2 = 'deeph_legacy_MoTe2_deephdock/examples/convert/deeph'
LEGACY_MOTE2 = f'{MOTE2}/deeph_legacy_data/MoTe2'
NEW_MOTE2 = f'{MOTE2}/deeph_updated_data/MoTe2'
NEW_FOLDERS = {
    'MoTe2-openmx': NEW_MOTE2,
    'MoS2-abacus': 'abacus_MoS2_deephdock/tests/convert/abacus/deeph.bak/MoS2',
    'Si-siesta': 'siesta_Si_deephdock/tests/convert/siesta/deeph.bak/Si',
    'MoTe2-bands': 'deeph_new_MoTe2_bands_deephdock/tests/compute/eigen/eigen.bak/MoTe2',
}
SPDF = Basis.from_shells({'Mo': [0, 1, 2, 3], 'S': [0, 0, 1, 2]}, name='test-spdf', code='synthetic')
WRITERS = {
    'deeph-legacy': (write_deeph_legacy, read_deeph_legacy),
    'deeph': (write_deeph_new, read_deeph_new),
}


def copy_folder(source: Path, target: Path) -> Path:
    """Copy a (read-only) real-data folder into a writable one."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        shutil.copyfile(item, target / item.name)
    return target


def same_blocks(a: BlockHamiltonian, b: BlockHamiltonian, name: str) -> float:
    """max |a - b| over the blocks of ``name``, matching pairs by (R, i, j) (the pair sets must agree)."""
    assert sorted(map(tuple, a.pairs.tolist())) == sorted(map(tuple, b.pairs.tolist()))
    index = b.pair_index
    return max(
        float(np.abs(a.block(name, p) - b.block(name, index[tuple(row)])).max())
        for p, row in enumerate(a.pairs.tolist())
    )


def two_centre_residual(bh: BlockHamiltonian, n_pairs: int = 12, seed: int = 0) -> float:
    """max |D S D^T - S| / max |S| for rotations D about the bond axis of sampled off-site S blocks.

    Overlaps are exact two-centre integrals, so they are invariant under rotations about the bond;
    this holds only if the orbital convention (order and signs of every l) is right.
    """
    rng = np.random.default_rng(seed)
    vectors = bh.positions[bh.pairs[:, 4]] + bh.pairs[:, :3] @ bh.lattice - bh.positions[bh.pairs[:, 3]]
    sizes = np.array([np.abs(bh.block('S', p)).max() for p in range(bh.n_pairs)])
    candidates = np.flatnonzero((np.linalg.norm(vectors, axis=1) > 0.5) & (sizes > 1e-3))
    worst = 0.0
    for p in rng.choice(candidates, size=min(n_pairs, len(candidates)), replace=False):
        axis = vectors[p] / np.linalg.norm(vectors[p])
        rotation = Rotation.from_rotvec(rng.uniform(0.4, 2.8) * axis).as_matrix()
        di, dj = (
            block_diag(*[wigner_d(l, rotation) for l in bh.basis[bh.numbers[a]].shells])
            for a in bh.pairs[p, 3:]
        )
        block = bh.block('S', p)
        worst = max(worst, float(np.abs(di @ block @ dj.T - block).max()))
    return worst / float(np.abs(bh.overlap).max())


@pytest.fixture(scope='module')
def legacy_mote2(realdata) -> BlockHamiltonian:
    return read_deeph(realdata / LEGACY_MOTE2)


@pytest.fixture(scope='module')
def new_mote2(realdata) -> BlockHamiltonian:
    return read_deeph(realdata / NEW_MOTE2)


@pytest.fixture(scope='module', params=['none', 'spinor'])
def spdf(request) -> BlockHamiltonian:
    """A random hermitian MoS2 Hamiltonian with s, p, d and f shells."""
    bh = random_block_hamiltonian(mx2('MoS2', vacuum=5.0), SPDF, 3.6, seed=5, spin=request.param)
    return bh.replace(fermi_level=-3.25, n_electrons=26.0)


# ------------------------------------------------------------------------------------------ conventions
def deeph_dock_openmx_to_wiki(l: int) -> np.ndarray:
    """DeepH-dock's documented legacy -> new index map (new[k] = legacy[index[k]])."""
    special = {0: [0], 1: [1, 2, 0], 2: [2, 4, 0, 3, 1]}
    return np.array(special.get(l, [*range(2 * l, -1, -2), *range(1, 2 * l, 2)]))


@pytest.mark.parametrize('l', range(5))
def test_legacy_to_new_is_deeph_docks_signless_permutation(l):
    t_legacy, t_new = CONVENTIONS['deeph-legacy'].matrix(l), CONVENTIONS['deeph'].matrix(l)
    # Y_new = t_new.T @ t_legacy @ Y_legacy must pick legacy component index[k] for new component k
    np.testing.assert_allclose(
        t_new.T @ t_legacy, np.eye(2 * l + 1)[deeph_dock_openmx_to_wiki(l)], atol=1e-12
    )


def test_legacy_p_orbitals_are_x_y_z():
    np.testing.assert_array_equal(atom_transform((1,), 'deeph-legacy'), np.eye(3))
    np.testing.assert_array_equal(CONVENTIONS['deeph'].matrix(1), CONVENTIONS['standard'].matrix(1))


# ------------------------------------------------------------------------------------------- real files
@pytest.mark.realdata
def test_legacy_and_new_twins_agree(legacy_mote2, new_mote2):
    assert legacy_mote2.n_pairs == new_mote2.n_pairs == 131
    assert same_blocks(legacy_mote2, new_mote2, 'H') < 1e-10
    assert same_blocks(legacy_mote2, new_mote2, 'S') < 1e-10
    np.testing.assert_allclose(legacy_mote2.lattice, new_mote2.lattice, atol=1e-12)
    np.testing.assert_allclose(legacy_mote2.positions, new_mote2.positions, atol=1e-12)
    np.testing.assert_array_equal(legacy_mote2.numbers, [52, 52, 42])
    np.testing.assert_array_equal(new_mote2.numbers, legacy_mote2.numbers)
    assert legacy_mote2.basis == new_mote2.basis
    assert legacy_mote2.fermi_level == new_mote2.fermi_level == pytest.approx(-4.1934752874697425)
    assert legacy_mote2.metadata['source_format'] == 'deeph-legacy'
    assert new_mote2.metadata['source_format'] == 'deeph'
    assert new_mote2.metadata['source_path'].endswith('deeph_updated_data/MoTe2')


@pytest.mark.realdata
@pytest.mark.parametrize('folder', sorted(NEW_FOLDERS))
def test_overlaps_are_two_centre_in_the_internal_convention(realdata, folder):
    assert two_centre_residual(read_deeph(realdata / NEW_FOLDERS[folder])) < 1e-5


@pytest.mark.realdata
def test_two_centre_check_catches_the_wrong_layout_order(legacy_mote2):
    assert two_centre_residual(legacy_mote2) < 1e-10
    swap = {
        z: atom_transform(e.shells, 'deeph') @ atom_transform(e.shells, 'deeph-legacy').T
        for z, e in legacy_mote2.basis.elements.items()
    }
    assert two_centre_residual(legacy_mote2.transform_orbitals(swap)) > 0.1  # legacy data read as new


@pytest.mark.realdata
def test_mo_onsite_d_block_has_d3h_symmetry(legacy_mote2):
    """Mo sits on a D3h site: the d shells split into 3z²-r² + (xz, yz) + (xy, x²-y²)."""
    block = legacy_mote2.block('H', legacy_mote2.pair_index[(0, 0, 0, 2, 2)])
    shells = legacy_mote2.basis[42].shells
    to_standard = atom_transform(shells, 'standard')
    standard = to_standard.T @ block @ to_standard  # order per d shell: xy, yz, 3z²-r², xz, x²-y²
    for start in (9, 14):
        d = standard[start : start + 5, start : start + 5]
        xy, yz, z2, xz, x2y2 = np.diag(d)
        assert abs(xy - x2y2) < 0.03 and abs(xz - yz) < 0.03  # doublets, to DFT grid noise
        assert np.abs(d - np.diag(np.diag(d))).max() < 0.03
        e_prime, e_second = (xy + x2y2) / 2, (xz + yz) / 2
        assert min(abs(z2 - e_prime), abs(z2 - e_second), abs(e_prime - e_second)) > 0.1
    for rotation, tolerance in ((np.diag([1.0, 1.0, -1.0]), 1e-6), (np.diag([-1.0, 1.0, -1.0]), 1e-4)):
        det = np.linalg.det(rotation)  # improper operations act as (-1)^l times the proper part
        d = block_diag(*[det**l * wigner_d(l, det * rotation) for l in shells])
        assert np.abs(d @ block @ d.T - block).max() < tolerance


@pytest.mark.realdata
def test_new_layout_reproduces_deeph_dock_bands(realdata):
    folder = realdata / NEW_FOLDERS['MoTe2-bands']
    bh = read_deeph(folder)
    assert bh.n_electrons == 46 and bh.fermi_level == pytest.approx(8.894647969025222)
    with h5py.File(folder / 'band.h5', 'r') as handle:
        kpoints, bands = handle['kpoints_frac_list'][()], handle['band_data'][()]
        shift = handle['fermi_energy_before_shift_eV'][()]
    chosen = [0, 50, 80, 139]
    np.testing.assert_allclose(eigenvalues(bh, kpoints[chosen]) - shift, bands[:, chosen].T, atol=1e-8)


@pytest.mark.realdata
@pytest.mark.parametrize('folder', sorted(NEW_FOLDERS))
def test_real_hamiltonian_is_hermitian_at_random_k(realdata, folder):
    bh = read_deeph(realdata / NEW_FOLDERS[folder])
    k = np.random.default_rng(3).uniform(-0.5, 0.5, size=3)
    for name in ('H', 'S'):
        matrix = bloch_sum(bh, name, k)
        assert np.abs(matrix - matrix.conj().T).max() < 1e-7 * np.abs(matrix).max()


@pytest.mark.realdata
def test_registry_detects_both_layouts(realdata):
    assert importers.detect_format(realdata / LEGACY_MOTE2) == 'deeph-legacy'
    assert importers.detect_format(realdata / NEW_MOTE2) == 'deeph'
    assert importers.detect_format(realdata / NEW_MOTE2 / 'hamiltonian.h5') == 'deeph'
    assert importers.read(realdata / NEW_FOLDERS['Si-siesta']).formula == 'Si2'


# ------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize('fmt', sorted(WRITERS))
def test_round_trip_is_exact(spdf, fmt, tmp_path):
    """Structure and metadata are bit-exact; blocks to 1e-14 relative.

    Blocks are not bit-exact because e3nn's harmonics have y as polar axis while DeepH's have z:
    for l >= 2 the convention matrix mixes components, so T^T (T H T^T) T rounds at machine epsilon.
    """
    write, read = WRITERS[fmt]
    back = read(write(spdf, tmp_path / 'out'))
    np.testing.assert_array_equal(back.lattice, spdf.lattice)
    np.testing.assert_array_equal(back.positions, spdf.positions)
    np.testing.assert_array_equal(back.numbers, spdf.numbers)
    assert back.spin == spdf.spin and back.hamiltonian.dtype == spdf.hamiltonian.dtype
    assert {z: e.shells for z, e in back.basis.elements.items()} == {
        z: e.shells for z, e in SPDF.elements.items()
    }
    assert back.fermi_level == spdf.fermi_level
    assert back.n_electrons == (spdf.n_electrons if fmt == 'deeph' else None)
    for name in ('H', 'S'):
        assert same_blocks(back, spdf, name) <= 1e-14 * np.abs(spdf.matrix(name)).max()


def test_round_trip_through_registry_and_between_layouts(spdf, tmp_path):
    legacy = importers.write(spdf, tmp_path / 'legacy', 'deeph-legacy')
    again = importers.write(importers.read(legacy), tmp_path / 'new', 'deeph')
    assert importers.detect_format(again) == 'deeph'
    assert same_blocks(importers.read(again), spdf, 'H') <= 1e-14 * np.abs(spdf.hamiltonian).max()


def test_spinor_blocks_are_spin_major_in_files(tmp_path):
    """In DeepH files a spinful block is [[H↑↑, H↑↓], [H↓↑, H↓↓]] in the code's orbital order."""
    s_only = Basis.from_shells({'Mo': [0, 0], 'S': [0]})  # s shells: no orbital transform at all
    bh = random_block_hamiltonian(mx2('MoS2', vacuum=5.0), s_only, 3.6, spin='spinor')
    folder = write_deeph_new(bh, tmp_path / 'new')
    with h5py.File(folder / 'hamiltonian.h5', 'r') as handle:
        shapes, bounds, entries = (
            handle['chunk_shapes'][()],
            handle['chunk_boundaries'][()],
            handle['entries'][()],
        )
    for p in range(bh.n_pairs):
        block = bh.block('H', p)  # (2, 2, ni, nj)
        np.testing.assert_array_equal(shapes[p], 2 * np.array(block.shape[2:]))
        expected = block.transpose(0, 2, 1, 3).reshape(shapes[p])  # rows: (spin, orbital)
        np.testing.assert_array_equal(entries[bounds[p] : bounds[p + 1]].reshape(shapes[p]), expected)


def test_writers_refuse_a_folder_of_the_other_layout(spdf, tmp_path):
    write_deeph_new(spdf, tmp_path / 'out')
    write_deeph_new(spdf, tmp_path / 'out')  # overwriting the same layout is fine
    with pytest.raises(HamiltonianError, match='hamiltonian.h5, overlap.h5 of the other DeepH layout'):
        write_deeph_legacy(spdf, tmp_path / 'out')


def test_orthogonal_basis_round_trip(tmp_path):
    bh = random_block_hamiltonian(mx2('MoS2', vacuum=5.0), SPDF, 3.6).replace(overlap=None)
    for fmt, (write, read) in WRITERS.items():
        folder = write(bh, tmp_path / fmt)
        back = read(folder)
        assert back.overlap is None
        assert same_blocks(back, bh, 'H') <= 1e-14 * np.abs(bh.hamiltonian).max()
    with h5py.File(tmp_path / 'deeph' / 'overlap.h5', 'r') as handle:  # an identity S for DeepH tools
        assert handle['entries'][()].sum() == pytest.approx(bh.n_orbitals, rel=1e-12)


def test_split_hkb_is_recombined(tmp_path):
    bh = random_block_hamiltonian(mx2('MoS2', vacuum=5.0), SPDF, 3.6, seed=2, spin='spinor')
    folder = write_deeph_new(bh, tmp_path / 'split')
    with h5py.File(folder / 'hamiltonian.h5', 'r') as handle:
        data = {key: handle[key][()] for key in handle}
    spinless = {
        **data,
        'chunk_shapes': data['chunk_shapes'] // 2,
        'chunk_boundaries': data['chunk_boundaries'] // 4,
    }
    base = np.random.default_rng(0).normal(size=spinless['chunk_boundaries'][-1])  # any H0 will do
    hkb = data['entries'].copy()
    for start, (rows, cols) in zip(spinless['chunk_boundaries'][:-1], spinless['chunk_shapes'], strict=True):
        part = base[start : start + rows * cols].reshape(rows, cols)
        block = hkb[4 * start : 4 * (start + rows * cols)].reshape(2 * rows, 2 * cols)
        block[:rows, :cols] -= part
        block[rows:, cols:] -= part
    for name, values in (
        ('hamiltonian.h5', {**spinless, 'entries': base}),
        ('hkb.h5', {**data, 'entries': hkb}),
    ):
        with h5py.File(folder / name, 'w') as handle:
            for key, value in values.items():
                handle[key] = value
    info = json.loads((folder / 'info.json').read_text())
    (folder / 'info.json').write_text(json.dumps({**info, 'split_hkb': True}))
    assert same_blocks(read_deeph_new(folder), bh, 'H') < 1e-12


def test_spin_diagonal_overlap_is_accepted(tmp_path):
    bh = random_block_hamiltonian(mx2('MoS2', vacuum=5.0), SPDF, 3.6, seed=4, spin='spinor')
    folder = write_deeph_new(bh, tmp_path / 'spin-s')
    with h5py.File(folder / 'overlap.h5', 'r+') as handle:
        shapes, bounds, entries = (
            handle['chunk_shapes'][()],
            handle['chunk_boundaries'][()],
            handle['entries'][()],
        )
        blocks = [
            np.kron(np.eye(2), entries[a:b].reshape(s))
            for a, b, s in zip(bounds, bounds[1:], shapes, strict=False)
        ]
        for key in ('chunk_shapes', 'chunk_boundaries', 'entries'):
            del handle[key]
        handle['chunk_shapes'] = 2 * shapes
        handle['chunk_boundaries'] = 4 * bounds
        handle['entries'] = np.concatenate([b.reshape(-1) for b in blocks])
    assert same_blocks(read_deeph_new(folder), bh, 'S') <= 1e-14
    with h5py.File(folder / 'overlap.h5', 'r+') as handle:
        handle['entries'][1] = 0.3  # breaks 1₂ ⊗ S in the first block
    with pytest.raises(HamiltonianError, match=r'overlap\.h5.*not spin-diagonal'):
        read_deeph_new(folder)


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture
def legacy_copy(realdata, tmp_path) -> Path:
    return copy_folder(realdata / LEGACY_MOTE2, tmp_path / 'legacy')


@pytest.fixture
def new_copy(realdata, tmp_path) -> Path:
    return copy_folder(realdata / NEW_MOTE2, tmp_path / 'new')


@pytest.mark.realdata
@pytest.mark.parametrize(
    'name', ['overlaps.h5', 'hamiltonians.h5', 'orbital_types.dat', 'lat.dat', 'info.json']
)
def test_missing_legacy_file(legacy_copy, name):
    (legacy_copy / name).unlink()
    with pytest.raises(HamiltonianError, match=rf'{name}: file is missing'):
        read_deeph_legacy(legacy_copy)


@pytest.mark.realdata
@pytest.mark.parametrize('name', ['POSCAR', 'info.json', 'hamiltonian.h5', 'overlap.h5'])
def test_missing_new_file(new_copy, name):
    (new_copy / name).unlink()
    with pytest.raises(HamiltonianError, match=rf'{name}: file is missing'):
        read_deeph_new(new_copy)


@pytest.mark.realdata
def test_wrong_kind_of_folder_or_file(realdata, tmp_path):
    abacus = realdata / 'abacus_MoS2_deephdock/examples/convert/abacus/abacus_data/MoS2'
    with pytest.raises(HamiltonianError, match='not a DeepH folder'):
        read_deeph(abacus)
    with pytest.raises(HamiltonianError, match='hamiltonians.h5: file is missing'):
        read_deeph_legacy(abacus)
    text = tmp_path / 'notes.txt'
    text.write_text('not a Hamiltonian\n')
    with pytest.raises(HamiltonianError, match='is a file, not a DeepH folder'):
        read_deeph(text)
    with pytest.raises(HamiltonianError, match='no such folder'):
        read_deeph(tmp_path / 'nowhere')


@pytest.mark.realdata
def test_text_file_posing_as_hdf5(new_copy):
    (new_copy / 'hamiltonian.h5').write_text('atom_pairs\n0 0 0 0 0\n')
    with pytest.raises(HamiltonianError, match=r'hamiltonian\.h5: not a readable HDF5 file'):
        read_deeph(new_copy)


@pytest.mark.realdata
@pytest.mark.parametrize(
    'layout, name',
    [
        ('legacy', 'hamiltonians.h5'),
        ('legacy', 'overlaps.h5'),
        ('new', 'hamiltonian.h5'),
        ('new', 'overlap.h5'),
    ],
)
def test_truncated_hdf5(request, layout, name):
    folder = request.getfixturevalue(f'{layout}_copy')
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(HamiltonianError, match=rf'{name}: (not a readable HDF5 file|cannot be read)'):
        read_deeph(folder)


@pytest.mark.realdata
def test_chunk_shapes_not_matching_the_orbitals(new_copy):
    info = json.loads((new_copy / 'info.json').read_text())
    info['elements_orbital_map']['Te'] = [0, 0, 0, 1, 1, 2]  # 14 orbitals instead of 19
    del info['orbits_quantity']
    (new_copy / 'info.json').write_text(json.dumps(info))
    with pytest.raises(
        HamiltonianError, match=r'hamiltonian\.h5: block .* has shape \(19, 19\) .* need \(14, 14\)'
    ):
        read_deeph_new(new_copy)
    info['orbits_quantity'] = 57
    (new_copy / 'info.json').write_text(json.dumps(info))
    with pytest.raises(HamiltonianError, match=r'info\.json: orbits_quantity = 57 but .* gives 47'):
        read_deeph_new(new_copy)


@pytest.mark.realdata
def test_chunk_boundaries_not_matching_the_shapes(new_copy):
    with h5py.File(new_copy / 'overlap.h5', 'r+') as handle:
        handle['chunk_shapes'][0] = [19, 18]
    with pytest.raises(HamiltonianError, match=r'overlap\.h5: chunk_boundaries do not match chunk_shapes'):
        read_deeph_new(new_copy)


@pytest.mark.realdata
def test_legacy_block_shape_and_table_errors(legacy_copy):
    with h5py.File(legacy_copy / 'overlaps.h5', 'r+') as handle:
        del handle['[0, 0, 0, 1, 1]']
        handle['[0, 0, 0, 1, 1]'] = np.zeros((19, 18))
    with pytest.raises(
        HamiltonianError,
        match=r'overlaps\.h5: block .*\[0, 0, 0, 0, 0\] \(0-based atoms\) has shape \(19, 18\)',
    ):
        read_deeph_legacy(legacy_copy)
    (legacy_copy / 'orbital_types.dat').write_text('0 0 0 1 1 2 2\n0 0 0 1 1 2 2\n0 0 -1\n')
    with pytest.raises(HamiltonianError, match=r'orbital_types\.dat: atom 3 has orbital types \[0, 0, -1\]'):
        read_deeph_legacy(legacy_copy)
    (legacy_copy / 'orbital_types.dat').write_text('0 0 0 1 1 2 2\n0 0 0 1 1 2 2\n')
    with pytest.raises(HamiltonianError, match=r'orbital_types\.dat: 2 lines for the 3 atoms'):
        read_deeph_legacy(legacy_copy)
    (legacy_copy / 'lat.dat').write_text('1 2 x\n')
    with pytest.raises(HamiltonianError, match=r'lat\.dat: not a numeric table'):
        read_deeph_legacy(legacy_copy)


def test_detect_is_cheap_and_never_raises(tmp_path):
    junk = tmp_path / 'junk.bin'
    junk.write_bytes(b'\x89HDF\x00\xff' * 10)
    for path in (tmp_path, junk, tmp_path / 'missing', tmp_path / 'missing' / 'POSCAR', Path('\x00bad')):
        assert not is_deeph_legacy(path)
        assert not is_deeph_new(path)
