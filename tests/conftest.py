"""Fixtures for real services: PostgreSQL, NATS JetStream, a NOETL_HOME and Settings.

Every server runs on a free port from a temp dir; nothing touches the user's ~/.noetl or
their NOETL_* environment. NOETL_TEST_PG_DSN / NOETL_TEST_NATS_URL point the suite at
existing servers instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from noetl.config import Settings
from tests.support.services import (
    PgServer,
    fresh_database,
    nats_url_for_tests,
    start_test_postgres,
)

_user_env: dict[str, str] = {}


def _clear_noetl_env() -> None:
    """Remove the user's NOETL_* variables (NOETL_TEST_* configure the suite, they stay)."""
    for name in list(os.environ):
        if name.startswith("NOETL_") and not name.startswith("NOETL_TEST_"):
            _user_env.setdefault(name, os.environ.pop(name))


def pytest_configure(config: pytest.Config) -> None:
    """Clear NOETL_* before collection, so even import-time code never sees them."""
    _clear_noetl_env()


@pytest.fixture(scope="session", autouse=True)
def _isolate_noetl_env() -> Iterator[None]:
    """No test sees the user's NOETL_NATS_URL, NOETL_PG_DSN, NOETL_HOME or other NOETL_*."""
    _clear_noetl_env()
    yield
    os.environ.update(_user_env)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session: NOETL_TEST_PG_DSN, else an embedded one."""
    external = os.environ.get("NOETL_TEST_PG_DSN")
    if external:
        yield PgServer(admin_dsn=external)
        return
    server = start_test_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg_dsn(pg_server: PgServer, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """DSN of a fresh, empty database made for this test and dropped after it."""
    async with fresh_database(pg_server.admin_dsn, request.node.name) as name:
        yield pg_server.dsn(name)


@pytest.fixture
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh nats-server with JetStream for this test (or NOETL_TEST_NATS_URL)."""
    with nats_url_for_tests(lambda: tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture
def noetl_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A fresh, empty NOETL_HOME (also exported as NOETL_HOME for this test)."""
    # Under pytest's private (0700) basetemp: the embedded servers work in any folder.
    home = tmp_path_factory.mktemp("noetl-home")
    monkeypatch.setenv("NOETL_HOME", str(home))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def settings(nats_url: str, pg_dsn: str, noetl_home: Path) -> Settings:
    """Settings on this test's NATS, database and home, with short ack and reconcile times."""
    return Settings(
        nats_url=nats_url, pg_dsn=pg_dsn, home=noetl_home, ack_wait=2.0, reconcile_every=1.0
    )


@pytest.fixture
def shared_path() -> Iterator[Path]:
    """A directory that step code may write to whoever it runs as (as root, python steps run
    as `nobody`, who cannot enter pytest's private tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="noetl-shared-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
