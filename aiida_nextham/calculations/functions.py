"""Calcfunctions on ``HamiltonianData``: band structures, Fermi level, gap and DOS with provenance.

They run in the AiiDA process itself (no broker, no CalcJob): diagonalising a block Hamiltonian
along a path is cheap enough for most cells. Large cells go through the ``nextham bands`` CalcJob.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ExitCode, calcfunction

from ..data.hamiltonian import HamiltonianData
from ..engine.cli import parse_mesh, resolve_fermi_level, spin_degeneracy
from ..hamiltonian.bloch import IllConditionedOverlapError

__all__ = (
    'BAND_PARAMETERS',
    'compute_bands',
    'band_kpath',
    'select_matrix',
    'get_band_path',
    'kpath_to_kpointsdata',
    'kpointsdata_to_array',
)

#: keys accepted in the ``parameters`` input of :func:`compute_bands`, with their meaning
BAND_PARAMETERS: dict[str, str] = {
    'matrix': "which Hamiltonian to diagonalise: 'H' (default) or 'H0' (the zeroth-step one of DFT labels).",
    'mesh': 'Monkhorst-Pack mesh [n1, n2, n3] for the Fermi level, gap and DOS (default: from the cell).',
    'n_electrons': 'valence electrons per cell (default: the Hamiltonian’s own count).',
    'smearing': "Fermi-level smearing: gaussian (default), methfessel-paxton, fermi-dirac or 'none'.",
    'width': 'smearing width for the Fermi level, eV (default: 0.05).',
    'dos': 'also return the density of states on the mesh as XyData (default: False).',
    'dos_emin': 'lowest DOS energy, eV, not shifted (default: lowest mesh energy - 1 eV).',
    'dos_emax': 'highest DOS energy, eV, not shifted (default: highest mesh energy + 1 eV).',
    'dos_step': 'DOS energy step, eV (default: 0.01).',
    'dos_smearing': 'DOS broadening function (default: gaussian).',
    'dos_width': 'DOS broadening width, eV (default: 0.05).',
    'ghost_filter': 'keep H − H0 only along the S(k) eigenvectors above this fraction of the largest, '
    'in [0, 1): the ghost filter for predicted Hamiltonians in nearly dependent bases (needs H0; '
    'default 0: off).',
}

#: physics failure: S(k) is singular or not positive definite at some k-point (ghost states)
EXIT_ILL_CONDITIONED_OVERLAP = 410


def kpointsdata_to_array(kpoints: orm.KpointsData) -> np.ndarray:
    """Fractional k-points of an explicit list or of a mesh, shape (n_k, 3)."""
    try:
        return np.asarray(kpoints.get_kpoints(), dtype=np.float64).reshape(-1, 3)
    except AttributeError:
        mesh_points = kpoints.get_kpoints_mesh(print_list=True)
        return np.asarray(mesh_points, dtype=np.float64).reshape(-1, 3)


def kpath_to_kpointsdata(kpath, lattice: np.ndarray) -> orm.KpointsData:
    """An (unstored) ``KpointsData`` with the fractional k-points and labels of a ``KPath``."""
    kpoints = orm.KpointsData()
    kpoints.set_cell(np.asarray(lattice, dtype=np.float64).tolist())
    kpoints.set_kpoints(np.asarray(kpath.kpoints, dtype=np.float64))
    kpoints.labels = [(int(index), str(label)) for index, label in kpath.labels]
    return kpoints


def band_kpath(hamiltonian: HamiltonianData, path: str = 'auto', npoints: int = 100):
    """The band path (:class:`~aiida_nextham.hamiltonian.kpath.KPath`) of the cell of ``hamiltonian``.

    Uses the crystal's symmetry and, for slabs, only the periodic directions.

    :param path: ``'auto'`` (from the cell) or labels such as ``'G-X-W-K-G-L'``.
    :param npoints: number of points along the whole path.
    """
    from ..hamiltonian.kpath import band_path

    lattice, positions, numbers = hamiltonian.get_structure_arrays()
    return band_path(
        lattice,
        path=path,
        npoints=npoints,
        positions=positions,
        numbers=numbers,
        periodic=hamiltonian.base.attributes.get('periodic', None),
    )


def get_band_path(hamiltonian: HamiltonianData, path: str = 'auto', npoints: int = 100) -> orm.KpointsData:
    """:func:`band_kpath` as an (unstored) ``KpointsData``."""
    lattice = hamiltonian.get_structure_arrays()[0]
    return kpath_to_kpointsdata(band_kpath(hamiltonian, path, npoints), lattice)


#: matrices :func:`compute_bands` can diagonalise (with the overlap S)
BAND_MATRICES = ('H', 'H0')


def _validate_parameters(parameters: dict) -> dict:
    """Check the ``parameters`` of :func:`compute_bands` before any diagonalisation (ValueError)."""
    unknown = sorted(set(parameters) - set(BAND_PARAMETERS))
    if unknown:
        raise ValueError(f'unknown parameters {unknown}; accepted: {sorted(BAND_PARAMETERS)}')
    if parameters.get('matrix', 'H') not in BAND_MATRICES:
        raise ValueError(f'matrix must be one of {BAND_MATRICES}, got {parameters["matrix"]!r}')
    if parameters.get('mesh') is not None:
        mesh = parameters['mesh']
        parameters['mesh'] = parse_mesh(
            mesh if isinstance(mesh, str) else ' '.join(str(int(n)) for n in mesh)
        )
    for key in ('width', 'dos_step', 'dos_width', 'n_electrons'):
        if key in parameters and not float(parameters[key]) > 0:
            raise ValueError(f'{key} must be positive, got {parameters[key]}')
    ghost_filter = parameters.get('ghost_filter', 0.0)
    if (
        isinstance(ghost_filter, bool)
        or not isinstance(ghost_filter, int | float)
        or not 0 <= ghost_filter < 1
    ):
        raise ValueError(f'ghost_filter must be a number in [0, 1), got {ghost_filter!r}')
    if 'dos_emin' in parameters and 'dos_emax' in parameters:
        if not float(parameters['dos_emax']) > float(parameters['dos_emin']):
            raise ValueError(
                f'dos_emax must exceed dos_emin, got {parameters["dos_emin"]}..{parameters["dos_emax"]}'
            )
    return parameters


def select_matrix(bh, matrix: str = 'H'):
    """``bh`` itself for ``'H'``; for ``'H0'`` a copy whose Hamiltonian is the stored H0 (ValueError if none).

    The copy keeps S and the electron count but not the Fermi level, which belongs to H.
    """
    if matrix == 'H':
        return bh
    if matrix != 'H0':
        raise ValueError(f'matrix must be one of {BAND_MATRICES}, got {matrix!r}')
    if bh.h0 is None:
        raise ValueError(
            'the Hamiltonian has no H0 blocks (DFT labels and `nextham dft --mode h0` have them)'
        )
    return bh.replace(hamiltonian=bh.h0, h0=None, fermi_level=None)


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@calcfunction
def compute_bands(
    hamiltonian: HamiltonianData, kpoints: orm.KpointsData, parameters: orm.Dict | None = None
) -> dict:
    """Band structure of a block Hamiltonian at the given k-points, with Fermi level, gap and optional DOS.

    :param hamiltonian: the block Hamiltonian.
    :param kpoints: fractional k-points (explicit list, labels kept; or a mesh) of the Hamiltonian's cell.
    :param parameters: optional settings, see ``BAND_PARAMETERS`` (matrix, mesh, n_electrons, dos, ...);
        ``matrix='H0'`` gives the bands of the zeroth-step Hamiltonian stored with a DFT label.
    :returns: ``bands`` (BandsData, eV, not shifted), ``output_parameters`` (Dict: fermi_level, gap, vbm,
        cbm, is_metal, ...) and, when ``parameters['dos']`` is true, ``dos`` (XyData, states/eV/cell).
    """
    from ..hamiltonian.spectra import band_energies, band_gap, density_of_states

    settings = _validate_parameters(dict(parameters.get_dict()) if parameters is not None else {})
    matrix = settings.get('matrix', 'H')
    bh = select_matrix(hamiltonian.get_block_hamiltonian(), matrix)
    try:
        cell = np.asarray(kpoints.cell, dtype=np.float64)
    except AttributeError:
        cell = None
    if cell is not None and not np.allclose(cell, bh.lattice, atol=1e-6):
        raise ValueError(
            'the cell of the k-points differs from the Hamiltonian lattice; fractional k-points would '
            'refer to a different reciprocal basis (build them with get_band_path)'
        )
    kpts = kpointsdata_to_array(kpoints)
    ghost_filter = float(settings.get('ghost_filter', 0.0)) or None
    if ghost_filter is not None and bh.h0 is None:
        raise ValueError(f'the ghost filter needs H0, but the {matrix} Hamiltonian has none')

    try:
        energies = band_energies(bh, kpts, ghost_filter=ghost_filter)
        fermi = resolve_fermi_level(
            bh,
            mesh=settings.get('mesh'),
            n_electrons=settings.get('n_electrons'),
            smearing=settings.get('smearing'),
            width=settings.get('width'),
            ghost_filter=ghost_filter,
        )
        needs_mesh = settings.get('dos') and fermi['energies'] is None
        if needs_mesh:
            from ..engine.cli import default_mesh
            from ..hamiltonian.spectra import monkhorst_pack

            mesh = settings.get('mesh') or default_mesh(bh)
            mesh_kpoints, mesh_weights = monkhorst_pack(mesh)
            fermi.update(
                mesh=[int(n) for n in mesh],
                kpoints=mesh_kpoints,
                energies=band_energies(bh, mesh_kpoints, ghost_filter=ghost_filter),
                weights=mesh_weights,
            )
    except IllConditionedOverlapError as exc:
        return ExitCode(EXIT_ILL_CONDITIONED_OVERLAP, f'ill-conditioned overlap: {exc}')

    bands = orm.BandsData()
    if cell is not None:
        bands.set_cell(cell.tolist(), pbc=kpoints.pbc)
    else:
        bands.set_cell(bh.lattice.tolist())
    bands.set_kpoints(kpts)
    if kpoints.labels:
        bands.labels = kpoints.labels
    bands.set_bands(energies, units='eV')

    output = {
        'units': 'eV',
        'matrix': matrix,
        'spin': bh.spin,
        'n_kpoints': int(len(kpts)),
        'n_bands': int(energies.shape[1]),
        'fermi_level': fermi['fermi_level'],
        'fermi_level_source': fermi['source'],
        'n_electrons': fermi['n_electrons'],
        'mesh': fermi['mesh'],
        'gap': None,
        'vbm': None,
        'cbm': None,
        'is_metal': None,
    }
    if fermi['n_electrons'] is not None:
        # the gap from every sampled k-point: the path and, when computed, the mesh
        if fermi['energies'] is None:
            sampled, sampled_kpoints = energies, kpts
        else:
            sampled = np.concatenate([energies, fermi['energies']])
            sampled_kpoints = np.concatenate([kpts, fermi['kpoints']])
        gap = band_gap(sampled, fermi['n_electrons'], spin_degeneracy(bh))
        for key in ('k_vbm', 'k_cbm'):  # indices into the sampled points -> fractional k-points
            if gap.get(key) is not None:
                gap[key] = sampled_kpoints[gap[key]].tolist()
        output.update({key: _to_builtin(value) for key, value in gap.items()})
    results = {'bands': bands, 'output_parameters': orm.Dict(output)}

    if settings.get('dos'):
        mesh_energies = fermi['energies']
        emin = settings.get('dos_emin', float(mesh_energies.min()) - 1.0)
        emax = settings.get('dos_emax', float(mesh_energies.max()) + 1.0)
        step = float(settings.get('dos_step', 0.01))
        if not emax > emin:
            raise ValueError(f'empty DOS window: dos_emin={emin} eV, dos_emax={emax} eV')
        grid = np.arange(emin, emax + 0.5 * step, step)
        dos = density_of_states(
            mesh_energies,
            fermi['weights'],
            grid,
            smearing=settings.get('dos_smearing', 'gaussian'),
            width=float(settings.get('dos_width', 0.05)),
            spin_degeneracy=spin_degeneracy(bh),
        )
        xy = orm.XyData()
        xy.set_x(grid, 'energy', 'eV')
        xy.set_y(np.asarray(dos, dtype=np.float64), 'dos', 'states/eV')
        results['dos'] = xy
    return results
