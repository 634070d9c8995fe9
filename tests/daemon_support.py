"""Throwaway AiiDA profiles with a real daemon, for the daemon and archive tests.

Two stacks:

- ``embedded``: ``core.sqlite_dos`` storage and aiida-core's bundled ZeroMQ broker (started by the daemon);
- ``production``: ``core.psql_dos`` on the local PostgreSQL (a database created for the run and dropped
  afterwards) and ``core.rabbitmq`` (the profile's queues and exchanges are deleted afterwards).

Each profile lives in its own temporary configuration directory (``AIIDA_PATH``), so its daemon never
meets the session's test profile. Teardown stops the daemon and the scheduler jobs it left, even when
the test failed. An unreachable PostgreSQL or RabbitMQ skips the test locally and fails it in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import secrets
import signal
import time
import typing as t

import pytest

POSTGRES = {'host': '127.0.0.1', 'port': 5432, 'user': 'postgres', 'password': ''}
RABBITMQ = {'host': '127.0.0.1', 'port': 5672, 'username': 'guest', 'password': 'guest'}
#: daemon stacks (storage + broker)
STACKS = ('embedded', 'production')
#: storage only, no broker (imports and queries)
STORAGES = ('sqlite', 'postgres')


def in_ci() -> bool:
    return os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def require(condition: bool, message: str) -> None:
    """Skip the test when a service is missing, except in CI, where it fails."""
    if condition:
        return
    if in_ci():
        pytest.fail(f'{message} (CI=true: the production stack must be tested)', pytrace=False)
    pytest.skip(message)


# ----------------------------------------------------------------------------------------- services
def _postgres_connect(dbname: str = 'postgres'):
    import psycopg

    return psycopg.connect(
        host=POSTGRES['host'],
        port=POSTGRES['port'],
        user=POSTGRES['user'],
        password=POSTGRES['password'] or None,
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
    )


def postgres_problem() -> str | None:
    """Why the local PostgreSQL cannot be used, or None."""
    try:
        with _postgres_connect() as connection:
            connection.execute('SELECT 1')
    except Exception as exc:
        return f'PostgreSQL at {POSTGRES["host"]}:{POSTGRES["port"]} (user {POSTGRES["user"]}): {exc}'
    return None


def _rabbitmq_url() -> str:
    return 'amqp://{username}:{password}@{host}:{port}/'.format(**RABBITMQ)


def rabbitmq_problem() -> str | None:
    """Why the local RabbitMQ cannot be used, or None."""
    import aio_pika

    async def probe():
        connection = await asyncio.wait_for(aio_pika.connect(_rabbitmq_url()), timeout=10)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f'RabbitMQ at {RABBITMQ["host"]}:{RABBITMQ["port"]}: {type(exc).__name__}: {exc}'
    return None


@contextlib.contextmanager
def throwaway_postgres_database(prefix: str = 'nextham_test') -> t.Iterator[str]:
    """An empty PostgreSQL database for one run; dropped (connections closed by force) on exit."""
    name = f'{prefix}_{secrets.token_hex(6)}'
    with _postgres_connect() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _postgres_connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_rabbitmq_objects(profile) -> None:
    """Delete the durable queue and the exchanges that the profile's communicator declared."""
    import aio_pika
    from aiida.brokers.rabbitmq.utils import (
        get_launch_queue_name,
        get_message_exchange_name,
        get_task_exchange_name,
    )

    prefix = f'aiida-{profile.uuid}'

    async def delete():
        connection = await asyncio.wait_for(aio_pika.connect(_rabbitmq_url()), timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(get_launch_queue_name(prefix))
            for exchange in (get_message_exchange_name(prefix), get_task_exchange_name(prefix)):
                await channel.exchange_delete(exchange)

    with contextlib.suppress(Exception):
        asyncio.run(delete())


# ------------------------------------------------------------------------------------------- profile
@contextlib.contextmanager
def throwaway_profile(stack: str, dirpath: pathlib.Path, aiida_config_factory) -> t.Iterator:
    """A loaded throwaway profile in its own configuration directory under ``dirpath``.

    ``stack``: one of ``STACKS`` (storage and broker) or of ``STORAGES`` (the same storage, no broker:
    enough for imports and queries). The profile is an ordinary one, not a test profile: aiida marks
    test profiles so that their RabbitMQ task queues expire 10 s after the last worker leaves, which
    would lose every queued process while the daemon is stopped. On exit (also when the body raised) the
    daemon is stopped, leftover jobs are killed, the previous profile and configuration are restored and
    the services are cleaned.
    """
    from aiida.manage import get_manager
    from aiida.manage.configuration import create_profile

    if stack not in STACKS + STORAGES:
        raise ValueError(f'unknown stack {stack!r}; known: {STACKS + STORAGES}')
    postgres = stack in ('production', 'postgres')
    if postgres:
        checks = (postgres_problem(), rabbitmq_problem() if stack == 'production' else None)
        problems = [p for p in checks if p]
        require(not problems, f'{stack} stack unavailable: ' + '; '.join(problems))

    manager = get_manager()
    previous = manager.get_profile()
    with contextlib.ExitStack() as stack_:
        stack_.enter_context(_verdi_on_path())
        config = stack_.enter_context(aiida_config_factory(dirpath))
        name = f'nextham-{stack}-{secrets.token_hex(4)}'
        kwargs = {
            'storage_backend': 'core.sqlite_dos',
            'storage_config': {'filepath': str(pathlib.Path(config.dirpath) / name / 'storage')},
            'broker_backend': 'core.zeromq' if stack == 'embedded' else None,
            'broker_config': None,
        }
        if postgres:
            database = stack_.enter_context(throwaway_postgres_database())
            kwargs['storage_backend'] = 'core.psql_dos'
            kwargs['storage_config'] = {
                'database_engine': 'postgresql_psycopg',
                'database_hostname': POSTGRES['host'],
                'database_port': POSTGRES['port'],
                'database_username': POSTGRES['user'],
                'database_password': POSTGRES['password'],
                'database_name': database,
                'repository_uri': (pathlib.Path(config.dirpath) / name / 'repository').as_uri(),
            }
        if stack == 'production':
            kwargs['broker_backend'] = 'core.rabbitmq'
            kwargs['broker_config'] = {
                'broker_protocol': 'amqp',
                'broker_username': RABBITMQ['username'],
                'broker_password': RABBITMQ['password'],
                'broker_host': RABBITMQ['host'],
                'broker_port': RABBITMQ['port'],
                'broker_virtual_host': '',
            }
        # restores the previous profile (closing this one's database connections) before the drop
        stack_.callback(_restore_profile, previous)
        profile = create_profile(config, name=name, email='daemon-test@localhost', **kwargs)
        profile.set_option('warnings.development_version', False)
        config.set_default_profile(profile.name, overwrite=True)
        config.store()
        manager.load_profile(profile, allow_switch=True)
        if stack == 'production':
            stack_.callback(delete_rabbitmq_objects, profile)
        if stack in STACKS:
            stack_.callback(stop_daemon_and_jobs, profile)
        yield profile


@contextlib.contextmanager
def _verdi_on_path():
    """The daemon client runs ``verdi`` found on PATH at import; use this environment's when not activated."""
    import sys

    from aiida.engine.daemon import client

    original = client.VERDI_BIN
    if original is None:
        verdi = pathlib.Path(sys.executable).parent / 'verdi'
        if verdi.is_file():
            client.VERDI_BIN = str(verdi)
    try:
        yield
    finally:
        client.VERDI_BIN = original


def _restore_profile(previous) -> None:
    from aiida.manage import get_manager

    manager = get_manager()
    if previous is None:
        manager.unload_profile()
    else:
        manager.load_profile(previous, allow_switch=True)


def stop_daemon_and_jobs(profile) -> None:
    """Stop the profile's daemon (waiting for it) and kill the scheduler jobs of unfinished CalcJobs."""
    from aiida import orm
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client(profile.name)
    with contextlib.suppress(Exception):
        if client.is_daemon_running:
            client.stop_daemon(wait=True, timeout=120)
        wait_for(lambda: not client.is_daemon_running, 120, 'the daemon to stop')
    with contextlib.suppress(Exception):
        query = orm.QueryBuilder().append(
            orm.CalcJobNode, filters={'attributes.process_state': {'in': ['created', 'waiting', 'running']}}
        )
        for node in query.all(flat=True):
            kill_direct_job(node.get_job_id())


def kill_direct_job(job_id: str | None) -> None:
    """SIGTERM to the process group of a ``core.direct`` job, if that pid still runs an AiiDA job script."""
    if not job_id or not str(job_id).isdigit():
        return
    pid = int(job_id)
    try:
        cmdline = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
    except OSError:
        return
    if b'_aiidasubmit.sh' in cmdline:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


# ------------------------------------------------------------------------------------------ polling
def wait_for(
    condition: t.Callable[[], t.Any], timeout: float, what: str, interval: float = 0.5, details=None
):
    """Poll ``condition`` until it returns a true value (returned); ``TimeoutError`` naming ``what``.

    ``details`` (a callable returning text) is added to the error message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f'\n{details()}' if details is not None else ''
            raise TimeoutError(f'timed out after {timeout:.0f} s waiting for {what}{extra}')
        time.sleep(interval)


def daemon_log_tail(client, lines: int = 60) -> str:
    """The last lines of the daemon log (for failure messages)."""
    try:
        text = pathlib.Path(client.daemon_log_file).read_text(errors='replace')
    except OSError as exc:
        return f'(no daemon log: {exc})'
    return 'daemon log (tail):\n' + '\n'.join(text.splitlines()[-lines:])
