"""Fixtures for tests that run playbooks on a real mesh (NATS JetStream + PostgreSQL)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import Settings
from tests.support.cloud import (  # noqa: F401  (fixtures: moto_server, aws_env, gcs_*)
    aws_env_fixture,
    gcs_emulator_fixture,
    gcs_env_fixture,
    moto_server_fixture,
)
from tests.support.http_api import HttpApi, start_http_api
from tests.support.mesh import connected, running
from tests.support.services import (
    PgServer,
    fresh_database,
    nats_url_for_tests,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "playbooks"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """A client connected to this test's NATS and database (no actors)."""
    async with connected(settings, relaxed=True) as c:
        yield c


@pytest.fixture
async def mesh(client: Client) -> AsyncIterator[Mesh]:
    """Every role of the mesh running in this process."""
    async with running(client) as m:
        yield m


async def run(
    client: Client, path: Path, workload: dict[str, Any] | None = None, timeout: float = 90
) -> dict[str, Any]:
    """Register a playbook file, run it, and return the execution document."""
    reply = await client.register(path)
    eid = await client.start(reply.path, version=reply.version, workload=workload)
    return await client.wait(eid, timeout=timeout)


def one_step(directory: Path, name: str, tool: str) -> Path:
    """Write a playbook whose only step runs `tool` (a YAML flow mapping)."""
    path = directory / f"{name}.yaml"
    path.write_text(
        f"apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {{name: {name}}}\n"
        f"workflow:\n  - step: start\n    tool: {tool}\n"
    )
    return path


def fixture(name: str) -> Path:
    """The path of a fixture playbook by name."""
    return FIXTURES / name / f"{name}.yaml"


@pytest.fixture
async def api() -> AsyncIterator[HttpApi]:
    """The local test HTTP API (paging, errors, auth, scripts) on a free port."""
    served = await start_http_api()
    try:
        yield served
    finally:
        await served.stop()


# -- one mesh per module ----------------------------------------------------------------------
# Starting NATS, a database and the actors costs seconds: modules whose tests only run
# playbooks share them. Each test still registers its own playbooks and reads only its own
# executions.


@pytest.fixture(scope="module")
def module_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server with JetStream for this module (or NOETL_TEST_NATS_URL)."""
    with nats_url_for_tests(lambda: tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture(scope="module")
async def module_settings(
    pg_server: PgServer, module_nats_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Settings]:
    """Settings on this module's NATS, a fresh database and a fresh NOETL_HOME."""
    hint = request.module.__name__.rsplit(".", 1)[-1]
    async with fresh_database(pg_server.admin_dsn, hint) as name:
        home = Path(tempfile.mkdtemp(prefix="noetl-home-"))
        try:
            yield Settings(
                nats_url=module_nats_url,
                pg_dsn=pg_server.dsn(name),
                home=home,
                ack_wait=2.0,
                reconcile_every=1.0,
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
async def module_client(module_settings: Settings) -> AsyncIterator[Client]:
    """A client on this module's services."""
    async with connected(module_settings, relaxed=True) as c:
        yield c


@pytest.fixture(scope="module")
async def module_mesh(module_client: Client) -> AsyncIterator[Mesh]:
    """Every role of the mesh, running in this process for the whole module."""
    async with running(module_client) as m:
        yield m


@pytest.fixture(scope="module")
async def module_api() -> AsyncIterator[HttpApi]:
    """The local test HTTP API for the whole module."""
    served = await start_http_api()
    try:
        yield served
    finally:
        await served.stop()


async def events_by_type(
    client: Client, execution_id: str | int
) -> dict[str, list[dict[str, Any]]]:
    """The execution's events grouped by type, each list in the order they were recorded."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in await client.store.list_events(int(execution_id)):
        grouped.setdefault(row["event_type"], []).append(row)
    return grouped
