"""`noetl-runtime catalog list|get` and `execution list|get|cancel`: NoETL's inspection
verbs, answered from NATS and PostgreSQL directly or, with `--server URL` (or
NOETL_SERVER_URL), by a remote API (bearer token from NOETL_API_TOKEN)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import click
from rich.console import Console
from rich.table import Table

from noetl.client import Client
from noetl.config import Settings
from noetl.errors import ConfigError, NoetlError

__all__ = ["catalog", "execution"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

_REMOTE_SECONDS = 30.0


class _State(Protocol):
    def settings(self) -> Settings: ...


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
            raise NoetlError(f"cannot reach the API at {self.url}: {exc!r}") from None
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


def _run(ctx: click.Context, server: str | None, body: Callable[[Source], Awaitable[None]]) -> None:
    """Run `body` over the chosen source; errors become a message and exit code 1 (2 for
    the configuration)."""

    async def direct() -> None:
        state: _State = ctx.find_root().obj
        client = await Client.connect(state.settings(), announce=lambda line: err.print(line))
        try:
            await body(Direct(client))
        finally:
            await client.close()

    async def remote(url: str) -> None:
        settings = ctx.find_root().obj.settings()
        token = settings.api_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=_REMOTE_SECONDS)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await body(Remote(session, url))

    try:
        asyncio.run(direct() if server is None else remote(server))
    except ConfigError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(2)
    except NoetlError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _id(value: str) -> int:
    if not value.isdigit() or int(value) >= 2**63:
        raise click.UsageError(f"an execution id is a 63-bit integer, got {value!r}")
    return int(value)


_SERVER = click.option(
    "--server",
    envvar="NOETL_SERVER_URL",
    help="Ask this noetl-runtime API (e.g. http://host:8082) instead of NATS/PostgreSQL.",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# -- catalog --------------------------------------------------------------------------------


@click.group()
def catalog() -> None:
    """The registered playbooks."""


@catalog.command(name="list")
@_SERVER
@_JSON
@click.pass_context
def catalog_list(ctx: click.Context, server: str | None, as_json: bool) -> None:
    """Every registered path with its latest version."""

    async def body(source: Source) -> None:
        rows = await source.playbooks()
        if as_json:
            _print_json(rows)
            return
        table = Table("path", "version", "updated_at")
        for r in rows:
            table.add_row(r["path"], str(r["version"]), r["updated_at"])
        out.print(table)

    _run(ctx, server, body)


@catalog.command(name="get")
@click.argument("path")
@click.option("--version", type=click.IntRange(1), help="Catalog version (default latest).")
@_SERVER
@_JSON
@click.pass_context
def catalog_get(
    ctx: click.Context, path: str, version: int | None, server: str | None, as_json: bool
) -> None:
    """A playbook's YAML as registered (a version, or the latest)."""

    async def body(source: Source) -> None:
        doc = await source.playbook(path, version)
        if as_json:
            _print_json(doc)
        else:
            err.print(f"{doc['path']} version {doc['version']}", markup=False)
            sys.stdout.write(doc["content"])

    _run(ctx, server, body)


# -- execution ------------------------------------------------------------------------------


@click.group()
def execution() -> None:
    """Executions: start, list, read, cancel."""


@execution.command(name="start")
@click.argument("path")
@click.option("--version", type=click.IntRange(1), help="Catalog version (default latest).")
@click.option("--workload", default="{}", help="Workload as a JSON object.")
@_SERVER
@_JSON
@click.pass_context
def execution_start(
    ctx: click.Context,
    path: str,
    version: int | None,
    workload: str,
    server: str | None,
    as_json: bool,
) -> None:
    """Start an execution of a registered playbook and return at once (the running mesh,
    or the server's, runs it)."""
    try:
        data = json.loads(workload)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--workload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.UsageError("--workload must be a JSON object")

    async def body(source: Source) -> None:
        eid = await source.start(path, version, data)
        if as_json:
            _print_json({"execution_id": eid, "path": path, "status": "started"})
        else:
            out.print(f"execution {eid} started ({path})")

    _run(ctx, server, body)


@execution.command(name="list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_SERVER
@_JSON
@click.pass_context
def execution_list(ctx: click.Context, limit: int, server: str | None, as_json: bool) -> None:
    """The most recent executions, newest first."""

    async def body(source: Source) -> None:
        rows = await source.executions(limit)
        if as_json:
            _print_json(rows)
            return
        table = Table("execution_id", "path", "version", "status", "started_at", "ended_at")
        for r in rows:
            table.add_row(
                r["execution_id"],
                r["path"],
                str(r["version"]),
                r["status"],
                r["started_at"],
                r["ended_at"] or "",
            )
        out.print(table)

    _run(ctx, server, body)


@execution.command(name="get")
@click.argument("execution_id")
@_SERVER
@_JSON
@click.pass_context
def execution_get(ctx: click.Context, execution_id: str, server: str | None, as_json: bool) -> None:
    """The execution document: status, result, each step's result, vars."""
    eid = _id(execution_id)

    async def body(source: Source) -> None:
        doc = await source.execution(eid)
        if as_json:
            _print_json(doc)
            return
        table = Table("field", "value")
        for key in ("execution_id", "path", "version", "status", "started_at", "ended_at"):
            table.add_row(key, str(doc.get(key) or ""))
        if doc.get("error"):
            table.add_row("error", str(doc["error"].get("message", doc["error"])))
        table.add_row("result", json.dumps(doc.get("result"), default=str)[:200])
        for step, result in (doc.get("steps") or {}).items():
            table.add_row(f"step {step}", json.dumps(result, default=str)[:120])
        out.print(table)

    _run(ctx, server, body)


@execution.command(name="cancel")
@click.argument("execution_id")
@click.option("--reason", default="cancelled by user", show_default=True)
@_SERVER
@_JSON
@click.pass_context
def execution_cancel(
    ctx: click.Context, execution_id: str, reason: str, server: str | None, as_json: bool
) -> None:
    """Ask for an execution's cancellation (it ends as `cancelled` shortly after)."""
    eid = _id(execution_id)

    async def body(source: Source) -> None:
        await source.cancel(eid, reason)
        if as_json:
            _print_json({"execution_id": str(eid), "status": "cancelling"})
        else:
            out.print(f"cancellation of {eid} requested")

    _run(ctx, server, body)
