"""The web console: static pages at `/` and the read routes they need under `/api/console`.

The pages are plain files in `noetl/api/console/` (ES modules, no build step, nothing fetched
from the internet). They hold no data: everything comes from `/api/...`, so the bearer token
guards the console's routes like every other API route, and the pages themselves are public.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any, Final

import msgspec
from aiohttp import web

from noetl import dsl
from noetl.api.common import Param, Route, RouteGroup, body
from noetl.api.schemas import ErrorBody
from noetl.client import Client
from noetl.dsl.graph import END, Graph
from noetl.dsl.models import Edge, Playbook, Step, When
from noetl.pool_wait import waiting_for_pools
from noetl.store.credentials import KNOWN_TYPES
from plugins.registry import known_kinds

__all__ = ["STATIC_DIR", "ConsoleRoutes", "ConsoleSource", "setup_console"]

STATIC_DIR: Final = Path(__file__).with_name("console")

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page keeps the token in session storage, so no script but the console's may run: no
# inline script, nothing from elsewhere, no framing.
_SECURITY: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STATUSES: Final = frozenset({"running", "completed", "failed", "cancelled"})
_MAX_PAGE: Final = 200
_MAX_OFFSET: Final = 10_000_000
_ID: Final = re.compile(r"[0-9]{1,19}")
_MAX_ID: Final = 2**63 - 1
# Parsed playbook versions, by (path, version): registered content never changes.
_GRAPH_CACHE_SIZE: Final = 256


def setup_console(app: web.Application) -> None:
    """Serve the console's files at `/` and under `/console/` (its API routes are in the
    API's route table: `ConsoleRoutes`)."""
    app.router.add_get("/", _index)
    app.router.add_get("/console/{name}", _static)


async def _index(request: web.Request) -> web.Response:
    return _file(request, "index.html")


async def _static(request: web.Request) -> web.Response:
    return _file(request, request.match_info["name"])


@functools.cache
def _files() -> dict[str, tuple[bytes, str]]:
    """Each file the console serves (its directory, nothing under it) with its ETag, read
    once: a few small files, served from memory without a thread hop per request."""
    files = {}
    for path in STATIC_DIR.iterdir():
        if path.suffix in _TYPES:
            data = path.read_bytes()
            files[path.name] = (data, f'"{hashlib.sha256(data).hexdigest()[:16]}"')
    return files


def _file(request: web.Request, name: str) -> web.Response:
    found = _files().get(name)
    if found is None:
        raise web.HTTPNotFound(reason="no such console file")
    data, etag = found
    # `no-cache` revalidates by ETag, so an upgraded package is seen at once.
    headers = {"ETag": etag, "Cache-Control": "no-cache", **_SECURITY}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    # Explicit types: the system's MIME table may lack `.js`, and modules need a JS type.
    headers["Content-Type"] = _TYPES[Path(name).suffix]
    return web.Response(body=data, headers=headers)


def _bad(message: str) -> web.HTTPBadRequest:
    """A 400 that the API's error middleware answers as `{"error": message}`."""
    return web.HTTPBadRequest(reason=message)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if text.isascii() and text.isdigit() and len(text) <= 10 and low <= int(text) <= high:
        return int(text)
    raise _bad(f"`{name}` must be an integer from {low} to {high}, got {text!a}")


def _id_param(text: str, name: str) -> int:
    if _ID.fullmatch(text) and int(text) <= _MAX_ID:
        return int(text)
    raise _bad(f"`{name}` is a 63-bit integer written in digits, got {text!a}")


def _json(data: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), content_type="application/json")


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _like(text: str) -> str:
    """`text` as a case-insensitive substring pattern, its wildcards escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _edges(step: Step, names: set[str]) -> list[dict[str, Any]]:
    """The routes out of `step` with whether each one is conditional."""
    out: dict[str, dict[str, Any]] = {}
    for entry in step.next:
        if isinstance(entry, Edge):
            pairs: list[tuple[Edge, str | None]] = [(entry, None)]
        elif isinstance(entry, When):
            pairs = [(edge, entry.when) for edge in entry.then]
        else:
            pairs = [(edge, "else") for edge in entry.then]
        for edge, when in pairs:
            out.setdefault(edge.step, {"source": step.step, "target": edge.step, "when": when})
    for rule in step.case:
        for edge in rule.then.next:
            out.setdefault(edge.step, {"source": step.step, "target": edge.step, "when": rule.when})
    if not out and END in names and step.step != END:
        out[END] = {"source": step.step, "target": END, "when": None}
    return [edge for target, edge in out.items() if target in names]


def graph_of(playbook: Playbook) -> dict[str, Any]:
    """The step graph the console draws: nodes with what runs in them, and routes."""
    names = {step.step for step in playbook.workflow}
    graph = Graph.of(playbook)
    nodes = []
    # A duplicated step name is a warning; the engine uses the first, and so does the graph.
    steps = [playbook.step(name) for name in dict.fromkeys(s.step for s in playbook.workflow)]
    for step in steps:
        tool = step.tool or {}
        loop = step.loop
        nodes.append(
            {
                "id": step.step,
                "desc": step.desc,
                "kind": tool.get("kind"),
                "playbook": tool.get("path") if tool.get("kind") == "playbook" else None,
                "loop": None
                if loop is None
                else {
                    "iterator": loop.iterator,
                    "mode": loop.mode,
                    "pagination": loop.pagination is not None,
                },
                "joins": graph.in_degree(step.step) > 1,
                # As written: templates, rendered by the runner when the step runs.
                "args": {**step.args, **(tool.get("args") or {})},
            }
        )
    edges = [edge for step in steps for edge in _edges(step, names)]
    return {"nodes": nodes, "edges": edges}


def check(content: str) -> dict[str, Any]:
    """Every problem in `content` with its line, the graph and the workload when valid."""
    report = dsl.check_text(content, filename="<playbook>", known_kinds=known_kinds())
    problems = [
        {"line": p.line, "col": p.col, "message": p.message, "severity": p.severity}
        for p in report.findings
    ]
    playbook = report.playbook
    return {
        "problems": problems,
        "graph": None if playbook is None else graph_of(playbook),
        "workload": None if playbook is None else playbook.workload,
    }


class ConsoleSource(msgspec.Struct):
    """A playbook's YAML text to validate without registering it."""

    content: str


_CONSOLE: Final = "console"
# The console's own documents, read by its pages only: described as any JSON.
_ANSWERS: Final = {200: Any, 400: ErrorBody, 404: ErrorBody}
_PAGE_QUERY: Final = (
    Param("status", {"enum": sorted(_STATUSES)}, "only executions in this state"),
    Param("q", {"type": "string"}, "a substring of the path, or an execution id"),
    Param("parent", {"type": "string", "pattern": "^[0-9]{1,19}$"}, "children of this id"),
    Param("offset", {"type": "integer", "minimum": 0, "maximum": _MAX_OFFSET}, "rows skipped"),
    Param("limit", {"type": "integer", "minimum": 1, "maximum": _MAX_PAGE}, "rows (50)"),
)


class ConsoleRoutes(RouteGroup):
    """Routes the console needs beyond the REST API: paged listings, graphs, validation."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._checked: dict[tuple[str, int], dict[str, Any]] = {}

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/console/executions",
                self.executions,
                "A page of executions, filtered, with the total that match",
                _CONSOLE,
                _ANSWERS,
                query=_PAGE_QUERY,
            ),
            Route(
                "GET",
                "/api/console/executions/{id}",
                self.execution,
                "An execution with its workload, its playbook's graph and its children",
                _CONSOLE,
                _ANSWERS,
            ),
            Route(
                "GET",
                "/api/console/playbooks",
                self.playbooks,
                "The catalog with every version",
                _CONSOLE,
                _ANSWERS,
            ),
            Route(
                "GET",
                "/api/console/playbooks/{path:.+}",
                self.playbook,
                "A playbook version with its problems, graph and workload",
                _CONSOLE,
                _ANSWERS,
                query=(Param("version", {"type": "integer", "minimum": 1}, "(the latest)"),),
            ),
            Route(
                "POST",
                "/api/console/validate",
                self.validate,
                "Validate a playbook's text without registering it",
                _CONSOLE,
                _ANSWERS,
                body=ConsoleSource,
            ),
            Route(
                "GET",
                "/api/console/credential-usage",
                self.credential_usage,
                "Which playbooks name each credential (names only, never data)",
                _CONSOLE,
                _ANSWERS,
            ),
        ]

    async def _checked_version(self, path: str, version: int | None) -> dict[str, Any]:
        found, content = await self.client.store.get_playbook(path, version)
        key = (path, found)
        hit = self._checked.get(key)
        if hit is None:
            hit = {"path": path, "version": found, "content": content, **check(content)}
            if len(self._checked) >= _GRAPH_CACHE_SIZE:
                self._checked.pop(next(iter(self._checked)))
            self._checked[key] = hit
        return hit

    async def executions(self, request: web.Request) -> web.Response:
        """A page of executions, newest first, filtered, with the total that match.

        `status`, `q` (a substring of the path, or an execution id), `parent` (children of
        an execution), `offset`, `limit` (1 to 200, default 50).
        """
        where: list[str] = []
        args: list[Any] = []
        status = request.query.get("status", "")
        if status:
            if status not in _STATUSES:
                raise _bad(f"`status` is one of {sorted(_STATUSES)}, got {status!a}")
            args.append(status)
            where.append(f"status = ${len(args)}")
        query = request.query.get("q", "").strip()
        if "\x00" in query:  # PostgreSQL text cannot hold it
            raise _bad("`q` may not contain a NUL character")
        if query:
            args.append(_like(query))
            clause = f"path ILIKE ${len(args)}"
            if _ID.fullmatch(query) and int(query) <= _MAX_ID:
                args.append(int(query))
                clause = f"({clause} OR execution_id = ${len(args)})"
            where.append(clause)
        parent = request.query.get("parent", "")
        if parent:
            args.append(_id_param(parent, "parent"))
            where.append(f"parent_execution_id = ${len(args)}")
        offset = _int_param(request, "offset", 0, 0, _MAX_OFFSET)
        limit = _int_param(request, "limit", 50, 1, _MAX_PAGE)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        pool = self.client.store.pool
        total = await pool.fetchval(f"SELECT count(*) FROM noetl.execution {condition}", *args)
        rows = await pool.fetch(
            "SELECT execution_id, path, version, status, started_at, ended_at, "
            "parent_execution_id, restarted_from FROM noetl.execution "
            f"{condition} ORDER BY started_at DESC, execution_id DESC "
            f"LIMIT {limit} OFFSET {offset}",
            *args,
        )
        items = [
            {
                "execution_id": str(r["execution_id"]),
                "path": r["path"],
                "version": r["version"],
                "status": r["status"],
                "started_at": _iso(r["started_at"]),
                "ended_at": _iso(r["ended_at"]),
                "duration": None
                if r["ended_at"] is None
                else (r["ended_at"] - r["started_at"]).total_seconds(),
                "parent_execution_id": _str_id(r["parent_execution_id"]),
                "restarted_from": _str_id(r["restarted_from"]),
            }
            for r in rows
        ]
        return _json({"total": total, "offset": offset, "limit": limit, "items": items})

    async def execution(self, request: web.Request) -> web.Response:
        """The execution document with its workload, its playbook's graph and children."""
        eid = _id_param(request.match_info["id"], "id")
        store = self.client.store
        doc = await store.describe(eid)
        doc["waiting_for_pool"] = await waiting_for_pools(
            store.pool, self.client.bus, eid, doc["status"]
        )
        workload = await store.pool.fetchval(
            "SELECT workload FROM noetl.execution WHERE execution_id = $1", eid
        )
        checked = await self._checked_version(doc["path"], doc["version"])
        # A sub-playbook call names its child in the parent's `command.issued` event.
        children = await store.pool.fetch(
            "SELECT c.execution_id, c.path, c.status, e.step, e.payload->>'index' AS index "
            "FROM noetl.event e JOIN noetl.execution c "
            "ON c.execution_id = (e.payload->>'child')::bigint "
            "WHERE e.execution_id = $1 AND e.event_type = 'command.issued' "
            "AND e.payload ? 'child' ORDER BY e.event_id",
            eid,
        )
        return _json(
            {
                "execution": doc,
                "workload": await store.resolve(workload),
                "graph": checked["graph"],
                "children": [
                    {
                        "execution_id": str(r["execution_id"]),
                        "path": r["path"],
                        "status": r["status"],
                        "step": r["step"],
                        "index": None if r["index"] is None else int(r["index"]),
                    }
                    for r in children
                ],
            }
        )

    async def playbooks(self, request: web.Request) -> web.Response:
        """Every registered path with all its versions, newest first."""
        rows = await self.client.store.pool.fetch(
            "SELECT path, version, created_at FROM noetl.catalog ORDER BY path, version DESC"
        )
        catalog: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            catalog.setdefault(r["path"], []).append(
                {"version": r["version"], "created_at": _iso(r["created_at"])}
            )
        return _json([{"path": path, "versions": versions} for path, versions in catalog.items()])

    async def playbook(self, request: web.Request) -> web.Response:
        """A version's YAML with its problems, graph and workload (`?version=`, or latest)."""
        version = request.query.get("version")
        number = None if not version else _int_param(request, "version", 1, 1, 2**31 - 1)
        return _json(await self._checked_version(request.match_info["path"], number))

    async def validate(self, request: web.Request) -> web.Response:
        """Check a playbook's text without registering it: problems with their lines."""
        source = await body(request, ConsoleSource)
        return _json(check(source.content))

    async def credential_usage(self, request: web.Request) -> web.Response:
        """The credential types, and for each credential name the playbooks whose latest
        version names it (read from the names alone: no key, no secret)."""
        pool = self.client.store.pool
        names = [r["name"] for r in await pool.fetch("SELECT name FROM noetl.credential")]
        latest = await pool.fetch(
            "SELECT DISTINCT ON (path) path, content FROM noetl.catalog ORDER BY path, version DESC"
        )
        usage: dict[str, list[str]] = {}
        for name in names:
            word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            usage[name] = [r["path"] for r in latest if word.search(r["content"])]
        return _json({"types": sorted(KNOWN_TYPES), "usage": usage})


def _str_id(value: int | None) -> str | None:
    return None if value is None else str(value)
