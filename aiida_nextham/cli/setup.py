"""``aiida-nextham setup``: a ready-to-use profile, computer, code and GTH family, like ``verdi presto``.

Idempotent: an existing profile, computer, code or family is reused and reported, never replaced.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import click
from aiida.cmdline.utils import echo

__all__ = (
    'CODE_LABEL',
    'cmd_setup',
    'find_nextham_executable',
    'get_or_create_code',
    'get_or_create_localhost',
)

#: label of the code that runs the ``nextham`` engine on the local computer
CODE_LABEL = 'nextham'
DEFAULT_PROFILE = 'nextham'


def find_nextham_executable() -> pathlib.Path:
    """The ``nextham`` executable of the running Python environment (else the first one on PATH).

    :raises FileNotFoundError: when there is none.
    """
    candidate = pathlib.Path(sys.executable).parent / 'nextham'
    if candidate.is_file():
        return candidate.absolute()
    found = shutil.which('nextham')
    if found is None:
        raise FileNotFoundError('no `nextham` executable: install aiida-nextham in this environment first')
    return pathlib.Path(found).absolute()


def get_or_create_localhost(label: str = 'localhost', workdir: str | None = None):
    """The configured ``core.local`` computer ``label``; created like ``verdi presto`` does when missing.

    :returns: ``(computer, created)``.
    """
    import tempfile

    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer(label)
        created = False
    except NotExistent:
        if workdir is None:
            from aiida.manage import get_config

            workdir = str(pathlib.Path(get_config().dirpath) / 'scratch' / 'nextham')
        computer = orm.Computer(
            label=label,
            hostname='localhost',
            description='Local computer created by `aiida-nextham setup`',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=workdir or tempfile.mkdtemp(),
        ).store()
        computer.set_minimum_job_poll_interval(1)
        computer.set_default_mpiprocs_per_machine(1)
        created = True
    if not computer.is_user_configured(orm.User.collection.get_default()):
        computer.configure(safe_interval=0)
    return computer, created


def get_or_create_code(computer, label: str = CODE_LABEL, executable: pathlib.Path | None = None):
    """The ``InstalledCode`` ``label@computer`` that runs ``nextham``; created when missing.

    :returns: ``(code, created)``. An existing code is reused even when it points at another executable
        (a warning is then logged), because it may already be referenced by calculations.
    """
    from aiida import orm

    executable = executable or find_nextham_executable()
    query = orm.QueryBuilder()
    query.append(orm.Computer, filters={'id': computer.pk}, tag='computer')
    query.append(orm.InstalledCode, with_computer='computer', filters={'label': label})
    existing = query.first(flat=True)
    if existing is not None:
        if str(existing.filepath_executable) != str(executable):
            echo.echo_warning(
                f'the code `{existing.full_label}` runs {existing.filepath_executable}, not {executable}'
            )
        return existing, False
    code = orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=str(executable),
        default_calc_job_plugin='nextham.dft',
        description='The `nextham` engine of aiida-nextham (DFT labels, conversions, bands).',
    ).store()
    return code, True


@click.command('setup')
@click.option(
    '--profile',
    'profile_name',
    default=DEFAULT_PROFILE,
    show_default=True,
    help='Profile to create or reuse.',
)
@click.option(
    '--postgres', is_flag=True, help='Use PostgreSQL (as `verdi presto --use-postgres`) instead of SQLite.'
)
@click.option(
    '--rabbitmq', is_flag=True, help='Use a running RabbitMQ as broker instead of the bundled ZeroMQ one.'
)
@click.option('--email', default=None, help='Email of the default user of a new profile.')
@click.pass_context
def cmd_setup(ctx, profile_name: str, postgres: bool, rabbitmq: bool, email: str | None):
    """Create or reuse a profile with a local computer, the `nextham` code and the GTH pseudopotentials.

    The default profile is embedded (SQLite storage, ZeroMQ broker bundled with aiida-core, no services
    to install), as made by `verdi presto --use-zeromq`. Running it again reuses everything.
    """
    from aiida.manage import get_config
    from aiida.manage.configuration import load_profile

    config = get_config(create=True)
    if profile_name in config.profile_names:
        profile = load_profile(profile_name, allow_switch=True)
        echo.echo_report(f'reusing the profile `{profile.name}` (storage {profile.storage_backend})')
    else:
        from aiida.cmdline.commands.cmd_presto import verdi_presto

        if rabbitmq:
            from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

            try:
                detect_rabbitmq_config()
            except ConnectionError as exc:
                echo.echo_critical(f'`--rabbitmq` given but no RabbitMQ server answers: {exc}')
        kwargs = {
            'profile_name': profile_name,
            'use_postgres': postgres,
            'use_zeromq': not rabbitmq,
            'no_broker': False,
            'non_interactive': True,
        }
        if email:
            kwargs['email'] = email
        ctx.invoke(verdi_presto, **kwargs)
        load_profile(profile_name, allow_switch=True)

    computer, created = get_or_create_localhost()
    echo.echo_report(f'{"created" if created else "reusing"} the computer `{computer.label}`')
    try:
        code, created = get_or_create_code(computer)
    except FileNotFoundError as exc:
        echo.echo_critical(str(exc))
    echo.echo_report(
        f'{"created" if created else "reusing"} the code `{code.full_label}` ({code.filepath_executable})'
    )

    from ..data.pseudo import install_pyscf_gth_family

    try:
        family, created = install_pyscf_gth_family('pbe')
    except ValueError as exc:
        echo.echo_critical(str(exc))
    echo.echo_report(f'{"installed" if created else "reusing"} the pseudopotential family `{family.label}`')
    echo.echo_success(
        f'profile `{profile_name}` is ready: run calculations with the code `{code.full_label}`'
    )
