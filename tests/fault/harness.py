"""A mesh in a subprocess that tests can kill -9 and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from noetl.client import Client
from noetl.config import Settings
from noetl.errors import ExecutionNotFound
from noetl.messages import CatalogReply
from noetl.store import Store
from noetl.store.check import check_events
from tests.support.cli import CLI, cli_env


def start_mesh(
    settings: Settings, log: Path, *roles: str, **env_extra: str
) -> subprocess.Popen[bytes]:
    """`noetl-runtime up` against the test's servers, with short redelivery times; `roles`
    become `--role` options (default: all), `env_extra` adds or overrides environment
    variables."""
    env = cli_env(
        settings,
        NOETL_ACK_WAIT="2",
        NOETL_RECONCILE_EVERY="1",
        NOETL_API_PORT="0",  # the REST API on a free port, never a fixed one
    )
    env.update(env_extra)
    # Its own session, so the kill takes the whole process group with it (python workers
    # also die with their runner).
    return subprocess.Popen(
        [CLI, "up", *(arg for role in roles for arg in ("--role", role))],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the mesh and everything in its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def stop_gracefully(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then the exit code (SIGKILL after 30 s)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_hard(proc)
        return -9


async def events_of(client: Client, execution_id: int) -> list[dict]:
    """The execution's events, or none while it has not started."""
    try:
        return await client.store.list_events(execution_id)
    except ExecutionNotFound:
        return []


async def count_events(client: Client, execution_id: int, event_type: str) -> Counter[str]:
    """How many events of a type each step has."""
    rows = await events_of(client, execution_id)
    return Counter(r["step"] for r in rows if r["event_type"] == event_type)


async def wait_until(check: Callable[[], object], seconds: float = 60) -> None:
    """Poll an async predicate until it is true."""
    async with asyncio.timeout(seconds):
        while not await check():  # type: ignore[misc]
            await asyncio.sleep(0.05)


async def register_when_up(client: Client, path: Path) -> CatalogReply:
    """Register once the mesh's catalog answers."""
    async with asyncio.timeout(60):
        while True:
            try:
                return await client.register(path)
            except Exception:
                await asyncio.sleep(0.2)


async def assert_db_clean(store: Store, seconds: float = 30) -> None:
    """`db check` over the whole event table comes back clean within `seconds`.

    Commands a run was stopping may record their outcome a moment after the execution ended,
    so a report is retried until clean; a lasting violation fails the test with the report.
    """
    report = await check_events(store.pool, settle=0)
    deadline = asyncio.get_running_loop().time() + seconds
    while not report.clean and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
        report = await check_events(store.pool, settle=0)
    assert report.clean, "\n".join(f"{v.invariant}: {v.message}" for v in report.violations)
