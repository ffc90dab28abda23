"""Local mode is closed to the other users of the machine (the attacks of a local user).

Run as root, the attacker is `nobody`; the embedded servers must refuse it a session
without the credentials generated into NOETL_HOME, which it cannot read. Run as another
user, the attacks run as that same user, which proves less: the servers still refuse
clients without credentials.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from noetl.local import CREDENTIALS_FILE, Services, ensure_local
from noetl.servers.pgowner import bin_dir, pg_owner
from tests.support.services import local_mode_stopped

pytestmark = pytest.mark.timeout(240)

ROOT = os.geteuid() == 0
# What a root test run attacks as; otherwise the test's own user.
ATTACKER: dict[str, Any] = (
    {"user": "nobody", "group": pwd.getpwnam("nobody").pw_gid, "extra_groups": []} if ROOT else {}
)

RAW_NATS = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
sock.recv(65536)  # INFO
sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\\r\\nPING\\r\\n')
print(sock.recv(65536).decode())
"""


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[Path, Services]]:
    """The embedded servers of a fresh NOETL_HOME, stopped after the module."""
    outer = Path(tempfile.mkdtemp(prefix="noetl-sec-"))
    home = outer / "home"
    try:
        with local_mode_stopped(home, outer):
            yield home, ensure_local(home)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def as_attacker(*cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd` as the attacking user, with none of our environment's secrets."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    env.update(kwargs.pop("env", {}))
    options = {"cwd": "/", **ATTACKER, **kwargs}
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=60, check=False, **options
    )


def psql(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """psql (the embedded server's own) run as the attacker, never prompting."""
    program = str(bin_dir(pg_owner()) / "psql")
    return as_attacker(program, "-w", "-d", "noetl", "-U", "noetl", *args, **kwargs)


def test_files_and_directories_are_owner_only(running: tuple[Path, Services]) -> None:
    home, _ = running
    for directory in (home, home / "logs", home / "nats", home / "pg"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in (
        "local.json",
        "local.lock",
        CREDENTIALS_FILE,
        "nats.conf",
        "logs/nats.log",
        "logs/postgres.log",
    ):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    for name in (CREDENTIALS_FILE, "nats.conf", "logs/postgres.log", "local.json"):
        denied = as_attacker("cat", str(home / name))
        assert denied.returncode != 0 and denied.stdout == ""
        assert "Permission denied" in denied.stderr


def test_both_servers_listen_on_loopback_only(running: tuple[Path, Services]) -> None:
    home, _ = running
    state = json.loads((home / "local.json").read_text())
    for server in ("nats", "postgres"):
        listening = [
            conn.laddr
            for conn in psutil.Process(state[server]["pid"]).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening, server
        assert {address.ip for address in listening} == {"127.0.0.1"}, server


def test_nats_refuses_a_client_without_credentials(running: tuple[Path, Services]) -> None:
    _, services = running
    port = str(urlsplit(services.nats_url).port)
    answer = as_attacker("/usr/bin/python3", "-c", RAW_NATS, port)
    assert answer.returncode == 0, answer.stderr
    assert "-ERR 'Authorization Violation'" in answer.stdout
    assert "PONG" not in answer.stdout


def test_psql_as_another_user_gets_no_session(running: tuple[Path, Services]) -> None:
    home, services = running
    port = str(urlsplit(services.pg_dsn).port)
    over_tcp = psql("-h", "127.0.0.1", "-p", port, "-c", "select 1")
    assert over_tcp.returncode == 2
    assert "no password supplied" in over_tcp.stderr
    guessed = psql("-h", "127.0.0.1", "-p", port, "-c", "select 1", env={"PGPASSWORD": "noetl"})
    assert guessed.returncode == 2
    assert 'password authentication failed for user "noetl"' in guessed.stderr
    # The unix socket sits in the data directory: others cannot even reach it.
    on_socket = psql("-h", str(home / "pg"), "-p", port, "-c", "select 1")
    assert on_socket.returncode == 2 and "(1 row)" not in on_socket.stdout
    owner = pg_owner()
    if owner is not None:
        # The server's own OS user reaches the socket: no peer or trust, it needs the password.
        as_server_user = psql(
            "-h",
            "/proc/self/cwd",
            "-p",
            port,
            "-c",
            "select 1",
            cwd=home / "pg",
            user=owner[0],
            group=owner[1],
        )
        assert as_server_user.returncode == 2
        assert "no password supplied" in as_server_user.stderr


async def test_statements_never_reach_the_log(running: tuple[Path, Services]) -> None:
    home, services = running
    conn = await asyncpg.connect(services.pg_dsn)
    try:
        assert await conn.fetchval("select 'needle-one-7f3a'") == "needle-one-7f3a"
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("select 1 / 0, 'needle-two-7f3a'")
        assert await conn.fetchval("show log_min_error_statement") == "panic"
    finally:
        await conn.close()
    log = (home / "logs" / "postgres.log").read_text()
    assert "division by zero" in log  # the error is logged, its statement is not
    assert "needle" not in log
    assert services.pg_dsn.split(":")[2].split("@")[0] not in log  # the password


async def test_the_dsn_without_its_password_is_refused(running: tuple[Path, Services]) -> None:
    _, services = running
    parts = urlsplit(services.pg_dsn)
    bare = f"postgresql://noetl@{parts.hostname}:{parts.port}/noetl"
    with pytest.raises(
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
    ):
        await asyncpg.connect(bare, password="")
