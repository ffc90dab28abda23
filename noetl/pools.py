"""Runner pools: which pool runs a command, and the names a pool may have. Pure.

A command goes to the pool its tool block names (`runner_pool:`), else the one its step
names, else the one configuration maps its tool kind to (`NOETL_RUNNER_POOLS`), else the
default pool. `pool` is not used for this: on a postgres tool it is NoETL's connection
pool setting and belongs to the plugin.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from noetl.errors import ConfigError

#: The DSL field naming a runner pool, on a step or in a tool block.
POOL_FIELD: Final = "runner_pool"
DEFAULT_POOL: Final = "default"
# One NATS subject token: no `.`, `*`, `>` or white space, so `noetl.cmd.NAME` is exact.
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def bad_pool_name(name: object) -> str | None:
    """Why `name` cannot name a runner pool, or None when it can."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return None
    return (
        "a runner pool name is 1 to 64 letters, digits, `-` and `_` (one NATS subject "
        f"token), got {name!r}"
    )


class PoolRouting(msgspec.Struct, frozen=True, kw_only=True):
    """Where commands go when neither their tool nor their step names a pool."""

    default: str = DEFAULT_POOL
    by_kind: dict[str, str] = {}

    def pool_for(self, tool: dict[str, Any], step_pool: str | None, kind: str) -> str:
        """The pool of a command of `kind` whose tool block is `tool` (its own setting wins
        over the step's `step_pool`, which wins over the kind map)."""
        named = tool.get(POOL_FIELD)
        if isinstance(named, str) and named:
            return named
        if step_pool:
            return step_pool
        return self.by_kind.get(kind, self.default)


def parse_kind_pools(text: str) -> dict[str, str]:
    """`duckdb=heavy,snowflake=warehouse` as a map; ConfigError naming the bad entry."""
    pools: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        kind, sep, pool = (s.strip() for s in entry.partition("="))
        if not sep or not kind or bad_pool_name(pool) is not None:
            raise ConfigError(
                f"NOETL_RUNNER_POOLS entry {entry!r} is not KIND=POOL with POOL made of "
                "letters, digits, `-` and `_` (e.g. `duckdb=heavy,snowflake=warehouse`)"
            )
        pools[kind] = pool
    return pools


def without_pool(tool: dict[str, Any]) -> dict[str, Any]:
    """A copy of a tool block without the runtime's `runner_pool` (the plugin's share)."""
    return {k: v for k, v in tool.items() if k != POOL_FIELD}
