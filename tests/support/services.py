"""Real NATS and PostgreSQL servers for the tests: temp dirs and free ports, never ~/.noetl.

The fixtures in tests/conftest.py are built on these; a test that needs a private server (to
kill or restart it) can call them directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from noetl.servers.nats import NatsProcess, start_nats
from noetl.servers.postgres import PostgresProcess, init_postgres, start_postgres
from noetl.servers.procs import free_port

__all__ = [
    "TEST_PG_SETTINGS",
    "PgServer",
    "create_database",
    "drop_database",
    "free_port",
    "fresh_database",
    "kill_processes_under",
    "local_mode_stopped",
    "nats_url_for_tests",
    "start_test_nats",
    "start_test_postgres",
    "stop_process",
    "unique_database_name",
    "with_database",
]

#: The test server trades durability for speed: a lost test database costs nothing.
TEST_PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


@dataclass
class PgServer:
    """A PostgreSQL server for tests: ours (`process` set) or external (NOETL_TEST_PG_DSN)."""

    admin_dsn: str  # a DSN of a maintenance database, used to create and drop databases
    process: PostgresProcess | None = None
    base_dir: Path | None = None

    def dsn(self, database: str) -> str:
        """DSN of `database` on this server."""
        return with_database(self.admin_dsn, database)

    def stop(self) -> None:
        """Stop the server if we started it, and delete its files."""
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, grace=30.0)  # fast shutdown
            self.process = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None


def start_test_postgres(base_dir: Path | None = None) -> PgServer:
    """Create and start a throwaway PostgreSQL 16 (fsync off) under `base_dir` (a new temp dir).

    Like the local mode's, it asks every client for a generated password: `admin_dsn` has it.
    """
    base = base_dir or Path(tempfile.mkdtemp(prefix="noetl-test-pg-"))
    data = base / "pg"
    password = secrets.token_urlsafe(24)
    try:
        init_postgres(data, password=password, settings=TEST_PG_SETTINGS, sync=False)
        proc = start_postgres(
            data, password=password, log=base / "postgres.log", settings=TEST_PG_SETTINGS
        )
    except BaseException:
        if base_dir is None:
            shutil.rmtree(base, ignore_errors=True)
        raise
    return PgServer(
        admin_dsn=proc.dsn("postgres"), process=proc, base_dir=base if base_dir is None else None
    )


def start_test_nats(store_dir: Path) -> NatsProcess:
    """Start a nats-server with JetStream on a free port, its store and log in `store_dir`.

    Like the local mode's, it requires a generated user and password: its `url` has them.
    """
    auth = ("noetl", secrets.token_urlsafe(24))
    return start_nats(store_dir / "store", log=store_dir / "nats.log", auth=auth)


@contextlib.contextmanager
def nats_url_for_tests(store_dir: Callable[[], Path]) -> Iterator[str]:
    """NOETL_TEST_NATS_URL, else the URL of a nats-server started in `store_dir()` and
    stopped on exit."""
    external = os.environ.get("NOETL_TEST_NATS_URL")
    if external:
        yield external
        return
    proc = start_test_nats(store_dir())
    try:
        yield proc.url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def local_mode_stopped(home: Path, strays: Path | None = None) -> Iterator[Path]:
    """`home`; on exit its local-mode servers are stopped, then whatever still runs under
    `strays` (default: `home`) is killed, whatever happened."""
    from noetl.local import stop_local  # the local mode's policy, not needed by most tests

    try:
        yield home
    finally:
        try:
            stop_local(home)
        finally:
            kill_processes_under(strays or home)


def stop_process(
    proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, grace: float = 10.0
) -> None:
    """Send `sig`, wait up to `grace` seconds, then SIGKILL: the process is gone afterwards."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_processes_under(path: Path) -> list[int]:
    """SIGKILL every process whose command line or working directory is under `path`.

    For the strays of a failed test: PostgreSQL names its data directory by its working
    directory, so only the latter shows where it runs.
    """
    needle = str(path)
    killed = []
    me = os.getpid()
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cwd = proc.info["cwd"] or ""
            mentions = any(needle in arg for arg in proc.info["cmdline"] or [])
            if proc.pid != me and (mentions or cwd == needle or cwd.startswith(needle + "/")):
                proc.kill()
                killed.append(proc.pid)
    return killed


def with_database(dsn: str, database: str) -> str:
    """`dsn` (a postgresql:// URI) pointing at `database` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def unique_database_name(hint: str = "") -> str:
    """A fresh database name: `t_<hint>_<random>`, a valid unquoted identifier."""
    slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:10]}" if slug else f"t_{uuid.uuid4().hex[:16]}"


async def create_database(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE `name` on the server of `admin_dsn`."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database `name`, terminating its sessions first."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, hint: str) -> AsyncIterator[str]:
    """The name of a new, empty database (named after `hint`), dropped on exit."""
    name = unique_database_name(hint)
    await create_database(admin_dsn, name)
    try:
        yield name
    finally:
        await drop_database(admin_dsn, name)
