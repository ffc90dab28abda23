"""Command line: `noetl-runtime` (alias `noetl`): the root group `main` and the commands that
run and inspect executions. What every command shares (settings, exit codes, `--json`,
tables, opening a client) is in `noetl.cli_core`; each other area has its own module
`noetl/cli_<area>.py` registered at the end of this file with one `main.add_command(...)`.

Exit codes: 0 success (execution completed), 1 execution failed or cancelled or a runtime
error, 2 invalid playbook or usage (see `noetl.cli_core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from noetl import dsl, local
from noetl.cli_bench import bench
from noetl.cli_check import db_check
from noetl.cli_core import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliState,
    err,
    json_option,
    out,
    print_json,
    print_table,
    read_json,
    run_command,
    say,
    settings,
    with_client,
)
from noetl.cli_credentials import credential
from noetl.cli_db import db
from noetl.cli_deploy import build, k8s
from noetl.cli_inspect import catalog, execution
from noetl.cli_server import server, worker
from noetl.client import Client
from noetl.config import ROLES

__all__ = ["main"]


F = TypeVar("F", bound=Callable[..., Any])


def _workload_options(about: str = "Workload as JSON, or @file.json.") -> Callable[[F], F]:
    """`--workload` and `--set`, passed as `workload` and `assignments` (see `_parse_workload`)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--set", "assignments", multiple=True, help="key=value (repeatable)."
        )(command)
        return click.option("--workload", help=about)(command)

    return decorate


def _parse_workload(workload: str | None, assignments: tuple[str, ...]) -> dict[str, Any]:
    """`--workload JSON|@file.json` then `--set key=value` (dotted keys nest; values are JSON
    when they parse as JSON, else strings)."""
    data: dict[str, Any] = {}
    if workload:
        loaded = read_json(workload, "--workload")
        if not isinstance(loaded, dict):
            raise click.UsageError("--workload must be a JSON object")
        data.update(loaded)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--set expects key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise click.UsageError(f"--set {key}: `{part}` is not an object")
        target[leaf] = value
    return data


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
        say(f"{file}: {_tally(report)}")
        failed = failed or bool(report.errors)
    sys.exit(EXIT_USAGE if failed else EXIT_OK)


def _tally(report: dsl.Report) -> str:
    """`valid`, `valid, 2 warnings` or `3 errors, 1 warning`."""

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    head = count(len(report.errors), "error") if report.errors else "valid"
    return f"{head}, {count(len(report.warnings), 'warning')}" if report.warnings else head


def _load_or_exit(file: str) -> dsl.Playbook:
    """The playbook, or exit 2 after its errors; warnings are shown and never stop a run."""
    from plugins.registry import known_kinds

    report = dsl.check_file(file, known_kinds=known_kinds())
    if report.errors or report.playbook is None:
        for problem in report.findings:
            say(str(problem))
        say(f"{file}: {_tally(report)}")
        sys.exit(EXIT_USAGE)
    if report.warnings:
        say(f"{file}: {_tally(report)} (it runs; `validate --strict` would refuse it)")
        for problem in report.warnings:
            say(str(problem))
    return report.playbook


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
def up(roles: tuple[str, ...], api_port: int | None, api_host: str | None, insecure: bool) -> None:
    """Start the mesh (and the REST API) and run until SIGTERM/SIGINT, then drain."""
    from prometheus_client import start_http_server

    from actors.mesh import Mesh
    from noetl.api import ApiServer, allowed_hosts
    from noetl.metrics import REGISTRY

    chosen = (*ROLES, "api") if not roles or "all" in roles else roles
    config = settings()

    async def body(client: Client) -> int:
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
            )
            await api.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
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


# -- run / execute --------------------------------------------------------------------


class _Progress:
    """Prints each step as it starts and ends."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind, step = event["type"], event.get("step")
        if kind == "step.started" and step:
            self.started[step] = time.monotonic()
            err.print(f"  [cyan]▶[/] {step}")
        elif kind in ("step.completed", "step.failed") and step:
            took = time.monotonic() - self.started.get(step, time.monotonic())
            if kind == "step.completed":
                err.print(f"  [green]✓[/] {step} [dim]{took:.2f}s[/]")
            else:
                message = (event.get("error") or {}).get("message", "")
                err.print(f"  [red]✗[/] {step} [dim]{took:.2f}s[/] {message}", markup=True)


@contextlib.asynccontextmanager
async def _hosted(client: Client, roles: Sequence[str]) -> AsyncIterator[None]:
    """Host the actors of `roles` in this process for the duration, unless a running mesh
    already answers for them."""
    from actors.mesh import Mesh, missing_roles

    missing = await missing_roles(client.bus, roles)
    mesh = Mesh(client.bus, client.store, client.settings, missing) if missing else None
    if mesh is not None:
        await mesh.start()
    try:
        yield
    finally:
        if mesh is not None:
            await mesh.stop()


async def _execute(
    client: Client,
    path: str,
    version: int | None,
    workload: dict[str, Any],
    *,
    wait: bool,
    as_json: bool,
    timeout: float | None,
) -> int:
    eid = await client.start(path, version=version, workload=workload, timeout=timeout)
    if not wait:
        if as_json:
            print_json({"execution_id": str(eid), "path": path, "status": "started"})
        else:
            out.print(f"execution {eid} started ({path})")
        return EXIT_OK
    if not as_json:
        err.print(f"execution [bold]{eid}[/] of {path}")
    try:
        doc = await client.wait(eid, on_event=None if as_json else _Progress(), timeout=timeout)
    except TimeoutError:
        doc = await client.store.describe(eid)
        doc["error"] = doc.get("error") or {
            "type": "timeout",
            "message": f"still {doc['status']} after {timeout}s",
        }
    _show_document(doc, as_json)
    return EXIT_OK if doc["status"] == "completed" else EXIT_FAILED


def _show_document(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    colour = {"completed": "green", "failed": "red"}.get(doc["status"], "yellow")
    out.print(
        f"[{colour}]{doc['status']}[/] {doc['path']} v{doc['version']} "
        f"(execution {doc['execution_id']})"
    )
    if doc.get("error"):
        out.print(f"[red]error:[/] {doc['error'].get('message', doc['error'])}", markup=True)
    out.print_json(data=doc.get("result"), default=str)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@_workload_options()
@json_option("Print one JSON document.")
@click.option("--timeout", type=float, help="Seconds to wait for the execution.")
def run(
    file: str,
    workload: str | None,
    assignments: tuple[str, ...],
    as_json: bool,
    timeout: float | None,
) -> None:
    """Validate, register and execute a playbook file, showing each step."""
    _load_or_exit(file)
    data = _parse_workload(workload, assignments)
    config = settings()

    async def body(client: Client) -> int:
        async with _hosted(client, ROLES):
            reply = await client.register(Path(file))
            return await _execute(
                client, reply.path, reply.version, data, wait=True, as_json=as_json, timeout=timeout
            )

    run_command(with_client(config, body, relaxed=True))


@main.command()
@click.argument("path")
@click.option("--version", "version", type=int, help="Catalog version (default latest).")
@_workload_options()
@click.option("--wait", is_flag=True, help="Wait for the end and print the result.")
@json_option()
@click.option("--timeout", type=float, help="Seconds to wait (with --wait).")
def execute(
    path: str,
    version: int | None,
    workload: str | None,
    assignments: tuple[str, ...],
    wait: bool,
    as_json: bool,
    timeout: float | None,
) -> None:
    """Start an execution of a registered playbook."""
    data = _parse_workload(workload, assignments)
    config = settings()

    async def body(client: Client) -> int:
        # Without --wait nothing needs hosting: a later `up` picks the execution up.
        async with _hosted(client, ROLES if wait else ()):
            return await _execute(
                client, path, version, data, wait=wait, as_json=as_json, timeout=timeout
            )

    run_command(with_client(config, body, relaxed=True))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@json_option()
def register(file: str, as_json: bool) -> None:
    """Validate and register a playbook in the catalog."""
    _load_or_exit(file)
    config = settings()

    async def body(client: Client) -> int:
        async with _hosted(client, ["catalog"]):
            reply = await client.register(Path(file))
        if as_json:
            print_json({"path": reply.path, "version": reply.version, "created": reply.created})
        else:
            what = "registered" if reply.created else "unchanged"
            out.print(f"{what}: {reply.path} version {reply.version}")
        return EXIT_OK

    run_command(with_client(config, body))


# -- reading --------------------------------------------------------------------------


def _execution_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.UsageError(f"execution id must be a number, got {value!r}") from None


@main.command()
@click.argument("execution_id")
@click.option("--from", "from_step", help="Step to run again (default: the one that failed).")
@_workload_options("Workload keys to change, as JSON or @file.json.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@json_option("Print the new execution's document.")
@click.option("--timeout", type=float, help="Seconds to wait.")
def restart(
    execution_id: str,
    from_step: str | None,
    workload: str | None,
    assignments: tuple[str, ...],
    wait: bool,
    as_json: bool,
    timeout: float | None,
) -> None:
    """Run an execution again from a step, reusing every result recorded before it."""
    eid = _execution_id(execution_id)
    data = _parse_workload(workload, assignments)

    async def body(client: Client) -> int:
        async with _hosted(client, ROLES if wait else ()):
            new_id = await client.restart(eid, from_step=from_step, workload=data)
            if not wait:
                if as_json:
                    print_json({"execution_id": str(new_id), "restarted_from": str(eid)})
                else:
                    out.print(f"execution {new_id} restarts {eid}")
                return EXIT_OK
            if not as_json:
                err.print(f"execution [bold]{new_id}[/] restarts {eid}")
            doc = await client.wait(
                new_id, on_event=None if as_json else _Progress(), timeout=timeout
            )
        _show_document(doc, as_json)
        return EXIT_OK if doc["status"] == "completed" else EXIT_FAILED

    run_command(with_client(settings(), body, relaxed=True))


@main.command()
@click.argument("execution_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the execution has ended."
)
@json_option("Print the execution document.")
def cancel(execution_id: str, reason: str, wait: bool, as_json: bool) -> None:
    """Cancel an execution: no new commands, running ones stopped, children cancelled."""
    eid = _execution_id(execution_id)

    async def body(client: Client) -> int:
        await client.cancel(eid, reason)
        if not wait:
            err.print(f"cancellation of {eid} requested")
            return EXIT_OK
        async with _hosted(client, ["coordinator"]):
            doc = await client.wait(eid, timeout=60)
        _show_document(doc, as_json)
        return EXIT_OK if doc["status"] in ("cancelled", "completed", "failed") else EXIT_FAILED

    run_command(with_client(settings(), body))


@main.command()
@click.argument("execution_id")
@json_option()
def status(execution_id: str, as_json: bool) -> None:
    """Show an execution: status, result, steps, vars."""
    eid = _execution_id(execution_id)

    async def body(client: Client) -> int:
        doc = await client.store.describe(eid)
        if as_json:
            print_json(doc)
        else:
            _show_document(doc, False)
            print_table(
                ("step", "result"),
                [
                    (step, json.dumps(result, default=str)[:120])
                    for step, result in doc["steps"].items()
                ],
            )
        return EXIT_OK

    run_command(with_client(settings(), body))


@main.command()
@click.argument("execution_id")
@json_option("Print a JSON array.")
def events(execution_id: str, as_json: bool) -> None:
    """List an execution's events, oldest first."""
    eid = _execution_id(execution_id)

    async def body(client: Client) -> int:
        rows = await client.store.list_events(eid)
        if as_json:
            print_json(rows)
            return EXIT_OK
        print_table(
            ("event_id", "type", "step", "status", "command_id", "created_at"),
            [
                (
                    str(r["event_id"]),
                    r["event_type"],
                    r["step"] or "",
                    r["status"] or "",
                    r["command_id"] or "",
                    r["created_at"],
                )
                for r in rows
            ],
        )
        return EXIT_OK

    run_command(with_client(settings(), body))


@main.command(name="list")
@json_option()
@click.option("--limit", default=50, show_default=True, help="How many executions.")
def list_(as_json: bool, limit: int) -> None:
    """List recent executions."""

    async def body(client: Client) -> int:
        rows = await client.store.list_executions(limit)
        if as_json:
            print_json(rows)
            return EXIT_OK
        print_table(
            ("execution_id", "path", "version", "status", "started_at", "ended_at"),
            [
                (
                    r["execution_id"],
                    r["path"],
                    str(r["version"]),
                    r["status"],
                    r["started_at"],
                    r["ended_at"] or "",
                )
                for r in rows
            ],
        )
        return EXIT_OK

    run_command(with_client(settings(), body))


@main.command()
def down() -> None:
    """Stop the embedded NATS and PostgreSQL servers of NOETL_HOME."""
    stopped = local.stop_local(settings().home)
    say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


# -- the other areas: one line each (see noetl.cli_core) ------------------------------

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
