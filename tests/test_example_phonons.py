"""``examples/phonons_si.py`` (the phonons tutorial of docs/guides/phonons.md) runs on the test profile.

The example is loaded by path and its ``main`` called with the tiny settings of ``test_aiida_phonons``
(2-atom Si, 1×1×1 supercell, fast protocol, 11 q-points, 2×2×2 mesh): the real ``nextham phonons``
engine through ``NexthamPhononWorkChain`` on the local computer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiida import orm

TINY_SETTINGS = {'npoints': 11, 'mesh': [2, 2, 2], 'tstep': 100.0}


@pytest.fixture(scope='module')
def example(load_example):
    return load_example('phonons_si.py')


def _workchains() -> list[orm.WorkChainNode]:
    query = orm.QueryBuilder().append(
        orm.WorkChainNode, filters={'attributes.process_label': 'NexthamPhononWorkChain'}
    )
    return query.all(flat=True)


@pytest.mark.slow
def test_example_runs_tiny(example, aiida_profile, tmp_path, capsys):
    """The tutorial end to end: finished OK, acoustic sum rule at Γ, a triply degenerate optical mode,
    a PNG and the pk in what it prints."""
    before = {node.pk for node in _workchains()}
    argv = ['--profile', aiida_profile.name, '--supercell', '1', '1', '1']
    argv += ['--settings', json.dumps(TINY_SETTINGS), '-o', str(tmp_path)]
    assert example.main(argv) == 0
    out = capsys.readouterr().out

    (node,) = [node for node in _workchains() if node.pk not in before]
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert f'NexthamPhononWorkChain<{node.pk}> finished with exit status 0' in out
    assert f'verdi process show {node.pk}' in out and 'dynamically_stable: True' in out
    assert node.inputs.phonons.supercell.get_list() == [1, 1, 1]
    assert node.inputs.phonons.protocol.value == 'fast'

    bands = node.outputs.bands
    assert bands.get_bands().shape == (11, 6)
    gamma = example.frequencies_at(bands, 'GAMMA')
    # acoustic sum rule (force constants symmetrised): ~1e-7 THz in practice
    np.testing.assert_allclose(gamma[:3], 0.0, atol=0.05)
    # Γ-only 2-atom cell with gth-szv is stiff (25.8 THz; experiment 15.53, converged dzvp 16.50):
    # a sensible optical mode, triply degenerate (Γ25' in the diamond structure)
    assert 15.0 < gamma[3] < 30.0
    np.testing.assert_allclose(gamma[3:], gamma[3], atol=1e-3)
    for label in ('GAMMA', 'X', 'L'):
        assert f'{label:>5}: ' in out
    assert f'{gamma[3]:.2f}' in out

    png = tmp_path / 'phonons_si.png'
    assert png.is_file() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--supercell', '0', '1', '1'], 'supercell sizes must be positive integers'),
        (['--settings', '{"npoints": 11'], '--settings is not valid JSON'),
        (['--settings', '[1, 2]'], '--settings must be a JSON object'),
        (['--settings', '{"npoint": 11}'], "unknown --settings key(s) ['npoint']"),
    ],
)
def test_example_rejects_bad_arguments(example, aiida_profile, capsys, args, message):
    """Bad options stop in argparse (exit 2, a clear message) before any process is launched."""
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(SystemExit) as excinfo:
        example.main(['--profile', aiida_profile.name, *args])
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before
