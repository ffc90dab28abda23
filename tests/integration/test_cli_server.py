"""NoETL's daemon and inspection verbs as a user runs them: real subprocesses against real
NATS and PostgreSQL (`server`, `worker`, `catalog`, `execution`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from noetl.cli_daemon import Daemon, DaemonInfo
from noetl.config import Settings
from tests.integration.conftest import fixture
from tests.support.cli import CLI
from tests.support.services import free_port

TOKEN = "daemon-token"


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    base.update(
        NOETL_NATS_URL=str(settings.nats_url),
        NOETL_PG_DSN=str(settings.pg_dsn),
        NOETL_HOME=str(settings.home),
        NOETL_API_TOKEN=TOKEN,
    )
    base.update(env)
    return subprocess.run(
        [CLI, *args], env=base, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def daemons(settings: Settings) -> Iterator[Settings]:
    """The test's settings; whatever daemon is left at the end is killed."""
    yield settings
    for name in ("server", "worker-default", "worker-other"):
        Daemon(settings.home, name).stop(grace=10.0, force=True)


def api(
    server: str, method: str, path: str, data: bytes | None = None, kind: str = "application/json"
) -> Any:
    """One call of the daemon's API with the token."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": kind}
    request = urllib.request.Request(server + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie awaiting its reaper is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def in_group(proc: psutil.Process, group: int) -> bool:
    """True when `proc` is alive in process group `group`."""
    try:
        return os.getpgid(proc.pid) == group and proc.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.Error):
        return False


def write_pid_file(home: Path, name: str, info: DaemonInfo) -> Path:
    path = home / f"{name}.pid"
    path.write_text(json.dumps({"pid": info.pid, "created": info.created, "started_at": 0}))
    return path


def test_server_and_worker_lifecycle(daemons: Settings) -> None:
    settings = daemons
    home = settings.home
    # A stale pid file: the pid is a live process, but not the daemon (another creation time).
    stale = write_pid_file(home, "server", DaemonInfo(pid=os.getpid(), created=1.0, started_at=0))
    port = free_port()
    # The API answers only to named hosts (not 127.0.0.1): the readiness wait names the first.
    hosts = {"NOETL_API_ALLOWED_HOSTS": "noetl.test,localhost"}
    started = cli(settings, "server", "start", "--port", str(port), "--init-db", "--json", **hosts)
    assert started.returncode == 0, started.stderr
    first = json.loads(started.stdout)
    assert (first["status"], first["already"], first["port"]) == ("running", False, port)
    assert json.loads(stale.read_text())["pid"] == first["pid"]
    with urllib.request.urlopen(f"http://localhost:{port}/api/ready", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ready"

    again = cli(settings, "server", "start", "--port", str(port))
    assert again.returncode == 0
    assert f"already running (pid {first['pid']}" in again.stdout

    status = cli(settings, "server", "status", "--json", **hosts)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert (doc["status"], doc["pid"], doc["ready"]) == ("running", first["pid"], True)
    assert doc["checks"] == {"nats": "ok", "postgres": "ok", "schema": "ok"}

    worker = cli(settings, "worker", "start", "--json")
    assert worker.returncode == 0, worker.stderr
    worker_pid = json.loads(worker.stdout)["pid"]

    # The daemons do the work: register and start through the server's API, a runner runs it.
    server = f"http://localhost:{port}"
    created = api(
        server, "POST", "/api/playbooks", fixture("hello_world").read_bytes(), "text/yaml"
    )
    assert created["version"] == 1
    eid = api(server, "POST", "/api/executions", b'{"path": "examples/hello_world"}')[
        "execution_id"
    ]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.HTTPError):  # 404 until it is recorded
            if api(server, "GET", f"/api/executions/{eid}")["status"] == "completed":
                break
        time.sleep(0.3)

    listed = cli(settings, "execution", "list", "--json", "--server", server)
    assert eid in [x["execution_id"] for x in json.loads(listed.stdout)], listed.stderr
    for where in ((), ("--server", server)):  # NATS/PostgreSQL directly, then the API
        got = cli(settings, "execution", "get", eid, "--json", *where)
        assert json.loads(got.stdout)["result"] == {"final": "Hello World!", "length": 12}
    content = cli(
        settings, "catalog", "get", "examples/hello_world", "--version", "1", "--server", server
    )
    assert content.stdout == fixture("hello_world").read_text()
    table = cli(settings, "execution", "get", eid, "--server", server)
    assert "completed" in table.stdout and "step end" in table.stdout
    playbooks = cli(settings, "catalog", "list", "--json", "--server", server)
    assert [p["path"] for p in json.loads(playbooks.stdout)] == ["examples/hello_world"]
    missing = cli(settings, "execution", "get", "1234567890", "--server", server)
    assert (missing.returncode, "no execution 1234567890" in missing.stderr) == (1, True)
    wrong = cli(settings, "catalog", "list", "--server", server, NOETL_API_TOKEN="wrong")
    assert (wrong.returncode, "refused the token" in wrong.stderr) == (1, True)
    cancel = cli(settings, "execution", "cancel", eid, "--json", NOETL_SERVER_URL=server)
    assert json.loads(cancel.stdout) == {"execution_id": eid, "status": "cancelling"}
    started = cli(
        settings,
        "execution",
        "start",
        "examples/hello_world",
        "--workload",
        '{"message": "Yo"}',
        "--json",
        NOETL_SERVER_URL=server,
    )
    assert started.returncode == 0, started.stderr
    again = json.loads(started.stdout)["execution_id"]
    doc = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.HTTPError):
            doc = api(server, "GET", f"/api/executions/{again}")
            if doc["status"] == "completed":
                break
        time.sleep(0.3)
    assert doc["result"] == {"final": "Yo!", "length": 3}

    stopped = cli(settings, "worker", "stop", "--force", "--grace", "0")
    assert stopped.returncode == 0, stopped.stderr
    assert not running(worker_pid)
    assert not [p for p in psutil.process_iter() if in_group(p, worker_pid)]
    stopped = cli(settings, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {first['pid']})" in stopped.stdout
    assert not running(first["pid"])
    assert not (home / "server.pid").exists()
    assert json.loads(cli(settings, "server", "stop", "--json").stdout) == {"status": "not running"}
    after = cli(settings, "server", "status", "--json")
    assert (after.returncode, json.loads(after.stdout)["status"]) == (1, "stopped")
    assert (
        "API listening" in (home / "server.log").read_text()
        or (home / "server.log").stat().st_size > 0
    )


def test_a_server_that_cannot_start_says_why(daemons: Settings) -> None:
    settings = daemons
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = cli(settings, "server", "start", "--port", str(port))
    assert started.returncode == 1
    assert "exited with code" in started.stderr
    assert "cannot listen" in started.stderr
    assert not (settings.home / "server.pid").exists()
    dead = psutil.Popen(["true"])
    dead.wait()
    write_pid_file(
        settings.home, "server", DaemonInfo(pid=dead.pid, created=dead.create_time(), started_at=0)
    )
    status = cli(settings, "server", "status")
    assert status.returncode == 1
    assert "stopped" in status.stdout
    assert not (settings.home / "server.pid").exists()


def test_unreachable_server_and_bad_ids(settings: Settings) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = cli(settings, "execution", "list", "--server", nowhere)
    assert (down.returncode, "cannot reach the API" in down.stderr) == (1, True)
    bad = cli(settings, "execution", "get", "abc")
    assert bad.returncode == 2
    assert "63-bit" in bad.stderr
