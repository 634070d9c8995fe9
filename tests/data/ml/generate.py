"""Regenerate the small real DFT labels used by the ML tests (tests/test_ml_*.py).

Three rattled 2-atom Si cells (σ = 0.05 Å, seeds 0-2), PySCF gth-szv / PBE with the `fast`
protocol and an 8 Å block cutoff (small files; S(k) stays positive definite with szv; the self-check
deviation of such a short cutoff is ~0.2 eV, hence its tolerance of 1 eV):

    python tests/data/ml/generate.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from ase.build import bulk

HERE = Path(__file__).parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(3):
            atoms = bulk('Si', 'diamond', a=5.43)
            atoms.rattle(0.05, seed=seed)
            cif = Path(tmp) / f'si2_rattled_{seed}.cif'
            atoms.write(cif)
            command = [sys.executable, '-m', 'aiida_nextham.engine.dft_command', str(cif), '--mode', 'label']
            command += ['--protocol', 'fast', '--cutoff', '8', '--selfcheck-tolerance', '1000']
            command += ['-o', str(HERE / f'si2_rattled_{seed}.h5')]
            subprocess.run(command, check=True)


if __name__ == '__main__':
    main()
