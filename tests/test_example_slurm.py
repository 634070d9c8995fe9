"""examples/slurm_gpu_cluster.py: the Slurm GPU tutorial, run as a dry run on the test profile.

The dry run writes the real job script of a 2-GPU ``NexthamTrainCalculation`` on an (unconfigured)
``core.slurm``/``core.ssh`` computer; aiida-core uploads dry runs through a local transport, so no cluster
is contacted. Run twice: the computer, both codes and the label group are reused.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiida import orm
from aiida.manage import get_manager

ARGS = [
    '--label',
    'example-gpu-cluster',
    '--hostname',
    'login.cluster.example',
    '--executable',
    '/opt/nextham-env/bin/nextham',
    '--prepend-text',
    'module load cuda',
    '--partition',
    'gpu-a100',
    '--account',
    'proj-42',
    '--gpus',
    '2',
    '--cpus-per-task',
    '16',
    '--threads',
    '8',
    '--hours',
    '1.5',
    '--group',
    'test/example-slurm-labels',
]


@pytest.fixture(scope='module')
def example(load_example):
    return load_example('slurm_gpu_cluster.py')


def _run(example, capsys, args) -> tuple[str, Path]:
    assert example.main(args) == 0
    out = capsys.readouterr().out
    (folder,) = re.findall(r'^dry-run folder: (.+)$', out, flags=re.MULTILINE)
    return out, Path(folder)


def test_dry_run_submit_script_and_reuse(example, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dry run writes into ./submit_test
    profile = get_manager().get_profile().name
    out, folder = _run(example, capsys, ['--profile', profile, *ARGS])
    assert 'created computer example-gpu-cluster' in out and 'created code nextham@example-gpu-cluster' in out
    assert folder.is_relative_to(tmp_path / 'submit_test')

    script = (folder / '_aiidasubmit.sh').read_text()
    assert script == out.split(f'dry-run folder: {folder}\n', 1)[1].rstrip('\n') + '\n'  # printed verbatim
    lines = script.splitlines()
    for line in (
        '#SBATCH --gres=gpu:2',
        '#SBATCH --time=01:30:00',
        '#SBATCH --partition=gpu-a100',
        '#SBATCH --account=proj-42',
        '#SBATCH --nodes=1',
        '#SBATCH --ntasks-per-node=1',
        '#SBATCH --cpus-per-task=16',
        "export OMP_NUM_THREADS='8'",
        'module load cuda',
        "'/opt/nextham-env/bin/torchrun' '--standalone' '--nproc_per_node' '2' '-m' "
        "'aiida_nextham.engine.train_command' 'config.yaml'  > 'nextham.out' 2> 'nextham.err'",
    ):
        assert line in lines, f'{line!r} not in the submit script:\n{script}'
    # the prepend text comes after the scheduler directives and before the command
    assert lines.index('module load cuda') < next(i for i, x in enumerate(lines) if 'torchrun' in x)
    assert sorted(p.name for p in (folder / 'data').iterdir()) == [f'si2_rattled_{i}.h5' for i in range(3)]
    assert (folder / 'config.yaml').is_file()

    computer = orm.load_computer('example-gpu-cluster')
    assert (computer.transport_type, computer.scheduler_type) == ('core.ssh', 'core.slurm')
    assert computer.hostname == 'login.cluster.example'
    nodes = {
        'computers': orm.QueryBuilder().append(orm.Computer).count(),
        'codes': orm.QueryBuilder().append(orm.InstalledCode).count(),
        'labels': orm.load_group('test/example-slurm-labels').count(),
    }

    # a second run (default profile = the test profile) reuses the computer, the codes and the labels
    out, second = _run(example, capsys, ARGS)
    assert 'reusing computer example-gpu-cluster' in out and 'reusing code nextham@example-gpu-cluster' in out
    assert 'torchrun code nextham-torchrun@example-gpu-cluster' in out
    assert second != folder and (second / '_aiidasubmit.sh').read_text() == script
    assert nodes == {
        'computers': orm.QueryBuilder().append(orm.Computer).count(),
        'codes': orm.QueryBuilder().append(orm.InstalledCode).count(),
        'labels': orm.load_group('test/example-slurm-labels').count(),
    }
    assert nodes['labels'] == 3


def test_one_gpu_uses_the_nextham_code(example, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*ARGS]
    args[args.index('--gpus') + 1] = '1'
    _, folder = _run(example, capsys, args)
    script = (folder / '_aiidasubmit.sh').read_text()
    assert '#SBATCH --gres=gpu:1' in script.splitlines()
    assert "'/opt/nextham-env/bin/nextham' 'train' 'config.yaml'  > 'nextham.out' 2> 'nextham.err'" in script


@pytest.mark.parametrize(
    ('option', 'value', 'message'),
    [
        ('--gpus', '0', '--gpus must be at least 1, got 0'),
        ('--hostname', 'login node/1', "--hostname 'login node/1' is not a host name"),
    ],
)
def test_bad_arguments_fail_clearly(example, capsys, option, value, message):
    args = [*ARGS]
    args[args.index(option) + 1] = value
    with pytest.raises(SystemExit) as info:
        example.main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_submit_refuses_an_unconfigured_computer(example, capsys):
    """``--submit`` builds the work chain, then stops: the computer has no SSH configuration here."""
    assert example.main([*ARGS, '--submit']) == 1
    out = capsys.readouterr().out
    assert 'computer example-gpu-cluster is not configured: verdi computer configure core.ssh' in out
