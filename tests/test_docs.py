"""The documentation builds warning-free (``sphinx-build -W``) and shows what it promises.

One HTML build into a temporary folder, offline (no intersphinx, nothing fetched) and without an AiiDA
profile; the checks then read the rendered pages. A single test, so that pytest-xdist never builds twice.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / 'docs'
PAGES = (
    'index',
    'installation',
    'quickstart',
    'concepts',
    'guides/pipeline',
    'guides/arpes_fit',
    'guides/phonons',
    'guides/import',
    'guides/slurm',
    'guides/provenance',
    'cli',
    'api',
    'troubleshooting',
    'benchmarks',
    'file_format',
)


def _text(path: Path) -> str:
    """The visible text of an HTML page (tags dropped, entities decoded, whitespace collapsed)."""
    return ' '.join(html.unescape(re.sub(r'<[^>]+>', ' ', path.read_text())).split())


@pytest.mark.slow
def test_docs_build_warning_free(tmp_path):
    from aiida.plugins import CalculationFactory, WorkflowFactory

    out = tmp_path / 'html'
    result = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html', str(DOCS), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1'},
        timeout=900,
    )
    assert result.returncode == 0, f'sphinx-build -W failed:\n{result.stderr[-5000:]}'
    for page in PAGES:
        assert (out / f'{page}.html').is_file(), f'{page}.html was not built'

    # the exit-code tables are generated from the process specs: look codes up and find their rows
    text = _text(out / 'troubleshooting.html')
    for factory, entry_point, label in (
        (CalculationFactory, 'nextham.dft', 'ERROR_SCF_NOT_CONVERGED'),
        (CalculationFactory, 'nextham.train', 'ERROR_WALLTIME_WITH_CHECKPOINT'),
        (WorkflowFactory, 'nextham.predict_bands', 'ERROR_PREDICT_FAILED'),
    ):
        code = factory(entry_point).spec().exit_codes[label]
        assert f'{code.status} {label} {" ".join(code.message.split())}' in text, (entry_point, label)
    assert '120 ERROR_SCHEDULER_OUT_OF_WALLTIME' in text  # the codes inherited from aiida-core

    # command-line reference (sphinx-click) and API reference (autodoc)
    cli = _text(out / 'cli.html')
    for command in (
        'nextham predict',
        'nextham train',
        'nextham dft',
        'aiida-nextham setup',
        'aiida-nextham dataset',
    ):
        assert command in cli, command
    assert '--ghost-filter' in cli
    api = (out / 'api.html').read_text()
    for name in (
        'aiida_nextham.hamiltonian.bloch.filter_correction',
        'aiida_nextham.workflows.train.NexthamTrainWorkChain',
        'aiida_nextham.data.hamiltonian.HamiltonianData',
    ):
        assert f'id="{name}"' in api, name

    # the tutorials include the example scripts verbatim (examples/*, each run by a test)
    for page, excerpt in (
        ('guides/pipeline', 'seeded rattled cells from the parent and runs one per structure'),
        ('guides/phonons', '# 3. The crystal: the 2-atom primitive cell of diamond Si.'),
        ('guides/import', 'nextham code and the GTH pseudopotential family; reused when it already exists'),
        ('guides/slurm', 'slurm_gpu_cluster.py'),
        ('guides/provenance', 'query_provenance.py'),
    ):
        assert excerpt in _text(out / f'{page}.html'), (page, excerpt)
