"""The fields of the builtin tool kinds, their expected types, and what each kind needs.

Kinds that plugins add are not field-checked: their blocks go to the plugin as written.
"""

from __future__ import annotations

_SQL_FIELDS = frozenset(
    {
        "kind",
        "auth",
        "connection_string",
        "query",
        "command",
        "command_b64",
        "query_b64",
        "params",
        "database",
        "attach",
        "script",
        "args",
        "timeout",
    }
)
# Fields of the builtin tool kinds; kinds that plugins add are not field-checked.
TOOL_FIELDS: dict[str, frozenset[str]] = {
    "python": frozenset({"kind", "code", "code_b64", "script", "libs", "args", "auth", "timeout"}),
    "http": frozenset(
        {
            "kind",
            "method",
            "url",
            "endpoint",
            "params",
            "headers",
            "json",
            "body",
            "data",
            "payload",
            "timeout",
            "verify_ssl",
            "follow_redirects",
            "allow_status",
            "auth",
            "args",
            "script",
            "max_response_bytes",
        }
    ),
    "postgres": _SQL_FIELDS,
    "duckdb": _SQL_FIELDS,
    "snowflake": _SQL_FIELDS,
    "playbook": frozenset({"kind", "path", "version", "args", "return_step"}),
    "workbook": frozenset({"kind", "name", "args"}),
    "iterator": frozenset(
        {"kind", "collection", "element", "mode", "max_concurrency", "task", "continue_on_error"}
    ),
}
BUILTIN_KINDS = frozenset(TOOL_FIELDS)
# Fields that are not templates: python code reaches Python as written (its `{{` included).
RAW_FIELDS: dict[str, frozenset[str]] = {"python": frozenset({"code", "code_b64"})}
# A tool of these kinds needs at least one of the listed fields.
TOOL_NEEDS: dict[str, tuple[str, ...]] = {
    "python": ("code", "code_b64", "script"),
    "playbook": ("path",),
    "workbook": ("name",),
    "iterator": ("collection",),
}
# Expected types of common tool fields. The tool block is rendered before it runs, so a
# template string is accepted wherever another type is expected.
TOOL_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "args": ((dict,), "a mapping"),
    "libs": ((dict,), "a mapping"),
    "headers": ((dict,), "a mapping"),
    "code": ((str,), "a string"),
    "code_b64": ((str,), "a string"),
    "query": ((str,), "a string"),
    "command": ((str,), "a string"),
    "url": ((str,), "a string"),
    "endpoint": ((str,), "a string"),
    "method": ((str,), "a string"),
    "path": ((str,), "a string"),
    "name": ((str,), "a string"),
    "element": ((str,), "a string"),
    "return_step": ((str,), "a string"),
    "timeout": ((int, float), "a number"),
    "verify_ssl": ((bool,), "a boolean"),
    "follow_redirects": ((bool,), "a boolean"),
    "continue_on_error": ((bool,), "a boolean"),
    "allow_status": ((list,), "a list"),
    "attach": ((list,), "a list"),
    "task": ((dict,), "a mapping"),
    "auth": ((str, dict), "a credential name or a mapping"),
    "script": ((dict, str), "a mapping or a string"),
}
