"""`noetl-runtime server start|stop|status` and `worker start|stop`: NoETL's daemons mapped
onto the mesh.

`server` runs the API, the catalog and the coordinator (`up --role api --role catalog
--role coordinator`) in the background; `worker` runs the runner role for one pool. Each
keeps a pid file and a log under NOETL_HOME.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click

from noetl.cli_core import (
    EXIT_FAILED,
    EXIT_OK,
    fail,
    json_option,
    out,
    print_json,
    print_table,
    run_command,
    say,
    settings,
    with_store,
)
from noetl.cli_daemon import Daemon, DaemonInfo, mesh_command
from noetl.config import Settings
from noetl.errors import NoetlError
from noetl.pools import bad_pool_name
from noetl.store import Store

__all__ = ["server", "start_server", "start_worker", "worker"]

# Seconds `server start` waits for `/api/ready`, and `worker start` for the mesh to be up.
START_SECONDS = 120.0
_WORKER_UP = "noetl: mesh up"


def _env(config: Settings, **extra: str) -> dict[str, str]:
    """The daemon's environment: this one, with the CLI's global options made variables."""
    env = dict(os.environ)
    for name, value in (
        ("NOETL_NATS_URL", config.nats_url),
        ("NOETL_PG_DSN", config.pg_dsn),
        ("NOETL_HOME", str(config.home)),
    ):
        if value is not None:
            env[name] = value
    env.update(extra)
    return env


def _ready(port: int, config: Settings) -> tuple[bool, dict[str, Any] | None]:
    """(ready, the probe's answer) of the API on this machine's `port`. The request names an
    allowed host when the API only answers to some (NOETL_API_ALLOWED_HOSTS)."""
    allowed = [h.strip() for h in config.api_allowed_hosts.split(",") if h.strip()]
    headers = {"Host": f"{allowed[0]}:{port}"} if allowed else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/ready", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return True, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return False, json.loads(exc.read())
        except ValueError:
            return False, None
    except (OSError, ValueError):
        return False, None


def _wait_for(daemon: Daemon, info: DaemonInfo, done: Any, what: str) -> None:
    """Wait until `done()` is true; exit with the log's end when the daemon dies first."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        code = daemon.exited(info)
        if code is not None:
            daemon.pid_file.unlink(missing_ok=True)
            tail = daemon.log_tail()
            fail(f"{daemon.name} exited with code {code} before {what}; its log ends:\n{tail}")
        if done():
            return
        time.sleep(0.2)
    daemon.stop(grace=10.0, force=True)
    fail(f"{daemon.name} was not {what} within {START_SECONDS:g} s (see {daemon.log_file})")


# -- server ---------------------------------------------------------------------------------


@click.group()
def server() -> None:
    """The API, catalog and coordinator as a background server (pid file and log under
    NOETL_HOME)."""


@server.command(name="start")
@click.option("--port", type=int, help="Port of the REST API (default NOETL_API_PORT, 8082).")
@click.option("--init-db", is_flag=True, help="Create or upgrade the schema first, here.")
@json_option()
def server_start(port: int | None, init_db: bool, as_json: bool) -> None:
    """Start the server in the background; returns once `/api/ready` answers."""
    info, already = start_server(settings(), port, init_db=init_db)
    _report_start(info, as_json, already=already)


def start_server(
    config: Settings, port: int | None = None, *, init_db: bool = False
) -> tuple[DaemonInfo, bool]:
    """The server daemon, started unless it runs already: (its info, already running).
    Blocks until `/api/ready` answers; exits with the log's end when it cannot start."""
    daemon = Daemon(config.home, "server")
    running = daemon.running()
    if running is not None:
        return running, True
    if init_db:
        _init_db(config)
    chosen = config.api_port if port is None else port
    roles = ("--role", "api", "--role", "catalog", "--role", "coordinator")
    argv = mesh_command("up", *roles, "--api-port", str(chosen))
    info = daemon.spawn(argv, _env(config), port=chosen)
    _wait_for(daemon, info, lambda: _ready(chosen, config)[0], "ready")
    return info, False


def _init_db(config: Settings) -> None:
    """Create or upgrade the schema here, so that a problem shows on this terminal."""

    async def body(store: Store) -> int:
        applied = await store.init_schema()
        say(f"applied migrations {applied}" if applied else "schema is up to date")
        return EXIT_OK

    try:
        run_command(with_store(config, body))
    except SystemExit as exc:
        if exc.code:
            raise


def _report_start(info: DaemonInfo, as_json: bool, *, already: bool) -> None:
    if as_json:
        print_json({"status": "running", "already": already, "pid": info.pid, "port": info.port})
    elif already:
        out.print(f"noetl server is already running (pid {info.pid}, port {info.port})")
    else:
        out.print(f"noetl server started (pid {info.pid}, port {info.port})")


@server.command(name="stop")
@click.option("--force", is_flag=True, help="SIGKILL when the drain takes longer than --grace.")
@click.option("--grace", type=float, default=30.0, show_default=True, help="Seconds to drain.")
@json_option()
def server_stop(force: bool, grace: float, as_json: bool) -> None:
    """Stop the server: SIGTERM, which drains the work in hand."""
    daemon = Daemon(settings().home, "server")
    _stop(daemon, "noetl server", force=force, grace=grace, as_json=as_json)


def _stop(daemon: Daemon, what: str, *, force: bool, grace: float, as_json: bool) -> None:
    info = daemon.running()
    if info is None:
        if as_json:
            print_json({"status": "not running"})
        else:
            out.print(f"{what} is not running")
        return
    try:
        gone = daemon.stop(grace=grace, force=force)
    except NoetlError as exc:
        fail(str(exc))
    if not gone:
        fail(f"{what} (pid {info.pid}) is still draining after {grace:g} s; use --force")
    if as_json:
        print_json({"status": "stopped", "pid": info.pid})
    else:
        out.print(f"{what} stopped (pid {info.pid})")


@server.command(name="status")
@json_option()
def server_status(as_json: bool) -> None:
    """Whether the server runs, and what its readiness probe says. Exit 1 when it is not
    running."""
    config = settings()
    info = Daemon(config.home, "server").running()
    workers = _workers(config)
    if info is None:
        doc: dict[str, Any] = {"status": "stopped"}
    else:
        ready, probe = _ready(info.port or config.api_port, config)
        doc = {
            "status": "running",
            "pid": info.pid,
            "port": info.port,
            "uptime_seconds": round(time.time() - info.started_at, 1),
            "ready": ready,
            "checks": (probe or {}).get("checks"),
        }
    doc["workers"] = [{"pool": w.pool, "pid": w.pid} for w in workers]
    if as_json:
        print_json(doc)
    else:
        rows = [("server", str(doc["status"]))]
        rows += [(k, str(doc[k])) for k in ("pid", "port", "uptime_seconds", "ready") if k in doc]
        rows += [(f"  {k}", str(v)) for k, v in (doc.get("checks") or {}).items()]
        rows += [(f"worker {w.pool}", f"running (pid {w.pid})") for w in workers]
        print_table(("what", "state"), rows)
    sys.exit(EXIT_OK if info is not None else EXIT_FAILED)


# -- worker ---------------------------------------------------------------------------------


def _workers(config: Settings) -> list[DaemonInfo]:
    found = []
    for pid_file in sorted(config.home.glob("worker-*.pid")):
        info = Daemon(config.home, pid_file.stem).running()
        if info is not None:
            found.append(info)
    return found


def _worker(config: Settings, pool: str | None) -> tuple[Daemon, str]:
    chosen = pool or config.runner_pool
    problem = bad_pool_name(chosen)
    if problem is not None:
        raise click.UsageError(f"--pool: {problem}")
    return Daemon(config.home, f"worker-{chosen}"), chosen


@click.group()
def worker() -> None:
    """Runners as a background worker, one per pool (pid file and log under NOETL_HOME)."""


@worker.command(name="start")
@click.option("--pool", help="Runner pool (default NOETL_RUNNER_POOL, `default`).")
@json_option()
def worker_start(pool: str | None, as_json: bool) -> None:
    """Start a runner for `pool` in the background; returns once it takes commands."""
    info, chosen, already = start_worker(settings(), pool)
    if as_json:
        print_json({"status": "running", "already": already, "pid": info.pid, "pool": chosen})
    elif already:
        out.print(f"noetl worker {chosen} is already running (pid {info.pid})")
    else:
        out.print(f"noetl worker {chosen} started (pid {info.pid})")


def start_worker(config: Settings, pool: str | None = None) -> tuple[DaemonInfo, str, bool]:
    """The worker daemon of `pool`, started unless it runs already: (its info, the pool,
    already running). Blocks until its mesh is up; exits with the log's end otherwise."""
    daemon, chosen = _worker(config, pool)
    info = daemon.running()
    if info is not None:
        return info, chosen, True
    argv = mesh_command("up", "--role", "runner", "--pool", chosen)
    offset = daemon.log_size()  # the log is appended to: only this run's lines count
    info = daemon.spawn(argv, _env(config, NOETL_RUNNER_POOL=chosen), pool=chosen)
    _wait_for(daemon, info, lambda: _WORKER_UP in daemon.log_since(offset), "up")
    return info, chosen, False


@worker.command(name="stop")
@click.option("--pool", help="Runner pool (default NOETL_RUNNER_POOL, `default`).")
@click.option("--force", is_flag=True, help="SIGKILL when the drain takes longer than --grace.")
@click.option("--grace", type=float, default=30.0, show_default=True, help="Seconds to drain.")
@json_option()
def worker_stop(pool: str | None, force: bool, grace: float, as_json: bool) -> None:
    """Stop the worker of `pool`: SIGTERM, which finishes the commands in hand."""
    daemon, chosen = _worker(settings(), pool)
    _stop(daemon, f"noetl worker {chosen}", force=force, grace=grace, as_json=as_json)
