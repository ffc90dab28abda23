"""Bounds a hostile or mistaken playbook meets: sub-playbook depth and loop size.

The engine applies them when it decides (a child deeper than `max_depth` fails at its start,
a loop over more than `max_loop_items` fails its step), so the refusal is an event like any
other and replays the same way.
"""

from __future__ import annotations

from typing import Final

import msgspec

from noetl.pools import PoolRouting

DEFAULT_MAX_DEPTH: Final = 16
DEFAULT_MAX_LOOP_ITEMS: Final = 100_000


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """`max_depth`: sub-playbook nesting (the top execution is depth 0);
    `max_loop_items`: items of one loop activation; `pools`: where commands go that
    neither their tool nor their step sends to a runner pool."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_loop_items: int = DEFAULT_MAX_LOOP_ITEMS
    pools: PoolRouting = msgspec.field(default_factory=PoolRouting)


DEFAULT_LIMITS: Final = Limits()
