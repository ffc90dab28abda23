"""Fuzzing the playbook loader: random YAML documents, random text and mutations of the
example playbooks give a playbook or validation problems (PlaybookError), never another
exception. Examples are bounded so the suite stays quick."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noetl import dsl
from noetl.engine import Engine
from noetl.errors import PlaybookError

PLAYBOOKS = Path(__file__).parents[1] / "fixtures" / "playbooks"
EXAMPLES = sorted(PLAYBOOKS.glob("*/*.yaml"))
# Words the validator looks for, so random documents reach past the first check.
WORDS = [
    "apiVersion", "kind", "metadata", "name", "path", "workload", "workflow", "step",
    "tool", "next", "loop", "in", "iterator", "mode", "case", "when", "then", "args",
    "code", "python", "playbook", "http", "retry", "sink", "timeout", "start", "end",
    "Playbook", "noetl.io/v2", "set", "vars", "pagination", "{{ x }}", "{{ workload.a",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.sampled_from(WORDS), st.text(max_size=12),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def load(text: str) -> None:
    """Load `text`; a valid playbook must also compile into an engine."""
    try:
        playbook = dsl.load_text(text)
    except PlaybookError as exc:
        assert exc.problems
        return
    Engine(playbook, version=1)


@FUZZ
@given(VALUES)
def test_random_documents(document: Any) -> None:
    load(yaml.safe_dump(document))


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    load(text)


def _mutate(node: Any, data: st.DataObject) -> Any:
    """`node` with one random change somewhere inside it."""
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node, key=str)))
        action = data.draw(st.sampled_from(["drop", "replace", "descend", "add"]))
        copy = dict(node)
        if action == "drop":
            del copy[key]
        elif action == "replace":
            copy[key] = data.draw(VALUES)
        elif action == "add":
            copy[data.draw(st.sampled_from(WORDS))] = data.draw(VALUES)
        else:
            copy[key] = _mutate(node[key], data)
        return copy
    if isinstance(node, list) and node:
        index = data.draw(st.integers(0, len(node) - 1))
        action = data.draw(st.sampled_from(["drop", "duplicate", "descend"]))
        copy = list(node)
        if action == "drop":
            del copy[index]
        elif action == "duplicate":
            copy.insert(index, node[index])
        else:
            copy[index] = _mutate(node[index], data)
        return copy
    return data.draw(VALUES)


@FUZZ
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_examples(path: Path, data: st.DataObject) -> None:
    document = yaml.safe_load(path.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        document = _mutate(document, data)
    load(yaml.safe_dump(document))


@FUZZ
@given(st.sampled_from(EXAMPLES), st.integers(0, 10**6), st.text(max_size=8), st.integers(0, 8))
def test_textual_edits_of_examples(path: Path, at: int, insert: str, cut: int) -> None:
    text = path.read_text()
    at %= len(text) + 1
    load(text[:at] + insert + text[at + cut :])
