"""The routing graph: successors (with the implicit `end`), in-degree, reachability."""

from __future__ import annotations

import gc

from noetl.dsl import Graph, Playbook, load_text

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: graph}
workflow:
  - step: start
    next:
      - audit
      - when: "{{ result.n > 10 }}"
        then: [big, audit]
      - else: [small]
  - step: audit
  - step: big
    next: [join]
  - step: small
    case:
      - when: "{{ event.name == 'call.done' }}"
        then: {next: [join]}
  - step: join
    next:
      - when: "{{ result.again }}"
        then: [start]
  - step: end
"""


def graph() -> Graph:
    return Graph.of(load_text(PLAYBOOK))


def test_successors_cover_every_routing_form() -> None:
    g = graph()
    assert g.successors("start") == ("audit", "big", "small")
    assert g.successors("small") == ("join",)
    assert g.successors("join") == ("start",)


def test_implicit_end() -> None:
    g = graph()
    assert g.successors("audit") == ("end",)  # no routing: goes on to `end`
    assert g.successors("end") == ()  # never to itself


def test_no_implicit_end_without_an_end_step() -> None:
    g = Graph.of(load_text(PLAYBOOK.replace("  - step: end\n", "")))
    assert g.successors("audit") == ()


def test_in_degree_counts_distinct_predecessors() -> None:
    g = graph()
    assert g.in_degree("audit") == 1  # two edges from `start`, one predecessor
    assert g.in_degree("join") == 2
    assert g.in_degree("end") == 1
    assert g.in_degree("start") == 1  # the loop back from `join`


def test_reaches() -> None:
    g = graph()
    assert g.reaches("start", "end")
    assert g.reaches("big", "small")  # through the cycle join -> start
    assert g.reaches("start", "start")  # a cycle: one or more edges
    assert not g.reaches("audit", "start")
    assert not g.reaches("end", "end")


def test_unreachable() -> None:
    text = PLAYBOOK.replace("  - step: end\n", "  - step: end\n  - step: orphan\n    next: [end]\n")
    assert Graph.of(load_text(text)).unreachable() == {"orphan"}
    assert graph().unreachable() == set()


def test_graph_is_cached_per_playbook_object() -> None:
    playbook = load_text(PLAYBOOK)
    assert Graph.of(playbook) is Graph.of(playbook)
    other = load_text(PLAYBOOK)
    assert Graph.of(other) is not Graph.of(playbook)


def test_cache_does_not_keep_playbooks_alive() -> None:
    from noetl.dsl import graph as graph_module

    playbook: Playbook | None = load_text(PLAYBOOK)
    assert playbook is not None
    key = id(playbook)
    Graph.of(playbook)
    assert key in graph_module._CACHE
    playbook = None
    gc.collect()
    assert key not in graph_module._CACHE
