"""The pure helpers behind retries and pagination: backoff delays (with `max_delay`, jitter
and `Retry-After`), merging pages by strategy, and finding the items in a page."""

from __future__ import annotations

import pytest

from noetl.dsl import Retry
from noetl.engine.iteration import backoff_delay, extract, merge

IDS = [f"4242:fetch:1:{n}" for n in range(300)]


def policy(**fields: object) -> Retry:
    return Retry(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "delays"),
    [
        ({"delay": 1, "backoff": 2}, [1, 2, 4, 8, 16]),
        ({"delay": 0.5, "backoff": 3}, [0.5, 1.5, 4.5, 13.5, 40.5]),
        ({"delay": 2, "backoff": 1}, [2, 2, 2, 2, 2]),
        ({"delay": 1, "backoff": 10, "max_delay": 5}, [1, 5, 5, 5, 5]),
        ({"delay": 0}, [0, 0, 0, 0, 0]),
        ({}, [1, 2, 4, 8, 16]),  # the documented defaults: 1 s, doubling
    ],
)
def test_backoff_multiplies_the_delay_up_to_max_delay(
    fields: dict[str, float], delays: list[float]
) -> None:
    retry = policy(**fields)
    assert [backoff_delay(retry, attempt, IDS[0]) for attempt in range(1, 6)] == delays


def test_default_max_delay_is_sixty_seconds() -> None:
    assert backoff_delay(policy(delay=1, backoff=2), 10, IDS[0]) == 60


def test_jitter_spreads_between_half_and_all_of_the_delay() -> None:
    retry = policy(delay=4, backoff=2, jitter=True)
    first = [backoff_delay(retry, 1, cid) for cid in IDS]
    assert all(2 <= d <= 4 for d in first)
    # Spread over the whole range, not pinned to one end of it.
    assert min(first) < 2.2 and max(first) > 3.8
    assert len(set(first)) > len(IDS) * 0.9
    # The same command gets the same delay (a replayed decision schedules the same timer)...
    assert [backoff_delay(retry, 1, cid) for cid in IDS] == first
    # ...and later attempts scale the same fraction with the backoff.
    assert [backoff_delay(retry, 2, cid) for cid in IDS] == pytest.approx([d * 2 for d in first])


def test_jitter_applies_after_max_delay() -> None:
    retry = policy(delay=10, backoff=10, max_delay=20, jitter=True)
    delays = [backoff_delay(retry, 3, cid) for cid in IDS]
    assert all(10 <= d <= 20 for d in delays) and max(delays) > 19


def test_jitter_spreads_short_delays_too() -> None:
    delays = [backoff_delay(policy(delay=0.8, jitter=True), 1, cid) for cid in IDS]
    assert all(0.4 <= d <= 0.8 for d in delays) and min(delays) < 0.5


def test_jitter_leaves_a_zero_delay_at_zero() -> None:
    assert backoff_delay(policy(delay=0, jitter=True), 1, IDS[0]) == 0


@pytest.mark.parametrize(
    ("fields", "retry_after", "expected"),
    [
        ({"delay": 1}, 7, 7),  # the server asks for longer: its wait wins
        ({"delay": 8}, 3, 8),  # the server asks for less: the policy's delay stands
        ({"delay": 1, "max_delay": 5}, 30, 5),  # never past max_delay
        ({"delay": 1}, 0, 1),
        ({"delay": 1}, None, 1),
    ],
)
def test_retry_after_lengthens_the_delay_up_to_max_delay(
    fields: dict[str, float], retry_after: float | None, expected: float
) -> None:
    assert backoff_delay(policy(**fields), 1, IDS[0], retry_after) == expected


def test_retry_after_with_jitter_is_never_shortened() -> None:
    retry = policy(delay=10, jitter=True)
    assert all(backoff_delay(retry, 1, cid, 12) == 12 for cid in IDS[:50])


# -- merging pages ---------------------------------------------------------------------------


PAGES = [[1, 2], [3], [], [4, 5]]


def fold(strategy: str, pages: list[object]) -> object:
    merged: object = None
    for page in pages:
        merged = merge(merged, page, strategy)
    return merged


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("append", [1, 2, 3, 4, 5]),
        ("extend", [1, 2, 3, 4, 5]),
        ("collect", [[1, 2], [3], [], [4, 5]]),
        ("replace", [4, 5]),
    ],
)
def test_merge_strategies(strategy: str, expected: list[object]) -> None:
    assert fold(strategy, list(PAGES)) == expected


def test_append_takes_a_page_that_is_not_a_list_as_one_item() -> None:
    assert fold("append", [{"a": 1}, [2], 3]) == [{"a": 1}, 2, 3]
    assert fold("collect", [{"a": 1}, 3]) == [{"a": 1}, 3]
    assert fold("replace", [[1], {"a": 1}]) == {"a": 1}


def test_merge_leaves_the_value_merged_so_far_untouched() -> None:
    before = [1, 2]
    assert merge(before, [3], "append") == [1, 2, 3]
    assert merge(before, [3], "collect") == [1, 2, [3]]
    assert before == [1, 2]


# -- finding the items in a page ---------------------------------------------------------------


PAGE = {"data": {"items": [{"id": 7}, {"id": 8}], "next": None}, "ok": True}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (None, PAGE),
        ("", PAGE),
        ("ok", True),
        ("data.items", [{"id": 7}, {"id": 8}]),
        ("data.items.1.id", 8),
        ("data.items.-1", {"id": 8}),
        ("data.items.-2", {"id": 7}),
        ("data.next", None),
    ],
)
def test_extract_follows_a_dotted_path(path: str | None, expected: object) -> None:
    assert extract(PAGE, path) == expected


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("data.rows", "rows"),
        ("data.items.2", "2"),
        ("data.items.-3", "-3"),
        ("data.items.x", "x"),
        ("ok.deeper", "deeper"),
        ("nope.data", "nope"),
    ],
)
def test_extract_names_the_missing_part(path: str, missing: str) -> None:
    with pytest.raises(KeyError) as info:
        extract(PAGE, path)
    assert info.value.args == (missing,)
