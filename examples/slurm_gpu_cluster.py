"""Train a NextHAM model on several GPUs of a Slurm cluster: computer, codes, GPU options, dry run.

Usage::

    python examples/slurm_gpu_cluster.py [--profile NAME] [--label gpu-cluster]
        [--hostname login.cluster.example] [--workdir '/scratch/{username}/aiida']
        [--executable /home/me/nextham-env/bin/nextham] [--prepend-text 'module load cuda']
        [--partition gpu] [--account my-project] [--gpus 4] [--cpus-per-task 16] [--threads 4]
        [--hours 4] [--submit]

By default nothing leaves this machine: the script makes (or reuses) the ``core.slurm`` computer and its
codes in the profile, builds a multi-GPU ``NexthamTrainCalculation`` on the tiny Si labels of
``tests/data/ml`` and runs it as an AiiDA *dry run*: the job script ``_aiidasubmit.sh`` and the input
files are written into ``./submit_test/<date>-<n>`` (a local transport, no cluster and no daemon needed),
and the script is printed. With ``--submit`` the same options go to a ``NexthamTrainWorkChain`` (which
resumes a job killed by the walltime from its last checkpoint) submitted to the daemon; the computer must
then have been configured (``verdi computer configure core.ssh LABEL``) and the daemon be running.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from aiida import load_profile, orm
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node, submit

from aiida_nextham.calculations.train import NexthamTrainCalculation, get_or_create_torchrun_code
from aiida_nextham.data.hamiltonian import HamiltonianData
from aiida_nextham.workflows.train import NexthamTrainWorkChain

LABELS = sorted((Path(__file__).resolve().parents[1] / 'tests' / 'data' / 'ml').glob('si2_rattled_*.h5'))
HOSTNAME = re.compile(r'^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$')

#: a tiny model and a short run: enough to see the job, far too small for science (see docs/guides/pipeline)
CONFIG = {
    'data': {'split': [0.34, 0.33, 0.33], 'seed': 0},
    'model': {'preset': 'small', 'cutoff': 4.5, 'n_layers': 1},
    'train': {'steps': 200, 'batch_size': 1, 'checkpoint_every': 50, 'val_every': 50, 'device': 'auto'},
}


def get_or_create_computer(label: str, hostname: str, workdir: str) -> orm.Computer:
    """Step 1: the Slurm computer (SSH transport); reused when the label exists."""
    try:
        computer = orm.load_computer(label)
    except NotExistent:
        computer = orm.Computer(
            label=label,
            hostname=hostname,
            description='Slurm cluster with GPU nodes',
            transport_type='core.ssh',
            scheduler_type='core.slurm',
            workdir=workdir,
        ).store()
        computer.set_mpirun_command(['srun', '-n', '{tot_num_mpiprocs}'])
        computer.set_default_mpiprocs_per_machine(1)
        print(f'created computer {label} ({hostname}, core.slurm over core.ssh)')
        return computer
    if computer.scheduler_type != 'core.slurm':
        raise ValueError(f'computer {label} exists with scheduler {computer.scheduler_type}, not core.slurm')
    print(f'reusing computer {label} ({computer.hostname})')
    return computer


def get_or_create_codes(computer: orm.Computer, executable: str, prepend_text: str):
    """Step 2: ``nextham@LABEL`` (one process) and the ``torchrun`` beside it (one process per GPU)."""
    query = orm.QueryBuilder()
    query.append(orm.Computer, filters={'id': computer.pk}, tag='computer')
    query.append(orm.InstalledCode, with_computer='computer', filters={'label': 'nextham'})
    nextham = query.first(flat=True)
    if nextham is None:
        nextham = orm.InstalledCode(
            label='nextham',
            computer=computer,
            filepath_executable=executable,
            default_calc_job_plugin='nextham.train',
            prepend_text=prepend_text,
        ).store()
        print(f'created code {nextham.full_label} ({executable})')
    else:
        print(f'reusing code {nextham.full_label} ({nextham.filepath_executable})')
    torchrun = get_or_create_torchrun_code(nextham)  # reuses `nextham-torchrun@LABEL` when it exists
    print(f'torchrun code {torchrun.full_label} ({torchrun.filepath_executable})')
    return nextham, torchrun


def get_or_create_labels(group_label: str, paths=LABELS) -> orm.Group:
    """Step 3: the training labels (HamiltonianData with H0, H and S) in a group; imported once."""
    group, created = orm.Group.collection.get_or_create(label=group_label)
    if created or group.count() == 0:
        for path in paths:
            node = HamiltonianData.from_file(path, format='nextham').store()
            node.base.extras.set('dataset_key', path.stem)  # the key of the label in the job's data/
            group.add_nodes(node)
    print(f'training labels: group {group.label} ({group.count()} HamiltonianData)')
    return group


def gpu_options(partition: str, account: str | None, hours: float, cpus_per_task: int, threads: int) -> dict:
    """Step 4: ``metadata.options`` of a GPU job (the ``--gres`` line is added from ``gpus``)."""
    options = {
        'max_wallclock_seconds': int(hours * 3600),  # --time
        'queue_name': partition,  # --partition
        'resources': {
            'num_machines': 1,
            'num_mpiprocs_per_machine': 1,
            'num_cores_per_mpiproc': cpus_per_task,
        },
        'environment_variables': {'OMP_NUM_THREADS': str(threads)},  # CPU threads per training process
    }
    if account:
        options['account'] = account  # --account
    return options


def dry_run(builder) -> Path:
    """Step 5: write the job's folder locally without running it; returns the folder."""
    builder.metadata.dry_run = True
    builder.metadata.store_provenance = False
    _, node = run_get_node(builder)
    return Path(node.dry_run_info['folder'])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profile', default=None, help='AiiDA profile (default: the default profile)')
    parser.add_argument('--label', default='gpu-cluster', help='label of the computer')
    parser.add_argument('--hostname', default='login.cluster.example', help='login node of the cluster')
    parser.add_argument('--workdir', default='/scratch/{username}/aiida', help='AiiDA work directory there')
    parser.add_argument('--executable', default='/home/me/nextham-env/bin/nextham', help='nextham there')
    parser.add_argument('--prepend-text', default='module load cuda', help='shell lines before the command')
    parser.add_argument('--partition', default='gpu', help='Slurm partition (--partition)')
    parser.add_argument('--account', default='my-project', help='Slurm account (--account)')
    parser.add_argument('--gpus', type=int, default=4, help='GPUs of the node = training processes')
    parser.add_argument('--cpus-per-task', type=int, default=16, help='CPU cores of the job')
    parser.add_argument('--threads', type=int, default=4, help='OMP_NUM_THREADS of each process')
    parser.add_argument('--hours', type=float, default=4.0, help='walltime (--time)')
    parser.add_argument('--group', default='examples/si2-labels', help='group of the training labels')
    parser.add_argument('--submit', action='store_true', help='submit the work chain for real')
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error(f'--gpus must be at least 1, got {args.gpus}')
    if not HOSTNAME.match(args.hostname):
        parser.error(f'--hostname {args.hostname!r} is not a host name (letters, digits, dots and dashes)')
    if args.hours <= 0 or args.cpus_per_task < 1 or args.threads < 1:
        parser.error('--hours, --cpus-per-task and --threads must be positive')
    load_profile(args.profile, allow_switch=True)

    computer = get_or_create_computer(args.label, args.hostname, args.workdir)
    nextham, torchrun = get_or_create_codes(computer, args.executable, args.prepend_text)
    labels = get_or_create_labels(args.group)
    options = gpu_options(args.partition, args.account, args.hours, args.cpus_per_task, args.threads)
    # one GPU: the plain `nextham` code; several: torchrun, one DistributedDataParallel process per GPU
    code = torchrun if args.gpus > 1 else nextham

    if args.submit:
        # the work chain resubmits a job killed by the walltime from its last checkpoint (at most 10 jobs)
        builder = NexthamTrainWorkChain.get_builder_from_group(
            labels, code, CONFIG, options=options, gpus=args.gpus, max_iterations=10
        )
        if not computer.is_user_configured(orm.User.collection.get_default()):
            label = computer.label
            print(f'computer {label} is not configured: verdi computer configure core.ssh {label}')
            return 1
        node = submit(builder)
        print(f'submitted NexthamTrainWorkChain<{node.pk}>: verdi process list; verdi process show {node.pk}')
        return 0

    builder = NexthamTrainCalculation.get_builder_from_group(
        labels, code, CONFIG, options=options, gpus=args.gpus
    )
    folder = dry_run(builder)
    print(f'dry-run folder: {folder}')
    print((folder / '_aiidasubmit.sh').read_text())
    return 0


if __name__ == '__main__':
    sys.exit(main())
