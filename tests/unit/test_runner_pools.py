"""Runner pools in the pure parts: which pool a command goes to, what the tool block keeps,
what validation and configuration refuse."""

from __future__ import annotations

import pytest

from noetl import dsl
from noetl.config import Settings
from noetl.engine import Engine
from noetl.engine.limits import Limits
from noetl.errors import ConfigError
from noetl.pools import PoolRouting, parse_kind_pools
from tests.unit.engine_sim import Sim
from tests.unit.test_dsl_validate import HEADER, errors

PLAYBOOK = (
    HEADER
    + """\
workflow:
  - step: start
    tool: {kind: python, code: "result = 1"}
    next: [{step: heavy}]
  - step: heavy
    runner_pool: heavy
    tool: {kind: python, code: "result = 2"}
    next: [{step: tool_wins}]
  - step: tool_wins
    runner_pool: heavy
    tool: {kind: python, runner_pool: gpu, code: "result = 3"}
    next: [{step: by_kind}]
  - step: by_kind
    tool: {kind: duckdb, query: "SELECT 1"}
    next: [{step: step_beats_kind}]
  - step: step_beats_kind
    runner_pool: light
    tool: {kind: duckdb, query: "SELECT 2"}
    next: [{step: pg}]
  - step: pg
    tool: {kind: postgres, auth: pg, query: "SELECT 1", pool: {max_size: 2}}
    next: [{step: end}]
  - step: end
"""
)


def _run(routing: PoolRouting) -> Sim:
    engine = Engine(dsl.load_text(PLAYBOOK), version=1, limits=Limits(pools=routing))
    sim = Sim(engine, lambda command: ("ok", None))
    assert sim.run().status == "completed"
    return sim


def test_the_tool_wins_over_the_step_which_wins_over_the_kind_map() -> None:
    sim = _run(PoolRouting(default="default", by_kind={"duckdb": "heavy", "postgres": "db"}))
    assert {c.step: c.pool for c in sim.issued} == {
        "start": "default",
        "heavy": "heavy",
        "tool_wins": "gpu",
        "by_kind": "heavy",
        "step_beats_kind": "light",
        "pg": "db",
    }
    # The issued events say where each command went (the default pool goes unsaid).
    recorded = {
        e.step: (e.payload or {}).get("pool") for e in sim.events if e.type == "command.issued"
    }
    assert recorded["start"] is None and recorded["tool_wins"] == "gpu"
    assert recorded["pg"] == "db"


def test_runner_pool_stays_with_the_runtime_and_pool_goes_to_the_plugin() -> None:
    sim = _run(PoolRouting())
    tools = {c.step: c.tool for c in sim.issued}
    assert all("runner_pool" not in tool for tool in tools.values())
    assert tools["pg"]["pool"] == {"max_size": 2}  # NoETL's postgres connection pool
    assert {c.step: c.pool for c in sim.issued}["by_kind"] == "default"


def test_the_default_pool_comes_from_configuration() -> None:
    sim = _run(PoolRouting(default="main"))
    assert {c.step: c.pool for c in sim.issued}["start"] == "main"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "workflow:\n  - step: start\n    runner_pool: heavy.x\n"
            "    tool: {kind: python, code: 'result = 1'}\n",
            "pb.yaml:7:18: `runner_pool`: a runner pool name is 1 to 64 letters, digits, "
            "`-` and `_` (one NATS subject token), got 'heavy.x'",
        ),
        (
            "workflow:\n  - step: start\n    tool:\n      kind: python\n"
            "      runner_pool: '{{ workload.pool }}'\n      code: 'result = 1'\n",
            "pb.yaml:9:20: `runner_pool`: a runner pool name is 1 to 64 letters, digits, "
            "`-` and `_` (one NATS subject token), got '{{ workload.pool }}'",
        ),
        (
            "workflow:\n  - step: start\n    tool:\n      kind: plugged\n      runner_pool: 7\n",
            "pb.yaml:9:20: `runner_pool`: a runner pool name is 1 to 64 letters, digits, "
            "`-` and `_` (one NATS subject token), got 7",
        ),
    ],
)
def test_a_bad_pool_name_is_an_error_at_its_position(body: str, expected: str) -> None:
    assert errors(body, known_kinds={"python", "plugged"}) == [expected]


def test_a_good_pool_name_is_no_warning() -> None:
    body = (
        "workflow:\n  - step: start\n    runner_pool: heavy-1\n"
        "    tool: {kind: python, runner_pool: gpu_2, code: 'result = 1'}\n"
    )
    assert errors(body, known_kinds={"python"}) == []


def test_the_kind_map_and_the_pool_are_checked_in_configuration() -> None:
    assert parse_kind_pools(" duckdb=heavy , snowflake=warehouse,") == {
        "duckdb": "heavy",
        "snowflake": "warehouse",
    }
    for bad in ("duckdb", "duckdb=heavy.x", "=heavy", "duckdb=heavy pool"):
        with pytest.raises(ConfigError, match="NOETL_RUNNER_POOLS entry"):
            Settings.from_env({"NOETL_RUNNER_POOLS": bad})
    with pytest.raises(ConfigError, match="NOETL_RUNNER_POOL: a runner pool name"):
        Settings.from_env({"NOETL_RUNNER_POOL": "noetl.>"})
    with pytest.raises(ConfigError, match="NOETL_RUNNER_CONCURRENCY"):
        Settings.from_env({"NOETL_RUNNER_CONCURRENCY": "0"})
