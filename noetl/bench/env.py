"""Where the bench runs: the configured servers (or embedded ones in a temporary home), a
scratch database made for the run, and the mesh as separate `up --role` processes.

The scratch database keeps the bench's millions of rows out of the runtime's own database;
it is dropped at the end. A mesh already answering on the NATS server would take part in
the bench (and run its commands against the wrong database), so the bench refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import psutil

from actors.mesh import missing_roles
from noetl import local
from noetl.bus import milestones_subject
from noetl.client import Client
from noetl.config import ROLES, Settings
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import ConfigError, NoetlError
from noetl.keys import new_execution_id

Say = Callable[[str], None]

# `python -c` rather than the console script: works wherever the package is importable.
_UP = [sys.executable, "-c", "from noetl.cli import main; main()", "up"]


def with_database(dsn: str, database: str) -> str:
    """`dsn` (a postgresql:// URI) naming `database` instead."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"bench needs NOETL_PG_DSN as a postgresql:// URI, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + database))


class BenchEnv:
    """The servers, the scratch database, the mesh processes and a client on them."""

    def __init__(self, client: Client, home: Path) -> None:
        self.client = client
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._spawned = 0

    @property
    def dsn(self) -> str:
        """The scratch database."""
        assert self.client.settings.pg_dsn is not None
        return self.client.settings.pg_dsn

    @property
    def nats_url(self) -> str:
        """The NATS server."""
        assert self.client.settings.nats_url is not None
        return self.client.settings.nats_url

    def mesh_env(self) -> dict[str, str]:
        """The environment of a mesh process: the caller's NOETL_* tuning, our servers."""
        env = dict(os.environ)
        env.update(
            NOETL_NATS_URL=self.nats_url,
            NOETL_PG_DSN=self.dsn,
            NOETL_HOME=str(self.home),
        )
        return env

    def _spawn(self, name: str, role: str) -> None:
        with (self.home / "mesh.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*_UP, "--role", role],
                env=self.mesh_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its python workers go with it
            )
        self._spawned += 1

    async def scale(self, role: str, count: int) -> None:
        """Run `count` (at most 9) processes of `role` (`role`, `role-2`, ...): start the
        missing ones and wait until they take messages, or stop (drain) those beyond."""
        beyond = [n for n in self.procs if n.startswith(f"{role}-") and int(n[-1]) > count]
        for name in beyond:
            proc = self.procs.pop(name)
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)
        for i in range(2, count + 1):
            if f"{role}-{i}" not in self.procs:
                self._spawn(f"{role}-{i}", role)
        await self._all_up()

    async def _all_up(self) -> None:
        # Every `up` says "mesh up" once its actors consume: count them in the shared log.
        deadline = time.monotonic() + 120
        while self.log_tail(None).count("noetl: mesh up (") < self._spawned:
            self.check_alive()
            if time.monotonic() > deadline:
                raise NoetlError(f"the bench mesh did not come up:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    async def start_mesh(self) -> None:
        """One `up --role R` process per role; returns once every role answers."""
        for role in ROLES:
            self._spawn(role, role)
        deadline = time.monotonic() + 120
        while await missing_roles(self.client.bus, ROLES):
            self.check_alive()
            if time.monotonic() > deadline:
                raise NoetlError(f"the bench mesh did not come up:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    def check_alive(self) -> None:
        """Raise with the log's tail if a mesh process has exited."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise NoetlError(
                    f"the bench's {role} process exited ({proc.returncode}):\n{self.log_tail()}"
                )

    def log_tail(self, chars: int | None = 3000) -> str:
        """The end of the mesh processes' shared log (all of it with `chars` None)."""
        try:
            text = (self.home / "mesh.log").read_text(errors="replace")
            return text if chars is None else text[-chars:]
        except OSError:
            return "(no log)"

    def pid(self, role: str) -> int:
        """The process id of a role's mesh process."""
        return self.procs[role].pid

    async def stop_mesh(self) -> None:
        """SIGTERM every mesh process (they drain), SIGKILL what outlives 30 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        self.procs.clear()

    async def run_execution(
        self, path: str, version: int, workload: dict[str, Any] | None = None
    ) -> tuple[float, dict[str, Any]]:
        """Start one execution and wait for its end: (wall seconds, its execution row).

        The watch is subscribed before the start is published, so the end is seen the
        moment it is announced; the store is polled too, announcements being best effort.
        It listens to the execution's milestones (its start and end), not to every step's
        announcement: a watcher's own cost is not the runtime's.
        """
        eid = new_execution_id()
        ended = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            for event in msgspec.json.decode(msg.data):
                if event["type"].startswith("execution.") and event["status"] in TERMINAL_STATUSES:
                    ended.set()

        sub = await self.client.bus.nc.subscribe(milestones_subject(eid), cb=on_msg)
        try:
            began = time.perf_counter()
            await self.client.start(path, version=version, workload=workload, execution_id=eid)
            while not ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), 1.0)
                if not ended.is_set():
                    self.check_alive()
                    status = await self.client.store.pool.fetchval(
                        "SELECT status FROM noetl.execution WHERE execution_id = $1", eid
                    )
                    if status in TERMINAL_STATUSES:
                        break
            took = time.perf_counter() - began
        finally:
            await sub.unsubscribe()
        return took, await self.client.store.get_execution(eid)


async def _create_scratch(admin_dsn: str) -> str:
    name = f"noetl_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        raise ConfigError(
            f"bench creates a scratch database and could not: {exc} (the role of "
            "NOETL_PG_DSN needs CREATEDB)"
        ) from exc
    finally:
        await conn.close()
    return name


async def _drop_scratch(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def bench_env(settings: Settings, say: Say) -> AsyncIterator[BenchEnv]:
    """The bench's environment for the duration; everything it made is removed after."""
    home = Path(tempfile.mkdtemp(prefix="noetl-bench-"))
    embedded = settings.local_mode
    try:
        if embedded:
            services = await asyncio.to_thread(local.ensure_local, home, announce=say)
            admin_dsn, nats_url = services.pg_dsn, services.nats_url
        else:
            assert settings.nats_url is not None and settings.pg_dsn is not None
            admin_dsn, nats_url = settings.pg_dsn, settings.nats_url
            say(f"bench: against the configured servers ({nats_url})")
        scratch = await _create_scratch(admin_dsn)
        try:
            bench_settings = msgspec.structs.replace(
                settings, nats_url=nats_url, pg_dsn=with_database(admin_dsn, scratch), home=home
            )
            client = await Client.connect(bench_settings)
            env = BenchEnv(client, home)
            try:
                if len(await missing_roles(client.bus, ROLES)) < len(ROLES):
                    raise ConfigError(
                        "a mesh is already running on this NATS server: the bench needs an "
                        "idle one (it starts its own mesh)"
                    )
                await env.start_mesh()
                yield env
            finally:
                await env.stop_mesh()
                await client.close()
        finally:
            await _drop_scratch(admin_dsn, scratch)
    finally:
        if embedded:
            await asyncio.to_thread(local.stop_local, home)
        await asyncio.to_thread(shutil.rmtree, home, True)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20
