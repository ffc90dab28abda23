"""HTTP pagination on the mesh against a real local API: merging, per-page sinks, retries."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import (
    fixture,
)
from tests.integration.shared_mesh import shared_client, shared_mesh  # noqa: F401
from tests.support.http_api import ITEM_COUNT, HttpApi


async def test_http_pagination_fixture(client: Client, mesh: Mesh, api: HttpApi) -> None:
    reply = await client.register(fixture("http_pagination"))
    eid = await client.start(reply.path, workload={"api_url": api.url})
    doc = await client.wait(eid, timeout=60)
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"count": ITEM_COUNT, "first": 0, "last": ITEM_COUNT - 1}
    pages = [q for m, q, _ in api.requests if q.startswith("/items")]
    assert pages == [f"/items?page={n}&size=10" for n in (1, 2, 3, 4)]
    rows = await client.store.list_events(eid)
    assert Counter(r["event_type"] for r in rows)["step.item"] == 4


async def test_per_page_sink_writes_every_page_as_it_arrives(
    client: Client, mesh: Mesh, api: HttpApi, tmp_path: Path
) -> None:
    path = tmp_path / "export.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: export}}
        workflow:
          - step: start
            tool:
              kind: http
              url: "{api.url}/items"
              params: {{page: 1, size: 7}}
            retry: {{max_attempts: 3, delay: 0.1}}
            loop:
              pagination:
                continue_while: "{{{{ response.data.paging.hasMore }}}}"
                next_page:
                  params: {{page: "{{{{ (response.data.paging.page | int) + 1 }}}}"}}
                merge_path: data.data
            sink:
              per_page: true
              tool: {{kind: event_log}}
              args: "{{{{ result.data.data }}}}"
        """)
    )
    reply = await client.register(path)
    eid = await client.start(reply.path)
    doc = await client.wait(eid, timeout=60)
    assert doc["status"] == "completed", doc
    rows = await client.store.list_events(eid)
    sunk = sum(r["payload"]["sink"]["rows"] for r in rows if r["event_type"] == "command.completed")
    assert sunk == ITEM_COUNT
    completed = next(r for r in rows if r["event_type"] == "step.completed")
    assert completed["payload"]["sink"] == {"rows": ITEM_COUNT}
    assert completed["payload"]["pages"] == 5
