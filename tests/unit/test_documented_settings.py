"""Every NOETL_* variable the CLI page documents does something: it is a `Settings` field
that `from_env` reads and that code outside `noetl/config.py` uses, or a CLI option's
environment variable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import msgspec

from noetl.cli import main
from noetl.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "documentation" / "docs" / "cli.md"
SOURCES = [
    p
    for folder in ("noetl", "actors", "plugins")
    for p in (ROOT / folder).rglob("*.py")
    if p != ROOT / "noetl" / "config.py"
]


def documented() -> set[str]:
    return set(re.findall(r"`(NOETL_[A-Z_]+)`", DOC.read_text(encoding="utf-8")))


def option_variables(command: click.Command) -> set[str]:
    found = {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= option_variables(sub)
    return {str(v) for v in found}


def sample(field: str) -> Any:
    """A value unlike the field's default, as the environment would give it."""
    default = getattr(Settings(), field)
    if isinstance(default, bool):
        return "true"
    if isinstance(default, int | float):
        return str(default + 3)
    if field == "runner_pool":  # one NATS subject token
        return "heavy"
    if field == "runner_pools":
        return "duckdb=heavy"
    if field.endswith("_port"):  # an optional port: unset by default
        return "9999"
    return "/tmp/elsewhere" if field == "home" else "x.example.com"


def test_the_page_documents_the_variables() -> None:
    assert len(documented()) >= 25


def test_every_documented_variable_has_an_effect() -> None:
    fields = set(Settings.__struct_fields__)
    options = option_variables(main)
    code = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
    unread = []
    for variable in sorted(documented()):
        name = variable.removeprefix("NOETL_").lower()
        if name in fields:
            env = {variable: sample(name)}
            if name in ("nats_url", "pg_dsn"):  # one without the other is refused
                env = {"NOETL_NATS_URL": "nats://n:4222", "NOETL_PG_DSN": "postgresql://p/db"}
            read = Settings.from_env(env)
            default = getattr(Settings(), name)
            if getattr(read, name) == default:
                unread.append(f"{variable}: Settings.from_env ignores it")
            elif not re.search(rf"\.{name}\b", code):
                unread.append(f"{variable}: no code uses settings.{name}")
        elif variable not in options:
            unread.append(f"{variable}: neither a Settings field nor a CLI option's variable")
    assert unread == []


def test_settings_fields_are_documented() -> None:
    missing = {f"NOETL_{f.upper()}" for f in Settings.__struct_fields__} - documented()
    assert missing == set(), "undocumented settings"
    assert msgspec.structs.fields(Settings)
