"""Fixtures for tests that run playbooks on a real mesh (NATS JetStream + PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
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

FIXTURES = Path(__file__).parent.parent / "fixtures" / "playbooks"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """A client connected to this test's NATS and database (no actors)."""
    c = await Client.connect(settings, relaxed=True)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def mesh(client: Client) -> AsyncIterator[Mesh]:
    """Every role of the mesh running in this process."""
    m = Mesh(client.bus, client.store, client.settings)
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


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
