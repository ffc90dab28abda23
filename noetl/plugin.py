"""The plugin SDK: everything a third-party tool plugin needs, typed, from one import.

    from noetl.plugin import ToolContext, ToolError, ToolResult, ToolSpec, parse_spec

A plugin is a class with a `kind` and `async def run(self, ctx: ToolContext, spec: ToolSpec)
-> ToolResult`, registered in its package's metadata under the entry-point group
`ENTRY_POINT_GROUP` (`noetl.plugins`) with its kind as the name, and instantiated once per
runner without arguments (or with `settings: Settings` when its constructor takes it).
The guide with a complete example is documentation/docs/reference/plugins.md.

Nothing is defined here: each name is re-exported from the module the runtime's own plugins
use (`plugins.base`, `plugins.sources`, `noetl.secrets`, `noetl.errors`, `noetl.config`),
so a third-party plugin runs on exactly the code the built-in tools run on. Invariants a
plugin keeps:

- what `run` returns is JSON-like data (`ToolResult`); it becomes the step's `result`;
- failures are `ToolError` (or `ToolTimeout`), their messages passed through `ctx.mask`;
  any other exception is reported as the plugin's bug (an `internal` error of the step);
- long work is bounded by the step's timeout and cancellation (`until_done`, `in_thread`);
  the runner reports progress on a timer, `ctx.heartbeat()` reports it now;
- every secret the call handles is either read through `ctx.credential` or added to
  `ctx.secrets`, so the runner masks it in everything it records.
"""

from __future__ import annotations

from noetl.config import Settings
from noetl.errors import ToolError, ToolTimeout
from noetl.secrets import MASK, Masker, secret_values
from plugins.base import (
    JSON,
    TIMEOUT_GRACE,
    ToolContext,
    ToolPlugin,
    ToolResult,
    ToolSpec,
    in_thread,
    parse_spec,
    until_done,
)
from plugins.registry import GROUP as ENTRY_POINT_GROUP
from plugins.sources import load_code, load_script

__all__ = [
    "ENTRY_POINT_GROUP",
    "JSON",
    "MASK",
    "TIMEOUT_GRACE",
    "Masker",
    "Settings",
    "ToolContext",
    "ToolError",
    "ToolPlugin",
    "ToolResult",
    "ToolSpec",
    "ToolTimeout",
    "in_thread",
    "load_code",
    "load_script",
    "parse_spec",
    "secret_values",
    "until_done",
]
