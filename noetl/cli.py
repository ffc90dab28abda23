"""Command line: `noetl-runtime` (alias `noetl`): the root group `main` and the commands that
run and inspect executions. What every command shares (settings, exit codes, `--json`,
tables, opening a client) is in `noetl.cli_core`; each other area has its own module
`noetl/cli_<area>.py` registered at the end of this file with one `main.add_command(...)`.

Exit codes: 0 success (execution completed), 1 execution failed or cancelled or a runtime
error, 2 invalid playbook or usage (see `noetl.cli_core`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec
import nats
import nats.errors

from noetl import dsl, local
from noetl.bus import PING_PREFIX, milestones_subject
from noetl.cli_bench import bench
from noetl.cli_check import db_check
from noetl.cli_core import (
    EXIT_OK,
    EXIT_USAGE,
    CliState,
    fail,
    json_option,
    one_line_reconnects,
    out,
    print_json,
    run_command,
    say,
    settings,
    with_client,
)
from noetl.cli_credentials import credential
from noetl.cli_daemon import Daemon
from noetl.cli_db import db
from noetl.cli_deploy import build, k8s
from noetl.cli_inspect import catalog, execution
from noetl.cli_run import Hosted, cancel, execute, load_or_exit, restart, run, tally, watch
from noetl.cli_server import server, worker
from noetl.cli_view import events, list_, logs, playbooks, result, status
from noetl.client import Client
from noetl.config import ROLES, Settings
from noetl.errors import ConfigError
from noetl.pools import bad_pool_name

__all__ = ["main"]

# Every execution's starts, ends and failed steps (`noetl.bus.milestones_subject`, any id).
_ANNOUNCEMENTS = milestones_subject(0).rpartition(".")[0] + ".*"


@click.group()
@click.option("--nats-url", envvar="NOETL_NATS_URL", help="NATS server (default: embedded).")
@click.option("--pg-dsn", envvar="NOETL_PG_DSN", help="PostgreSQL DSN (default: embedded).")
@click.option(
    "--home",
    envvar="NOETL_HOME",
    type=click.Path(file_okay=False),
    help="Local data directory (default ~/.noetl).",
)
@click.version_option(package_name="noetl-runtime")
@click.pass_context
def main(ctx: click.Context, nats_url: str | None, pg_dsn: str | None, home: str | None) -> None:
    """noetl-runtime: run NoETL playbooks on an actor mesh over NATS JetStream and PostgreSQL.

    With neither NATS nor PostgreSQL configured, embedded servers are started under
    NOETL_HOME and reused by every later command until `noetl-runtime down`.
    """
    ctx.obj = CliState(overrides={"nats_url": nats_url, "pg_dsn": pg_dsn, "home": home})


# -- validate -------------------------------------------------------------------------


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Count every warning as an error.")
def validate(files: tuple[str, ...], strict: bool) -> None:
    """Check playbooks: every problem as FILE:LINE:COL: message, in file order, then a count
    line. Exit 2 if any error (with --strict, any warning too)."""
    from plugins.registry import known_kinds

    failed = False
    for file in files:
        report = dsl.check_file(file, known_kinds=known_kinds())
        if strict:
            report = report.strict()
        for problem in report.findings:
            say(str(problem))
        say(f"{file}: {tally(report)}")
        failed = failed or bool(report.errors)
    sys.exit(EXIT_USAGE if failed else EXIT_OK)


# -- up -------------------------------------------------------------------------------


@main.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice([*ROLES, "api", "all"]),
    help="Roles to run (repeatable; default all, the REST API included).",
)
@click.option(
    "--api-port",
    type=int,
    envvar="NOETL_API_PORT",
    help="Port of the REST API (default 8082; 0 picks a free one).",
)
@click.option(
    "--api-host",
    envvar="NOETL_API_HOST",
    help="Address the REST API listens on (default 127.0.0.1 without a token, else all).",
)
@click.option(
    "--insecure",
    is_flag=True,
    envvar="NOETL_API_INSECURE",
    help="Serve the API without a token on a non-loopback address anyway.",
)
@click.option(
    "--pool",
    help="The runner pool this process's runner serves: it takes commands of "
    "`noetl.cmd.POOL` only (default NOETL_RUNNER_POOL, `default`).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Commands this process's runner holds at once (default NOETL_RUNNER_CONCURRENCY, 16).",
)
def up(
    roles: tuple[str, ...],
    api_port: int | None,
    api_host: str | None,
    insecure: bool,
    pool: str | None,
    concurrency: int | None,
) -> None:
    """Start the mesh (and the REST API) and run until SIGTERM/SIGINT, then drain."""
    from prometheus_client import start_http_server

    from actors.mesh import Mesh
    from noetl.api import ApiServer, allowed_hosts
    from noetl.metrics import REGISTRY

    chosen = (*ROLES, "api") if not roles or "all" in roles else roles
    config = settings()
    if pool is not None:
        problem = bad_pool_name(pool)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--pool")
        config = msgspec.structs.replace(config, runner_pool=pool)
    if concurrency is not None:
        config = msgspec.structs.replace(config, runner_concurrency=concurrency)
    one_line_reconnects()

    async def body(client: Client) -> int:
        if "api" in chosen:
            _refuse_the_server_daemons_port(client.settings, api_port)
        mesh = Mesh(client.bus, client.store, client.settings, [r for r in chosen if r != "api"])
        await mesh.start()
        api = None
        port_for_metrics = client.settings.metrics_port
        if "api" not in chosen and port_for_metrics is not None:
            # No API here to serve /metrics: the actors' series get a listener of their own.
            start_http_server(port_for_metrics, registry=REGISTRY)
            say(f"noetl: metrics on port {port_for_metrics} (/metrics)")
        if "api" in chosen:
            port = client.settings.api_port if api_port is None else api_port
            api = ApiServer(
                client,
                host=api_host or client.settings.api_host,
                port=port,
                token=client.settings.api_token,
                insecure=insecure or client.settings.api_insecure,
                allowed_hosts=allowed_hosts(client.settings.api_allowed_hosts),
                read_timeout=client.settings.api_read_timeout,
            )
            await api.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if "coordinator" in mesh.roles:
            # One line per execution start and end and per failed step, from the
            # coordinators' announcements (every `up` hosting one says them all).
            await client.bus.nc.subscribe(_ANNOUNCEMENTS, cb=_log_announcement)
        serving = ""
        if api is not None:
            serving = f"; REST API on {api.host}:{api.port}"
            if api.open:
                serving += " (no token: set NOETL_API_TOKEN to require one)"
        say(f"noetl: mesh up ({', '.join(mesh.roles) or 'no actors'}){serving}; Ctrl-C stops it")
        await stop.wait()
        say("noetl: draining")
        if api is not None:
            await api.stop()
        await mesh.stop()
        return EXIT_OK

    run_command(with_client(config, body, relaxed=True))


def _refuse_the_server_daemons_port(config: Settings, api_port: int | None) -> None:
    """ConfigError when the `server` daemon of this home (started by `server start`, or by
    `execute` on demand) already serves the API port `up` would listen on."""
    port = config.api_port if api_port is None else api_port
    info = Daemon(config.home, "server").running()
    if info is not None and info.pid != os.getpid() and info.port == port:
        raise ConfigError(
            f"the noetl server (pid {info.pid}) already serves the API on port {port} and "
            "runs a mesh: use it as it is, stop it with `noetl-runtime server stop` (and "
            "`noetl-runtime worker stop`), or pass --api-port"
        )


async def _log_announcement(msg: Any) -> None:
    eid = msg.subject.rsplit(".", 1)[1]
    for event in msgspec.json.decode(msg.data):
        kind, status, step = event.get("type"), event.get("status"), event.get("step")
        message = (event.get("error") or {}).get("message", "")
        if kind == "execution.started":
            line = f"execution {eid} started"
        elif kind in ("execution.completed", "execution.failed", "execution.cancelled"):
            line = f"execution {eid} {status}" + (f": {message}" if message else "")
        elif kind == "step.failed":
            line = f"execution {eid}: step {step} failed: {message}"
        else:
            continue
        say(f"{time.strftime('%Y-%m-%d %H:%M:%S')} noetl: {line}")


# -- register -------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@json_option()
def register(file: str, as_json: bool) -> None:
    """Validate and register a playbook in the catalog."""
    load_or_exit(file)
    config = settings()

    async def body(client: Client) -> int:
        async with Hosted(client, ["catalog"]):
            reply = await client.register(Path(file))
        if as_json:
            print_json({"path": reply.path, "version": reply.version, "created": reply.created})
        else:
            what = "registered" if reply.created else "unchanged"
            out.print(f"{what}: {reply.path} version {reply.version}")
        return EXIT_OK

    run_command(with_client(config, body))


# -- down -----------------------------------------------------------------------------


@main.command()
@click.option("--force", is_flag=True, help="Stop them even while a mesh uses them.")
def down(force: bool) -> None:
    """Stop the embedded NATS and PostgreSQL servers of NOETL_HOME; refused while a mesh
    (`up`, `server`, `worker`, a `run`) uses them, unless --force."""
    home = settings().home
    users = [] if force else asyncio.run(_mesh_roles(home))
    if users:
        fail(
            f"the embedded servers of {home} are in use by a running mesh ({', '.join(users)}): "
            "stop it first (`noetl-runtime server stop`, `noetl-runtime worker stop`, Ctrl-C "
            "on `up`), or use `down --force`"
        )
    stopped = local.stop_local(home)
    say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


async def _mesh_roles(home: Path) -> list[str]:
    """The mesh roles some process answers for on the embedded NATS of `home`."""
    url = await asyncio.to_thread(local.running_nats_url, home)
    if url is None:
        return []
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:

        async def answers(role: str) -> bool:
            try:
                await nc.request(f"{PING_PREFIX}.{role}", b"", timeout=0.5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
                return False
            return True

        found = await asyncio.gather(*(answers(r) for r in ROLES))
        return [r for r, ok in zip(ROLES, found, strict=True) if ok]
    finally:
        await nc.close()


# -- the other areas: one line each (see noetl.cli_core) ------------------------------

for command in (run, execute, restart, cancel, watch, status, events, logs, result, list_):
    main.add_command(command)
main.add_command(playbooks)
main.add_command(credential)
main.add_command(db)
db.add_command(db_check)
main.add_command(server)
main.add_command(worker)
main.add_command(catalog)
main.add_command(execution)
main.add_command(bench)
main.add_command(build)
main.add_command(k8s)
