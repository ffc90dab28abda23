"""The loop-size limit bites while a loop's items are built, and on a stored result the
coordinator left unloaded (`blobs.Oversized`)."""

from __future__ import annotations

import msgspec
import pytest

from noetl import blobs, render
from noetl.dsl import Pagination
from noetl.engine.loops import loop_items, page_outcome
from noetl.engine.plan import LoopSpec
from noetl.errors import RenderError, TooManyItems
from noetl.store import order


def spec(items: str) -> LoopSpec:
    return LoopSpec(items=items, iterator="i", concurrency=1, continue_on_error=False)


def items_of(template: str, limit: int = 100, **context: object) -> tuple[list[object], str]:
    items, error = loop_items(
        spec(template),
        "big",
        render.build_context(workload={}, variables={}, steps=context, execution_id="1"),
        limit,
    )
    return items, "" if error is None else f"{error.type}: {error.message}"


@pytest.mark.parametrize(
    ("template", "count"),
    [
        ("{{ range(10000000) }}", "10,000,000 items"),
        ("{{ range(100) | list * 100000 }}", "10,000,000 items"),
        ("{{ range(60) | list + range(60) | list }}", "120 items"),
        ("{{ range(100) | map('string') | list + ['x'] }}", "101 items"),
    ],
)
def test_a_template_building_too_many_items_fails_the_loop_with_the_count(
    template: str, count: str
) -> None:
    items, error = items_of(template)
    assert items == []
    assert error.startswith(f"loop: step `big`: loop.in has {count}, more than the limit of 100")
    assert "(NOETL_MAX_LOOP_ITEMS)" in error


def test_a_generator_past_the_limit_fails_the_loop_without_a_count() -> None:
    _, error = items_of("{{ range(90) | map('string') | list + range(90) | map('string') | list }}")
    assert "loop.in has 180 items" in error
    _, error = items_of("{{ numbers() | list }}", limit=50, numbers=lambda: iter(range(10**9)))
    assert error == (
        "loop: step `big`: loop.in has more than 50 items, the limit (NOETL_MAX_LOOP_ITEMS): "
        "the list"
    )


def test_items_up_to_the_limit_still_loop() -> None:
    items, error = items_of("{{ range(100) | list }}")
    assert (len(items), error) == (100, "")


def test_a_stored_result_left_unloaded_fails_the_loop_with_its_count() -> None:
    ref = {blobs.REF_KEY: "abc", "size": 20_000_000}
    big = blobs.Oversized(ref, 10_000_000, 100)
    _, error = items_of("{{ make }}", make=big)
    assert error == (
        "loop: step `big`: loop.in has 10,000,000 items, more than the limit of 100 "
        "(NOETL_MAX_LOOP_ITEMS): a stored result, not loaded"
    )
    _, error = items_of("{{ make.data }}", make=big)
    assert "loop.in has 10,000,000 items" in error


def test_an_unloaded_value_gives_its_length_refuses_reads_and_encodes_as_its_reference() -> None:
    ref = {blobs.REF_KEY: "abc", "size": 7}
    big = blobs.Oversized(ref, 500, 100)
    context = render.build_context(workload={}, variables={}, steps={"make": big}, execution_id="1")
    assert render.render("{{ make | length }}", context) == 500
    for template in ("{{ make[0] }}", "{% for x in make %}{{ x }}{% endfor %}", "{{ make.x }}"):
        with pytest.raises(RenderError) as caught:
            render.render(template, context)
        assert isinstance(caught.value.__cause__, TooManyItems), template
    # Anywhere else (an edge's args, an event) it is its reference.
    passed_on = render.render({"rows": "{{ make }}"}, context)
    assert order.decode(order.encode(passed_on)) == {"rows": ref}
    assert msgspec.json.decode(msgspec.json.encode(big)) == ref
    assert blobs.is_ref(big) and list(blobs.refs_in({"make": big})) == ["abc"]


def test_a_page_left_unloaded_ends_its_pagination_with_the_count() -> None:
    page = Pagination(continue_while="{{ true }}", next_page={"params": {"p": 2}})
    response = blobs.Oversized({blobs.REF_KEY: "abc", "size": 9}, 200_000, 100_000)
    outcome = page_outcome(page, "pages", 3, response, {}, {}, per_page_sink=False, notes=[])
    assert outcome.error is not None and outcome.next_overrides is None
    assert outcome.error.message == (
        "step `pages` loop.pagination: page 3 holds 200,000 items, more than the limit of "
        "100,000 (NOETL_MAX_LOOP_ITEMS)"
    )
