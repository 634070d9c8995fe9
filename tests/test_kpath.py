"""k-point paths: seekpath points in the caller's basis, explicit paths, k-point and K_PATH files."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aiida_nextham.hamiltonian.kpath import (
    KPath,
    band_path,
    explicit_kpath,
    path_from_segments,
    read_deeph_kpath,
    read_kpoints_file,
    reciprocal_lattice,
    seekpath_points,
)

A_SI = 5.431
FCC = A_SI / 2 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
DIAMOND = np.array([[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]) @ FCC
FCC_SHIFTS = A_SI / 2 * np.array([[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]])


def _cells():
    """(lattice, Cartesian positions, rotation applied) for several settings of the same Si crystal."""
    rotation = Rotation.from_euler('zyx', [0.3, -1.1, 2.0]).as_matrix()
    rebase = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]])  # unimodular: same lattice, other basis
    flip = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # left-handed basis
    return {
        'standard': (FCC, DIAMOND, np.eye(3)),
        'rotated': (FCC @ rotation.T, DIAMOND @ rotation.T, rotation),
        'rebased': (rebase @ FCC, DIAMOND, np.eye(3)),
        'rebased+rotated': ((flip @ rebase @ FCC) @ rotation.T, DIAMOND @ rotation.T, rotation),
        'conventional': (A_SI * np.eye(3), (DIAMOND[:, None] + FCC_SHIFTS[None]).reshape(-1, 3), np.eye(3)),
    }


def _cubic_form(kpoint_cartesian: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Sorted |components| of k in the crystal's cube axes, in units of 2π/a."""
    return np.sort(np.abs(kpoint_cartesian @ rotation)) / (2 * np.pi / A_SI)


@pytest.mark.parametrize('setting', list(_cells()))
def test_fcc_special_points_in_original_basis(setting):
    lattice, positions, rotation = _cells()[setting]
    points, path = seekpath_points(lattice, positions, [14] * len(positions))
    cartesian = {label: k @ reciprocal_lattice(lattice) for label, k in points.items()}
    np.testing.assert_allclose(_cubic_form(cartesian['GAMMA'], rotation), 0, atol=1e-10)
    np.testing.assert_allclose(_cubic_form(cartesian['X'], rotation), [0, 0, 1], atol=1e-8)
    np.testing.assert_allclose(_cubic_form(cartesian['L'], rotation), [0.5, 0.5, 0.5], atol=1e-8)
    np.testing.assert_allclose(_cubic_form(cartesian['W'], rotation), [0, 0.5, 1], atol=1e-8)
    np.testing.assert_allclose(_cubic_form(cartesian['K'], rotation), [0, 0.75, 0.75], atol=1e-8)
    assert path[0] == ('GAMMA', 'X')


def test_fcc_x_point_phase_is_a_lattice_property():
    """X of the rebased cell is equivalent to X of the standard cell: exp(2πi k·R) agrees on all R."""
    rebase = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    x_standard = seekpath_points(FCC, DIAMOND, [14, 14])[0]['X'] @ reciprocal_lattice(FCC)
    x_rebased = seekpath_points(rebase @ FCC, DIAMOND, [14, 14])[0]['X'] @ reciprocal_lattice(rebase @ FCC)
    translations = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3)).reshape(3, -1).T @ FCC
    np.testing.assert_allclose(
        np.exp(1j * translations @ x_standard), np.exp(1j * translations @ x_rebased), atol=1e-10
    )


def test_auto_path_npoints_labels_and_breaks():
    kpath = band_path(FCC, 'auto', 100, positions=DIAMOND, numbers=[14, 14])
    assert len(kpath) == 100
    labels = [label for _, label in kpath.labels]
    assert labels == ['GAMMA', 'X', 'U', 'K', 'GAMMA', 'L', 'W', 'X']
    indices = [i for i, _ in kpath.labels]
    assert indices[0] == 0 and indices[-1] == 99 and indices == sorted(indices)
    assert np.all(np.diff(kpath.distances) >= 0)
    (u_index, _), (k_index, _) = kpath.labels[2], kpath.labels[3]
    assert k_index == u_index + 1 and kpath.distances[k_index] == kpath.distances[u_index]  # U|K break
    # distances are Cartesian with 2π: Γ-X is 2π/a long
    x_index = kpath.labels[1][0]
    assert kpath.distances[x_index] == pytest.approx(2 * np.pi / A_SI)
    # points spread by length: roughly constant spacing
    steps = np.diff(kpath.distances)
    steps = steps[steps > 0]
    assert steps.max() / steps.min() < 1.6


def test_explicit_path_string():
    kpath = band_path(FCC, 'G-X-W-K-Gamma-L', 60)
    assert len(kpath) == 60
    assert [label for _, label in kpath.labels] == ['GAMMA', 'X', 'W', 'K', 'GAMMA', 'L']
    cartesian = kpath.kpoints @ reciprocal_lattice(FCC)
    for index, expected in zip(
        [i for i, _ in kpath.labels[:4]], [[0, 0, 0], [0, 0, 1], [0, 0.5, 1], [0, 0.75, 0.75]], strict=True
    ):
        np.testing.assert_allclose(_cubic_form(cartesian[index], np.eye(3)), expected, atol=1e-8)
    two_pieces = band_path(FCC, 'G-X|L-G', 30)
    assert len(two_pieces) == 30 and [s for _, s in two_pieces.labels] == ['GAMMA', 'X', 'L', 'GAMMA']
    with pytest.raises(ValueError, match='unknown k-point label'):
        band_path(FCC, 'G-Q', 20)
    with pytest.raises(ValueError, match='at least two points'):
        band_path(FCC, 'G|X-L', 20)
    with pytest.raises(ValueError, match='use at least 6'):
        band_path(FCC, 'G-X-W|K-G-L', 5)
    assert len(band_path(FCC, 'G-X-W|K-G-L', 6)) == 6


def test_hexagonal_points():
    a, c = 3.5656, 20.0
    lattice = np.array([[a / 2, -a * np.sqrt(3) / 2, 0], [a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])
    points, _ = seekpath_points(lattice)
    reciprocal = reciprocal_lattice(lattice)
    assert np.linalg.norm(points['K'] @ reciprocal) == pytest.approx(4 * np.pi / (3 * a))
    assert np.linalg.norm(points['M'] @ reciprocal) == pytest.approx(2 * np.pi / (np.sqrt(3) * a))
    assert np.linalg.norm(points['A'] @ reciprocal) == pytest.approx(np.pi / c)


def test_explicit_kpath_and_kpoints_file(tmp_path):
    kpoints = np.array([[0, 0, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5]])
    kpath = explicit_kpath(kpoints, FCC, labels=[(0, 'G'), (2, 'L')])
    assert kpath.labels == [(0, 'GAMMA'), (2, 'L')]
    assert kpath.distances[1] == pytest.approx(2 * np.pi / A_SI)
    np.testing.assert_array_equal(explicit_kpath(kpoints).distances, [0, 1, 2])

    good = tmp_path / 'kpoints.txt'
    good.write_text('# my k-points\n0 0 0\n\n0.5 0.0 0.5   # X\n 0.5 0.5 0.5\n')
    np.testing.assert_array_equal(read_kpoints_file(good), kpoints)
    bad = tmp_path / 'bad.txt'
    bad.write_text('0 0 0\n0.5 abc 0\n')
    with pytest.raises(ValueError, match=r'bad\.txt:2: expected three numbers'):
        read_kpoints_file(bad)
    bad.write_text('0 0 0 1\n')
    with pytest.raises(ValueError, match=r'bad\.txt:1'):
        read_kpoints_file(bad)
    bad.write_text('# nothing\n')
    with pytest.raises(ValueError, match='no k-points'):
        read_kpoints_file(bad)


K_PATH = """\
50   0.0 0.0 0.0   0.5 0.0 0.0     GAMMA  M
30   0.5 0.0 0.0   0.3333333333 0.3333333333 0.0     M  K
60   0.3333333333 0.3333333333 0.0   0.0 0.0 0.0     K  GAMMA
"""


def test_deeph_kpath(tmp_path):
    a = 3.5656
    lattice = np.array([[a / 2, -a * np.sqrt(3) / 2, 0], [a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 300.0]])
    file = tmp_path / 'K_PATH'
    file.write_text(K_PATH)
    kpath = read_deeph_kpath(file, lattice)
    assert len(kpath) == 140
    assert kpath.labels[:3] == [(0, 'GAMMA'), (49, 'M'), (50, 'M')]
    np.testing.assert_allclose(kpath.kpoints[1], [0.5 / 49, 0, 0])
    np.testing.assert_array_equal(kpath.kpoints[49], kpath.kpoints[50])
    assert kpath.distances[50] == kpath.distances[49]
    reciprocal = reciprocal_lattice(lattice)
    corners = np.array([[0, 0, 0], [0.5, 0, 0], [0.3333333333, 0.3333333333, 0], [0, 0, 0]])
    total = np.linalg.norm(np.diff(corners, axis=0) @ reciprocal, axis=1).sum()
    assert kpath.distances[-1] == pytest.approx(total, rel=1e-8)
    file.write_text('50 0 0 0 0.5 0 0 GAMMA\n')
    with pytest.raises(ValueError, match=r'K_PATH:1: expected'):
        read_deeph_kpath(file, lattice)
    with pytest.raises(ValueError, match='at least 2 points'):
        path_from_segments(lattice, [(1, [0, 0, 0], [0.5, 0, 0], 'G', 'M')])


def test_kpath_validates_shapes():
    with pytest.raises(ValueError, match='distances'):
        KPath(np.zeros((3, 3)), np.zeros(2))


def test_triclinic_points_are_time_reversal_invariant_in_any_basis():
    """Seekpath re-bases triclinic cells (Niggli): its points must still be TRIM points k ≡ −k."""
    lattice = np.array([[4.0, 0.3, 0.2], [0.7, 5.1, 0.4], [0.5, -0.9, 6.3]])
    positions = np.array([[0.1, 0.2, 0.3], [0.5, 0.1, 0.7], [0.8, 0.6, 0.2]]) @ lattice
    rebase = np.array([[1, 2, 0], [0, 1, 0], [-1, 0, 1]])
    for cell in (lattice, rebase @ lattice):
        points, _ = seekpath_points(cell, positions, [1, 2, 3])
        assert len(points) >= 8
        for k in points.values():
            np.testing.assert_allclose(2 * k, np.round(2 * k), atol=1e-8)


def test_auto_path_of_a_slab_stays_in_plane():
    """A 2D material (no hopping along a3) gets Γ-M-K-Γ, not the kz-repeated A-L-H part."""
    a, c = 3.5, 25.0
    lattice = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]])
    full = band_path(lattice, npoints=60)
    slab = band_path(lattice, npoints=60, periodic=(True, True, False))
    assert {'A', 'L', 'H'} & {label for _, label in full.labels}
    assert [label for _, label in slab.labels] == ['GAMMA', 'M', 'K', 'GAMMA']
    np.testing.assert_allclose(slab.kpoints[:, 2], 0.0)
