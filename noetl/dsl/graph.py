"""The static routing graph of a playbook, precomputed so the engine can query it cheaply."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator

from noetl.dsl.models import Edge, Else, Playbook, Step, When

START = "start"
END = "end"
# Origins whose reachable sets a graph keeps: joins ask about the few running steps.
_REACH_CACHE = 32


def _targets(step: Step) -> Iterator[str]:
    """Every step name that `step`'s `next` entries and `case` rules can route to."""
    for entry in step.next:
        if isinstance(entry, Edge):
            yield entry.step
        elif isinstance(entry, When | Else):
            yield from (edge.step for edge in entry.then)
    for rule in step.case:
        yield from (edge.step for edge in rule.then.next)


class Graph:
    """Successors, predecessors and reachability between the steps of one workflow.

    Routes to names that are not steps are ignored (validation reports them). Querying a
    step the workflow does not have raises KeyError.
    """

    __slots__ = ("_pred", "_reach", "_succ")

    def __init__(self, steps: Iterable[Step]) -> None:
        # A duplicated step name means its first definition, as everywhere (validation warns).
        first: dict[str, Step] = {}
        for step in steps:
            first.setdefault(step.step, step)
        steps = list(first.values())
        names = set(first)
        succ: dict[str, dict[str, None]] = {step.step: {} for step in steps}
        for step in steps:
            targets = list(_targets(step))
            # A step with no routing at all ends its branch, which goes on to `end`.
            if not targets and END in names and step.step != END:
                targets = [END]
            # dict keys: deduplicated, in first-seen order.
            succ[step.step].update((t, None) for t in targets if t in names)
        self._succ = {name: tuple(out) for name, out in succ.items()}
        self._pred: dict[str, set[str]] = {name: set() for name in names}
        for name, out in self._succ.items():
            for target in out:
                self._pred[target].add(name)
        # Reachability is walked on demand and only the last few origins are kept: memory
        # stays linear in the graph (a full closure is quadratic: 10,000 steps, 10^8 pairs).
        self._reach: dict[str, frozenset[str]] = {}

    @classmethod
    def of(cls, playbook: Playbook) -> Graph:
        """The graph of `playbook`, built once per playbook object and then cached."""
        key = id(playbook)
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is playbook:
            return hit[1]
        graph = cls(playbook.workflow)
        # The callback drops the entry when the playbook dies, before its id can be reused.
        ref = weakref.ref(playbook, lambda _: _CACHE.pop(key, None))
        _CACHE[key] = (ref, graph)
        return graph

    def successors(self, step: str) -> tuple[str, ...]:
        """Every step `step` can route to, including the implicit route to `end`."""
        return self._succ[step]

    def in_degree(self, step: str) -> int:
        """How many distinct steps can route to `step`."""
        return len(self._pred[step])

    def reaches(self, a: str, b: str) -> bool:
        """True when `b` can be reached from `a` by one or more routes."""
        return b in self._reachable(a)

    def unreachable(self) -> set[str]:
        """The steps that no path from `start` reaches (all of them without `start`)."""
        if START not in self._succ:
            return set(self._succ)
        return set(self._succ) - self._walk(START) - {START}

    def _reachable(self, origin: str) -> frozenset[str]:
        hit = self._reach.get(origin)
        if hit is None:
            if len(self._reach) >= _REACH_CACHE:
                del self._reach[next(iter(self._reach))]  # the oldest origin
            hit = self._reach[origin] = self._walk(origin)
        return hit

    def _walk(self, origin: str) -> frozenset[str]:
        seen: set[str] = set()
        stack = list(self._succ[origin])
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self._succ[name])
        return frozenset(seen)


_CACHE: dict[int, tuple[weakref.ref[Playbook], Graph]] = {}
