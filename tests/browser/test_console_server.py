"""The console's server side, without a browser: its files are complete (every module an
import or the page names exists), shipped in the wheel and served at `/` without a token
while its routes need one; the step graph and the problems it is given."""

from __future__ import annotations

import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hatchling.builders.wheel import WheelBuilder

from noetl.api import make_app
from noetl.api.console import STATIC_DIR, check
from noetl.client import Client

ROOT = Path(__file__).parent.parent.parent
TOKEN = "files-test-token"


def referenced() -> set[str]:
    """Every file under /console/ that index.html or a module's import names."""
    names = set(re.findall(r'"/console/([\w.-]+)"', (STATIC_DIR / "index.html").read_text()))
    for module in STATIC_DIR.glob("*.js"):
        names |= set(re.findall(r'from "\./([\w.-]+)"', module.read_text()))
    return names


def test_every_referenced_file_exists() -> None:
    names = referenced()
    assert {"app.js", "style.css", "execution.js"} <= names
    missing = sorted(name for name in names if not (STATIC_DIR / name).is_file())
    assert not missing, f"referenced but missing: {missing}"
    unused = sorted(p.name for p in STATIC_DIR.iterdir() if p.name not in names | {"index.html"})
    assert not unused, f"files no page loads: {unused}"


def test_the_wheel_ships_the_console(tmp_path: Path) -> None:
    wheel = next(
        iter(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"]))
    )
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"noetl/api/console/{p.name}" for p in STATIC_DIR.iterdir()}
    assert expected <= shipped, sorted(expected - shipped)


@pytest.fixture
async def http(client: Client) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(client, token=TOKEN))) as c:
        yield c


async def test_pages_are_public_and_routes_need_the_token(http: TestClient[Any, Any]) -> None:
    page = await http.get("/")
    assert page.status == 200
    assert "/console/app.js" in await page.text()
    script = await http.get("/console/app.js")
    assert script.status == 200
    assert script.content_type == "text/javascript"
    again = await http.get("/console/app.js", headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304
    assert (await http.get("/console/../console.py")).status == 404
    assert (await http.get("/api/console/executions")).status == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listed = await http.get("/api/console/executions?status=running", headers=auth)
    assert await listed.json() == {"total": 0, "offset": 0, "limit": 50, "items": []}
    for query in ("status=done", "limit=0", "offset=-1", "parent=x"):
        bad = await http.get(f"/api/console/executions?{query}", headers=auth)
        assert bad.status == 400, query
        assert "error" in await bad.json()
    checked = await http.post(
        "/api/console/validate",
        json={"content": "apiVersion: noetl.io/v2\nkind: Playbook\nworkflow: []\n"},
        headers=auth,
    )
    problems = (await checked.json())["problems"]
    assert problems and all(p["line"] >= 1 for p in problems)


def test_the_graph_the_console_draws() -> None:
    text = ROOT / "tests/fixtures/playbooks/control_flow_workbook/control_flow_workbook.yaml"
    checked = check(text.read_text())
    assert checked["problems"] == []
    graph = checked["graph"]
    edges = {(e["source"], e["target"]): e["when"] for e in graph["edges"]}
    assert edges == {
        ("start", "eval_flag"): None,
        ("eval_flag", "hot_a"): "{{ result.is_hot }}",
        ("eval_flag", "hot_b"): "{{ result.is_hot }}",
        ("eval_flag", "cold"): "else",
        ("hot_a", "end"): None,
        ("hot_b", "end"): None,
        ("cold", "end"): None,
    }
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["start"]["kind"] is None
    assert nodes["eval_flag"]["kind"] == "workbook"
    assert nodes["eval_flag"]["args"] == {"temperature_c": "{{ workload.temperature_c }}"}
    assert nodes["end"]["joins"] and not nodes["hot_a"]["joins"]
    assert checked["workload"] == {"temperature_c": 30}


def test_problems_keep_their_lines() -> None:
    text = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: x}\nworkflow:\n"
    text += "  - step: start\n    next: [nowhere]\n"
    checked = check(text)
    assert checked["graph"] is None
    assert [(p["line"], p["severity"]) for p in checked["problems"]] == [(6, "error")]
    assert "nowhere" in checked["problems"][0]["message"]
