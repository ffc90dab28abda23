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
from typing import Any, Protocol

import click
from rich.console import Console
from rich.table import Table

from noetl.cli_daemon import Daemon, DaemonInfo, mesh_command
from noetl.config import Settings
from noetl.errors import NoetlError

__all__ = ["server", "worker"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# Seconds `server start` waits for `/api/ready`, and `worker start` for the mesh to be up.
START_SECONDS = 120.0
_WORKER_UP = "noetl: mesh up"


class _State(Protocol):
    def settings(self) -> Settings: ...


def _settings(ctx: click.Context) -> Settings:
    state: _State = ctx.find_root().obj
    return state.settings()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """The daemon's environment: this one, with the CLI's global options made variables."""
    env = dict(os.environ)
    for name, value in (
        ("NOETL_NATS_URL", settings.nats_url),
        ("NOETL_PG_DSN", settings.pg_dsn),
        ("NOETL_HOME", str(settings.home)),
    ):
        if value is not None:
            env[name] = value
    env.update(extra)
    return env


def _fail(message: str, code: int = 1) -> None:
    err.print(f"error: {message}", markup=False)
    sys.exit(code)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _ready(port: int) -> tuple[bool, dict[str, Any] | None]:
    """(ready, the probe's answer) of the API on this machine's `port`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ready", timeout=5) as resp:
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
            _fail(f"{daemon.name} exited with code {code} before {what}; its log ends:\n{tail}")
        if done():
            return
        time.sleep(0.2)
    daemon.stop(grace=10.0, force=True)
    _fail(f"{daemon.name} was not {what} within {START_SECONDS:g} s (see {daemon.log_file})")


# -- server ---------------------------------------------------------------------------------


@click.group()
def server() -> None:
    """The API, catalog and coordinator as a background server (pid file and log under
    NOETL_HOME)."""


@server.command(name="start")
@click.option("--port", type=int, help="Port of the REST API (default NOETL_API_PORT, 8082).")
@click.option("--init-db", is_flag=True, help="Create or upgrade the schema first, here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def server_start(ctx: click.Context, port: int | None, init_db: bool, as_json: bool) -> None:
    """Start the server in the background; returns once `/api/ready` answers."""
    settings = _settings(ctx)
    daemon = Daemon(settings.home, "server")
    running = daemon.running()
    if running is not None:
        _report_start(running, as_json, already=True)
        return
    if init_db:
        _init_db(ctx)
    chosen = settings.api_port if port is None else port
    argv = mesh_command(
        "up",
        "--role",
        "api",
        "--role",
        "catalog",
        "--role",
        "coordinator",
        "--api-port",
        str(chosen),
    )
    info = daemon.spawn(argv, _env(settings), port=chosen)
    _wait_for(daemon, info, lambda: _ready(chosen)[0], "ready")
    _report_start(info, as_json, already=False)


def _init_db(ctx: click.Context) -> None:
    """Run the CLI's own `db init` here, so that a schema problem shows on this terminal."""
    root = ctx.find_root().command
    db = root.get_command(ctx, "db") if isinstance(root, click.Group) else None
    init = db.get_command(ctx, "init") if isinstance(db, click.Group) else None
    if init is None:
        raise click.UsageError("this build has no `db init`")
    try:
        ctx.invoke(init)
    except SystemExit as exc:
        if exc.code:
            raise


def _report_start(info: DaemonInfo, as_json: bool, *, already: bool) -> None:
    if as_json:
        _print_json({"status": "running", "already": already, "pid": info.pid, "port": info.port})
    elif already:
        out.print(f"noetl server is already running (pid {info.pid}, port {info.port})")
    else:
        out.print(f"noetl server started (pid {info.pid}, port {info.port})")


@server.command(name="stop")
@click.option("--force", is_flag=True, help="SIGKILL when the drain takes longer than --grace.")
@click.option("--grace", type=float, default=30.0, show_default=True, help="Seconds to drain.")
@click.pass_context
def server_stop(ctx: click.Context, force: bool, grace: float) -> None:
    """Stop the server: SIGTERM, which drains the work in hand."""
    _stop(Daemon(_settings(ctx).home, "server"), "noetl server", force=force, grace=grace)


def _stop(daemon: Daemon, what: str, *, force: bool, grace: float) -> None:
    info = daemon.running()
    if info is None:
        out.print(f"{what} is not running")
        return
    try:
        gone = daemon.stop(grace=grace, force=force)
    except NoetlError as exc:
        _fail(str(exc))
    if not gone:
        _fail(f"{what} (pid {info.pid}) is still draining after {grace:g} s; use --force")
    out.print(f"{what} stopped (pid {info.pid})")


@server.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def server_status(ctx: click.Context, as_json: bool) -> None:
    """Whether the server runs, and what its readiness probe says. Exit 1 when it is not
    running."""
    settings = _settings(ctx)
    info = Daemon(settings.home, "server").running()
    workers = _workers(settings)
    if info is None:
        doc: dict[str, Any] = {"status": "stopped"}
    else:
        ready, probe = _ready(info.port or settings.api_port)
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
        _print_json(doc)
    else:
        table = Table("what", "state")
        table.add_row("server", doc["status"])
        for key in ("pid", "port", "uptime_seconds", "ready"):
            if key in doc:
                table.add_row(key, str(doc[key]))
        for name, state in (doc.get("checks") or {}).items():
            table.add_row(f"  {name}", str(state))
        for w in workers:
            table.add_row(f"worker {w.pool}", f"running (pid {w.pid})")
        out.print(table)
    sys.exit(0 if info is not None else 1)


# -- worker ---------------------------------------------------------------------------------


def _workers(settings: Settings) -> list[DaemonInfo]:
    found = []
    for pid_file in sorted(settings.home.glob("worker-*.pid")):
        info = Daemon(settings.home, pid_file.stem).running()
        if info is not None:
            found.append(info)
    return found


def _worker(settings: Settings, pool: str | None) -> tuple[Daemon, str]:
    chosen = pool or settings.runner_pool
    if not chosen.replace("-", "").replace("_", "").isalnum():
        raise click.UsageError(f"--pool is letters, digits, - and _, got {chosen!r}")
    return Daemon(settings.home, f"worker-{chosen}"), chosen


@click.group()
def worker() -> None:
    """Runners as a background worker, one per pool (pid file and log under NOETL_HOME)."""


@worker.command(name="start")
@click.option("--pool", help="Runner pool (default NOETL_RUNNER_POOL, `default`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def worker_start(ctx: click.Context, pool: str | None, as_json: bool) -> None:
    """Start a runner for `pool` in the background; returns once it takes commands."""
    settings = _settings(ctx)
    daemon, chosen = _worker(settings, pool)
    info = daemon.running()
    already = info is not None
    if info is None:
        argv = mesh_command("up", "--role", "runner")
        offset = daemon.log_size()  # the log is appended to: only this run's lines count
        info = daemon.spawn(argv, _env(settings, NOETL_RUNNER_POOL=chosen), pool=chosen)
        _wait_for(daemon, info, lambda: _WORKER_UP in daemon.log_since(offset), "up")
    if as_json:
        _print_json({"status": "running", "already": already, "pid": info.pid, "pool": chosen})
    elif already:
        out.print(f"noetl worker {chosen} is already running (pid {info.pid})")
    else:
        out.print(f"noetl worker {chosen} started (pid {info.pid})")


@worker.command(name="stop")
@click.option("--pool", help="Runner pool (default NOETL_RUNNER_POOL, `default`).")
@click.option("--force", is_flag=True, help="SIGKILL when the drain takes longer than --grace.")
@click.option("--grace", type=float, default=30.0, show_default=True, help="Seconds to drain.")
@click.pass_context
def worker_stop(ctx: click.Context, pool: str | None, force: bool, grace: float) -> None:
    """Stop the worker of `pool`: SIGTERM, which finishes the commands in hand."""
    daemon, chosen = _worker(_settings(ctx), pool)
    _stop(daemon, f"noetl worker {chosen}", force=force, grace=grace)
