"""Pagination and retries as documented, run on one shared mesh against the local HTTP API:
every merge strategy, `next_page` by params/url/json/headers, `max_iterations`, and the
delays of backoff, `max_delay`, jitter and `Retry-After` read back from the event table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from actors.mesh import Mesh
from noetl.client import Client
from noetl.dsl import Retry
from noetl.engine.iteration import backoff_delay
from tests.integration.conftest import events_by_type, run
from tests.support.http_api import ITEM_COUNT, HttpApi
from tests.support.playbooks import write_playbook

IDS = list(range(ITEM_COUNT))
# A timer's due time minus the moment its failure was recorded is the delay the engine chose,
# plus the little time between the runner's commit and its report (more on a loaded machine).
LATE = 1.5
EARLY = 0.05


def seconds(row: dict[str, Any]) -> float:
    return datetime.fromisoformat(row["created_at"]).timestamp()


def paged_step(api: HttpApi, fields: str, tool: str = "") -> str:
    """A `start` step paging through `tool` (the /items API by default) with the
    `pagination` fields given one a line."""
    tool = tool or f'{{kind: http, url: "{api.url}/items", params: {{page: 1, size: 10}}}}'
    lines = ["- step: start", f"  tool: {tool}", "  loop:", "    pagination:"]
    lines += ["      " + line.strip() for line in fields.strip().splitlines()]
    return "\n".join(lines) + "\n"


NEXT_PAGE = 'next_page: {params: {page: "{{ response.data.paging.page + 1 }}"}}'


@pytest.mark.parametrize(
    ("strategy", "merge_path", "expected"),
    [
        ("append", "data.data", IDS),
        ("extend", "data.data", IDS),
        ("replace", "data.data", IDS[30:]),
        ("collect", "data.data", [IDS[0:10], IDS[10:20], IDS[20:30], IDS[30:]]),
        ("append", "data.paging.page", [1, 2, 3, 4]),  # a non-list part is one item
        ("collect", "data.paging", [{"page": n} for n in (1, 2, 3, 4)]),
    ],
)
async def test_merge_strategies(
    module_client: Client,
    module_mesh: Mesh,
    module_api: HttpApi,
    tmp_path: Path,
    strategy: str,
    merge_path: str,
    expected: list[Any],
) -> None:
    body = f"""
        continue_while: "{{{{ response.data.paging.hasMore }}}}"
        {NEXT_PAGE}
        merge_strategy: {strategy}
        merge_path: {merge_path}
    """
    doc = await run(module_client, write_playbook(tmp_path, "merge", paged_step(module_api, body)))
    assert doc["status"] == "completed", doc

    def ids(value: Any) -> Any:
        if isinstance(value, list):
            return [ids(v) for v in value]
        if isinstance(value, dict) and "id" in value:
            return value["id"]
        if isinstance(value, dict):
            return {"page": value["page"]}
        return value

    assert ids(doc["result"]) == expected


@pytest.mark.parametrize(
    ("tool", "next_page", "key"),
    [
        (
            '{kind: http, url: "API/cursor?size=10"}',
            'url: "API/cursor?size=10&cursor={{ response.data.next_cursor }}"',
            "cursor",
        ),
        (
            '{kind: http, method: POST, url: "API/items", json: {page: 1, size: 10}}',
            'json: {page: "{{ response.data.paging.page + 1 }}"}',
            "json",
        ),
        (
            '{kind: http, url: "API/items?size=10", headers: {X-Page: "1"}}',
            'headers: {X-Page: "{{ response.data.paging.page + 1 }}"}',
            "headers",
        ),
    ],
)
async def test_next_page_changes_url_json_or_headers(
    module_client: Client,
    module_mesh: Mesh,
    module_api: HttpApi,
    tmp_path: Path,
    tool: str,
    next_page: str,
    key: str,
) -> None:
    more = (
        "{{ response.data.next_cursor is not none }}"
        if key == "cursor"
        else "{{ response.data.paging.hasMore }}"
    )
    body = f"""
        continue_while: "{more}"
        next_page: {{{next_page.replace("API", module_api.url)}}}
        merge_path: data.data
    """
    before = len(module_api.requests)
    steps = paged_step(module_api, body, tool.replace("API", module_api.url))
    doc = await run(module_client, write_playbook(tmp_path, f"next_{key}", steps))
    assert doc["status"] == "completed", doc["error"]
    assert [item["id"] for item in doc["result"]] == IDS
    sent = module_api.requests[before:]
    if key == "cursor":
        assert [q for _, q, _ in sent] == ["/cursor?size=10"] + [
            f"/cursor?size=10&cursor={n}" for n in (10, 20, 30)
        ]
    elif key == "json":
        assert [(m, q) for m, q, _ in sent] == [("POST", "/items")] * 4
    else:
        assert [h["X-Page"] for _, _, h in sent] == ["1", "2", "3", "4"]


async def test_max_iterations_caps_the_series_and_says_so(
    module_client: Client, module_mesh: Mesh, module_api: HttpApi, tmp_path: Path
) -> None:
    body = f"""
        continue_while: "{{{{ response.data.paging.hasMore }}}}"
        {NEXT_PAGE}
        merge_path: data.data
        max_iterations: 2
    """
    doc = await run(module_client, write_playbook(tmp_path, "capped", paged_step(module_api, body)))
    assert doc["status"] == "completed", doc
    assert [item["id"] for item in doc["result"]] == IDS[:20]
    pages = (await events_by_type(module_client, doc["execution_id"]))["step.item"]
    assert [p["payload"].get("capped") for p in pages] == [None, 2]


def counter_code(path: Path, failures: int) -> str:
    """Python that fails its first `failures` calls (counted in a file), then succeeds."""
    return (
        f"from pathlib import Path\\np = Path({str(path)!r})\\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\\np.write_text(str(n))\\n"
        f"if n <= {failures}:\\n    raise RuntimeError(f'attempt {{n}} fails')\\n"
        "result = {'attempts': n}"
    )


async def test_retry_delays_follow_backoff_max_delay_jitter_and_retry_after(
    module_client: Client, module_mesh: Mesh, module_api: HttpApi, tmp_path: Path, shared_path: Path
) -> None:
    # Four retrying steps run side by side, so the test waits for the longest one only.
    flaky = f"{module_api.url}/flaky"
    steps = f"""
    - step: start
      next: [backoff, jitter, retry_after, retry_after_capped]
    - step: backoff
      retry: {{max_attempts: 4, delay: 0.5, backoff: 4, max_delay: 1.5}}
      tool: {{kind: python, code: "{counter_code(shared_path / "backoff", 3)}"}}
    - step: jitter
      retry: {{max_attempts: 2, delay: 2, jitter: true}}
      tool: {{kind: python, code: "{counter_code(shared_path / "jitter", 1)}"}}
    - step: retry_after
      retry: {{max_attempts: 2, delay: 0.1}}
      tool: {{kind: http, url: "{flaky}/{tmp_path.name}-a", params: {{fail: 1, retry_after: 2}}}}
    - step: retry_after_capped
      retry: {{max_attempts: 2, delay: 0.1, max_delay: 1}}
      tool: {{kind: http, url: "{flaky}/{tmp_path.name}-b", params: {{fail: 1, retry_after: 30}}}}
    """
    doc = await run(module_client, write_playbook(tmp_path, "retries", steps))
    assert doc["status"] == "completed", doc
    assert doc["steps"]["backoff"] == {"attempts": 4}
    assert doc["steps"]["retry_after"]["data"] == {"calls": 2}
    events = await events_by_type(module_client, doc["execution_id"])
    failed = {row["command_id"]: seconds(row) for row in events["command.failed"]}
    fired = {row["payload"]["name"]: seconds(row) for row in events["timer.fired"]}
    delays: dict[str, list[float]] = {}
    for row in events["timer.scheduled"]:
        timer = row["payload"]
        failed_command = timer["retry"]["failed_command"]
        delays.setdefault(row["step"], []).append(timer["due_at"] - failed[failed_command])
        assert fired[timer["name"]] >= timer["due_at"] - EARLY  # never fired early

    def near(measured: list[float], expected: list[float]) -> bool:
        return len(measured) == len(expected) and all(
            want - EARLY <= got <= want + LATE for got, want in zip(measured, expected, strict=True)
        )

    assert near(delays["backoff"], [0.5, 1.5, 1.5]), delays  # 0.5, 0.5 x 4 capped, capped
    assert near(delays["retry_after"], [2.0]), delays  # the header wins over a shorter delay
    assert near(delays["retry_after_capped"], [1.0]), delays  # but max_delay bounds it
    # Jitter: between half and all of the delay, derived from the failed command's id.
    [jitter_timer] = [r["payload"] for r in events["timer.scheduled"] if r["step"] == "jitter"]
    policy = Retry(max_attempts=2, delay=2, jitter=True)
    chosen = backoff_delay(policy, 1, jitter_timer["retry"]["failed_command"])
    assert 1.0 <= chosen <= 2.0
    assert near(delays["jitter"], [chosen]), delays
