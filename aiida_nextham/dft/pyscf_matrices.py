"""S, H0 and H of a PySCF KRKS object at sets of k-points off the SCF mesh, in eV.

H(k) = h_core(k) + V_eff[ρ](k) as in ``mf.get_bands``, with ρ given by density matrices on the
SCF mesh (the superposition-of-atoms guess for H0, the converged density for H).

The cost is dominated by the multigrid "pass 2" (matrix elements of a potential on the grid at
every k-point), so on the fast path everything local goes through a single pass per density:
the whole GTH local pseudopotential (long- and short-range parts, in G space), the Hartree and
the XC potential are summed on the grid first. PySCF integrates the short-range local part
analytically (``pp_int.get_pp_loc_part2``) through a (k, orbital pairs, atoms) buffer that grows
as N³ (13.6 GB per k-point for 216 Si atoms in gth-dzvp); on the grid it costs nothing extra and
agrees to 2e-6 eV (Si 8 and 64 atoms). The rest of h_core is analytic: kinetic energy and the
non-local projectors, contracted in one matrix product per k-point (``pp_int.get_pp_nl`` makes a
dense update of the whole matrix per atom and channel: 39 s instead of 2 s at 64 atoms, half an
hour at 216). The fast path equals ``mf.get_hcore(k) + mf.get_veff(kpts_band=k)`` to 3e-7 eV
(tested); other integrators, hybrid/meta-GGA/non-local functionals and ECPs take that generic path.
"""

from __future__ import annotations

import numpy as np

from .openmp import openmp_guard
from .pyscf_engine import HARTREE

__all__ = ['matrices_at', 'single_pass_supported']

#: G vectors per chunk of the (atoms, G) structure-factor arrays of the local pseudopotential
G_CHUNK = 1 << 15


def single_pass_supported(mf) -> bool:
    """Multigrid integrator, GTH pseudopotentials only, and a local or semi-local (LDA/GGA) functional."""
    from pyscf.pbc.dft.multigrid import MultiGridNumInt

    ni = getattr(mf, '_numint', None)
    if not isinstance(ni, MultiGridNumInt) or not mf.cell.pseudo or len(mf.cell._ecpbas):
        return False
    return ni._xc_type(mf.xc) in ('LDA', 'GGA') and not ni.libxc.is_hybrid_xc(mf.xc) and not mf.do_nlc()


def _split(matrices: np.ndarray, sets: list[np.ndarray]) -> list[np.ndarray]:
    return np.split(np.asarray(matrices), np.cumsum([len(k) for k in sets])[:-1])


def _hermitian_ev(matrices: np.ndarray) -> np.ndarray:
    return 0.5 * (matrices + matrices.conj().transpose(0, 2, 1)) * HARTREE


def _analytic_core(mf, every: np.ndarray) -> np.ndarray:
    """Kinetic + non-local pseudopotential at the k-points ``every``, (nk, n, n) Ha."""
    cell = mf.cell
    core = np.asarray(cell.pbc_intor('int1e_kin', 1, 1, every)).reshape(len(every), cell.nao, cell.nao)
    return core + nonlocal_pseudopotential(cell, every)


def nonlocal_pseudopotential(cell, kpts: np.ndarray) -> np.ndarray:
    """GTH non-local part Σ_a,l,ij <μ|p_i^l> h^l_ij <p_j^l|ν> at ``kpts``, (nk, n, n) Ha.

    PySCF's projector overlaps ⟨p|μ⟩(k) (``pp_int._int_vnl``), stacked into one (projectors, n)
    matrix P per k-point and contracted as P^H (W P), W block-diagonal in (atom, l): one matrix
    product instead of one dense update of the whole (n, n) matrix per atom and channel.
    """
    from pyscf.pbc.gto.pseudo import pp_int

    fakecell, hl_blocks = pp_int.fake_cell_vnl(cell)
    half = pp_int._int_vnl(cell, fakecell, hl_blocks, kpts)  # half[i][k]: (functions of index i, n)
    result = np.zeros((len(kpts), cell.nao, cell.nao), dtype=np.complex128)
    for k in range(len(kpts)):
        offset = [0, 0, 0]
        projectors, weighted = [], []
        for block, hl in enumerate(hl_blocks):
            nd = 2 * fakecell.bas_angular(block) + 1
            rows = []
            for i in range(hl.shape[0]):
                rows.append(half[i][k][offset[i] : offset[i] + nd])
                offset[i] += nd
            rows = np.asarray(rows)  # (i, m, n)
            projectors.append(rows.reshape(-1, cell.nao))
            weighted.append(np.einsum('ij,jmq->imq', hl, rows).reshape(-1, cell.nao))
        if projectors:
            result[k] = np.concatenate(projectors).conj().T @ np.concatenate(weighted)
    return result


def _local_potential(mf, dm: np.ndarray, kpts: np.ndarray) -> np.ndarray:
    """Matrix of V_loc + V_H[ρ] + V_xc[ρ] at ``kpts`` in one multigrid pass, Ha."""
    from pyscf.pbc import tools
    from pyscf.pbc.dft.multigrid import multigrid
    from pyscf.pbc.gto.pseudo.pp import get_gth_vlocG

    ni, cell = mf._numint, mf.cell
    mesh = np.asarray(ni.mesh)
    n_grid = int(np.prod(mesh))
    xctype = ni._xc_type(mf.xc)
    gv = cell.get_Gv(mesh)
    # density (and its gradient for GGA) in reciprocal space, scaled by the grid weight
    rho_g = multigrid._eval_rhoG(ni, dm, 1, mf.kpts, deriv=int(xctype == 'GGA'), xctype=xctype)
    rho_g = rho_g.reshape(-1, n_grid)
    weight = cell.vol / n_grid
    rho_r = tools.ifft(rho_g, mesh).real / weight
    vxc = ni.eval_xc_eff(mf.xc, rho_r[0] if xctype == 'LDA' else rho_r, deriv=1, xctype=xctype)[1]
    vxc_g = tools.fft(np.asarray(weight * vxc).reshape(-1, n_grid), mesh).reshape(-1, n_grid)
    potential = vxc_g[0]
    if xctype == 'GGA':  # ∫ φμ (∂f/∂∇ρ · ∇(φν ...)) -> -i G · w(G) after integration by parts
        potential = potential - np.einsum('xg,gx->g', 1j * vxc_g[1:4], gv)
    potential = potential + rho_g[0] * tools.get_coulG(cell, mesh=mesh)
    for start in range(0, n_grid, G_CHUNK):  # (atoms, G) arrays: 14 GB at once for 216 Si atoms
        g = gv[start : start + G_CHUNK]
        potential[start : start + G_CHUNK] -= np.einsum('ag,ag->g', cell.get_SI(g), get_gth_vlocG(cell, g))
    return np.asarray(multigrid._get_j_pass2(ni, potential, 1, kpts))[0]


def matrices_at(mf, densities: dict[str, np.ndarray], sets: list[np.ndarray], timer) -> dict[str, list]:
    """``{'S': [...], name: [...]}`` in eV for every density (``'H0'``, ``'H'``) and set of absolute k.

    :param densities: density matrices on the SCF mesh, (nk_scf, n, n), by matrix name.
    :param sets: arrays of absolute k-points (Bohr⁻¹); one regular mesh per set.
    :param timer: callable context manager ``timer(stage)`` that accumulates wall time.
    """
    with openmp_guard():
        return _matrices_at(mf, densities, sets, timer)


def _matrices_at(mf, densities, sets, timer) -> dict[str, list]:
    cell = mf.cell
    sets = [np.asarray(k, dtype=np.float64).reshape(-1, 3) for k in sets]
    every = np.concatenate(sets)
    n = cell.nao
    with timer('overlap'):
        overlap = np.asarray(cell.pbc_intor('int1e_ovlp', hermi=1, kpts=every)).reshape(len(every), n, n)
        result = {'S': [0.5 * (s + s.conj().transpose(0, 2, 1)) for s in _split(overlap, sets)]}
    fast = single_pass_supported(mf)
    with timer('hcore'):
        if fast:
            core = _split(_analytic_core(mf, every), sets)
        else:
            core = [np.asarray(mf.get_hcore(cell, k)).reshape(len(k), n, n) for k in sets]
    for name, dm in densities.items():
        with timer('veff_h0' if name == 'H0' else 'veff_scf'):
            if fast:
                local = _local_potential(mf, dm, every)
            else:
                local = mf.get_veff(cell, dm, kpts=mf.kpts, kpts_band=every)
            local = _split(np.asarray(local).reshape(len(every), n, n), sets)
            result[name] = [_hermitian_ev(c + v) for c, v in zip(core, local, strict=True)]
    return result
