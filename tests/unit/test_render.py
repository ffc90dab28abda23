"""Unit tests of noetl.render: native types, lenient addressing, errors, sandbox, filters."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noetl import render as render_module
from noetl import render_values
from noetl.errors import RenderError, TooManyItems
from noetl.render import (
    MISSING,
    build_context,
    condition,
    evaluate,
    is_template,
    referenced_names,
    render,
    syntax_error,
    truthy,
)
from noetl.render_items import items_at_most

FETCH = {
    "id": "c1",
    "status": "success",
    "status_code": 200,
    "data": {"items": [{"id": 1}, {"id": 2}], "paging": {"page": "3", "hasMore": True}},
}
CALC = {"total": 42, "parts": [1, 2]}


def context(**extra: Any) -> dict[str, Any]:
    """A context like the engine's: workload, vars, two step results, and `extra`."""
    return build_context(
        workload={"city": "Paris", "n": 2, "cities": ["Paris", "Oslo"], "nested": {"k": "v"}},
        variables={"user_id": 7},
        steps={"fetch": FETCH, "calc": CALC},
        execution_id="123",
        extra=extra,
    )


def render_error(
    value: Any, ctx: dict[str, Any] | None = None, where: str = "step `s` args.a"
) -> str:
    """The message of the RenderError raised by rendering `value`."""
    with pytest.raises(RenderError) as caught:
        render(value, context() if ctx is None else ctx, where=where)
    return str(caught.value)


# -- is_template ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ x }}", True),
        ("a {% if x %}b{% endif %}", True),
        ("plain", False),
        ("{ x }", False),
        ("{# comment #}", False),
        ("", False),
    ],
)
def test_is_template(text: str, expected: bool) -> None:
    assert is_template(text) is expected


# -- native types and strings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ n }}", 2),
        ("{{ n + 1 }}", 3),
        ("{{ n / 4 }}", 0.5),
        ("{{ cities }}", ["Paris", "Oslo"]),
        ("{{ nested }}", {"k": "v"}),
        ("{{ n > 1 }}", True),
        ("{{ none }}", None),
        ("{{ [1, 'a', none] }}", [1, "a", None]),
        ("{{ {'a': n} }}", {"a": 2}),
        ("{{ (1, 2) }}", (1, 2)),
        ("{{ '5' }}", "5"),  # a string stays a string (no literal_eval as in NativeEnvironment)
        ("{{ 'true' }}", "true"),
        ("  {{ n }}  ", 2),
        ("{{ n }}\n", 2),
        ("{{\n  n\n}}", 2),
        ("{{ n }}{# note #}", 2),
        ("{{ range(3) }}", [0, 1, 2]),
        ("{{ cities | map('upper') }}", ["PARIS", "OSLO"]),
        ("{{ nested.keys() }}", ["k"]),
        ("{{ {'a': cities | map('lower')} }}", {"a": ["paris", "oslo"]}),
        ("{{ [cities | reverse] }}", [["Oslo", "Paris"]]),
    ],
)
def test_single_expression_renders_native_value(template: str, expected: Any) -> None:
    value = render(template, context())
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hello {{ city }}!", "Hello Paris!"),
        ("{{ n }}{{ n }}", "22"),
        ("{{ n }} and {{ n }}", "2 and 2"),
        ("n={{ n }}", "n=2"),
        ("{% if n > 1 %}big{% else %}small{% endif %}", "big"),
        ("{% for c in cities %}{{ c }},{% endfor %}", "Paris,Oslo,"),
        ("list: {{ cities }}", "list: ['Paris', 'Oslo']"),
        ("{{ n }} {{ cities | map('lower') }}", "2 ['paris', 'oslo']"),
        ("line {{ n }}\n", "line 2\n"),
        ("{{ '{{' }}", "{{"),
    ],
)
def test_other_templates_render_to_str(template: str, expected: str) -> None:
    assert render(template, context()) == expected


def test_evaluate_is_render_of_one_string() -> None:
    ctx = context()
    assert evaluate("{{ n * 3 }}", ctx) == 6
    assert evaluate("x{{ n }}", ctx) == "x2"
    assert evaluate("no template", ctx) == "no template"


def test_big_value_from_context_is_returned_without_copy() -> None:
    big = list(range(100_000))
    ctx = build_context(workload={"big": big}, variables={}, steps={}, execution_id="1")
    assert render("{{ big }}", ctx) is big
    assert render("{{ workload.big }}", ctx) is big


# -- recursion over containers --------------------------------------------------------------


def test_render_walks_dicts_lists_and_tuples_without_rendering_keys() -> None:
    value = {
        "{{ city }}": "{{ n }}",
        "list": ["{{ city }}", 1, ("{{ n }}", "x")],
        "deep": {"deeper": {"x": "hi {{ city }}"}},
    }
    assert render(value, context()) == {
        "{{ city }}": 2,
        "list": ["Paris", 1, (2, "x")],
        "deep": {"deeper": {"x": "hi Paris"}},
    }


def test_render_leaves_non_template_values_identical_and_input_unmodified() -> None:
    untouched = {"rows": [{"a": 1}], "text": "plain"}
    value: dict[str, Any] = {
        "a": "{{ n }}",
        "same": untouched,
        "number": 3.5,
        "list": [untouched, "{{ n }}"],
    }
    rendered = render(value, context())
    assert rendered["same"] is untouched
    assert rendered["list"][0] is untouched
    assert value["a"] == "{{ n }}" and value["list"][1] == "{{ n }}"
    assert rendered is not value


def test_render_returns_containers_without_templates_as_the_same_object() -> None:
    value = {"a": [1, {"b": "plain"}], "c": (1, "x")}
    assert render(value, context()) is value


def test_render_does_not_mutate_the_context() -> None:
    ctx = context()
    before = dict(ctx)
    render("{% set n = 5 %}{{ n }}", ctx)
    render({"a": "{{ fetch.items }}"}, ctx)
    assert ctx == before


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text().filter(lambda s: not is_template(s))
)
VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner) | st.tuples(inner, inner),
    max_leaves=25,
)


@given(VALUES)
def test_property_non_template_value_is_returned_unchanged(value: Any) -> None:
    assert render(value, context()) is value


# -- lenient addressing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ fetch.items }}", [{"id": 1}, {"id": 2}]),  # a missing key is read from `data`
        ("{{ fetch.data.items }}", [{"id": 1}, {"id": 2}]),
        ("{{ fetch.paging.page | int + 1 }}", 4),
        ("{{ fetch.status_code }}", 200),
        ("{{ fetch['items'][1].id }}", 2),
        ("{{ calc.data.total }}", 42),  # `.data` without such key is the result itself
        ("{{ calc.result.total }}", 42),
        ("{{ calc.data.result.data.parts }}", [1, 2]),
        ("{{ calc.parts | sum }}", 3),
        ("{{ fetch.items | length }}", 2),
        ("{{ fetch.items | map(attribute='id') | list }}", [1, 2]),
        ("{{ fetch.items | map(attribute='id') | sum }}", 3),
        ("{{ fetch.items | selectattr('id', 'gt', 1) | list }}", [{"id": 2}]),
        ("{{ fetch.items | first }}", {"id": 1}),
        ("{{ fetch.items | last }}", {"id": 2}),
        ("{{ fetch.items | reverse | list }}", [{"id": 2}, {"id": 1}]),
        ("{{ fetch.items | sort(attribute='id', reverse=true) | first }}", {"id": 2}),
        ("{{ fetch.items[0] == {'id': 1} }}", True),
        ("{{ {'id': 2} in fetch.items }}", True),
        ("{{ fetch.items + [3] }}", [{"id": 1}, {"id": 2}, 3]),
        ("{{ [0] + calc.parts }}", [0, 1, 2]),
        ("{{ fetch.items[:1] }}", [{"id": 1}]),
        ("{{ fetch.get('paging').page }}", "3"),
        ("{{ fetch.data | dictsort | first }}", ("items", [{"id": 1}, {"id": 2}])),
        ("{{ 'status' in fetch }}", True),
        ("{{ fetch is mapping }}", True),
        ("{{ fetch.items is sequence }}", True),
        ("{{ fetch.nothing is defined }}", False),
        ("{% for i in fetch.items %}{{ i.id }}{% endfor %}", "12"),
        ("{% for k, v in calc.items() %}{{ k }};{% endfor %}", "total;parts;"),
        ("n={{ fetch.items | length }} {{ calc }}", "n=2 {'total': 42, 'parts': [1, 2]}"),
    ],
)
def test_lenient_addressing_of_step_results(template: str, expected: Any) -> None:
    value = render(template, context())
    assert value == expected
    assert type(value) is type(expected)


def test_native_output_never_contains_proxies() -> None:
    ctx = context()

    def plain(value: Any) -> None:
        assert type(value) in (dict, list, tuple, str, int, float, bool, type(None)), type(value)
        if isinstance(value, dict):
            for item in value.values():
                plain(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                plain(item)

    for template in (
        "{{ fetch }}",
        "{{ fetch.data }}",
        "{{ fetch.items | list }}",
        "{{ {'x': fetch.items, 'y': [calc, calc.parts]} }}",
        "{{ fetch.items | groupby('id') }}",
        "{{ fetch.data.values() }}",
        "{{ fetch.items | map(attribute='id') }}",
    ):
        plain(render(template, ctx))


def test_lenient_reads_return_the_result_objects_themselves() -> None:
    ctx = context()
    assert render("{{ fetch }}", ctx) is FETCH
    assert render("{{ fetch.items }}", ctx) is FETCH["data"]["items"]
    assert render("{{ calc.data }}", ctx) is CALC


def test_keys_win_over_dict_methods_for_every_dict() -> None:
    ctx = build_context(
        workload={"x": {"items": [1, 2], "keys": "k", "get": "g"}},
        variables={},
        steps={"r": {"items": "mine", "values": 5}},
        execution_id="1",
    )
    assert render("{{ x.items }}", ctx) == [1, 2]
    assert render("{{ workload.x.keys }}", ctx) == "k"
    assert render("{{ x.get }}", ctx) == "g"
    assert render("{{ r.items }}", ctx) == "mine"
    assert render("{{ r.values + 1 }}", ctx) == 6
    assert render("{{ workload.x.values() | list }}", ctx) == [[1, 2], "k", "g"]


def test_an_existing_data_or_result_key_wins_over_leniency() -> None:
    ctx = build_context(
        workload={},
        variables={},
        steps={"a": {"data": None, "x": 1}, "b": {"result": [1], "data": {"x": 2}}},
        execution_id="1",
    )
    assert render("{{ a.data }}", ctx) is None
    assert render("{{ b.result }}", ctx) == [1]
    assert render("{{ b.x }}", ctx) == 2


def test_result_and_response_are_lenient_and_list_results_too() -> None:
    rows = [{"user_id": 9, "square": 1}, {"user_id": 3, "square": 4}]
    ctx = context(result=rows, response=FETCH)
    assert render("{{ result[0].user_id }}", ctx) == 9
    assert render("{{ result | map(attribute='square') | sum }}", ctx) == 5
    assert render("{{ result | length }}", ctx) == 2
    assert render("{{ result.data[1].square }}", ctx) == 4
    assert render("{{ result | tojson }}", ctx) == (
        '[{"user_id":9,"square":1},{"user_id":3,"square":4}]'
    )
    assert render("{{ response.paging.hasMore }}", ctx) is True
    # even in a context not made by build_context
    assert render("{{ result.paging.page }}", {"result": FETCH}) == "3"


def test_items_of_list_results_are_lenient() -> None:
    per_item = [
        {"status": "success", "data": {"temp": 20}},
        {"status": "success", "data": {"temp": 25}},
    ]
    ctx = build_context(workload={}, variables={}, steps={"weather": per_item}, execution_id="1")
    assert render("{{ weather[1].temp }}", ctx) == 25
    assert render("{{ weather | map(attribute='temp') | max }}", ctx) == 25
    assert render("{{ weather.data | length }}", ctx) == 2


def test_workload_vars_args_and_error_are_not_lenient() -> None:
    ctx = build_context(
        workload={"w": {"data": {"x": 1}}},
        variables={"v": {"data": {"x": 1}}},
        steps={},
        execution_id="1",
        args={"a": {"data": {"x": 1}}},
        extra={"error": {"data": {"x": 1}}},
    )
    for template in (
        "{{ w.x }}",
        "{{ workload.w.x }}",
        "{{ v.x }}",
        "{{ a.x }}",
        "{{ args.a.x }}",
        "{{ error.x }}",
    ):
        assert "'x' is undefined" in render_error(template, ctx)
    assert render("{{ w.data.x }}", ctx) == 1


# -- names and precedence -------------------------------------------------------------------


def test_bare_name_precedence() -> None:
    ctx = build_context(
        workload={
            "a": "workload",
            "b": "workload",
            "c": "workload",
            "d": "workload",
            "execution_id": "workload",
            "only_w": 1,
        },
        variables={"b": "vars", "c": "vars", "d": "vars", "only_v": 2},
        steps={"c": {"from": "step"}, "d": {"from": "step"}, "loop": {"from": "step"}},
        execution_id="e-1",
        args={"d": "arg", "loop": "arg", "only_a": 3},
        extra={"loop": {"index": 0}, "city": "Oslo"},
    )
    assert render("{{ a }}", ctx) == "workload"
    assert render("{{ b }}", ctx) == "vars"
    assert render("{{ c }}", ctx) == {"from": "step"}
    assert render("{{ d }}", ctx) == "arg"
    assert render("{{ execution_id }}", ctx) == "e-1"
    assert render("{{ loop.index }}", ctx) == 0
    assert render("{{ city }}", ctx) == "Oslo"
    assert render("{{ only_w + only_v + only_a }}", ctx) == 6
    assert render("{{ workload.a }} {{ vars.b }} {{ args.d }}", ctx) == "workload vars arg"


def test_a_step_name_shadowed_by_an_arg_is_not_lenient() -> None:
    ctx = build_context(
        workload={},
        variables={},
        steps={"s": {"data": {"x": 1}}},
        execution_id="1",
        args={"s": {"data": {"x": 2}}},
    )
    assert render("{{ s.data.x }}", ctx) == 2
    assert "'x' is undefined" in render_error("{{ s.x }}", ctx)


def test_build_context_builtins() -> None:
    ctx = build_context(workload={"w": 1}, variables={"v": 2}, steps={}, execution_id="77")
    assert render("{{ execution_id }}", ctx) == "77"
    assert render("{{ args }}", ctx) == {}
    assert render("{{ workload }}", ctx) == {"w": 1}
    assert render("{{ vars }}", ctx) == {"v": 2}
    assert "result" not in ctx
    assert set(render_values.defined(ctx)) == {
        "w",
        "v",
        "workload",
        "vars",
        "execution_id",
        "args",
    }


def test_names_bound_to_missing_are_undefined() -> None:
    ctx = context(result=MISSING, error={"message": "boom"})
    assert render("{{ result is defined }}", ctx) is False
    assert render("{{ error is defined }}", ctx) is True
    message = render_error("{{ result }}", ctx)
    assert "'result' is undefined" in message
    assert "result," not in message.split("Defined names:")[1]
    assert repr(MISSING) == "MISSING"


# -- undefined names ------------------------------------------------------------------------


def test_undefined_name_error_message() -> None:
    message = render_error("{{ usr }}", where="step `fetch` args.user")
    assert message.startswith("step `fetch` args.user: ")
    assert "'{{ usr }}'" in message
    assert "'usr' is undefined" in message
    assert (
        "Defined names: args, calc, cities, city, execution_id, fetch, n, nested, user_id, "
        "vars, workload" in message
    )
    assert "__noetl" not in message


def test_defined_names_are_capped() -> None:
    ctx = build_context(
        workload={f"name{i:02}": i for i in range(50)}, variables={}, steps={}, execution_id="1"
    )
    message = render_error("{{ nope }}", ctx)
    assert "name00, name01" in message
    assert "more)" in message
    assert "name49" not in message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ nope.a.b }}", "'nope' is undefined"),
        ("{{ nope['a'][0] }}", "'nope' is undefined"),
        ("{{ nested.missing.deeper }}", "'missing' is undefined: no such key (keys: k)"),
        ("{{ fetch.nothing }}", "'nothing' is undefined: no such key (keys: data, id, status"),
        ("{{ cities[5] }}", "5 is undefined: no such element (length 2)"),
        ("{{ n.real.nope }}", "'nope' is undefined"),
        ("x {{ nope }} y", "'nope' is undefined"),
        ("{{ [1, nope] }}", "'nope' is undefined"),
        ("a {{ {'k': nope} }}", "'nope' is undefined"),
        ("{{ nope + 1 }}", "'nope' is undefined"),
        ("{% for x in nope %}{% endfor %}", "'nope' is undefined"),
        ("{{ nope | tojson }}", "'nope' is undefined"),
        ("{{ nope == 1 }}", "'nope' is undefined"),
    ],
)
def test_undefined_is_an_error(template: str, expected: str) -> None:
    message = render_error(template)
    assert expected in message
    assert "Defined names:" in message


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{% if nope %}x{% else %}y{% endif %}", "y"),
        ("{{ 1 if nope.deeper else 2 }}", 2),
        ("{{ n and nope or 'fallback' }}", "fallback"),
        ("{{ not nope }}", True),
    ],
)
def test_an_undefined_name_in_a_test_is_false_as_in_noetl(template: str, rendered: Any) -> None:
    assert render(template, {"n": 1}) == rendered


@pytest.mark.parametrize(
    ("template", "holds"),
    [
        ("{{ flag }}", False),
        ("{{ flag.deep.er }}", False),
        ("{{ flag and n == 1 }}", False),
        ("{{ flag or n == 1 }}", True),
        ("{% if flag %}true{% endif %}", False),
        ("{{ n == 1 }}", True),
    ],
)
def test_condition_treats_undefined_as_false_and_names_it(template: str, holds: bool) -> None:
    found = condition(template, {"n": 1})
    assert found.holds is holds
    assert found.undefined == (() if "flag" not in template else ("'flag' is undefined",))


def test_condition_still_fails_on_other_errors() -> None:
    with pytest.raises(RenderError, match="'flag' is undefined"):
        condition("{{ flag > 1 }}", {"n": 1})
    with pytest.raises(RenderError, match="syntax error"):
        condition("{{ n == }}", {"n": 1})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ nope is defined }}", False),
        ("{{ nope is undefined }}", True),
        ("{{ city is defined }}", True),
        ("{{ nope.a.b is defined }}", False),
        ("{{ nested.missing is defined }}", False),
        ("{{ nope | default('d') }}", "d"),
        ("{{ nope.a.b | default(3) }}", 3),
        ("{{ nested.missing | default(none) }}", None),
        ("{{ nope if nope is defined else 'other' }}", "other"),
        ("{{ fetch.missing.deep | default([]) }}", []),
        ("{% if nope is defined %}yes{% else %}no{% endif %}", "no"),
    ],
)
def test_is_defined_and_default(template: str, expected: Any) -> None:
    assert render(template, context()) == expected


# -- sandbox --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ nested.__dict__ }}",
        "{{ nested.__class__ }}",
        "{{ fetch.__class__ }}",
        "{{ fetch._target }}",
        "{{ fetch.items._target }}",
        "{{ cities.append('x') }}",
        "{{ nested.update({'k': 1}) }}",
        "{{ nested.pop('k') }}",
        "{{ cities.__len__ }}",
        "{{ range.__self__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ range(10 ** 9) | length }}",
        "{% import 'os' as os %}",
        "{% include '/etc/passwd' %}",
    ],
)
def test_sandbox_refuses(template: str) -> None:
    message = render_error(template)
    assert "step `s` args.a: cannot render" in message


def test_sandbox_leaves_the_context_unmodified() -> None:
    ctx = context()
    render_error("{{ cities.append('x') }}", ctx)
    assert ctx["cities"] == ["Paris", "Oslo"]


# -- filters --------------------------------------------------------------------------------


def test_tojson() -> None:
    ctx = context(result={"b": 1, "a": [1, "é", None, True]})
    assert render("{{ result | tojson }}", ctx) == '{"b":1,"a":[1,"é",null,true]}'
    assert render("{{ fetch | tojson }}", ctx).startswith('{"id":"c1","status":"success"')
    assert render("{{ fetch.items | tojson }}", ctx) == '[{"id":1},{"id":2}]'
    assert render("{{ 'x' | tojson }}", ctx) == '"x"'
    assert render("{{ {'a': 1} | tojson(indent=2) }}", ctx) == '{\n  "a": 1\n}'
    assert render("body={{ nested | tojson }}", ctx) == 'body={"k":"v"}'


def test_fromjson() -> None:
    ctx = context(result={"body": '{"a": [1, 2], "b": null}'})
    assert render("{{ result.body | fromjson }}", ctx) == {"a": [1, 2], "b": None}
    assert render("{{ (result.body | fromjson).a[1] }}", ctx) == 2
    assert render("{{ '[1, 2]' | fromjson | sum }}", ctx) == 3
    assert render("{{ fetch | tojson | fromjson }}", ctx) == FETCH
    assert "cannot render" in render_error("{{ 'not json' | fromjson }}")


def test_b64encode_and_b64decode() -> None:
    ctx = context()
    assert render("{{ 'hello' | b64encode }}", ctx) == base64.b64encode(b"hello").decode()
    assert render("{{ 'héllo' | b64encode | b64decode }}", ctx) == "héllo"
    assert render("{{ 'aGk' | b64decode }}", ctx) == "hi"  # missing padding
    assert render("{{ 'aGk=' | b64decode }}", ctx) == "hi"
    assert render("{{ nested | tojson | b64encode | b64decode | fromjson }}", ctx) == {"k": "v"}
    assert "b64encode expects a string" in render_error("{{ 12 | b64encode }}")
    assert "b64decode expects a string" in render_error("{{ none | b64decode }}")
    assert "cannot render" in render_error("{{ '!!!' | b64decode }}")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ '42' | int }}", 42),
        ("{{ '4.7' | int }}", 4),
        ("{{ 'x' | int }}", 0),
        ("{{ 'x' | int(-1) }}", -1),
        ("{{ '2.5' | float }}", 2.5),
        ("{{ 3 | float }}", 3.0),
        ("{{ fetch.paging.page | int }}", 3),
    ],
)
def test_int_and_float(template: str, expected: Any) -> None:
    value = render(template, context())
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ fetch | dig('data.items.1.id') }}", 2),
        ("{{ fetch | dig('data.paging') }}", {"page": "3", "hasMore": True}),
        ("{{ fetch | dig('data.items.-1.id') }}", 2),
        ("{{ fetch | dig('data.items.9.id') }}", None),
        ("{{ fetch | dig('data.items.x') }}", None),
        ("{{ fetch | dig('nope.deeper', 'dflt') }}", "dflt"),
        ("{{ fetch | dig('status.deeper', 0) }}", 0),
        ("{{ fetch | dig('items') }}", None),  # dig is exact: no lenient `data` lookup
        ("{{ cities | dig(1) }}", "Oslo"),
        ("{{ nested | dig('') }}", {"k": "v"}),
        ("{{ none | dig('a', 5) }}", 5),
    ],
)
def test_dig(template: str, expected: Any) -> None:
    assert render(template, context()) == expected


def test_jinja_builtin_filters_remain() -> None:
    ctx = context()
    assert render("{{ cities | join(', ') }}", ctx) == "Paris, Oslo"
    assert render("{{ city | upper }}", ctx) == "PARIS"
    assert render("{{ cities | unique | list | length }}", ctx) == 2


# -- errors other than undefined ------------------------------------------------------------


def test_syntax_error_in_render_names_where_and_line() -> None:
    message = render_error("a\n{{ n + }}", where="step `x` sink")
    assert message.startswith("step `x` sink: syntax error at line 2 of 'a\\n{{ n + }}'")


def test_runtime_error_becomes_render_error() -> None:
    message = render_error("{{ n / 0 }}")
    assert "ZeroDivisionError" in message
    assert "'{{ n / 0 }}'" in message


def test_long_template_is_shortened_in_messages() -> None:
    template = "{{ nope }}" + "x" * 1000
    message = render_error(template)
    assert "..." in message
    assert len(message) < 800


def test_error_without_where_has_no_prefix() -> None:
    with pytest.raises(RenderError, match=r"^cannot render '\{\{ nope \}\}'"):
        render("{{ nope }}", {})


# -- truthy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (None, False),
        (0, False),
        (1, True),
        (0.0, False),
        ([], False),
        ([0], True),
        ({}, False),
        ({"a": 1}, True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("0", False),
        ("", False),
        ("none", False),
        ("None", False),
        ("null", False),
        (" false ", False),
        ("true", True),
        ("yes", True),
        ("1", True),
        ("no", True),
        ("00", True),
    ],
)
def test_truthy(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


def test_truthy_of_a_rendered_when() -> None:
    ctx = context(result={"total": 150})
    assert truthy(evaluate("{{ result.total > 100 }}", ctx)) is True
    assert truthy(evaluate("{{ result.total > 1000 }}", ctx)) is False
    assert truthy(evaluate("{% if result.total %}false{% endif %}", ctx)) is False


# -- referenced_names and syntax_error ------------------------------------------------------


def test_referenced_names() -> None:
    value = {
        "url": "{{ workload.api }}/users/{{ user_id }}",
        "{{ key_name }}": "plain",
        "list": ["{{ fetch.items | map(attribute='id') | list }}", ("{{ calc.total }}",)],
        "loop": "{% for c in cities %}{{ c }}{% set y = 1 %}{{ y }}{% endfor %}",
        "number": 3,
    }
    assert referenced_names(value) == {"workload", "user_id", "fetch", "calc", "cities"}
    assert referenced_names("plain") == set()
    assert referenced_names(None) == set()
    assert referenced_names("{{ range(3) | list }}") == set()  # Jinja globals are not names


def test_referenced_names_returns_a_fresh_set() -> None:
    names = referenced_names("{{ a }}")
    names.add("b")
    assert referenced_names("{{ a }}") == {"a"}


def test_referenced_names_raises_on_syntax_error() -> None:
    with pytest.raises(RenderError, match="syntax error at line 1"):
        referenced_names({"a": "{{ x + }}"})


@pytest.mark.parametrize(
    ("text", "expected_line", "expected_message"),
    [
        ("{{ x + }}", 1, "unexpected"),
        ("line one\nline two\n{% if x %}", 3, "Unexpected end of template"),
        ("{{ x | no_such_filter }}", 1, "No filter named 'no_such_filter'"),
        ("{% for %}", 1, "Expected an expression"),
        ("a\nb\n{{ x\n}", 4, "unexpected"),
    ],
)
def test_syntax_error(text: str, expected_line: int, expected_message: str) -> None:
    error = syntax_error(text)
    assert error is not None
    line, message = error
    assert line == expected_line
    assert expected_message in message


@pytest.mark.parametrize(
    "text", ["{{ x }}", "plain", "{% if a %}b{% endif %}", "", "{{ a | dig('b') }}"]
)
def test_no_syntax_error(text: str) -> None:
    assert syntax_error(text) is None


# -- caching and speed ----------------------------------------------------------------------


def test_templates_are_parsed_once() -> None:
    template = "{{ n * 1234567 }}"  # a source no other test uses
    ctx = context()
    render(template, ctx)
    before = render_module._compile.cache_info()
    for _ in range(10):
        render(template, ctx)
    after = render_module._compile.cache_info()
    assert after.misses == before.misses
    assert after.hits == before.hits + 10


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 10 ** 5000 }}", "10 ** 5000 would have more than 4096 bits"),
        ("{{ 'x' * 10 ** 9 }}", "repeating 1 items 1,000,000,000 times would exceed"),
        ("{{ 10 ** 9 * [0] }}", "has 1,000,000,000 items, more than the limit of 16,777,216"),
        (
            "a{{ 'x' * 10 ** 7 }}b{{ 'y' * 10 ** 7 }}",
            "the template renders more than 16,777,216 characters",
        ),
    ],
)
def test_huge_values_are_refused_before_they_are_built(template: str, expected: str) -> None:
    message = render_error(template)
    assert "refused by the sandbox" in message and expected in message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "{{ range(10000000) }}",
            "range(10000000) has 10,000,000 items, more than the limit of 1,000",
        ),
        ("{{ range(1000) | list * 2 }}", "a list of 1,000 repeated 2 times has 2,000 items"),
        ("{{ range(600) | list + range(600) | list }}", "a list of 600 + 600 items has 1,200"),
        ("{{ range(1000) | map('string') | list + ['x'] }}", "has 1,001 items"),
        ("{{ ('a,' * 5000) .split(',') }}", "the result of a call has 5,001 items"),
        ("{{ (range(1000) | map('string') | join(',') + ',x').split(',') }}", "has 1,001"),
    ],
)
def test_sequences_past_the_item_limit_are_refused_while_built(
    template: str, expected: str
) -> None:
    with items_at_most(1000), pytest.raises(RenderError) as caught:
        render(template, {})
    assert isinstance(caught.value.__cause__, TooManyItems), caught.value
    assert expected in str(caught.value), caught.value


def test_a_generator_listed_past_the_item_limit_stops_at_the_first_item_over() -> None:
    drawn: list[int] = []

    def numbers() -> Iterator[int]:
        for n in range(10**9):
            drawn.append(n)
            yield n

    with items_at_most(10), pytest.raises(RenderError, match="more than 10 items"):
        render("{{ numbers() | list }}", {"numbers": numbers})
    assert len(drawn) == 11
    with items_at_most(10):
        assert render("{{ range(10) | list }}", {}) == list(range(10))


def test_outside_a_loop_range_keeps_jinjas_limit() -> None:
    assert len(render("{{ range(100000) | list }}", {})) == 100000
    with pytest.raises(RenderError, match=r"range\(100001\) has 100,001 items"):
        render("{{ range(100001) }}", {})


def test_ordinary_arithmetic_still_works() -> None:
    assert render("{{ 2 ** 100 }}", {}) == 2**100
    assert render("{{ 'ab' * 3 }}", {}) == "ababab"
    assert render("{{ [0] * 3 }}", {}) == [0, 0, 0]
    assert render("{{ 1.5 ** 2 }}", {}) == 2.25
