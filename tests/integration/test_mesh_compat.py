"""Playbooks written for NoETL on a real mesh: the compatibility rules of issue 9."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import run
from tests.support.http_api import HttpApi
from tests.support.mesh import credential_store
from tests.support.playbooks import write_playbook as write


async def test_python_comment_with_template_runs(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "comment_template",
        """
        - step: start
          tool:
            kind: python
            code: |
              # reads {{ vars.x }} in NoETL's style, and {{{ braces }}}
              result = {"ok": f"{{{1}}}"}
        """,
    )
    doc = await run(client, path, timeout=30)
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"ok": "{1}"}


async def test_huge_int_fails_the_step(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "huge_int",
        """
        - step: start
          tool: {kind: python, code: "result = 1"}
          vars: {big: "{{ 2 ** 100 }}"}
          next:
            - when: "{{ error is defined }}"
              then: [{step: second}]
        - step: second
          tool: {kind: python, code: "result = 2"}
        """,
    )
    # Before: the publish failed, was retried and dead-lettered; the run hung until timeout.
    doc = await run(client, path, timeout=30)
    assert doc["status"] == "completed", doc
    assert doc["result"] == 2
    rows = await client.store.list_events(int(doc["execution_id"]))
    failed = [r for r in rows if r["event_type"] == "step.failed"]
    assert len(failed) == 1 and "cannot be sent" in str(failed[0]["error"])


async def test_undefined_name_in_when_is_false_with_a_warning_event(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "undefined_when",
        """
        - step: start
          tool: {kind: python, code: "result = {'n': 1}"}
          next:
            - when: "{{ vars.ready }}"
              then: [{step: early}]
            - else: [{step: later}]
        - step: early
          tool: {kind: python, code: "result = 'early'"}
        - step: later
          tool: {kind: python, code: "result = 'later'"}
        """,
    )
    doc = await run(client, path, timeout=30)
    assert doc["status"] == "completed", doc
    assert doc["result"] == "later"
    rows = await client.store.list_events(int(doc["execution_id"]))
    warned = [r for r in rows if r["event_type"] == "step.warning"]
    assert len(warned) == 1 and warned[0]["step"] == "start"
    assert "'ready' is undefined" in str(warned[0]["payload"])


async def test_names_noetl_provides(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = write(
        tmp_path,
        "provided_names",
        f"""
        - step: start
          tool: {{kind: python, code: "result = {{'n': 3}}"}}
          next: [{{step: items}}]
        - step: items
          loop: {{in: [10, 20], iterator: x}}
          tool:
            kind: python
            args: {{x: "{{{{ x }}}}", i: "{{{{ loop_index }}}}", where: "{{{{ job.path }}}}"}}
            code: |
              try:
                  context["start"] = None
                  writable = True
              except TypeError:
                  writable = False
              result = {{
                  "x": x, "i": i, "where": where, "writable": writable,
                  "n": context["start"]["n"], "eid": context["execution_id"],
                  "w": context["workload"]["w"],
              }}
          sink:
            per_item: true
            tool: {{kind: file, path: "{out}/item_{{{{ loop.index }}}}.json"}}
            args: {{x: "{{{{ this.x }}}}", i: "{{{{ loop_index }}}}", same: "{{{{ response.i }}}}"}}
        """,
        metadata=", w: unused",
    )
    reply = await client.register(path)
    eid = await client.start(reply.path, version=reply.version, workload={"w": "hello"})
    doc = await client.wait(eid, timeout=60)
    assert doc["status"] == "completed", doc.get("error")
    items = doc["steps"]["items"]
    assert [r["i"] for r in items] == [0, 1]
    assert {r["where"] for r in items} == {"provided_names"}
    assert {r["n"] for r in items} == {3} and {r["w"] for r in items} == {"hello"}
    assert {r["eid"] for r in items} == {doc["execution_id"]}
    assert {r["writable"] for r in items} == {False}
    written = [json.loads((out / f"item_{i}.json").read_text()) for i in (0, 1)]
    assert written == [[{"x": 10, "i": 0, "same": 0}], [{"x": 20, "i": 1, "same": 1}]]


async def test_postgres_sink_statement_and_rows_in_the_tool_block(
    client: Client, mesh: Mesh, tmp_path: Path, pg_dsn: str
) -> None:
    await credential_store(client).set("pg_compat", "postgres", {"dsn": pg_dsn})
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS compat_hits; CREATE TABLE compat_hits(n int)")
        path = write(
            tmp_path,
            "sink_forms",
            """
            - step: start
              tool: {kind: python, code: "result = {'n': 41}"}
              sink:
                tool:
                  kind: postgres
                  auth: pg_compat
                  statement: "INSERT INTO compat_hits VALUES ({{ this.n }}), ({{ response.n + 1 }})"
              next: [{step: rows}]
            - step: rows
              tool: {kind: python, code: "result = {'n': 7}"}
              sink:
                tool:
                  kind: postgres
                  auth: pg_compat
                  table: compat_hits
                  args: {n: "{{ result.n * 2 }}"}
            """,
        )
        doc = await run(client, path, timeout=60)
        assert doc["status"] == "completed", doc.get("error")
        hits = [r["n"] for r in await conn.fetch("SELECT n FROM compat_hits ORDER BY n")]
        assert hits == [14, 41, 42]
    finally:
        await conn.execute("DROP TABLE IF EXISTS compat_hits")
        await conn.close()


async def test_loop_result_shape_in_templates_and_python(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "loop_shapes",
        """
        - step: start
          next: [{step: items}]
        - step: items
          loop: {in: [1, 2, 3], iterator: n}
          tool: {kind: python, args: {n: "{{ n }}"}, code: "result = {'sq': n * n}"}
          next: [{step: use}]
        - step: use
          tool:
            kind: python
            args: {data: "{{ items }}", count: "{{ items.results | length }}"}
            code: |
              result = {
                  "sum": sum(r["sq"] for r in data["results"]),
                  "stats": data["stats"],
                  "count": count,
                  "first": data[0]["sq"],
                  "via_context": context["items"]["stats"]["total"],
              }
        """,
    )
    doc = await run(client, path, timeout=60)
    assert doc["status"] == "completed", doc.get("error")
    assert doc["result"] == {
        "sum": 14,
        "stats": {"total": 3, "success": 3, "failed": 0},
        "count": 3,
        "first": 1,
        "via_context": 3,
    }
    assert doc["steps"]["items"] == [{"sq": 1}, {"sq": 4}, {"sq": 9}]


async def test_case_retry_honours_max_attempts(
    client: Client, mesh: Mesh, tmp_path: Path, api: HttpApi
) -> None:
    path = write(
        tmp_path,
        "case_retry",
        f"""
        - step: start
          tool: {{kind: http, url: "{api.url}/flaky/compat", params: {{fail: 100}}}}
          case:
            - when: "{{{{ event.name == 'call.error' }}}}"
              then: {{retry: {{max_attempts: 3}}}}
        """,
    )
    doc = await run(client, path, timeout=60)
    assert doc["status"] == "failed", doc
    assert api.calls["compat"] == 3


async def test_loop_case_rules_per_item_on_the_mesh(
    client: Client, mesh: Mesh, tmp_path: Path, api: HttpApi, pg_dsn: str
) -> None:
    await credential_store(client).set("pg_items", "postgres", {"dsn": pg_dsn})
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS compat_items;"
            "CREATE TABLE compat_items(key text, calls int, idx int)"
        )
        path = write(
            tmp_path,
            "loop_rules",
            f"""
            - step: start
              loop:
                in:
                  - {{key: a, fail: 0}}
                  - {{key: b, fail: 2}}
                  - {{key: c, fail: 1}}
                  - {{key: d, fail: 9}}
                iterator: item
                mode: async
              tool:
                kind: http
                url: "{api.url}/flaky/loop_{{{{ item.key }}}}"
                params: {{fail: "{{{{ item.fail }}}}"}}
              case:
                - when: "{{{{ event.name == 'call.error' and item.fail > 5 }}}}"
                  then:
                    sink:
                      tool: {{kind: postgres, auth: pg_items, table: compat_items}}
                      args:
                        key: "{{{{ item.key }}}}:{{{{ 'error' if error.message else '' }}}}"
                        calls: 0
                        idx: "{{{{ loop.index }}}}"
                - when: "{{{{ event.name == 'loop.done' }}}}"
                  then:
                    sink:
                      tool: {{kind: postgres, auth: pg_items, table: compat_items}}
                      args: {{key: list, calls: "{{{{ result | length }}}}", idx: -1}}
                - when: "{{{{ event.name == 'call.error' }}}}"
                  then:
                    retry:
                      max_attempts: 3
                      args:
                        params: {{fail: "{{{{ item.fail }}}}", again: "{{{{ loop.index }}}}"}}
                - when: "{{{{ event.name == 'call.done' }}}}"
                  then:
                    sink:
                      tool: {{kind: postgres, auth: pg_items, table: compat_items}}
                      args:
                        key: "{{{{ item.key }}}}"
                        calls: "{{{{ result.data.calls }}}}"
                        idx: "{{{{ loop.index }}}}"
                    next: [{{step: after, args: {{last: "{{{{ item.key }}}}"}}}}]
            - step: after
              tool: {{kind: python, code: "result = last"}}
            """,
        )
        doc = await run(client, path, timeout=90)
        assert doc["status"] == "completed", doc.get("error")
        # Retries re-call the failing item only, each within its max_attempts.
        calls = {k: api.calls[f"loop_{k}"] for k in "abcd"}
        assert calls == {"a": 1, "b": 3, "c": 2, "d": 1}
        retried = [p for _, p, _ in api.requests if "again=" in p]
        assert sorted(retried) == sorted(
            ["/flaky/loop_b?fail=2&again=1"] * 2 + ["/flaky/loop_c?fail=1&again=2"]
        )
        rows = await conn.fetch("SELECT key, calls, idx FROM compat_items ORDER BY key")
        # Per item: each success, the failed item with its error; then the list once.
        assert [tuple(r) for r in rows] == [
            ("a", 1, 0),
            ("b", 3, 1),
            ("c", 2, 2),
            ("d:error", 0, 3),
            ("list", 4, -1),
        ]
        # The rules' `next` is taken once, when the loop ends (the last item's args win).
        events = await client.store.list_events(int(doc["execution_id"]))
        starts = [e for e in events if e["event_type"] == "step.started"]
        assert [e["step"] for e in starts].count("after") == 1
        assert doc["result"] == "c"
    finally:
        await conn.execute("DROP TABLE IF EXISTS compat_items")
        await conn.close()


async def test_postgres_result_answers_noetl_command_shape(
    client: Client, mesh: Mesh, tmp_path: Path, pg_dsn: str
) -> None:
    await credential_store(client).set("pg_shape", "postgres", {"dsn": pg_dsn})
    path = write(
        tmp_path,
        "pg_shape",
        """
        - step: start
          tool:
            kind: postgres
            auth: pg_shape
            query: "SELECT n, n * n AS sq FROM generate_series(1, 3) AS n ORDER BY n"
          next: [{step: script}]
        - step: script
          tool:
            kind: postgres
            auth: pg_shape
            query: >-
              CREATE TEMP TABLE shape_t AS SELECT 7 AS v;
              SELECT v FROM shape_t; SELECT 'x' AS k, 2 AS m
          next: [{step: use}]
        - step: use
          tool:
            kind: python
            args:
              rows: "{{ start.command_0.rows }}"
              count: "{{ start.command_0.row_count }}"
              columns: "{{ start.command_0.columns }}"
              today: "{{ start | length }}"
              first_v: "{{ script.command_1.rows[0].v }}"
              made: "{{ script.command_0.message }}"
              last_k: "{{ script[0].k }}"
              script_len: "{{ script | length }}"
              whole: "{{ script }}"
              listed: "{{ start }}"
            code: |
              result = {
                  "rows": rows, "count": count, "columns": columns, "today": today,
                  "first_v": first_v, "made": made, "last_k": last_k,
                  "script_len": script_len,
                  "py_cmd": whole["command_1"]["rows"][0]["v"],
                  "py_last": whole[0]["m"],
                  "py_single": listed["command_0"]["row_count"],
                  "py_ctx": context["script"]["command_2"]["columns"],
              }
        """,
    )
    doc = await run(client, path, timeout=60)
    assert doc["status"] == "completed", doc.get("error")
    assert doc["result"] == {
        "rows": [{"n": 1, "sq": 1}, {"n": 2, "sq": 4}, {"n": 3, "sq": 9}],
        "count": 3,
        "columns": ["n", "sq"],
        "today": 3,
        "first_v": 7,
        "made": "SELECT 1",
        "last_k": "x",
        "script_len": 1,
        "py_cmd": 7,
        "py_last": 2,
        "py_single": 3,
        "py_ctx": ["k", "m"],
    }
    # Stored once: the single statement as today's list, the script as NoETL's mapping.
    assert doc["steps"]["start"] == [{"n": 1, "sq": 1}, {"n": 2, "sq": 4}, {"n": 3, "sq": 9}]
    assert sorted(doc["steps"]["script"]) == ["command_0", "command_1", "command_2"]


async def test_keychain_credential_entries_fill_tool_templates_masked(
    client: Client, mesh: Mesh, tmp_path: Path, api: HttpApi
) -> None:
    token = "kc-tok-5a4b3c2d1e"
    await credential_store(client).set("stored_api", "http", {"token": token, "username": "ada"})
    path = tmp_path / "keychain.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: keychain_use}\n"
        "workload: {cred: stored_api}\n"
        "keychain:\n"
        "  - {name: api, kind: credential, credential: '{{ workload.cred }}'}\n"
        "workflow:\n"
        "  - step: start\n"
        "    tool:\n"
        "      kind: http\n"
        f"      url: '{api.url}/echo'\n"
        "      headers: {Authorization: 'Bearer {{ keychain.api.token }}'}\n"
        "      params: {who: '{{ keychain.api.username }}'}\n"
    )
    doc = await run(client, path, timeout=60)
    assert doc["status"] == "completed", doc.get("error")
    sent = [h for _, p, h in api.requests if p.startswith("/echo")]
    assert sent and sent[-1]["Authorization"] == f"Bearer {token}"
    assert doc["result"]["data"]["query"] == {"who": ["ada"]}
    # The value reached the request only: every recorded copy is masked.
    assert doc["result"]["data"]["headers"]["Authorization"] == "Bearer ***"
    for table in ("noetl.event e", "noetl.execution e"):
        hits = await client.store.pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE e::text LIKE '%' || $1 || '%'", token
        )
        assert hits == 0, table
