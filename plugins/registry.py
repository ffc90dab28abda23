"""Discovering tool plugins through the `noetl.plugins` entry-point group."""

from __future__ import annotations

import functools
import inspect
from importlib.metadata import entry_points
from typing import Any

from noetl.config import Settings
from noetl.errors import UnknownToolKind
from plugins.base import ToolPlugin

GROUP = "noetl.plugins"

# Kinds the engine itself gives meaning to: no plugin runs them.
ENGINE_KINDS = frozenset({"workbook", "iterator", "playbook"})


@functools.cache
def plugin_classes() -> dict[str, Any]:
    """Every installed plugin class by kind (entry-point name)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def known_kinds() -> frozenset[str]:
    """Every tool kind a playbook may use here."""
    return frozenset(plugin_classes()) | ENGINE_KINDS


def load_plugins(settings: Settings | None = None) -> dict[str, ToolPlugin]:
    """Instantiate every installed plugin, by kind. A plugin class whose constructor takes a
    `settings` keyword gets the runtime's settings."""
    plugins: dict[str, ToolPlugin] = {}
    for kind, entry in plugin_classes().items():
        cls = entry.load()
        takes_settings = "settings" in inspect.signature(cls).parameters
        plugin = cls(settings=settings) if takes_settings and settings is not None else cls()
        if not isinstance(plugin, ToolPlugin):
            raise UnknownToolKind(f"plugin {entry.value} for `{kind}` lacks `kind`/`run`")
        plugins[kind] = plugin
    return plugins
