"""`noetl-runtime catalog list|get` and `execution list|get|cancel`: NoETL's inspection
verbs, answered from NATS and PostgreSQL directly or, with `--server URL` (or
NOETL_SERVER_URL), by a remote API (bearer token from NOETL_API_TOKEN)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import click

from noetl.cli_core import (
    EXIT_OK,
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
from noetl.cli_follow import id_arg
from noetl.client import Client
from noetl.errors import NoetlError

__all__ = ["catalog", "execution"]

_REMOTE_SECONDS = 30.0


class Source(Protocol):
    """Where the answers come from: the store and bus, or a remote API."""

    async def playbooks(self) -> list[dict[str, Any]]: ...
    async def playbook(self, path: str, version: int | None) -> dict[str, Any]: ...
    async def executions(self, limit: int) -> list[dict[str, Any]]: ...
    async def execution(self, eid: int) -> dict[str, Any]: ...
    async def cancel(self, eid: int, reason: str) -> None: ...
    async def start(self, path: str, version: int | None, workload: dict[str, Any]) -> str: ...


class Direct:
    """Answers from this machine's view of NATS and PostgreSQL."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def playbooks(self) -> list[dict[str, Any]]:
        return await self.client.store.list_playbooks()

    async def playbook(self, path: str, version: int | None) -> dict[str, Any]:
        found, content = await self.client.store.get_playbook(path, version)
        return {"path": path, "version": found, "content": content}

    async def executions(self, limit: int) -> list[dict[str, Any]]:
        return await self.client.store.list_executions(limit)

    async def execution(self, eid: int) -> dict[str, Any]:
        return await self.client.store.describe(eid)

    async def cancel(self, eid: int, reason: str) -> None:
        await self.client.cancel(eid, reason)

    async def start(self, path: str, version: int | None, workload: dict[str, Any]) -> str:
        return str(await self.client.start(path, version=version, workload=workload))


def _reason(exc: Exception) -> str:
    """Why a request to the API got no answer, in words (not the exception's repr)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        return os.strerror(errno) if errno else str(exc.os_error) or "connection failed"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ValueError):
        return f"the answer is not JSON ({exc})"
    return str(exc) or type(exc).__name__


class Remote:
    """Answers from a noetl-runtime API."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/")

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self.session.request(method, self.url + path, json=body) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise NoetlError(f"cannot reach the API at {self.url}: {_reason(exc)}") from None
        if status == 401:
            raise NoetlError(f"{self.url} refused the token: set NOETL_API_TOKEN")
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else data
            raise NoetlError(f"{self.url}: {message} (HTTP {status})")
        return data

    async def playbooks(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/api/playbooks"))

    async def playbook(self, path: str, version: int | None) -> dict[str, Any]:
        query = "" if version is None else f"?version={version}"
        return dict(await self._call("GET", f"/api/playbooks/{quote(path)}{query}"))

    async def executions(self, limit: int) -> list[dict[str, Any]]:
        return list(await self._call("GET", f"/api/executions?limit={limit}"))

    async def execution(self, eid: int) -> dict[str, Any]:
        return dict(await self._call("GET", f"/api/executions/{eid}"))

    async def cancel(self, eid: int, reason: str) -> None:
        await self._call("POST", f"/api/executions/{eid}/cancel", {"reason": reason})

    async def start(self, path: str, version: int | None, workload: dict[str, Any]) -> str:
        body: dict[str, Any] = {"path": path, "workload": workload}
        if version is not None:
            body["version"] = version
        return str((await self._call("POST", "/api/executions", body))["execution_id"])


def _run(server: str | None, body: Callable[[Source], Awaitable[None]]) -> None:
    """Run `body` over NATS/PostgreSQL, or over the API at `server`; exits with the CLI's
    codes (`noetl.cli_core`)."""
    config = settings()

    async def direct(client: Client) -> int:
        await body(Direct(client))
        return EXIT_OK

    async def remote(url: str) -> int:
        token = config.api_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=_REMOTE_SECONDS)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await body(Remote(session, url))
        return EXIT_OK

    run_command(with_client(config, direct) if server is None else remote(server))


def _summary(row: dict[str, Any]) -> tuple[str, ...]:
    return (
        row["execution_id"],
        row["path"],
        str(row["version"]),
        row["status"],
        row["started_at"],
        row["ended_at"] or "",
    )


_SERVER = click.option(
    "--server",
    envvar="NOETL_SERVER_URL",
    help="Ask this noetl-runtime API (e.g. http://host:8082) instead of NATS/PostgreSQL.",
)
_JSON = json_option()


# -- catalog --------------------------------------------------------------------------------


@click.group()
def catalog() -> None:
    """The registered playbooks."""


@catalog.command(name="list")
@_SERVER
@_JSON
def catalog_list(server: str | None, as_json: bool) -> None:
    """Every registered path with its latest version."""

    async def body(source: Source) -> None:
        rows = await source.playbooks()
        if as_json:
            print_json(rows)
            return
        print_table(
            ("path", "version", "updated_at"),
            [(r["path"], str(r["version"]), r["updated_at"]) for r in rows],
        )

    _run(server, body)


@catalog.command(name="get")
@click.argument("path")
@click.option("--version", type=click.IntRange(1), help="Catalog version (default latest).")
@_SERVER
@_JSON
def catalog_get(path: str, version: int | None, server: str | None, as_json: bool) -> None:
    """A playbook's YAML as registered (a version, or the latest)."""

    async def body(source: Source) -> None:
        doc = await source.playbook(path, version)
        if as_json:
            print_json(doc)
        else:
            say(f"{doc['path']} version {doc['version']}")
            sys.stdout.write(doc["content"])

    _run(server, body)


# -- execution ------------------------------------------------------------------------------


@click.group()
def execution() -> None:
    """Executions: start, list, read, cancel."""


@execution.command(name="start")
@click.argument("path")
@click.option("--version", type=click.IntRange(1), help="Catalog version (default latest).")
@click.option("--workload", default="{}", help="Workload as a JSON object, or @file.json.")
@_SERVER
@_JSON
def execution_start(
    path: str,
    version: int | None,
    workload: str,
    server: str | None,
    as_json: bool,
) -> None:
    """Start an execution of a registered playbook and return at once (the running mesh,
    or the server's, runs it)."""
    data = read_json(workload, "--workload")
    if not isinstance(data, dict):
        raise click.UsageError("--workload must be a JSON object")

    async def body(source: Source) -> None:
        eid = await source.start(path, version, data)
        if as_json:
            print_json({"execution_id": eid, "path": path, "status": "started"})
        else:
            out.print(f"execution {eid} started ({path})")

    _run(server, body)


@execution.command(name="list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_SERVER
@_JSON
def execution_list(limit: int, server: str | None, as_json: bool) -> None:
    """The most recent executions, newest first."""

    async def body(source: Source) -> None:
        rows = await source.executions(limit)
        if as_json:
            print_json(rows)
            return
        print_table(
            ("execution_id", "path", "version", "status", "started_at", "ended_at"),
            [_summary(r) for r in rows],
        )

    _run(server, body)


@execution.command(name="get")
@click.argument("execution_id")
@_SERVER
@_JSON
def execution_get(execution_id: str, server: str | None, as_json: bool) -> None:
    """The execution document: status, result, each step's result, vars."""
    eid = id_arg(execution_id)

    async def body(source: Source) -> None:
        doc = await source.execution(eid)
        if as_json:
            print_json(doc)
            return
        keys = ("execution_id", "path", "version", "status", "started_at", "ended_at")
        rows = [(key, str(doc.get(key) or "")) for key in keys]
        if doc.get("error"):
            rows.append(("error", str(doc["error"].get("message", doc["error"]))))
        rows.append(("result", json.dumps(doc.get("result"), default=str)[:200]))
        for step, result in (doc.get("steps") or {}).items():
            rows.append((f"step {step}", json.dumps(result, default=str)[:120]))
        print_table(("field", "value"), rows)

    _run(server, body)


@execution.command(name="cancel")
@click.argument("execution_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@_SERVER
@_JSON
def execution_cancel(execution_id: str, reason: str, server: str | None, as_json: bool) -> None:
    """Ask for an execution's cancellation (it ends as `cancelled` shortly after)."""
    eid = id_arg(execution_id)

    async def body(source: Source) -> None:
        await source.cancel(eid, reason)
        if as_json:
            print_json({"execution_id": str(eid), "status": "cancelling"})
        else:
            out.print(f"cancellation of {eid} requested")

    _run(server, body)
