"""Loops and pagination, evaluated: a loop's items, a page's outcome, a loop's failure.

Pure: each function takes the template context it renders with and returns plain data;
`run.py` turns it into events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from noetl import render
from noetl.blobs import Oversized
from noetl.dsl import Pagination
from noetl.engine import conditions
from noetl.engine.iteration import deep_merge, extract
from noetl.engine.plan import LoopSpec
from noetl.engine.state import LoopState
from noetl.errors import RenderError, TooManyItems
from noetl.messages import ErrorInfo
from noetl.render_items import items_at_most


def loop_items(
    spec: LoopSpec, name: str, context: Mapping[str, Any], limit: int
) -> tuple[list[Any], ErrorInfo | None]:
    """The items of step `name`'s loop, or no items and the error why they are unusable
    (more than `limit` items among them: the step fails before any item is issued).

    The limit bites while the items are built (`render_items.items_at_most`), and a
    stored result over it was never loaded (`blobs.Oversized`), so asking for ten million
    items costs no more memory than asking for `limit`."""
    try:
        with items_at_most(limit):
            items = render.render(spec.items, context, where=f"step `{name}` loop.in")
    except RenderError as exc:
        cause = exc.__cause__
        if isinstance(cause, TooManyItems):
            return [], _too_many(name, cause.count, limit, f": {cause.what}")
        return [], ErrorInfo(type=exc.error_type, message=str(exc))
    if isinstance(items, Oversized):
        return [], _too_many(name, items.count, limit, ": a stored result, not loaded")
    if isinstance(items, list | tuple) and len(items) > limit:
        return [], _too_many(name, len(items), limit, "")
    if not isinstance(items, list | tuple):
        return [], ErrorInfo(
            type="loop",
            message=f"step `{name}`: loop.in must be a list, got "
            f"{type(items).__name__} {preview(items)}",
        )
    return list(items), None


def _too_many(name: str, count: int | None, limit: int, how: str) -> ErrorInfo:
    has = (
        f"{count:,} items, more than the limit of {limit:,}"
        if count is not None
        else f"more than {limit:,} items, the limit"
    )
    return ErrorInfo(
        type="loop", message=f"step `{name}`: loop.in has {has} (NOETL_MAX_LOOP_ITEMS){how}"
    )


class PageOutcome(msgspec.Struct, kw_only=True):
    """What one page of a pagination decided: its `part` to merge (UNSET with a per-page
    sink), `capped` when `max_iterations` stops a pagination that wanted more, the
    overrides of the next page (None when this was the last) or the error that ends it."""

    part: Any | UnsetType = UNSET
    capped: int | UnsetType = UNSET
    next_overrides: dict[str, Any] | None = None
    error: ErrorInfo | None = None


def page_outcome(
    page: Pagination,
    name: str,
    index: int,
    response: Any,
    context: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    per_page_sink: bool,
    notes: list[str],
) -> PageOutcome:
    """Evaluate page `index`'s `response` (context has it as `response`): its part to
    merge, whether another page follows and what that page changes; an undefined name
    tested by `continue_while` is noted in `notes`."""
    outcome = PageOutcome()
    where = f"step `{name}` loop.pagination"
    if isinstance(response, Oversized):
        # Left in the store by the coordinator: a page this long is not merged or read.
        outcome.error = ErrorInfo(
            type="pagination",
            message=f"{where}: page {index} holds {response.count:,} items, more than the "
            f"limit of {response.limit:,} (NOETL_MAX_LOOP_ITEMS)",
        )
        return outcome
    try:
        if not per_page_sink:
            outcome.part = extract(response, page.merge_path)
        more = conditions.holds(page.continue_while, context, f"{where}.continue_while", notes)
        if more and index + 1 < page.max_iterations:
            rendered = render.render(page.next_page, context, where=f"{where}.next_page")
            assert isinstance(rendered, dict)
            outcome.next_overrides = deep_merge(overrides, rendered)
        elif more:
            outcome.capped = page.max_iterations
    except KeyError as exc:
        outcome.error = ErrorInfo(
            type="pagination",
            message=f"{where}.merge_path: `{page.merge_path}` not found in "
            f"page {index} (missing `{exc.args[0]}`); page: {preview(response)}",
        )
    except RenderError as exc:
        outcome.error = ErrorInfo(type="pagination", message=str(exc))
    return outcome


def loop_failure(loop: LoopState) -> ErrorInfo:
    """The error of a loop that ends with failed items: how many, and the first one."""
    first = loop.errors[0] if loop.errors else {}
    total = loop.total if loop.total is not None else loop.done
    return ErrorInfo(
        type="loop",
        message=f"{loop.failed} of {total} items failed; first (item "
        f"{first.get('index')}): {first.get('message', '')}",
        details={"errors": loop.errors},
    )


def preview(value: Any, limit: int = 200) -> str:
    """A short rendering of a value for an error message."""
    text = msgspec.json.encode(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
