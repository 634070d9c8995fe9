"""ABACUS CSR importer: real files (old and new layouts, collinear and spinor), conventions, errors."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from aiida_nextham.hamiltonian.bloch import bloch_sum, eigenvalues
from aiida_nextham.hamiltonian.block import HamiltonianError
from aiida_nextham.hamiltonian.conventions import e3nn_harmonics
from aiida_nextham.hamiltonian.importers import detect_format
from aiida_nextham.hamiltonian.importers.abacus import (
    ABACUS_CONVENTION,
    RYDBERG_EV,
    detect,
    read_abacus,
    read_abacus_csr,
)

MOS2 = 'abacus_MoS2_deephdock/examples/convert/abacus/abacus_data/MoS2'
MOS2_REFERENCE = 'abacus_MoS2_deephdock/tests/convert/abacus/deeph.bak/MoS2'
SI2 = 'abacus_Si2_abacusdevelop/tests/integrate/207_NO_KP_OH2'
C_SPIN4 = 'abacus_C_spin4_soc_abacusdevelop/tests/integrate/207_NO_KP_OHS_SPIN4'
C_NEW_S = 'abacus_newfmt_C_spin4_abacusdevelop/tests/03_NAO_multik/scf_out_hsr_spin4/srs1_nao.csr.ref'
#: DeepH-dock converts with ABACUS's own Ry -> eV constant (source/module_base/constants.h)

pytestmark = pytest.mark.realdata


@pytest.fixture(scope='module')
def mos2(realdata):
    return read_abacus(realdata / MOS2)


@pytest.fixture(scope='module')
def si2(realdata):
    return read_abacus(realdata / SI2)


def _random_k(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(n, 3))


# ----------------------------------------------------------------------------------- convention
def _abacus_ylm(xyz: np.ndarray) -> np.ndarray:
    """ABACUS ``Ylm::sph_harm`` for l <= 3 (its recursion written out), shape (n, 16)."""
    c = [
        1 / np.sqrt(4 * np.pi),
        np.sqrt(3 / (4 * np.pi)),
        np.sqrt(15) / 2,
        np.sqrt(5) / 2,
        np.sqrt(5),
        1 / np.sqrt(3),
        np.sqrt(5 / 3),
        np.sqrt(35 / 9),
        np.sqrt(7 / 3) / 1.5,
        np.sqrt(35 / 8),
        np.sqrt(7 / 8),
        np.sqrt(7),
        1 / np.sqrt(15),
        np.sqrt(14 / 15),
        np.sqrt(14 / 3),
    ]
    x, y, z = xyz.T
    y_ = [np.full_like(x, c[0]), c[1] * z, -c[1] * x, -c[1] * y]
    y_ += [c[2] * z * y_[1] - c[3] * y_[0], c[4] * z * y_[2], c[4] * z * y_[3]]
    y_ += [c[5] * y_[4] - c[6] * y_[0] - c[4] * x * y_[2], -c[4] * x * y_[3]]
    y_ += [
        c[7] * z * y_[4] - c[8] * y_[1],
        c[9] * z * y_[5] - c[10] * y_[2],
        c[9] * z * y_[6] - c[10] * y_[3],
    ]
    y_ += [c[11] * z * y_[7], c[11] * z * y_[8]]
    y_ += [
        c[12] * y_[10] - c[13] * y_[2] - c[14] * x * y_[7],
        c[12] * y_[11] - c[13] * y_[3] - c[14] * x * y_[8],
    ]
    return np.stack(y_, axis=1)


def test_convention_matches_abacus_ylm():
    """The registered (m, sign) table reproduces ABACUS's own real harmonics for l = 0..3."""
    xyz = np.random.default_rng(3).normal(size=(50, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    reference = _abacus_ylm(xyz)
    for l in range(4):
        assert np.allclose(
            ABACUS_CONVENTION.harmonics(l, xyz), reference[:, l * l : (l + 1) ** 2], atol=1e-12
        )


def test_overlap_blocks_follow_bond_direction(mos2):
    """Two-centre overlaps: <s_i|l_j> ∝ Y_l(τ_j + R - τ_i) internally (checks order, signs, sign of R)."""
    checked = 0
    for pair, (r1, r2, r3, i, j) in enumerate(mos2.pairs):
        bond = mos2.positions[j] + np.array([r1, r2, r3]) @ mos2.lattice - mos2.positions[i]
        if np.linalg.norm(bond) < 1e-6:
            continue
        row = mos2.block('S', pair)[0]  # first s orbital of atom i
        start = 0
        for l in mos2.basis[mos2.numbers[j]].shells:
            v, start = row[start : start + 2 * l + 1], start + 2 * l + 1
            if l and np.linalg.norm(v) > 1e-4:
                y = e3nn_harmonics(l, bond[None] / np.linalg.norm(bond))[0]
                assert abs(v @ y) == pytest.approx(np.linalg.norm(v) * np.linalg.norm(y), rel=1e-9)
                checked += 1
    assert checked > 400


def test_overlap_range_matches_orbital_cutoffs(mos2):
    """Non-zero S blocks lie within r_i + r_j of the orbital cutoffs (checks the sign of R)."""
    nonzero = np.array([np.abs(mos2.block('S', p)).max() > 0 for p in range(mos2.n_pairs)])
    radius = {z: mos2.basis[z].radii[0] for z in set(mos2.numbers.tolist())}
    limit = np.array([radius[mos2.numbers[i]] + radius[mos2.numbers[j]] for i, j in mos2.pairs[:, 3:]])
    assert (mos2.distances()[nonzero] < limit[nonzero]).all()


# ------------------------------------------------------------------------------ MoS2 reference
def test_mos2_equals_deeph_dock_conversion(mos2, realdata):
    from aiida_nextham.hamiltonian.importers.deeph import read_deeph

    reference = read_deeph(realdata / MOS2_REFERENCE)
    ours, theirs = set(map(tuple, mos2.pairs.tolist())), set(map(tuple, reference.pairs.tolist()))
    assert theirs <= ours  # DeepH-dock keeps the pairs where S != 0; ABACUS H reaches further
    extra = [mos2.pair_index[p] for p in ours - theirs]
    assert len(extra) == 114 and max(np.abs(mos2.block('S', p)).max() for p in extra) == 0.0
    for pair in theirs:
        a, b = mos2.pair_index[pair], reference.pair_index[pair]
        h_ours, h_theirs = mos2.block('H', a), reference.block('H', b)
        assert np.abs(h_ours - h_theirs).max() < 1e-6
        assert np.abs(mos2.block('S', a) - reference.block('S', b)).max() < 1e-6
    common = mos2.select_pairs(np.array(sorted(mos2.pair_index[p] for p in theirs)))
    gamma = np.zeros((1, 3))
    assert np.abs(eigenvalues(common, gamma) - eigenvalues(reference, gamma)).max() < 1e-6
    assert np.abs(mos2.lattice - reference.lattice).max() < 1e-4
    assert np.abs(mos2.positions - reference.positions).max() < 1e-4
    assert mos2.fermi_level == pytest.approx(reference.fermi_level, abs=2e-6)


def test_mos2_metadata(mos2):
    assert mos2.n_electrons == 26
    assert mos2.fermi_level == pytest.approx(-2.3123356452, abs=1e-9)  # EFERMI printed by ABACUS
    assert mos2.basis.label == 'S:2s2p1d Mo:4s2p2d1f'
    assert mos2.metadata['csr_layout'] == 'old' and mos2.metadata['abacus_version'] == '3.10.0'
    assert mos2.hermiticity_error('H') < 1e-12 and (mos2.partner_index() >= 0).all()


def test_detect_and_registry(realdata, tmp_path):
    assert detect(realdata / MOS2) and detect(realdata / MOS2 / 'OUT.ABACUS' / 'data-HR-sparse_SPIN0.csr')
    assert detect_format(realdata / MOS2) == 'abacus'
    assert not detect(realdata / MOS2 / 'OUT.ABACUS' / 'data-SR-sparse_SPIN0.csr')
    assert not detect(realdata / MOS2_REFERENCE) and not detect(realdata / MOS2_REFERENCE / 'hamiltonian.h5')
    assert not detect(tmp_path / 'missing') and not detect(tmp_path)


# --------------------------------------------------------------------------------- Si2, C spinor
def test_si2_hermitian_and_positive(si2):
    assert si2.summary()['basis'] == 'Si:2s2p1d' and si2.n_pairs == 538
    for k in _random_k(4):
        h, s = bloch_sum(si2, 'H', k), bloch_sum(si2, 'S', k)
        assert np.abs(h - h.conj().T).max() < 1e-12
        assert np.linalg.eigvalsh(s).min() > 1e-3


def test_c_spinor(realdata):
    bh = read_abacus(realdata / C_SPIN4)
    assert bh.spin == 'spinor' and bh.hamiltonian.dtype == np.complex128
    block = bh.block('H', 0)
    assert block.shape == (2, 2, 13, 13)
    assert np.allclose(bh.block('S', 0), np.eye(13))
    # nspin 4 without lspinorb, an isolated C atom magnetised along z: no spin mixing, but the
    # majority (↑) 2p level lies 0.22 Ry below the minority one (file rows 4 and 5: s index innermost)
    assert np.abs(block[0, 1]).max() == 0 and np.abs(block[1, 0]).max() == 0
    p_up, p_down = np.diag(block[0, 0].real)[2:5], np.diag(block[1, 1].real)[2:5]
    assert np.allclose(p_up, -4.21502271e-01 * RYDBERG_EV) and np.allclose(
        p_down, -2.00195327e-01 * RYDBERG_EV
    )
    for k in _random_k(3):
        h = bloch_sum(bh, 'H', k)
        assert h.shape == (26, 26) and np.abs(h - h.conj().T).max() < 1e-12
    # ABACUS's s-zeta on-site element (-1.04982955 Ry) lands unchanged on the first orbital
    assert block[0, 0, 0, 0].real == pytest.approx(-1.04982955 * RYDBERG_EV)


def test_new_layout_overlap_file(realdata):
    dimension, matrices = read_abacus_csr(realdata / C_NEW_S)
    assert dimension == 26 and list(matrices) == [(0, 0, 0)]
    for cell, matrix in matrices.items():
        partner = matrices[tuple(-x for x in cell)]
        assert abs(matrix - partner.conj().T).max() < 1e-12
    s_k = sum(m.toarray() for m in matrices.values())
    assert np.linalg.eigvalsh(s_k).min() > 0.5
    spin = np.arange(dimension) % 2
    assert np.abs(s_k[spin[:, None] != spin[None, :]]).max() == 0  # spin innermost, no mixing


# ---------------------------------------------------------------------- synthetic layouts (tmp)
def _write_new_layout(path: Path, label: str, matrices: dict, dimension: int, note='', declared=None) -> None:
    """An ABACUS >= 3.11 ``*_nao.csr`` file (wrapped lines, unit-cell header) of Si2."""
    matrices = {cell: m for cell, m in matrices.items() if m.nnz}  # empty blocks are not written
    lines = [
        ' --- Ionic Step 1 ---',
        f' # print {label} matrix in real space {label}(R)',
        ' 1 # number of spin directions',
        ' 1 # spin index',
        f' {dimension} # number of localized basis',
        f' {declared or len(matrices)} # number of Bravais lattice vector R',
        '',
        ' user_defined_lattice',
        f' {10.2 * 0.529177:.6g}',
        ' 0.5 0.5 0',
        ' 0.5 0 0.5',
        ' 0 0.5 0.5',
        ' Si',
        ' 2',
        ' Direct',
        ' 0 0 0',
        ' 0.25 0.25 0.25',
    ]
    lines += [f'# representation: {note}'] if note else []
    lines += ['', ' #' + '-' * 20 + '#', ' # CSR format #', ' #' + '-' * 20 + '#', '']
    for cell, matrix in matrices.items():
        lines.append(' {} {} {} {}'.format(*cell, matrix.nnz))
        for title, numbers in (
            ('values', [f'{v:.8e}' for v in matrix.data]),
            ('column indices', [str(c) for c in matrix.indices]),
            ('row pointers', [str(p) for p in matrix.indptr]),
        ):
            lines.append(f' # CSR {title}')
            lines += [' ' + ' '.join(numbers[n : n + 8]) for n in range(0, len(numbers), 8)]
    path.write_text('\n'.join(lines) + '\n')


def _si2_copy(realdata: Path, folder: Path, nspin: int = 1) -> Path:
    folder.mkdir()
    shutil.copy(realdata / SI2 / 'STRU', folder / 'STRU')
    (folder / 'INPUT').write_text(f'INPUT_PARAMETERS\nnspin {nspin}\nbasis_type lcao\n')
    return folder


def test_new_layout_equals_old(si2, realdata, tmp_path):
    folder = _si2_copy(realdata, tmp_path / 'si2')
    out = folder / 'OUT.ABACUS'
    out.mkdir()
    for old, new in (
        ('data-HR-sparse_SPIN0.csr.ref', 'hrs1_nao.csr'),
        ('data-SR-sparse_SPIN0.csr.ref', 'sr_nao.csr'),
    ):
        dimension, matrices = read_abacus_csr(realdata / SI2 / old)
        _write_new_layout(out / new, 'H' if new.startswith('h') else 'S', matrices, dimension)
    bh = read_abacus(folder)
    assert bh.metadata['csr_layout'] == 'new' and 'file name' in bh.metadata['basis_source']['Si']
    assert np.array_equal(bh.pairs, si2.pairs)
    assert np.abs(bh.hamiltonian - si2.hamiltonian).max() < 1e-12
    assert np.abs(bh.overlap - si2.overlap).max() < 1e-12


def _write_old_layout(path: Path, label: str, matrices: dict, dimension: int) -> None:
    """An ABACUS <= 3.10 ``data-*R-sparse_SPIN*.csr`` file (one line per CSR array)."""
    lines = [
        'STEP: 0',
        f'Matrix Dimension of {label}(R): {dimension}',
        f'Matrix number of {label}(R): {len(matrices)}',
    ]
    for cell, matrix in matrices.items():
        lines.append('{} {} {} {}'.format(*cell, matrix.nnz))
        if matrix.nnz:
            lines.append(' ' + ' '.join(f'{v:.8e}' for v in matrix.data))
            lines.append(' ' + ' '.join(map(str, matrix.indices)))
            lines.append(' ' + ' '.join(map(str, matrix.indptr)))
    path.write_text('\n'.join(lines) + '\n')


def test_collinear_spin_channels(si2, realdata, tmp_path):
    folder = _si2_copy(realdata, tmp_path / 'si2', nspin=2)
    for name in ('data-HR-sparse_SPIN0.csr', 'data-SR-sparse_SPIN0.csr'):
        shutil.copy(realdata / SI2 / (name + '.ref'), folder / name)
    dimension, matrices = read_abacus_csr(folder / 'data-HR-sparse_SPIN0.csr')
    down = {cell: 2 * m for cell, m in matrices.items()}
    _write_old_layout(folder / 'data-HR-sparse_SPIN1.csr', 'H', down, dimension)
    bh = read_abacus(folder / 'data-HR-sparse_SPIN1.csr')  # either spin file leads to the pair
    assert bh.spin == 'spinor' and bh.metadata['nspin'] == 2
    assert np.array_equal(bh.pairs, si2.pairs)
    for pair in range(0, bh.n_pairs, 7):
        block = bh.block('H', pair)
        assert np.abs(block[0, 1]).max() == 0 and np.abs(block[1, 0]).max() == 0
        assert np.allclose(block[0, 0], si2.block('H', pair), atol=1e-12)
        assert np.allclose(block[1, 1], 2 * block[0, 0], rtol=1e-7, atol=1e-9)  # 8 digits written


# ----------------------------------------------------------------------------------------- errors
def _c_copy(realdata: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ('STRU', 'INPUT', 'data-HR-sparse_SPIN0.csr.ref', 'data-SR-sparse_SPIN0.csr.ref'):
        shutil.copy(realdata / C_SPIN4 / name, folder / name)
    (folder / 'INPUT').write_text(
        (folder / 'INPUT').read_text().replace('../../PP_ORB', str(realdata / C_SPIN4 / '../../PP_ORB'))
    )
    return folder


def test_wrong_kind_of_file(realdata):
    for path in (
        realdata / MOS2_REFERENCE / 'hamiltonian.h5',
        realdata / 'siesta_Si_deephdock/examples/convert/siesta/siesta_data/Si/Si.HSX',
    ):
        with pytest.raises(HamiltonianError, match=f'{path.name}.*binary'):
            read_abacus_csr(path)
        with pytest.raises(HamiltonianError, match=f'{path.name}: a binary file'):
            read_abacus(path)
    with pytest.raises(HamiltonianError, match='not an ABACUS CSR file'):
        read_abacus_csr(realdata / MOS2 / 'STRU')
    with pytest.raises(HamiltonianError, match='no ABACUS H'):
        read_abacus(realdata / MOS2_REFERENCE)
    with pytest.raises(HamiltonianError, match=r'SR-sparse_SPIN0\.csr: holds S\(R\), not H\(R\)'):
        read_abacus(realdata / MOS2 / 'OUT.ABACUS' / 'data-SR-sparse_SPIN0.csr')
    with pytest.raises(HamiltonianError, match='INPUT: not an ABACUS CSR file'):
        read_abacus(realdata / MOS2 / 'INPUT')


def test_truncated_file(realdata, tmp_path):
    folder = _c_copy(realdata, tmp_path / 'c')
    source = realdata / MOS2 / 'OUT.ABACUS' / 'data-HR-sparse_SPIN0.csr'
    text = source.read_text()
    half = tmp_path / 'data-HR-sparse_SPIN0.csr'
    half.write_text(text[: len(text) // 2])
    with pytest.raises(HamiltonianError, match=r'data-HR-sparse_SPIN0\.csr.*truncated'):
        read_abacus_csr(half)
    h = folder / 'data-HR-sparse_SPIN0.csr.ref'
    h.write_text(h.read_text()[:-300])
    with pytest.raises(HamiltonianError, match='truncated'):
        read_abacus(folder)
    dimension, matrices = read_abacus_csr(realdata / SI2 / 'data-SR-sparse_SPIN0.csr.ref')
    _write_new_layout(tmp_path / 'sr_nao.csr', 'S', matrices, dimension, declared=200)
    with pytest.warns(UserWarning, match='declares 200 R blocks but the file holds 93'):
        read_abacus_csr(tmp_path / 'sr_nao.csr')
    h.write_text(
        ' --- Ionic Step 1 ---\n # print H matrix in real space H(R)\n 1 # number of spin directions\n'
    )
    with pytest.raises(HamiltonianError, match='header lacks'):
        read_abacus_csr(h)


def test_garbled_number(realdata, tmp_path):
    folder = _c_copy(realdata, tmp_path / 'c')
    h = folder / 'data-HR-sparse_SPIN0.csr.ref'
    h.write_text(
        h.read_text().replace('(7.32143243e-03,0.00000000e+00)', '(7.32143243e-0x,0.00000000e+00)', 1)
    )
    with pytest.raises(
        HamiltonianError, match=r'data-HR-sparse_SPIN0\.csr\.ref: line 5: .*7\.32143243e-0x.*not a number'
    ):
        read_abacus(folder)
    h.write_text(h.read_text().replace('0 0 0 42', '0 0 0 4x2'))
    with pytest.raises(HamiltonianError, match='line 4: .*expected an integer'):
        read_abacus_csr(h)


def test_dimension_mismatch(realdata, tmp_path):
    folder = _c_copy(realdata, tmp_path / 'c')
    (folder / 'INPUT').write_text('INPUT_PARAMETERS\nnspin 4\n')  # no orbital_dir: shells from the name
    stru = folder / 'STRU'
    stru.write_text(stru.read_text().replace('C_gga_8au_100Ry_2s2p1d.orb', 'C_gga_8au_100Ry_2s2p.orb'))
    with pytest.raises(
        HamiltonianError,
        match=r'SPIN0\.csr\.ref: matrix dimension 26 does not fit .*STRU \(8 orbitals, nspin 4',
    ):
        read_abacus(folder)


def test_unsupported_content(realdata, tmp_path):
    dimension, matrices = read_abacus_csr(realdata / SI2 / 'data-SR-sparse_SPIN0.csr.ref')
    folded = tmp_path / 'sr_nao.csr'
    _write_new_layout(
        folded, 'S', {(0, 0, 0): matrices[(0, 0, 0)]}, dimension, 'gamma-only folded matrix; ...'
    )
    with pytest.raises(HamiltonianError, match='gamma-only'):
        read_abacus_csr(folded)
    twice = tmp_path / 'data-SR-sparse_SPIN0.csr'
    text = (realdata / C_SPIN4 / 'data-SR-sparse_SPIN0.csr.ref').read_text()
    twice.write_text(text + text.replace('STEP: 0', 'STEP: 1'))
    with pytest.raises(HamiltonianError, match='second ionic step'):
        read_abacus_csr(twice)


def test_sparse_types(realdata):
    dimension, matrices = read_abacus_csr(realdata / SI2 / 'data-SR-sparse_SPIN0.csr.ref')
    assert dimension == 26 and len(matrices) == 177
    assert all(scipy.sparse.issparse(m) and m.shape == (26, 26) for m in matrices.values())
    assert sum(m.nnz == 0 for m in matrices.values()) > 0  # old layout lists empty R blocks too


def test_latname_cells():
    """Cells built from INPUT latname + LATTICE_PARAMETERS have the volume and metric they encode."""
    from aiida_nextham.hamiltonian.importers.abacus import _LATNAMES

    b, c, g = 1.3, 1.7, 0.2
    volumes = {'sc': 1, 'fcc': 1 / 4, 'bcc': 1 / 2, 'hexagonal': np.sqrt(3) / 2 * c, 'st': c, 'bct': c / 2}
    volumes |= {'so': b * c, 'baco': b * c / 2, 'fco': b * c / 4, 'bco': b * c / 2}
    volumes |= {'sm': b * c * np.sqrt(1 - g * g), 'bacm': b * c * np.sqrt(1 - g * g) / 2}
    arguments = {0: (), 1: (c,), 2: (b, c), 3: (b, c, g)}
    for name, volume in volumes.items():
        count, build = _LATNAMES[name]
        assert np.linalg.det(np.asarray(build(*arguments[count]), dtype=float)) == pytest.approx(volume)
    trigonal = np.asarray(_LATNAMES['trigonal'][1](g))
    assert np.allclose(trigonal @ trigonal.T, np.full((3, 3), g) + (1 - g) * np.eye(3))
    triclinic = np.asarray(_LATNAMES['triclinic'][1](b, c, g, -0.1, 0.3))
    lengths = np.linalg.norm(triclinic, axis=1)
    cosines = (triclinic @ triclinic.T) / np.outer(lengths, lengths)
    assert np.allclose(lengths, [1, b, c]) and np.allclose(cosines[[0, 0, 1], [1, 2, 2]], [g, -0.1, 0.3])
