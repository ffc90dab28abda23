"""`run`, `execute`, `restart`, `cancel` and `watch`: starting executions and following them.

Nothing is ever silently queued: `execute` without `--wait` finds a running mesh or starts
the `server` and `worker` daemons (and says so); `run`, `execute --wait` and `restart` host
whatever roles no running process answers for, in this process, for their own execution
only: commands of other executions it picks up meanwhile are named, and left (unacked, so
they run again on the next mesh) when its own execution ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import click

from noetl import dsl
from noetl.cli_core import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    err,
    json_option,
    out,
    print_json,
    read_json,
    run_command,
    say,
    settings,
    with_client,
)
from noetl.cli_follow import Detached, follow, id_arg
from noetl.client import Client
from noetl.config import ROLES, Settings
from noetl.errors import ExecutionNotFound

__all__ = ["cancel", "execute", "load_or_exit", "restart", "run", "tally", "watch"]

F = TypeVar("F", bound=Callable[..., Any])

# Seconds `execute` waits for a coordinator to take the execution before calling it queued.
_TAKEN_SECONDS = 30.0
# Seconds a finished `run` gives the commands of other executions it holds before leaving them.
_OTHERS_GRACE = 1.0


def workload_options(about: str = "Workload as JSON, or @file.json.") -> Callable[[F], F]:
    """`--workload` and `--set`, passed as `workload` and `assignments` (see `parse_workload`)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--set", "assignments", multiple=True, help="key=value (repeatable)."
        )(command)
        return click.option("--workload", help=about)(command)

    return decorate


def parse_workload(workload: str | None, assignments: tuple[str, ...]) -> dict[str, Any]:
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


def tally(report: dsl.Report) -> str:
    """`valid`, `valid, 2 warnings` or `3 errors, 1 warning`."""

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    head = count(len(report.errors), "error") if report.errors else "valid"
    return f"{head}, {count(len(report.warnings), 'warning')}" if report.warnings else head


def load_or_exit(file: str) -> dsl.Playbook:
    """The playbook, or exit 2 after its errors; warnings are shown and never stop a run."""
    from plugins.registry import known_kinds

    report = dsl.check_file(file, known_kinds=known_kinds())
    if report.errors or report.playbook is None:
        for problem in report.findings:
            say(str(problem))
        say(f"{file}: {tally(report)}")
        sys.exit(EXIT_USAGE)
    if report.warnings:
        say(f"{file}: {tally(report)} (it runs; `validate --strict` would refuse it)")
        for problem in report.warnings:
            say(str(problem))
    return report.playbook


class Hosted:
    """The actors of `roles` no running process answers for, hosted here while in use."""

    def __init__(self, client: Client, roles: Sequence[str]) -> None:
        self.client = client
        self.roles = roles
        self.mesh: Any = None
        self._named: set[int] = set()

    async def __aenter__(self) -> Hosted:
        from actors.mesh import Mesh, missing_roles

        missing = await missing_roles(self.client.bus, self.roles)
        if missing:
            self.mesh = Mesh(self.client.bus, self.client.store, self.client.settings, missing)
            await self.mesh.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Leaving on an error or a detach: nothing of this process is worth waiting for.
        await self.stop(grace=None if kind is None else 0.0)

    def others(self, own: int) -> set[int]:
        """Executions other than `own` whose commands the hosted runner is running."""
        from actors.runner import Runner

        found: set[int] = set()
        for actor in self.mesh.actors if self.mesh is not None else ():
            if isinstance(actor, Runner):
                found |= actor.executions_in_hand()
        return found - {own}

    def name_others(self, own: int) -> None:
        """Say (once each) which other executions' commands this process is running."""
        for eid in sorted(self.others(own) - self._named):
            self._named.add(eid)
            say(
                f"noetl: also running commands of execution {eid} (left unfinished earlier); "
                f"this process leaves them when execution {own} ends"
            )

    async def finish(self, own: int) -> None:
        """After `own` ended: stop at once, leaving other executions' commands unacked (they
        run again on the next mesh) instead of waiting for them."""
        others = self.others(own)
        if not others:
            await self.stop()
            return
        listed = ", ".join(str(e) for e in sorted(others))
        say(
            f"noetl: leaving the commands of execution {listed} to the next mesh "
            "(`noetl-runtime server start` and `worker start`, or the next `run`)"
        )
        await self.stop(grace=_OTHERS_GRACE)

    async def stop(self, grace: float | None = None) -> None:
        """Drain the hosted mesh; with `grace`, cancel what is still running after it."""
        mesh, self.mesh = self.mesh, None
        if mesh is None:
            return
        if grace is None:
            await mesh.stop()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(mesh.stop(), grace)


# Seconds `run` and `execute --wait` keep waiting past `--timeout`, which is also the
# execution's own: its timer ends it then, and that end is worth showing.
_TIMER_GRACE = 10.0


async def _follow_and_show(
    client: Client,
    hosted: Hosted,
    eid: int,
    *,
    as_json: bool,
    timeout: float | None,
    timed: bool = False,
) -> int:
    """Follow `eid` live (Ctrl-C: cancel, then detach), print its document, return the
    exit code of its status. `timed`: the execution was started with `timeout` as its own,
    so its timer gets a few seconds to end it before the waiting stops."""
    try:
        doc = await follow(
            client,
            eid,
            show=not as_json,
            timeout=timeout if timeout is None or not timed else timeout + _TIMER_GRACE,
            interruptible=True,
            on_tick=lambda: hosted.name_others(eid),
        )
    except Detached:
        await hosted.stop(grace=0.0)
        return EXIT_INTERRUPTED
    except TimeoutError:
        doc = await client.store.describe(eid)
        doc["error"] = doc.get("error") or {
            "type": "timeout",
            "message": f"stopped waiting after {timeout}s with the execution still "
            f"{doc['status']}: `noetl-runtime watch {eid}` follows it on a running mesh",
        }
        await hosted.finish(eid)
        show_document(doc, as_json)
        return EXIT_FAILED if doc["status"] != "completed" else EXIT_OK
    await hosted.finish(eid)
    show_document(doc, as_json)
    return exit_code(doc["status"])


def exit_code(status: str) -> int:
    """The documented exit code of an execution's status: 0 unless failed or cancelled."""
    return EXIT_FAILED if status in ("failed", "cancelled") else EXIT_OK


def show_document(doc: dict[str, Any], as_json: bool) -> None:
    """The execution document: as JSON, or its status line, error and result."""
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
    if doc.get("result") is not None or doc["status"] == "completed":
        # A running, failed or cancelled execution without a result: no `null` to read.
        out.print_json(data=doc.get("result"), default=str)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@workload_options()
@json_option("Print one JSON document.")
@click.option("--timeout", type=float, help="Seconds to wait for the execution.")
def run(
    file: str,
    workload: str | None,
    assignments: tuple[str, ...],
    as_json: bool,
    timeout: float | None,
) -> None:
    """Validate, register and execute a playbook file, showing each step. Ctrl-C cancels
    the execution; a second Ctrl-C detaches."""
    load_or_exit(file)
    data = parse_workload(workload, assignments)

    async def body(client: Client) -> int:
        async with Hosted(client, ROLES) as hosted:
            reply = await client.register(Path(file))
            eid = await client.start(
                reply.path, version=reply.version, workload=data, timeout=timeout
            )
            if not as_json:
                err.print(f"execution [bold]{eid}[/] of {reply.path}")
            return await _follow_and_show(
                client, hosted, eid, as_json=as_json, timeout=timeout, timed=True
            )

    run_command(with_client(settings(), body, relaxed=True))


def _ensure_mesh(config: Settings, missing: Sequence[str]) -> None:
    """Start the daemons that answer for the `missing` roles, and say so (blocks)."""
    from noetl.cli_server import start_server, start_worker

    if {"catalog", "coordinator"} & set(missing):
        info, _ = start_server(config)
        say(
            f"noetl: no coordinator was running: started the noetl server (pid {info.pid}, "
            f"port {info.port}); `noetl-runtime server stop` stops it"
        )
    if "runner" in missing:
        info, pool, _ = start_worker(config)
        say(
            f"noetl: no runner was running: started noetl worker {pool} (pid {info.pid}); "
            "`noetl-runtime worker stop` stops it"
        )


async def _taken(client: Client, eid: int) -> bool:
    """True once a coordinator has taken the execution (its row exists)."""
    deadline = asyncio.get_running_loop().time() + _TAKEN_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        try:
            await client.store.get_execution(eid)
            return True
        except ExecutionNotFound:
            await asyncio.sleep(0.1)
    return False


@click.command()
@click.argument("path")
@click.option("--version", "version", type=int, help="Catalog version (default latest).")
@workload_options()
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
    """Start an execution of a registered playbook. Without --wait it runs on the running
    mesh, or on the server and worker daemons started now (and announced)."""
    data = parse_workload(workload, assignments)
    config = settings()

    async def body(client: Client) -> int:
        if wait:
            async with Hosted(client, ROLES) as hosted:
                eid = await client.start(path, version=version, workload=data, timeout=timeout)
                if not as_json:
                    err.print(f"execution [bold]{eid}[/] of {path}")
                return await _follow_and_show(
                    client, hosted, eid, as_json=as_json, timeout=timeout, timed=True
                )
        from actors.mesh import missing_roles

        await client.store.get_playbook(path, version)  # unknown paths fail before any start
        missing = await missing_roles(client.bus, ROLES)
        if missing:
            await asyncio.to_thread(_ensure_mesh, config, missing)
        eid = await client.start(path, version=version, workload=data, timeout=timeout)
        state = "started" if await _taken(client, eid) else "queued"
        if as_json:
            print_json({"execution_id": str(eid), "path": path, "status": state})
        elif state == "started":
            out.print(f"execution {eid} started ({path}); `noetl-runtime watch {eid}` follows it")
        else:
            out.print(
                f"execution {eid} queued ({path}): no coordinator took it within "
                f"{_TAKEN_SECONDS:g} s; `noetl-runtime server status` says why"
            )
        return EXIT_OK

    run_command(with_client(config, body, relaxed=True))


@click.command()
@click.argument("execution_id")
@click.option("--from", "from_step", help="Step to run again (default: the one that failed).")
@workload_options("Workload keys to change, as JSON or @file.json.")
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
    eid = id_arg(execution_id)
    data = parse_workload(workload, assignments)

    async def body(client: Client) -> int:
        async with Hosted(client, ROLES if wait else ()) as hosted:
            new_id = await client.restart(eid, from_step=from_step, workload=data)
            if not wait:
                if as_json:
                    print_json({"execution_id": str(new_id), "restarted_from": str(eid)})
                else:
                    out.print(f"execution {new_id} restarts {eid}")
                return EXIT_OK
            if not as_json:
                err.print(f"execution [bold]{new_id}[/] restarts {eid}")
            return await _follow_and_show(client, hosted, new_id, as_json=as_json, timeout=timeout)

    run_command(with_client(settings(), body, relaxed=True))


@click.command()
@click.argument("execution_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the execution has ended."
)
@json_option("Print the execution document.")
def cancel(execution_id: str, reason: str, wait: bool, as_json: bool) -> None:
    """Cancel an execution: no new commands, running ones stopped, children cancelled."""
    eid = id_arg(execution_id)

    async def body(client: Client) -> int:
        await client.cancel(eid, reason)
        if not wait:
            err.print(f"cancellation of {eid} requested")
            return EXIT_OK
        async with Hosted(client, ["coordinator"]):
            doc = await client.wait(eid, timeout=60)
        show_document(doc, as_json)
        return EXIT_OK if doc["status"] in ("cancelled", "completed", "failed") else EXIT_FAILED

    run_command(with_client(settings(), body))


@click.command()
@click.argument("execution_id")
@json_option("Print the document once it has ended.")
def watch(execution_id: str, as_json: bool) -> None:
    """Follow an execution live until it ends (from its start: steps, loop progress,
    retries, children); exit with its status's code. Ctrl-C stops watching only."""
    eid = id_arg(execution_id)

    async def body(client: Client) -> int:
        doc = await client.store.describe(eid)
        if not as_json:
            err.print(f"execution [bold]{eid}[/] of {doc['path']} ({doc['status']})")
        doc = await follow(client, eid, show=not as_json)
        show_document(doc, as_json)
        return exit_code(doc["status"])

    run_command(with_client(settings(), body))
