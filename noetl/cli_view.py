"""`status`, `events`, `logs`, `result`, `list` and `playbooks`: reading what executions did.

Every id is printed as a string in JSON (63-bit integers lose digits in most JSON readers);
an id that is not one is a one-line error, exit 2.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click
import nats.errors

from noetl.bus import START_STREAM
from noetl.cli_core import (
    EXIT_OK,
    EXIT_USAGE,
    fail,
    json_option,
    out,
    print_json,
    print_table,
    run_command,
    say,
    settings,
    with_client,
)
from noetl.cli_follow import follow, id_arg
from noetl.cli_run import exit_code, show_document
from noetl.client import Client
from noetl.engine.events import TERMINAL_STATUSES
from noetl.errors import ExecutionNotFound, MessageError
from noetl.messages import StartExecution, decode_start
from noetl.pool_wait import waiting_for_pools
from noetl.store import views
from noetl.timeline import Timeline, log_lines, short_duration

__all__ = ["events", "list_", "logs", "playbooks", "result", "status"]

STATUSES = ("running", "completed", "failed", "cancelled")


async def queued_path(client: Client, eid: int, scan: int = 10000) -> str | None:
    """The playbook path of a start of `eid` still waiting in the start stream (a work
    queue: a message stays there until a coordinator has taken it), else None."""
    try:
        info = await client.bus.js.stream_info(START_STREAM)
    except nats.errors.Error:
        return None
    first = max(info.state.first_seq, info.state.last_seq - scan + 1)
    for seq in range(first, info.state.last_seq + 1):
        try:
            msg = await client.bus.js.get_msg(START_STREAM, seq)
            start = decode_start(msg.data or b"", default_id=-1, msg_id=None)
        except (nats.errors.Error, MessageError):
            continue  # taken meanwhile, or not a start we can read
        if isinstance(start, StartExecution) and start.execution_id == eid:
            return start.path
    return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return short_duration(seconds)
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@click.command()
@click.argument("execution_id")
@json_option()
@click.option("-f", "--follow", "following", is_flag=True, help="Follow it live (as `watch`).")
def status(execution_id: str, as_json: bool, following: bool) -> None:
    """Show an execution: status, result, and each step's state, progress (23/50),
    duration (from its start to its end) and the time its commands ran on runners (`ran`).
    Exit 1 when it failed or was cancelled."""
    eid = id_arg(execution_id)

    async def body(client: Client) -> int:
        try:
            doc = await client.store.describe(eid)
        except ExecutionNotFound:
            path = await queued_path(client, eid)
            if path is None:
                raise
            if as_json:
                print_json({"execution_id": str(eid), "path": path, "status": "queued"})
            else:
                out.print(
                    f"[yellow]queued[/] {path} (execution {eid}): no coordinator has taken it "
                    "yet; `noetl-runtime server start` runs one"
                )
            return EXIT_OK
        if following and doc["status"] not in TERMINAL_STATUSES:
            doc = await follow(client, eid, show=not as_json)
        timeline = Timeline()
        timeline.feed(await views.events_after(client.store.pool, eid, 0))
        waiting = await waiting_for_pools(client.store.pool, client.bus, eid, doc["status"])
        doc["waiting_for_pool"] = waiting
        doc["step_states"] = [
            {
                "step": s.step,
                "status": f"waiting for pool {waiting[s.step]}" if s.step in waiting else s.status,
                "progress": s.progress() or None,
                "seconds": round(s.seconds(), 3),
                "ran_seconds": None if s.ran is None else round(s.ran, 6),
                "retries": s.retries,
            }
            for s in timeline.steps.values()
        ]
        if as_json:
            print_json(doc)
            return exit_code(doc["status"])
        show_document(doc, False)
        rows = []
        for s in timeline.steps.values():
            shown = doc["steps"].get(s.step) if s.status != "running" else None
            rows.append(
                (
                    s.step,
                    f"waiting for pool {waiting[s.step]}" if s.step in waiting else s.status,
                    s.progress(),
                    _duration(s.seconds()),
                    _duration(s.ran),
                    str(s.retries) if s.retries else "",
                    "" if shown is None else json.dumps(shown, default=str)[:80],
                )
            )
        print_table(("step", "status", "progress", "duration", "ran", "retries", "result"), rows)
        return exit_code(doc["status"])

    run_command(with_client(settings(), body))


@click.command()
@click.argument("execution_id")
@json_option("Print a JSON array.")
def events(execution_id: str, as_json: bool) -> None:
    """List an execution's events, oldest first."""
    eid = id_arg(execution_id)

    async def body(client: Client) -> int:
        rows = [{**r, "event_id": str(r["event_id"])} for r in await client.store.list_events(eid)]
        if as_json:
            print_json(rows)
            return EXIT_OK
        print_table(
            ("event_id", "type", "step", "status", "command_id", "created_at"),
            [
                (
                    r["event_id"],
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


@click.command()
@click.argument("execution_id")
@click.option("--step", help="Only this step's lines.")
@click.option("-f", "--follow", "following", is_flag=True, help="Keep printing until it ends.")
def logs(execution_id: str, step: str | None, following: bool) -> None:
    """What an execution's steps did, one line each: commands and their attempts, python
    stdout (`|`) and stderr (`!`), tool facts, errors with their traceback's last frames,
    retries, step and execution ends."""
    eid = id_arg(execution_id)

    async def body(client: Client) -> int:
        doc = await client.store.describe(eid)
        last = 0
        while True:
            rows = await views.events_after(client.store.pool, eid, last)
            for line in log_lines(rows, step):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            last = max([last, *(int(r["event_id"]) for r in rows)])
            ended = any(
                r["event_type"].startswith("execution.") and r["status"] in TERMINAL_STATUSES
                for r in rows
            )
            if not following or ended:
                break
            await asyncio.sleep(0.5)
        doc = await client.store.describe(eid)
        return exit_code(doc["status"]) if doc["status"] in TERMINAL_STATUSES else EXIT_OK

    run_command(with_client(settings(), body))


@click.command()
@click.argument("execution_id")
@click.option("--step", help="That step's result instead of the execution's.")
def result(execution_id: str, step: str | None) -> None:
    """Print an execution's result (or one step's) as JSON on stdout, for scripts."""
    eid = id_arg(execution_id)

    async def body(client: Client) -> int:
        doc = await client.store.describe(eid)
        if step is None:
            print_json(doc["result"])
            return exit_code(doc["status"])
        if step not in doc["steps"]:
            known = ", ".join(doc["steps"]) or "none yet"
            fail(f"execution {eid} has no result for step `{step}` (steps with one: {known})")
        print_json(doc["steps"][step])
        return EXIT_OK

    run_command(with_client(settings(), body))


@click.command(name="list")
@json_option()
@click.option("--limit", default=50, show_default=True, help="How many executions (1-10000).")
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--path", help="Only this playbook path (a prefix when it ends with *).")
def list_(as_json: bool, limit: int, status_: str | None, path: str | None) -> None:
    """List recent executions, newest first, with their duration."""
    if not 1 <= limit <= 10000:
        fail(f"--limit is from 1 to 10000, got {limit}", EXIT_USAGE)

    async def body(client: Client) -> int:
        rows = await views.find_executions(client.store.pool, limit, status=status_, path=path)
        if as_json:
            print_json(rows)
            return EXIT_OK
        print_table(
            ("execution_id", "path", "version", "status", "duration", "started_at"),
            [
                (
                    r["execution_id"],
                    r["path"],
                    str(r["version"]),
                    r["status"],
                    _duration(r["duration_seconds"]),
                    r["started_at"],
                )
                for r in rows
            ],
        )
        return EXIT_OK

    run_command(with_client(settings(), body))


@click.command()
@json_option()
def playbooks(as_json: bool) -> None:
    """List the registered playbooks: path, latest version, when it was registered."""

    async def body(client: Client) -> int:
        rows = await client.store.list_playbooks()
        if as_json:
            print_json(rows)
        elif not rows:
            say("no playbook registered yet: `noetl-runtime register FILE` adds one")
        else:
            print_table(
                ("path", "version", "updated_at"),
                [(r["path"], str(r["version"]), r["updated_at"]) for r in rows],
            )
        return EXIT_OK

    run_command(with_client(settings(), body))
