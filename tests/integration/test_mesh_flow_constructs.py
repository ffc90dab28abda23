"""Loops, workbook tasks and sub-playbooks as documented, run on one shared mesh: sequential
loops, `continue_on_error`, loop and per-item sinks, a task's own retry/sink/timeout,
`return_step` and the cancellation of children."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import events_by_type, run
from tests.support.http_api import ITEM_COUNT, HttpApi
from tests.support.playbooks import write_playbook

DIVIDE = 'tool: {kind: python, args: {n: "{{ n }}"}, code: "result = {\'q\': 10 // n}"}'


async def test_sequential_loop_runs_one_item_at_a_time(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    doc = await run(
        module_client,
        write_playbook(
            tmp_path,
            "sequential",
            f"""
        - step: start
          loop: {{in: [1, 2, 5, 10], iterator: n}}
          {DIVIDE}
    """,
        ),
    )
    assert doc["status"] == "completed", doc
    assert doc["result"] == [{"q": 10}, {"q": 5}, {"q": 2}, {"q": 1}]
    order = [
        (r["event_type"], r["payload"]["index"])
        for r in await module_client.store.list_events(int(doc["execution_id"]))
        if r["event_type"] in ("command.issued", "step.item")
    ]
    # Each item is issued only once the one before it has ended.
    assert order == [(kind, i) for i in range(4) for kind in ("command.issued", "step.item")]


async def test_a_failed_item_stops_the_loop_unless_continue_on_error(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    body = f"""
        - step: start
          loop: {{in: [5, 0, 2], iterator: n, continue_on_error: FLAG}}
          {DIVIDE}
    """
    stopped = await run(
        module_client, write_playbook(tmp_path, "stops", body.replace("FLAG", "false"))
    )
    assert stopped["status"] == "failed"
    assert stopped["error"]["message"].startswith("1 of 3 items failed; first (item 1): ")
    assert "ZeroDivisionError" in stopped["error"]["message"]
    issued = (await events_by_type(module_client, stopped["execution_id"]))["command.issued"]
    assert [r["payload"]["index"] for r in issued] == [0, 1]  # item 2 never started

    kept = await run(
        module_client, write_playbook(tmp_path, "goes_on", body.replace("FLAG", "true"))
    )
    assert kept["status"] == "completed", kept
    first, failed, last = kept["result"]
    assert (first, last) == ({"q": 2}, {"q": 5})
    assert set(failed) == {"error"} and "ZeroDivisionError" in failed["error"]["message"]


async def test_loop_sink_writes_once_and_per_item_sink_writes_each_item(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    whole, each = tmp_path / "whole.json", tmp_path / "each.jsonl"
    doc = await run(
        module_client,
        write_playbook(
            tmp_path,
            "loop_sinks",
            f"""
        - step: start
          loop: {{in: [1, 2, 5], iterator: n, mode: async}}
          {DIVIDE}
          sink: {{tool: {{kind: file, path: "{whole}"}}}}
          next: [per_item]
        - step: per_item
          loop: {{in: [1, 2, 5], iterator: n}}
          {DIVIDE}
          sink: {{per_item: true, tool: {{kind: file, path: "{each}", mode: insert}}}}
    """,
        ),
    )
    assert doc["status"] == "completed", doc
    assert json.loads(whole.read_text()) == [{"q": 10}, {"q": 5}, {"q": 2}]
    assert [json.loads(line) for line in each.read_text().splitlines()] == [
        {"q": 10},
        {"q": 5},
        {"q": 2},
    ]
    events = await events_by_type(module_client, doc["execution_id"])
    sinks = [r["step"] for r in events["command.issued"] if r["payload"]["kind"] == "sink"]
    assert sinks == ["start"]  # one write after all items; per-item writes ride the items
    completed = {r["step"]: r["payload"] for r in events["step.completed"]}
    assert completed["start"]["sink"] == {"rows": 3}
    assert completed["per_item"]["sink"] == {"rows": 3}


async def test_workbook_task_brings_its_retry_sink_and_timeout(
    module_client: Client, module_mesh: Mesh, tmp_path: Path, shared_path: Path
) -> None:
    counter, out = shared_path / "attempts", tmp_path / "task.json"
    path = tmp_path / "tasks.yaml"
    path.write_text(f"""\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: tasks}}
workbook:
  - name: flaky
    retry: {{max_attempts: 3, delay: 0.1}}
    sink: {{tool: {{kind: file, path: "{out}"}}}}
    tool:
      kind: python
      code: |
        from pathlib import Path
        p = Path({str(counter)!r})
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        if n < 3:
            raise RuntimeError(f"attempt {{n}} fails")
        result = {{"attempts": n}}
  - name: slow
    timeout: 0.5
    tool: {{kind: python, code: "import time\\ntime.sleep(30)"}}
workflow:
  - step: start
    tool: {{kind: workbook, name: flaky}}
    next: [slow]
  - step: slow
    tool: {{kind: workbook, name: slow}}
""")
    doc = await run(module_client, path)
    assert doc["status"] == "failed"
    assert (doc["error"]["step"], doc["error"]["type"]) == ("slow", "timeout")
    assert doc["steps"]["start"] == {"attempts": 3}
    assert json.loads(out.read_text()) == [{"attempts": 3}]
    events = await events_by_type(module_client, doc["execution_id"])
    assert [r["step"] for r in events["timer.scheduled"]] == ["start", "start"]
    completed = {r["step"]: r["payload"] for r in events["step.completed"]}
    assert completed["start"]["sink"] == {"rows": 1}


CHILD = """
        - step: start
          tool: {kind: python, args: {n: "{{ workload.n }}"}, code: "result = {'stage': 'start'}"}
          next: [score]
        - step: score
          tool: {kind: python, args: {n: "{{ workload.n }}"}, code: "result = {'score': n * 2}"}
          next: [end]
        - step: end
          tool: {kind: python, code: "result = {'stage': 'end'}"}
"""


async def test_return_step_picks_the_childs_result(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    await module_client.register(write_playbook(tmp_path, "scorer", CHILD))
    body = """
        - step: start
          tool: {kind: playbook, path: scorer, args: {n: 21}, return_step: STEP}
    """
    doc = await run(
        module_client, write_playbook(tmp_path, "caller", body.replace("STEP", "score"))
    )
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"score": 42}
    plain = await run(
        module_client, write_playbook(tmp_path, "plain", body.replace(", return_step: STEP", ""))
    )
    assert plain["result"] == {"stage": "end"}  # without it: the child's own result
    missing = await run(
        module_client, write_playbook(tmp_path, "miss", body.replace("STEP", "nope"))
    )
    assert missing["status"] == "failed"
    assert missing["error"]["type"] == "child"
    assert "nope" in missing["error"]["child_error"]["message"]


async def children_of(client: Client, parent: int) -> list[int]:
    rows = await client.store.pool.fetch(
        "SELECT execution_id FROM noetl.execution WHERE parent_execution_id = $1", parent
    )
    return [r["execution_id"] for r in rows]


async def test_cancelling_the_parent_cancels_its_running_child(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    await module_client.register(
        write_playbook(
            tmp_path,
            "sleeper",
            """
        - step: start
          tool: {kind: python, code: "import time\\ntime.sleep(60)"}
    """,
        )
    )
    reply = await module_client.register(
        write_playbook(
            tmp_path,
            "parent_of_sleeper",
            """
        - step: start
          tool: {kind: playbook, path: sleeper}
    """,
        )
    )
    parent = await module_client.start(reply.path)
    async with asyncio.timeout(30):
        while True:
            children = await children_of(module_client, parent)
            if children and "command.started" in await events_by_type(module_client, children[0]):
                break
            await asyncio.sleep(0.1)
    await module_client.cancel(parent, "stop the family")
    doc = await module_client.wait(parent, timeout=30)
    assert doc["status"] == "cancelled" and doc["error"]["message"] == "stop the family"
    child = await module_client.wait(children[0], timeout=30)
    assert child["status"] == "cancelled"


async def test_async_loop_keeps_at_most_max_concurrency_in_flight(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    doc = await run(
        module_client,
        write_playbook(
            tmp_path,
            "bounded",
            """
        - step: start
          loop: {in: "{{ range(8) | list }}", iterator: n, mode: async, max_concurrency: 3}
          tool:
            kind: python
            args: {n: "{{ n }}"}
            code: "import time\\ntime.sleep(0.2)\\nresult = n"
    """,
        ),
    )
    assert doc["status"] == "completed", doc
    assert doc["result"] == list(range(8))
    in_flight, most = 0, 0
    for row in await module_client.store.list_events(int(doc["execution_id"])):
        in_flight += {"command.issued": 1, "step.item": -1}.get(row["event_type"], 0)
        most = max(most, in_flight)
    assert most == 3


async def test_empty_loop_older_iterator_form_and_a_bad_in(
    module_client: Client, module_mesh: Mesh, tmp_path: Path
) -> None:
    doc = await run(
        module_client,
        write_playbook(
            tmp_path,
            "loop_forms",
            """
        - step: start
          loop: {in: [], iterator: n}
          tool: {kind: python, code: "result = 1"}
          vars: {count: "{{ result | length }}"}
          next: [older]
        - step: older
          tool:
            kind: iterator
            collection: "{{ workload.names }}"
            element: name
            mode: async
            task: {kind: python, args: {name: "{{ name }}"}, code: "result = name.upper()"}
    """,
            workload="{names: [ada, bob]}",
        ),
    )
    assert doc["status"] == "completed", doc
    assert doc["steps"]["start"] == [] and doc["vars"] == {"count": 0}
    assert doc["result"] == ["ADA", "BOB"]
    bad = await run(
        module_client,
        write_playbook(
            tmp_path,
            "bad_in",
            """
        - step: start
          loop: {in: "{{ 5 }}", iterator: n}
          tool: {kind: python, code: "result = 1"}
    """,
        ),
    )
    assert bad["status"] == "failed"
    assert bad["error"]["message"] == "step `start`: loop.in must be a list, got int 5"


async def test_case_rules_paginate_route_errors_and_sink(
    module_client: Client, module_mesh: Mesh, module_api: HttpApi, tmp_path: Path
) -> None:
    doc = await run(
        module_client,
        write_playbook(
            tmp_path,
            "case_rules",
            f"""
        - step: start
          tool: {{kind: http, url: "{module_api.url}/items", params: {{page: 1, size: 20}}}}
          case:
            - when: "{{{{ event.name == 'call.done' and response.data.paging.hasMore }}}}"
              then:
                collect: {{strategy: append, path: data.data, into: items}}
                retry: {{params: {{page: "{{{{ response.data.paging.page + 1 }}}}"}}}}
            - when: "{{{{ event.name == 'call.done' }}}}"
              then:
                collect: {{strategy: append, path: data.data, into: items}}
                sink: {{tool: {{kind: event_log}}, args: {{pages: 2}}}}
                next: [broken]
        - step: broken
          tool: {{kind: python, code: "raise ValueError('bad row')"}}
          case:
            - when: "{{{{ event.name == 'call.error' }}}}"
              then:
                set: {{reason: "{{{{ error.message }}}}"}}
                next: [report]
        - step: report
          tool:
            kind: python
            args: {{n: "{{{{ vars.items | length }}}}", reason: "{{{{ vars.reason }}}}"}}
            code: "result = {{'n': n, 'bad': 'bad row' in reason}}"
    """,
        ),
    )
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"n": ITEM_COUNT, "bad": True}
    assert [item["id"] for item in doc["vars"]["items"]] == list(range(ITEM_COUNT))
    assert "bad row" in doc["vars"]["reason"]  # `status` shows what the rules set
    events = await events_by_type(module_client, doc["execution_id"])
    [start] = [r for r in events["step.completed"] if r["step"] == "start"]
    assert start["payload"]["sink"] == {"rows": 1}
