"""Shared fixtures. Real files are read from ../shared/realdata beside the checkout.

aiida-core's fixtures (``aiida.tools.pytest_fixtures``) are loaded for the whole suite: a temporary
configuration and an SQLite (``core.sqlite_dos``) profile without a broker are created once per
session (autouse) and loaded as the default profile, so ``verdi``-style commands and calcfunctions
work without any services. Use ``aiida_profile_clean`` in a test that needs an empty database.
"""

from __future__ import annotations

import importlib.util
import os
import traceback
from pathlib import Path

import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']

REALDATA = Path(__file__).resolve().parents[2] / 'shared' / 'realdata'
EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'


def pytest_configure(config):
    config.addinivalue_line('filterwarnings', 'ignore:Creating AiiDA configuration folder:UserWarning')
    # aiida-core 2.9.4 (sqlite_dos): every process function run emits this SQLAlchemy warning while
    # linking its inputs, even for a trivial calcfunction of stored Int nodes; not caused by this package.
    config.addinivalue_line(
        'filterwarnings',
        'ignore:Object of type <Db.*> not in session, add operation along',
    )


@pytest.fixture(scope='session')
def load_example():
    """``load_example('NAME.py')``: the script ``examples/NAME.py`` as a module, to call its ``main``."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f'example_{Path(name).stem}', EXAMPLES / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope='module')
def gth_family():
    """The PySCF GTH-PBE pseudopotential family (installed once per module, reused if present)."""
    from aiida_nextham.data.pseudo import install_pyscf_gth_family

    return install_pyscf_gth_family('pbe')[0]


@pytest.fixture
def nextham_code(aiida_localhost):
    """``nextham@localhost-test``: the ``nextham`` of this environment (or ``$NEXTHAM_TEST_EXECUTABLE``)."""
    from aiida_nextham.cli.setup import find_nextham_executable, get_or_create_code

    executable = os.environ.get('NEXTHAM_TEST_EXECUTABLE') or find_nextham_executable()
    code, _ = get_or_create_code(aiida_localhost, executable=Path(executable))
    return code


@pytest.fixture(scope='session')
def realdata() -> Path:
    """Folder of real files written by other codes (see its SOURCES.txt)."""
    if not REALDATA.is_dir():
        pytest.fail(f'{REALDATA} is missing: the real-data folder must sit beside the checkout as ../shared')
    return REALDATA


@pytest.fixture(scope='session')
def si_hamiltonian():
    """A small synthetic Si (diamond, s+p) block Hamiltonian with 8 valence electrons, in memory."""
    from ase.build import bulk

    from aiida_nextham.hamiltonian.basis import Basis
    from aiida_nextham.hamiltonian.synthetic import random_block_hamiltonian

    basis = Basis.from_shells({'Si': [0, 1]}, name='synthetic-sp', code='synthetic')
    bh = random_block_hamiltonian(bulk('Si', 'diamond', a=5.43), basis, cutoff=4.0, seed=7)
    return bh.replace(n_electrons=8.0)


@pytest.fixture(scope='session')
def si_h5(si_hamiltonian, tmp_path_factory) -> Path:
    """``si_hamiltonian`` written as a nextham HDF5 file (do not modify it)."""
    from aiida_nextham.hamiltonian.hdf5 import write_hdf5

    return write_hdf5(si_hamiltonian, tmp_path_factory.mktemp('si') / 'si.h5')


@pytest.fixture
def run_cli_command():
    """Run a click command in-process with ``CliRunner`` and check its exit code.

    ``run_cli_command(command, args, raises=False)`` returns the ``click.testing.Result``; it fails
    the test (showing output and traceback) when the exit code is non-zero, or, with ``raises=True``,
    when it is zero.
    """
    from click.testing import CliRunner

    def _run(command, args=(), raises: bool = False):
        result = CliRunner().invoke(command, [str(arg) for arg in args], catch_exceptions=True)
        details = result.output
        if result.exc_info is not None and not isinstance(result.exception, SystemExit):
            details += ''.join(traceback.format_exception(*result.exc_info))
        if raises:
            assert result.exit_code != 0, f'command succeeded unexpectedly:\n{details}'
        else:
            assert result.exit_code == 0, f'command failed with exit code {result.exit_code}:\n{details}'
        return result

    return _run


_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == 'call' and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    """A run in which nothing passed (all skipped or deselected) must not look green."""
    if exitstatus == 0 and _passed == 0:
        session.exitstatus = 5


@pytest.fixture
def provenance_graph(run_cli_command, tmp_path):
    """DOT source of ``verdi node graph generate PK ARGS...``.

    Rendering is the one step that needs Graphviz's ``dot`` program (a system package, installed by
    ``./dev`` where it can); without it the same graph is built with aiida's ``Graph`` (full depth)
    and its source returned, so the provenance is still checked.
    """
    import shutil

    from aiida import orm
    from aiida.cmdline.commands.cmd_node import graph_generate

    def generate(pk: int, *args: str) -> str:
        if shutil.which('dot'):
            output = tmp_path / f'graph-{pk}.dot'
            run_cli_command(graph_generate, [str(pk), *args, '-f', 'dot', '-O', str(output)])
            return output.read_text()
        from aiida.tools.visualization import Graph

        graph = Graph()
        node = orm.load_node(pk)
        graph.recurse_ancestors(node, annotate_links='both')
        graph.recurse_descendants(node, annotate_links='both')
        return graph.graphviz.source

    return generate
