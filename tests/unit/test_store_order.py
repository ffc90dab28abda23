"""Key order through the JSONB codec (`noetl.store.order`)."""

from __future__ import annotations

import json

from noetl.store import order


def test_orders_jsonb_would_change_survive() -> None:
    row = {"name": "ada", "id": 1, "zeta": {"b": 1, "aa": 2}, "alpha": [{"yy": 1, "x": 2}]}
    text = order.encode({"rows": [row, row]})
    back = order.decode(text)
    assert json.dumps(back) == json.dumps({"rows": [row, row]})
    assert list(back["rows"][1]) == ["name", "id", "zeta", "alpha"]
    assert list(back["rows"][0]["alpha"][0]) == ["yy", "x"]


def test_canonical_orders_and_old_data_are_stored_as_they_are() -> None:
    assert order.encode({"a": 1, "bb": [1, "x"]}) == '{"a":1,"bb":[1,"x"]}'
    # Stored before the order was kept: read as it always was.
    assert order.decode('{"id": 1, "name": "ada"}') == {"id": 1, "name": "ada"}
    assert order.decode(b'[{"id": 1}]') == [{"id": 1}]


def test_keys_of_str_subclasses_are_recorded_as_str() -> None:
    from multidict import istr

    headers = {istr("X-Total"): "3", istr("Content-Type"): "json"}
    assert list(order.decode(order.encode(headers))) == ["X-Total", "Content-Type"]


def test_key_order_is_judged_by_utf8_bytes_not_characters() -> None:
    # "é" is one character but two bytes: JSONB puts it after "ab", by bytes.
    assert order.MARK not in order.encode({"z": 0, "ab": 1, "é": 2})
    assert order.MARK in order.encode({"é": 2, "ab": 1})
    assert order.MARK in order.encode({"ab": 1, "z": 0})
    assert order.MARK not in order.encode({"b": 0, "ab": 1, "ba": 2})


def test_marks_deep_inside_and_mappings_of_any_dict_type() -> None:
    from collections import OrderedDict

    # Nothing to record: the JSON is msgspec's, whatever the dict's type.
    assert order.encode(OrderedDict(a=[1, {"b": None}])) == '{"a":[1,{"b":null}]}'
    # One object deep inside lists and objects needs its order: only it is marked, and
    # the same key set is marked the same way each time (its rank is remembered).
    value = {"a": [1, [{"x": 1}, {"name": 1, "id": 2}]], "b": {"c": {"name": 1, "id": 2}}}
    text = order.encode(value)
    assert text.count(order.MARK) == 2
    assert json.dumps(order.decode(text)) == json.dumps(value)
    assert order.encode(value) == text
