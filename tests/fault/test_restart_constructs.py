"""Kill -9 the mesh in the middle of a loop and while a retry is pending: a restarted mesh
resumes where it was, each item completes once, and the retry fires once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from noetl.config import Settings
from tests.fault.harness import (
    assert_db_clean,
    events_of,
    kill_hard,
    register_when_up,
    start_mesh,
    wait_until,
)
from tests.support.http_api import ITEM_COUNT, start_http_api
from tests.support.mesh import connected
from tests.support.playbooks import write_playbook

Rows = list[dict[str, Any]]


@contextlib.asynccontextmanager
async def killed_and_resumed(
    settings: Settings,
    tmp_path: Path,
    playbook: Path,
    killed_once: Callable[[Rows], bool],
    *,
    timeout: float = 90,
    pause: float = 0.0,
) -> AsyncIterator[tuple[dict[str, Any], Rows]]:
    """Run `playbook` on a mesh subprocess, kill -9 it once `killed_once(events)` holds,
    start another after `pause` seconds, and give the completed execution and its events;
    on exit the event table must pass `db check` and the mesh is killed."""
    log = tmp_path / "mesh.log"
    async with connected(settings) as client:
        mesh = start_mesh(settings, log)
        try:
            reply = await register_when_up(client, playbook)
            eid = await client.start(reply.path, version=reply.version)

            async def reached() -> bool:
                return killed_once(await events_of(client, eid))

            await wait_until(reached)
            kill_hard(mesh)
            await asyncio.sleep(pause)
            mesh = start_mesh(settings, log)
            doc = await client.wait(eid, timeout=timeout)
            assert doc["status"] == "completed", (doc, log.read_text()[-3000:])
            yield doc, await events_of(client, eid)
            await assert_db_clean(client.store)
        finally:
            kill_hard(mesh)


def items_done(count: int) -> Callable[[Rows], bool]:
    """At least `count` loop items (or pages) recorded."""
    return lambda rows: sum(r["event_type"] == "step.item" for r in rows) >= count


def item_indexes(rows: Rows) -> Counter[int]:
    return Counter(r["payload"]["index"] for r in rows if r["event_type"] == "step.item")


async def test_loop_resumes_after_sigkill(settings: Settings, tmp_path: Path) -> None:
    playbook = write_playbook(
        tmp_path,
        "slow_loop",
        """
        - step: start
          loop: {in: "{{ range(12) | list }}", iterator: n, mode: async,
                 max_concurrency: 3}
          tool:
            kind: python
            args: {n: "{{ n }}"}
            code: |
              import time
              time.sleep(0.3)
              result = n * 10
        """,
    )
    async with killed_and_resumed(settings, tmp_path, playbook, items_done(4)) as (doc, rows):
        assert doc["result"] == [n * 10 for n in range(12)]
        assert item_indexes(rows) == Counter(range(12))


async def test_pending_retry_survives_sigkill_and_fires_once(
    settings: Settings, tmp_path: Path, shared_path: Path
) -> None:
    counter = shared_path / "attempts"
    playbook = write_playbook(
        tmp_path,
        "retry_later",
        f"""
        - step: start
          retry: {{max_attempts: 3, delay: 3}}
          tool:
            kind: python
            code: |
              from pathlib import Path
              p = Path({str(counter)!r})
              n = int(p.read_text()) + 1 if p.exists() else 1
              p.write_text(str(n))
              if n == 1:
                  raise RuntimeError("first attempt fails")
              result = {{"attempts": n}}
        """,
    )

    def retry_pending(rows: Rows) -> bool:
        return any(r["event_type"] == "timer.scheduled" for r in rows)

    async with killed_and_resumed(
        settings, tmp_path, playbook, retry_pending, timeout=60, pause=0.5
    ) as (doc, rows):
        assert doc["result"] == {"attempts": 2}
        kinds = Counter(r["event_type"] for r in rows)
        assert kinds["timer.scheduled"] == 1 and kinds["timer.fired"] == 1
        assert counter.read_text() == "2"


async def test_pagination_resumes_at_its_page_after_sigkill(
    settings: Settings, tmp_path: Path
) -> None:
    api = await start_http_api()
    try:
        playbook = write_playbook(
            tmp_path,
            "slow_pages",
            f"""
            - step: start
              tool: {{kind: http, url: "{api.url}/items",
                     params: {{page: 1, size: 5, delay: 0.3}}}}
              loop:
                pagination:
                  continue_while: "{{{{ response.data.paging.hasMore }}}}"
                  next_page: {{params: {{page: "{{{{ response.data.paging.page + 1 }}}}"}}}}
                  merge_path: data.data
            """,
        )
        async with killed_and_resumed(settings, tmp_path, playbook, items_done(3)) as (doc, rows):
            assert [item["id"] for item in doc["result"]] == list(range(ITEM_COUNT))
            assert item_indexes(rows) == Counter(range(7))  # 35 items, 5 a page: each once
            first_page = [q for _, q, _ in api.requests if "page=1&" in q]
            assert len(first_page) == 1  # resumed where it was, not at page one
    finally:
        await api.stop()
