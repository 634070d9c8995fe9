"""PySCF matrices stay right with several OpenMP threads when torch shares the process.

torch puts its own libgomp into the global symbol scope; PySCF libraries loaded after that bind
their OpenMP calls to it, those loaded before to PySCF's bundled libgomp, and PySCF's multigrid
reductions then silently drop every thread's work but thread 0's (eV errors). See the docstring of
:mod:`aiida_nextham.dft.pyscf_engine`. Which runtime a library binds to is decided when it is loaded,
so every import order runs in a fresh interpreter with two OpenMP threads, and its H0(k) is compared
with a single-threaded run without torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import aiida_nextham

#: run the child in the folder that holds the package under test (``-c`` puts the cwd first on sys.path)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(aiida_nextham.__file__))

SCRIPT = r"""
import json, sys, warnings
import numpy as np

order, output = sys.argv[1], sys.argv[2]
for step in order.split('+'):
    if step == 'pyscf':
        import pyscf  # loads libnp_helper, libcgto, libcvhf, libao2mo, not the pbc/dft libraries
    elif step == 'engine':
        import aiida_nextham.dft
    elif step == 'torch':
        import torch  # noqa: F401  (the whole trigger: torch's libgomp enters the global scope)

from ase.build import bulk

from aiida_nextham.dft import openmp
from aiida_nextham.dft.config import DftConfig
from aiida_nextham.dft.run import kspace, prepare

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    prepared = prepare(bulk('Si', 'diamond', a=5.43), DftConfig(basis='gth-szv'), 'h0', (2, 2, 2))
    matrices = kspace(prepared, [np.array([[1, 2, 3], [4, 1, 2], [0, 0, 0]]) / 5])
np.save(output, matrices['H0'][0])
runtimes = openmp.openmp_runtimes()
print(json.dumps({
    'runtimes': sorted({r for bound in runtimes.values() for r in bound}),
    'warnings': [w.category.__name__ for w in caught if 'OpenMP' in w.category.__name__],
}))
"""


def _run(order: str, threads: int, tmp_path) -> tuple[np.ndarray, dict]:
    output = tmp_path / f'{order}-{threads}.npy'
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    done = subprocess.run(
        [sys.executable, '-c', SCRIPT, order, str(output)],
        env=env,
        cwd=PACKAGE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(output), json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> np.ndarray:
    """H0(k) of Si (gth-szv, 2x2x2 SCF mesh) with one OpenMP thread and no torch in the process."""
    h0, info = _run('engine', 1, tmp_path_factory.mktemp('reference'))
    assert info['warnings'] == []
    return h0


@pytest.mark.parametrize(
    ('order', 'split'),
    [
        ('engine+torch', False),  # what the test suite did: the DFT engine imported, then e3nn/torch code
        ('torch+engine', False),  # ML prediction: a torch model first, then H0 from PySCF
        ('pyscf+torch+engine', True),  # PySCF split before our code could load it whole: contained
    ],
)
def test_pyscf_matrices_with_two_openmp_threads_after_torch(order, split, reference, tmp_path):
    h0, info = _run(order, 2, tmp_path)
    assert np.abs(h0 - reference).max() < 1e-8, f'{order}: H0(k) off by {np.abs(h0 - reference).max():.3g} eV'
    if split:  # both runtimes in use, PySCF pinned to one thread, and the user told why
        assert len(info['runtimes']) == 2 and info['warnings'] == ['OpenMPRuntimeWarning']
    else:  # one runtime serves all of PySCF: threads kept, nothing to warn about
        assert len(info['runtimes']) == 1 and info['warnings'] == []
