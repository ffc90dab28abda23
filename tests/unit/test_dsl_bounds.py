"""Parsing is bounded: hostile documents are refused with a clear problem, never expanded."""

from __future__ import annotations

import tracemalloc

from noetl.dsl import Edge, Graph, Step, check_text
from noetl.dsl.loader import MAX_ALIASED_NODES, MAX_DEPTH, MAX_DOCUMENT_CHARS

HEADER = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: x}\n"


def _alias_bomb(levels: int) -> str:
    """Each level lists the previous one nine times: 9**levels strings from ~40 bytes a level."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_without_expanding_it() -> None:
    text = HEADER + "workload:\n" + "".join(f"  {line}\n" for line in _alias_bomb(9).splitlines())
    assert len(text) < 1000  # 9**9 = 387 million strings, had it been expanded
    tracemalloc.start()
    report = check_text(text, filename="bomb.yaml")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    [problem] = report.errors
    assert f"its YAML aliases to more than {MAX_ALIASED_NODES:,}" in problem.message
    assert report.playbook is None
    assert peak < 64 * 1024 * 1024


def test_a_few_shared_anchors_are_fine() -> None:
    text = HEADER + (
        "workload:\n  headers: &h {Accept: application/json}\n"
        "workflow:\n"
        "  - step: start\n    tool: {kind: http, url: 'http://x', headers: *h}\n    next: [b]\n"
        "  - step: b\n    tool: {kind: http, url: 'http://y', headers: *h}\n"
    )
    report = check_text(text)
    assert report.errors == []
    assert report.playbook is not None
    assert report.playbook.step("b").tool == {
        "kind": "http",
        "url": "http://y",
        "headers": {"Accept": "application/json"},
    }


def test_an_oversized_document_is_refused_before_parsing() -> None:
    text = HEADER + "workload: {blob: '" + "x" * MAX_DOCUMENT_CHARS + "'}\n"
    [problem] = check_text(text, filename="big.yaml").errors
    assert str(problem).startswith("big.yaml:1:1: the document is ")
    assert f"limited to {MAX_DOCUMENT_CHARS:,}" in problem.message


def test_deep_nesting_is_refused() -> None:
    for depth in (MAX_DEPTH + 5, 5000):
        text = HEADER + "workload: {x: " + "[" * depth + "]" * depth + "}\n"
        [problem] = check_text(text).errors
        assert f"more than {MAX_DEPTH} levels deep" in problem.message


def test_the_step_graph_of_a_long_chain_is_linear_in_memory() -> None:
    n = 10_000
    steps = [Step(step="start", next=[Edge(step="s0")])] + [
        Step(step=f"s{i}", next=[Edge(step=f"s{i + 1}")] if i < n - 1 else []) for i in range(n)
    ]
    tracemalloc.start()
    graph = Graph(steps)
    assert graph.unreachable() == set()
    assert graph.reaches("start", f"s{n - 1}") and not graph.reaches(f"s{n - 1}", "start")
    assert all(graph.reaches(f"s{i}", f"s{n - 1}") for i in range(0, n - 1, 97))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # A transitive closure would hold n * n / 2 = 50 million names (several GB).
    assert peak < 64 * 1024 * 1024
