"""Templates written to spin or to build huge values: each raises once its deadline passes
(RenderTimeout) or before the value is built; ordinary templates are unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from noetl.errors import RenderError, RenderTimeout
from noetl.render import condition, render
from noetl.render_limits import DEFAULT_TIME_LIMIT, set_time_limit

LIMIT = 0.3


@pytest.fixture(autouse=True)
def _short_limit() -> Iterator[None]:
    set_time_limit(LIMIT)
    yield
    set_time_limit(DEFAULT_TIME_LIMIT)


SPINNING = [
    # nested loops over the largest range the sandbox allows
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    # the same, printing
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    # loops over strings built with `*` (no range, no call inside)
    "{% set s = 'x' * 1000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    # a filter doing the work at each item
    "{% for a in range(100000) %}{{ range(100000) | sum }}{% endfor %}",
    # a string grown in pieces
    "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% set ns.s = ns.s ~ ('x' * 1000) %}{% endfor %}{% endfor %}{{ ns.s | length }}",
    # exponential recursion through a macro (calls, no loop)
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    # a loop with a filter in its test, as a single expression would not loop
    "{% for a in range(100000) if range(100000) | list | length %}{% endfor %}",
    # a recursive loop
    "{% for n in [60] recursive %}{% if n %}{{ loop([n - 1, n - 1]) }}{% endif %}{% endfor %}",
]


@pytest.mark.parametrize("template", SPINNING)
def test_spinning_templates_stop_at_their_deadline(template: str) -> None:
    began = time.monotonic()
    with pytest.raises(RenderTimeout) as caught:
        render(template, {}, where="step `s` args")
    assert time.monotonic() - began < 60  # without the deadline: hours
    message = str(caught.value)
    assert message.startswith("step `s` args: cannot render ")
    assert f"ran longer than {LIMIT:g} s (NOETL_RENDER_TIMEOUT)" in message
    assert caught.value.error_type == "render_timeout"


def test_a_spinning_condition_is_a_timeout_not_false() -> None:
    with pytest.raises(RenderTimeout):
        condition(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", {}
        )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% set s = 'x' * 10000000 %}{{ s ~ s }}", "`~` would build 20,000,000 characters"),
        ("{% set s = 'x' * 10000000 %}{{ (s + s) | length }}", "joining 10,000,000 and"),
        (
            "{% set s = [0] * 10000000 %}{{ (s + s) | length }}",
            "has 20,000,000 items, more than the limit of 16,777,216",
        ),
    ],
)
def test_concatenation_is_bounded(template: str, expected: str) -> None:
    set_time_limit(60)  # building the operands may take a while on a busy machine
    with pytest.raises(RenderError) as caught:
        render(template, {})
    assert not isinstance(caught.value, RenderTimeout)
    assert "refused by the sandbox" in str(caught.value) and expected in str(caught.value)


def test_ordinary_loops_concatenation_and_addition_are_unchanged() -> None:
    set_time_limit(60)  # what is checked here is the result, not time: a busy machine is slow
    looped = (
        "{% for x in xs %}{{ loop.index }}/{{ loop.length }}"
        "{{ '.' if loop.last else '' }} {% endfor %}"
    )
    assert render(looped, {"xs": [1, 2, 3]}) == "1/3 2/3 3/3. "
    assert render("{% for x in [] %}{% else %}none{% endfor %}", {}) == "none"
    assert (
        render("{% for k, v in d.items() if v %}{{ k }}{% endfor %}", {"d": {"a": 1, "b": 0}})
        == "a"
    )
    assert render("{{ a ~ b }}", {"a": 1, "b": "x"}) == "1x"
    assert render("{{ [1] + [2] }}", {}) == [1, 2]
    assert render("{{ 'a' + 'b' }}", {}) == "ab"
    assert render("{{ n + 1 }}", {"n": 41}) == 42
    with pytest.raises(RenderError, match="'missing' is undefined"):
        render("{% for x in missing %}{% endfor %}", {})


def test_the_time_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        set_time_limit(0)
