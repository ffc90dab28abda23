"""NoETL's catalog routes: `/api/catalog/register`, `/api/catalog/list`, `/api/catalog/{path}`.

NoETL names catalog entries by a `catalog_id`; here an entry is (path, version), so its id
is derived from them: the first 63 bits of SHA-256 of `path@version`, computed the same way
in Python and in SQL. It is stable, needs no column, and finds an entry with one query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any, Final

from aiohttp import web

from noetl.api.common import (
    MAX_VERSION,
    ApiError,
    Route,
    RouteGroup,
    body,
    int_query,
    json_response,
)
from noetl.api.playbooks import VERSION_QUERY, registration_refused
from noetl.api.schemas import (
    CatalogEntries,
    CatalogEntry,
    CatalogListBody,
    CatalogRefused,
    CatalogRegisterBody,
    CatalogRegistered,
    ErrorBody,
    Problem,
)
from noetl.client import Client
from noetl.errors import CatalogError, CatalogUnavailable, PlaybookError

__all__ = ["NoetlCatalog", "catalog_id", "find_by_catalog_id"]

KIND: Final = "Playbook"
_MASK: Final = 2**63 - 1
# The SQL twin of `catalog_id`, over the row's `path` and `version`.
_ID_SQL: Final = (
    "(('x' || left(encode(sha256(convert_to(path || '@' || version::text, 'UTF8')), 'hex'), 16))"
    f"::bit(64)::bigint & {_MASK})"
)
_COLUMNS: Final = f"{_ID_SQL} AS catalog_id, path, version, content, created_at"
_PLACE: Final = re.compile(r"^[^\n]*?:(\d+):(\d+): (.*)$", re.DOTALL)


def catalog_id(path: str, version: int) -> int:
    """The id of catalog entry (path, version)."""
    digest = hashlib.sha256(f"{path}@{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _MASK


def problem(text: str) -> Problem:
    """`FILE:LINE:COL: message` as NoETL's `{line, column, message}`."""
    found = _PLACE.match(text)
    if found is None:
        return Problem(line=None, column=None, message=text)
    return Problem(line=int(found[1]), column=int(found[2]), message=found[3])


def _entry(row: Any) -> CatalogEntry:
    return CatalogEntry(
        catalog_id=str(row["catalog_id"]),
        path=row["path"],
        version=row["version"],
        kind=KIND,
        content=row["content"],
        created_at=row["created_at"].isoformat(),
    )


async def find_by_catalog_id(client: Client, entry_id: int) -> tuple[str, int]:
    """(path, version) of the entry with this id; CatalogError when there is none."""
    row = await client.store.pool.fetchrow(
        f"SELECT path, version FROM noetl.catalog WHERE {_ID_SQL} = $1", entry_id
    )
    if row is None:
        raise CatalogError(f"no catalog entry {entry_id}")
    return str(row["path"]), int(row["version"])


def _content(sent: CatalogRegisterBody) -> str:
    """The YAML text, from `content_base64`, or `content` as base64 or plain text."""
    if sent.content_base64 is not None:
        encoded = sent.content_base64
    elif sent.content is not None:
        encoded = sent.content
    else:
        raise ApiError(400, "give the playbook in `content` (YAML, plain or base64)")
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        if sent.content_base64 is not None:
            raise ApiError(400, "`content_base64` is not base64 of UTF-8 text") from None
        return encoded  # plain YAML: colons and spaces are never valid base64


class NoetlCatalog(RouteGroup):
    """NoETL's catalog surface over the one registration path of the client."""

    def routes(self) -> list[Route]:
        tag = "noetl"
        return [
            Route(
                "POST",
                "/api/catalog/register",
                self.register,
                "Register a playbook (NoETL): YAML plain or base64 in `content`",
                tag,
                {
                    200: CatalogRegistered,
                    400: (CatalogRefused, ErrorBody),
                    503: ErrorBody,
                    504: ErrorBody,
                },
                body=CatalogRegisterBody,
            ),
            Route(
                "POST",
                "/api/catalog/list",
                self.list_entries,
                "Every catalog entry, newest first (NoETL)",
                tag,
                {200: CatalogEntries, 400: ErrorBody},
                body=CatalogListBody,
                body_optional=True,
            ),
            Route(
                "GET",
                "/api/catalog/{path:.+}",
                self.get_entry,
                "A catalog entry's content and metadata (NoETL)",
                tag,
                {200: CatalogEntry, 400: ErrorBody, 404: ErrorBody},
                query=(VERSION_QUERY,),
            ),
        ]

    async def register(self, request: web.Request) -> web.Response:
        """Register through the catalog actor; an invalid playbook is 400 with every problem
        as `{line, column, message}`, as NoETL answers."""
        sent = await body(request, CatalogRegisterBody)
        if sent.resource_type != KIND:
            raise ApiError(400, f"only `{KIND}` resources can be registered")
        content = _content(sent)
        if not content.strip():
            raise ApiError(400, "the playbook is empty")
        try:
            reply = await self.client.register_content(content)
        except CatalogUnavailable as exc:
            raise registration_refused(exc) from None
        except PlaybookError as exc:
            refused = CatalogRefused(
                status="error",
                error="invalid playbook",
                problems=[problem(p) for p in exc.problems],
            )
            return json_response(refused, status=400)
        what = "registered" if reply.created else "unchanged, already registered"
        return json_response(
            CatalogRegistered(
                status="success",
                message=f"playbook `{reply.path}` version {reply.version} {what}",
                path=reply.path,
                version=reply.version,
                catalog_id=str(catalog_id(reply.path, reply.version)),
                kind=KIND,
            )
        )

    async def list_entries(self, request: web.Request) -> web.Response:
        """Every version of every playbook, newest first (`resource_type` filters)."""
        sent = await body(request, CatalogListBody, optional=True)
        if sent.resource_type not in (None, KIND):
            return json_response(CatalogEntries(entries=[]))
        rows = await self.client.store.pool.fetch(
            f"SELECT {_COLUMNS} FROM noetl.catalog ORDER BY created_at DESC, path, version DESC"
        )
        return json_response(CatalogEntries(entries=[_entry(r) for r in rows]))

    async def get_entry(self, request: web.Request) -> web.Response:
        """The entry at `path`, `?version=N` or the latest."""
        path = request.match_info["path"]
        version = int_query(request, "version", maximum=MAX_VERSION)
        row = await self.client.store.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM noetl.catalog WHERE path = $1 "
            "AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
            path,
            version,
        )
        if row is None:
            at = "" if version is None else f" version {version}"
            raise ApiError(404, f"no playbook registered at `{path}`{at}")
        return json_response(_entry(row))
