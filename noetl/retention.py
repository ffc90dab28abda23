"""`db prune`: the retention pass over the store, batch after batch (see noetl.store.prune
for what may be deleted and why it is safe beside a live mesh)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import Callable
from typing import Final

import msgspec

from noetl.archive import Archive, encode_events, object_name, open_archive
from noetl.errors import ConfigError
from noetl.store import Store
from noetl.store import prune as sql

__all__ = ["PruneReport", "parse_duration", "prune"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
# Executions archived at once (each is one object written concurrently with the others).
_ARCHIVE_CONCURRENCY: Final = 8


def parse_duration(text: str) -> dt.timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` as a duration (a positive whole number and a unit)."""
    match = _DURATION.match(text)
    if match is None or int(match[1]) == 0:
        raise ConfigError(
            f"duration {text!r}: expected a positive number and a unit s, m, h, d or w "
            "(like 30d, 12h, 90m)"
        )
    return dt.timedelta(seconds=int(match[1]) * _UNITS[match[2]])


class PruneReport(msgspec.Struct, kw_only=True):
    """What a prune deleted (or, in a dry run, would delete)."""

    dry_run: bool
    cutoff: str  # executions that ended before this instant (ISO 8601, UTC)
    executions: int
    events: int
    blobs: int
    archive: str | None
    archived: int  # executions whose events were written to the archive
    batches: int


async def _archive(
    conn: sql.Conn, archive: Archive, trees: list[sql.Tree], gzipped: bool
) -> dict[int, tuple[int, int]]:
    """Write every execution of `trees`; return each one's (event count, newest event id).
    Reads go through `conn` one at a time, writes run concurrently."""
    written: dict[int, tuple[int, int]] = {}
    gate = asyncio.Semaphore(_ARCHIVE_CONCURRENCY)

    async def put(execution_id: int, data: bytes, found: tuple[int, int]) -> None:
        try:
            await archive.put(object_name(execution_id, gzipped=gzipped), data)
            written[execution_id] = found
        finally:
            gate.release()

    tasks = []
    for execution_id in (i for t in trees for i in t.ids):
        rows = await sql.event_rows(conn, execution_id)
        newest = max((int(r["event_id"]) for r in rows), default=0)
        await gate.acquire()
        data = encode_events(rows, gzipped=gzipped)
        tasks.append(asyncio.create_task(put(execution_id, data, (len(rows), newest))))
    # Every write ends before the first failure is raised: none is left running.
    for failure in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(failure, BaseException):
            raise failure
    return written


async def prune(
    store: Store,
    older_than: dt.timedelta,
    *,
    archive: str | None = None,
    gzipped: bool = False,
    dry_run: bool = False,
    batch: int = 100,
    say: Callable[[str], None] = lambda _: None,
) -> PruneReport:
    """Delete (or count, `dry_run`) the execution trees ended more than `older_than` ago,
    `batch` trees per transaction, archiving their events first when `archive` is given;
    then the blobs nothing refers to any more."""
    now = dt.datetime.now(dt.UTC)
    cutoff = now - older_than
    report = PruneReport(
        dry_run=dry_run,
        cutoff=cutoff.isoformat(),
        executions=0,
        events=0,
        blobs=0,
        archive=archive,
        archived=0,
        batches=0,
    )
    chosen: list[int] = []  # a dry run's executions, left out of the blob references
    after = 0
    async with store.pool.acquire() as conn:
        async with contextlib.AsyncExitStack() as stack:
            sink = (
                await stack.enter_async_context(open_archive(archive))
                if archive and not dry_run
                else None
            )
            while True:
                trees, after_next = await sql.eligible_trees(conn, cutoff, after, batch)
                if after_next == after:
                    break
                after = after_next
                if not trees:
                    continue
                if dry_run:
                    kept, events = trees, sum(t.events for t in trees)
                    chosen.extend(i for t in trees for i in t.ids)
                else:
                    written = await _archive(conn, sink, trees, gzipped) if sink else None
                    report.archived += len(written or ())
                    kept, events = await sql.delete_trees(conn, trees, cutoff, written)
                report.batches += 1
                report.executions += sum(len(t.ids) for t in kept)
                report.events += events
                say(f"prune: {report.executions} execution(s), {report.events} event(s)")
        before = min(cutoff, now - sql.BLOB_GRACE)
        digests = await sql.unreferenced_blobs(conn, before, chosen)
        if dry_run:
            report.blobs = len(digests)
        else:
            report.blobs = await sql.sweep_blobs(conn, digests, before)
    return report
