"""Regenerate the engine output folders used by the parser tests of ``tests/test_dft_aiida.py``.

Each case writes the input files exactly as ``NexthamDftCalculation`` does (``structure.xyz``,
``config.json``, ``pseudo/gth.dat``), runs the ``nextham`` executable of this environment with the
command line of ``tests/data/dft_dry_run/cmdline.json`` (the one the dry-run test checks against the
CalcJob), and keeps what the CalcJob retrieves: ``summary.json``, ``hamiltonian.h5`` (when written),
``nextham.out`` and ``nextham.err``.

    python tests/data/dft_outputs/generate.py [CASE ...]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ase import Atoms
from ase.build import bulk
from ase.io import write

from aiida_nextham.calculations.dft import config_to_json

HERE = Path(__file__).parent
CMDLINE = json.loads((HERE.parent / 'dft_dry_run' / 'cmdline.json').read_text())
RETRIEVED = ('summary.json', 'hamiltonian.h5', 'nextham.out', 'nextham.err')

#: the CalcJob test parameters (tests/test_dft_aiida.py: TINY), without the protocol (on the command line)
BASE = {'alias_margin': 1.0, 'cutoff': 4.0, 'selfcheck': False, 'threads': 1}

CASES = {
    # case: (structure, config changes, mode)
    'success': (bulk('Si', 'diamond', a=5.43), {}, 'label'),
    'scf_not_converged': (bulk('Si', 'diamond', a=5.43), {'max_cycles': 1}, 'label'),
    'selfcheck_failed': (
        bulk('Si', 'diamond', a=5.43),
        {'selfcheck': True, 'selfcheck_kpoints': 1, 'selfcheck_tolerance': 1e-3},
        'h0',
    ),
    'unsupported_element': (
        Atoms(
            'SiU', positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=bulk('Si', 'diamond', a=5.43).cell, pbc=True
        ),
        {},
        'label',
    ),
    'bad_structure': (
        Atoms('Si2', positions=[[0, 0, 0], [0.2, 0, 0]], cell=bulk('Si', 'diamond', a=5.43).cell, pbc=True),
        {},
        'label',
    ),
}


def si_pseudo_entry() -> str:
    from aiida_nextham.data.pseudo import get_pyscf_gth_file, split_gth_file

    for info, text in split_gth_file(get_pyscf_gth_file('pbe').read_text()):
        if info['element'] == 'Si' and info['aliases']:
            return text
    raise RuntimeError('no Si entry in PySCF’s gth-pbe.dat')


def run_case(name: str) -> None:
    atoms, changes, mode = CASES[name]
    config = {**BASE, **changes, 'pseudo': 'pseudo/gth.dat'}
    cmdline = [str(arg) for arg in CMDLINE]
    cmdline[cmdline.index('--mode') + 1] = mode
    executable = Path(os.environ.get('NEXTHAM_EXECUTABLE') or Path(sys.executable).parent / 'nextham')
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write(work / 'structure.xyz', atoms, format='extxyz')
        (work / 'pseudo').mkdir()
        (work / 'pseudo' / 'gth.dat').write_text(si_pseudo_entry())
        (work / 'config.json').write_text(config_to_json(config))
        with open(work / 'nextham.out', 'w') as out, open(work / 'nextham.err', 'w') as err:
            status = subprocess.call([str(executable), *cmdline], cwd=work, stdout=out, stderr=err)
        target = HERE / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for filename in RETRIEVED:
            if (work / filename).exists():
                shutil.copy(work / filename, target / filename)
        print(f'{name}: exit status {status}; kept {sorted(p.name for p in target.iterdir())}')


if __name__ == '__main__':
    for case in sys.argv[1:] or CASES:
        run_case(case)
