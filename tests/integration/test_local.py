"""The embedded local-mode servers: start, reuse, stop, crash recovery, concurrent starters."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import psutil
import pytest

from noetl.config import Settings
from noetl.errors import LocalModeError
from noetl.local import CREDENTIALS_FILE, Services, ensure_local, resolve, stop_local
from noetl.servers.nats import nats_server_binary, start_nats
from tests.support.services import free_port, local_mode_stopped

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def home(noetl_home: Path) -> Iterator[Path]:
    """A NOETL_HOME whose servers are stopped after the test, whatever happened."""
    with local_mode_stopped(noetl_home):
        yield noetl_home


def read_state(home: Path) -> dict[str, dict[str, int]]:
    state: dict[str, dict[str, int]] = json.loads((home / "local.json").read_text())
    return state


def servers_of(home: Path) -> tuple[list[int], list[int]]:
    """Pids of the nats-servers and postmasters running on `home`'s data."""
    store, data = str(home / "nats"), str(home / "pg")
    nats_pids, pg_pids = [], []
    for proc in psutil.process_iter(["name", "cmdline", "status", "cwd"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if proc.info["name"] == "nats-server" and store in cmdline:
            nats_pids.append(proc.pid)
        # PostgreSQL runs in its data dir; only the postmaster keeps "-D" in its title (its
        # children rewrite theirs).
        if proc.info["name"] == "postgres" and proc.info["cwd"] == data and "-D" in cmdline:
            pg_pids.append(proc.pid)
    return nats_pids, pg_pids


def bare(url: str) -> str:
    """`url` without its password, as the local mode prints it."""
    parts = urlsplit(url)
    assert parts.password, url  # the embedded servers require credentials
    return urlunsplit(parts._replace(netloc=f"noetl@{parts.hostname}:{parts.port}"))


def on_port(url: str, other: str) -> str:
    """`url` (with its credentials) pointed at the port of `other`."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{urlsplit(other).port}"
    return urlunsplit(parts._replace(netloc=netloc))


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def check_services(services: Services) -> None:
    """A real session on each: `select 1` on PostgreSQL, JetStream account info on NATS."""
    conn = await asyncpg.connect(services.pg_dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "noetl"
        assert await conn.fetchval("show fsync") == "on"
        assert await conn.fetchval("show max_connections") == "200"
        assert await conn.fetchval("show listen_addresses") == "127.0.0.1"
        assert (await conn.fetchval("show server_version")).startswith("16.")
    finally:
        await conn.close()
    nc = await nats.connect(services.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_cold_start_then_reuse(home: Path) -> None:
    lines: list[str] = []
    started = time.perf_counter()
    first = await asyncio.to_thread(ensure_local, home, announce=lines.append)
    cold = time.perf_counter() - started

    assert first.embedded
    assert first.nats_url.startswith("nats://noetl:")
    assert first.pg_dsn.startswith("postgresql://noetl:")
    assert first.pg_dsn.endswith("/noetl")
    assert len(lines) == 1
    assert lines[0].startswith("noetl: started embedded NATS (")
    nats_shown = f"nats://127.0.0.1:{urlsplit(first.nats_url).port}"
    for part in (nats_shown, bare(first.pg_dsn), str(home), "`noetl-runtime down` stops them"):
        assert part in lines[0]
    for secret in (urlsplit(first.nats_url).password, urlsplit(first.pg_dsn).password):
        assert secret and secret not in lines[0]
    assert "\n" not in lines[0]
    assert (home / "pg" / "PG_VERSION").is_file()
    assert (home / "nats" / "jetstream").is_dir()
    assert (home / "logs" / "nats.log").stat().st_size > 0
    assert (home / "logs" / "postgres.log").stat().st_size > 0

    started = time.perf_counter()
    second = await asyncio.to_thread(ensure_local, home, announce=lines.append)
    reuse = time.perf_counter() - started
    assert second == first
    assert len(lines) == 1  # nothing started, nothing said

    # resolve() in local mode goes through the same servers.
    third = await asyncio.to_thread(resolve, Settings(home=home), announce=lines.append)
    assert third == first and len(lines) == 1

    state = read_state(home)
    nats_pids, pg_pids = servers_of(home)
    assert nats_pids == [state["nats"]["pid"]]
    assert pg_pids == [state["postgres"]["pid"]]
    # Detached: each leads its own session, so a Ctrl-C of the starter does not reach it.
    for pid in (*nats_pids, *pg_pids):
        assert os.getsid(pid) == pid

    await check_services(first)
    print(f"\nlocal mode: cold start {cold:.3f} s, reuse {reuse * 1000:.1f} ms")


def test_resolve_uses_configured_services_without_starting_anything(
    noetl_home: Path,
) -> None:
    settings = Settings(nats_url="nats://h:4222", pg_dsn="postgresql://u@h/d", home=noetl_home)
    lines: list[str] = []
    services = resolve(settings, announce=lines.append)
    assert services == Services("nats://h:4222", "postgresql://u@h/d", embedded=False)
    assert lines == []
    assert list(noetl_home.iterdir()) == []


async def test_stop_local_stops_both_and_a_restart_keeps_the_ports(home: Path) -> None:
    first = await asyncio.to_thread(ensure_local, home)
    state = read_state(home)
    nats_port, pg_port = state["nats"]["port"], state["postgres"]["port"]

    stopped = await asyncio.to_thread(stop_local, home)
    assert len(stopped) == 2
    nats_shown = f"nats://127.0.0.1:{nats_port}"
    assert stopped[0].startswith(f"NATS {nats_shown} (pid {state['nats']['pid']})")
    assert stopped[1].startswith(
        f"PostgreSQL {bare(first.pg_dsn)} (pid {state['postgres']['pid']})"
    )
    assert servers_of(home) == ([], [])
    assert not port_open(nats_port) and not port_open(pg_port)
    assert not (home / "pg" / "postmaster.pid").exists()  # a clean shutdown
    assert await asyncio.to_thread(stop_local, home) == []

    lines: list[str] = []
    again = await asyncio.to_thread(ensure_local, home, announce=lines.append)
    assert again == first  # same ports and credentials: DSNs handed out before still work
    assert len(lines) == 1
    await check_services(again)


async def test_lost_credentials_are_replaced_and_the_old_ones_refused(home: Path) -> None:
    # Also what a NOETL_HOME made before the servers required credentials goes through.
    first = await asyncio.to_thread(ensure_local, home)
    conn = await asyncpg.connect(first.pg_dsn)
    try:
        await conn.execute("create table survivor (x int); insert into survivor values (7)")
    finally:
        await conn.close()
    (home / CREDENTIALS_FILE).unlink()

    second = await asyncio.to_thread(ensure_local, home)
    assert second != first
    assert (home / CREDENTIALS_FILE).is_file()
    await check_services(second)
    conn = await asyncpg.connect(second.pg_dsn)
    try:
        assert await conn.fetchval("select x from survivor") == 7
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(on_port(first.pg_dsn, second.pg_dsn))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            on_port(first.nats_url, second.nats_url),
            connect_timeout=5,
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )


def test_stop_local_on_a_home_that_never_ran(tmp_path: Path) -> None:
    assert stop_local(tmp_path / "nothing-here") == []
    assert stop_local(tmp_path) == []


async def test_postgres_killed_with_sigkill_restarts_on_the_same_data(home: Path) -> None:
    first = await asyncio.to_thread(ensure_local, home)
    conn = await asyncpg.connect(first.pg_dsn)
    await conn.execute("create table survivor (x int); insert into survivor values (42)")
    state = read_state(home)
    pg_pid, nats_pid = state["postgres"]["pid"], state["nats"]["pid"]

    # A session stays open across the kill: its backend, which exits only once it notices
    # the postmaster is gone, must not block the restart.
    os.kill(pg_pid, signal.SIGKILL)
    psutil.Process(pg_pid).wait(10)
    assert (home / "pg" / "postmaster.pid").exists()  # stale: its pid is dead

    lines: list[str] = []
    second = await asyncio.to_thread(ensure_local, home, announce=lines.append)
    assert len(lines) == 1
    assert "PostgreSQL" in lines[0] and "NATS" not in lines[0]
    assert second.nats_url == first.nats_url
    assert read_state(home)["nats"]["pid"] == nats_pid
    assert read_state(home)["postgres"]["pid"] != pg_pid

    conn.terminate()
    conn = await asyncpg.connect(second.pg_dsn)
    try:
        assert await conn.fetchval("select x from survivor") == 42
    finally:
        await conn.close()


async def test_nats_killed_with_sigkill_restarts_on_the_same_store(home: Path) -> None:
    first = await asyncio.to_thread(ensure_local, home)
    nc = await nats.connect(first.nats_url, max_reconnect_attempts=0)
    js = nc.jetstream()
    await js.add_stream(name="SURVIVOR", subjects=["survivor.>"])
    await js.publish("survivor.x", b"kept")
    await nc.close()
    pid = read_state(home)["nats"]["pid"]
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)

    lines: list[str] = []
    second = await asyncio.to_thread(ensure_local, home, announce=lines.append)
    assert len(lines) == 1 and "NATS" in lines[0] and "PostgreSQL" not in lines[0]
    assert second == first
    nc = await nats.connect(second.nats_url, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().stream_info("SURVIVOR")
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_a_postmaster_pid_naming_an_unrelated_live_process_is_stale(home: Path) -> None:
    await asyncio.to_thread(ensure_local, home)
    await asyncio.to_thread(stop_local, home)
    # After a reboot the old postmaster's pid can belong to anything: here, this test.
    pidfile = home / "pg" / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{home / 'pg'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    services = await asyncio.to_thread(ensure_local, home)
    await check_services(services)


async def test_a_lost_state_file_adopts_the_running_servers(home: Path) -> None:
    first = await asyncio.to_thread(ensure_local, home)
    before = servers_of(home)
    (home / "local.json").unlink()
    lines: list[str] = []
    second = await asyncio.to_thread(ensure_local, home, announce=lines.append)
    assert second == first
    assert lines == []  # nothing was started
    assert servers_of(home) == before


ENSURE = """
import json, sys
from pathlib import Path
from noetl.local import ensure_local
lines = []
s = ensure_local(Path(sys.argv[1]), announce=lines.append)
print(json.dumps({"nats": s.nats_url, "pg": s.pg_dsn, "announced": lines}))
"""


async def test_concurrent_callers_in_several_processes_start_one_of_each(home: Path) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ENSURE,
            str(home),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert len({(r["nats"], r["pg"]) for r in results}) == 1
    assert sum(len(r["announced"]) for r in results) == 1
    nats_pids, pg_pids = servers_of(home)
    assert len(nats_pids) == 1 and len(pg_pids) == 1
    # They outlived the processes that started them.
    services = await asyncio.to_thread(ensure_local, home)
    assert services.nats_url == results[0]["nats"]
    await check_services(services)


def test_nats_server_binary_is_the_venv_one() -> None:
    binary = nats_server_binary()
    assert binary.name == "nats-server" and os.access(binary, os.X_OK)


def test_nats_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(LocalModeError) as info:
            start_nats(tmp_path / "store", port=port, log=tmp_path / "nats.log")
    message = str(info.value)
    assert f"port {port} is taken" in message
    assert "address already in use" in message.lower()


async def test_the_service_fixtures_are_fresh_and_isolated(
    settings: Settings, pg_server: object
) -> None:
    # The fixtures every integration test builds on: an empty database of its own, a
    # JetStream server of its own, and a temp NOETL_HOME.
    assert settings.pg_dsn is not None and settings.nats_url is not None
    assert os.environ["NOETL_HOME"] == str(settings.home)
    assert settings.ack_wait == 2.0 and settings.reconcile_every == 1.0
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        tables = await conn.fetchval(
            "select count(*) from pg_tables where schemaname not in ('pg_catalog', "
            "'information_schema')"
        )
        assert tables == 0
        assert (await conn.fetchval("select current_database()")).startswith("t_")
    finally:
        await conn.close()
    nc = await nats.connect(settings.nats_url, max_reconnect_attempts=0)
    try:
        assert (await nc.jetstream().account_info()).streams == 0
    finally:
        await nc.close()


def test_the_database_fixture_works_for_sync_tests_too(pg_dsn: str) -> None:
    assert pg_dsn.startswith("postgresql://") and "/t_" in pg_dsn


def test_zero_config_run_then_down(home: Path) -> None:
    """`run` with nothing configured starts the embedded servers; `down` stops them."""
    cli = str(Path(sys.executable).parent / "noetl-runtime")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env["NOETL_HOME"] = str(home)
    hello = Path(__file__).parent.parent / "fixtures" / "playbooks" / "hello_world"

    def noetl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, *args], env=env, capture_output=True, text=True, timeout=150, check=False
        )

    ran = noetl("run", str(hello / "hello_world.yaml"), "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"] == {"final": "Hello World!", "length": 12}
    nats_pids, pg_pids = servers_of(home)
    assert len(nats_pids) == 1 and len(pg_pids) == 1  # left running for the next command
    down = noetl("down")
    assert down.returncode == 0, down.stderr
    assert down.stderr.startswith("stopped: NATS nats://127.0.0.1:")
    assert f"(pid {nats_pids[0]})" in down.stderr and f"(pid {pg_pids[0]})" in down.stderr
    assert servers_of(home) == ([], [])
    again = noetl("down")
    assert (again.returncode, again.stderr.strip()) == (0, "nothing was running")
