"""How far H0 is from the self-consistent H: |H - H0| statistics before and after the best μ·S shift.

Most of H - H0 is a uniform shift μ·S (a change of the energy zero, a gauge freedom for band
energies); the rest is what a model has to learn. Usage::

    python -m aiida_nextham.dft.analysis label.h5 [more.h5 ...]
"""

from __future__ import annotations

import json

import numpy as np

from ..hamiltonian.block import BlockHamiltonian

__all__ = ['h0_correction_stats']


def _stats(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {'mean_abs': 0.0, 'rms': 0.0, 'max_abs': 0.0}
    magnitude = np.abs(values) * 1e3
    return {
        'mean_abs': float(magnitude.mean()),
        'rms': float(np.sqrt(np.mean(magnitude**2))),
        'max_abs': float(magnitude.max()),
    }


def h0_correction_stats(bh: BlockHamiltonian) -> dict:
    """Statistics (meV) of ΔH = H - H0 on on-site and off-site blocks, raw and minus μ·S.

    μ (eV) minimises ||ΔH - μ S||² over all stored matrix elements.
    """
    if bh.h0 is None or bh.overlap is None:
        raise ValueError('the Hamiltonian needs both H0 and S blocks')
    if bh.spin != 'none':
        raise NotImplementedError('statistics of spinor Hamiltonians are not implemented')
    delta = bh.hamiltonian - bh.h0
    mu = float(delta @ bh.overlap / (bh.overlap @ bh.overlap))
    shifted = delta - mu * bh.overlap
    onsite_pair = (bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1)
    offsets = bh.block_offsets('H')
    onsite = np.repeat(onsite_pair, np.diff(offsets))
    return {
        'mu': mu,
        'n_pairs': int(bh.n_pairs),
        'cutoff': bh.metadata.get('cutoff'),
        'onsite': _stats(delta[onsite]),
        'offsite': _stats(delta[~onsite]),
        'onsite_shifted': _stats(shifted[onsite]),
        'offsite_shifted': _stats(shifted[~onsite]),
    }


def _main(argv: list[str] | None = None) -> None:
    import argparse

    from ..hamiltonian.hdf5 import read_hdf5

    parser = argparse.ArgumentParser(description='|H - H0| statistics (meV) of label files.')
    parser.add_argument('files', nargs='+')
    args = parser.parse_args(argv)
    table = {}
    for path in args.files:
        bh = read_hdf5(path)
        table[path] = {'formula': bh.formula, 'basis': bh.basis.name, **h0_correction_stats(bh)}
    print(json.dumps(table, indent=1))


if __name__ == '__main__':
    _main()
