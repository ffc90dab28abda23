"""Kill -9 the mesh in the middle of a loop and while a retry is pending: a restarted mesh
resumes where it was, each item completes once, and the retry fires once."""

from __future__ import annotations

import asyncio
import textwrap
from collections import Counter
from pathlib import Path

from noetl.client import Client
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


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {{name: {name}}}\n"
        "workflow:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    )
    return path


async def test_loop_resumes_after_sigkill(settings: Settings, tmp_path: Path) -> None:
    client = await Client.connect(settings)
    log = tmp_path / "mesh.log"
    mesh = start_mesh(settings, log)
    try:
        reply = await register_when_up(
            client,
            write(
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
            ),
        )
        eid = await client.start(reply.path, version=reply.version)

        async def some_items_done() -> bool:
            rows = await events_of(client, eid)
            return sum(r["event_type"] == "step.item" for r in rows) >= 4

        await wait_until(some_items_done)
        kill_hard(mesh)
        mesh = start_mesh(settings, log)
        doc = await client.wait(eid, timeout=90)
        assert doc["status"] == "completed", (doc, log.read_text()[-3000:])
        assert doc["result"] == [n * 10 for n in range(12)]
        rows = await events_of(client, eid)
        items = Counter(r["payload"]["index"] for r in rows if r["event_type"] == "step.item")
        assert items == Counter(range(12))
        await assert_db_clean(client.store)
    finally:
        kill_hard(mesh)
        await client.close()


async def test_pending_retry_survives_sigkill_and_fires_once(
    settings: Settings, tmp_path: Path, shared_path: Path
) -> None:
    client = await Client.connect(settings)
    log = tmp_path / "mesh.log"
    counter = shared_path / "attempts"
    mesh = start_mesh(settings, log)
    try:
        reply = await register_when_up(
            client,
            write(
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
            ),
        )
        eid = await client.start(reply.path, version=reply.version)

        async def retry_pending() -> bool:
            rows = await events_of(client, eid)
            return any(r["event_type"] == "timer.scheduled" for r in rows)

        await wait_until(retry_pending)
        kill_hard(mesh)
        await asyncio.sleep(0.5)
        mesh = start_mesh(settings, log)
        doc = await client.wait(eid, timeout=60)
        assert doc["status"] == "completed", (doc, log.read_text()[-3000:])
        assert doc["result"] == {"attempts": 2}
        rows = await events_of(client, eid)
        kinds = Counter(r["event_type"] for r in rows)
        assert kinds["timer.scheduled"] == 1 and kinds["timer.fired"] == 1
        assert counter.read_text() == "2"
        await assert_db_clean(client.store)
    finally:
        kill_hard(mesh)
        await client.close()


async def test_pagination_resumes_at_its_page_after_sigkill(
    settings: Settings, tmp_path: Path
) -> None:
    api = await start_http_api()
    client = await Client.connect(settings)
    log = tmp_path / "mesh.log"
    mesh = start_mesh(settings, log)
    try:
        reply = await register_when_up(
            client,
            write(
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
            ),
        )
        eid = await client.start(reply.path, version=reply.version)

        async def some_pages_done() -> bool:
            rows = await events_of(client, eid)
            return sum(r["event_type"] == "step.item" for r in rows) >= 3

        await wait_until(some_pages_done)
        kill_hard(mesh)
        mesh = start_mesh(settings, log)
        doc = await client.wait(eid, timeout=90)
        assert doc["status"] == "completed", (doc, log.read_text()[-3000:])
        assert [item["id"] for item in doc["result"]] == list(range(ITEM_COUNT))
        rows = await events_of(client, eid)
        pages = Counter(r["payload"]["index"] for r in rows if r["event_type"] == "step.item")
        assert pages == Counter(range(7))  # 35 items, 5 a page: each page recorded once
        first_page = [q for _, q, _ in api.requests if "page=1&" in q]
        assert len(first_page) == 1  # resumed where it was, not at page one
        await assert_db_clean(client.store)
    finally:
        kill_hard(mesh)
        await client.close()
        await api.stop()
