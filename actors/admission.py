"""Admission of a child execution: its parent still running, its tree under the cap.

Checked against the store when a child's start is decided, so it holds across coordinator
hosts. Concurrent starts in one tree may overshoot the cap by the starts decided at the
same moment; the depth limit (in the engine) bounds the tree regardless.
"""

from __future__ import annotations

from noetl.config import Settings
from noetl.engine import ExecutionState
from noetl.engine.limits import Limits
from noetl.messages import ErrorInfo, ExecMessage, StartExecution
from noetl.pools import PoolRouting, parse_kind_pools
from noetl.store import Store


def engine_limits(settings: Settings) -> Limits:
    """The engine's share of the settings: bounds, and where commands go."""
    return Limits(
        max_depth=settings.max_depth,
        max_loop_items=settings.max_loop_items,
        pools=PoolRouting(
            default=settings.runner_pool, by_kind=parse_kind_pools(settings.runner_pools)
        ),
    )


async def start_refusal(
    store: Store, settings: Settings, state: ExecutionState, message: ExecMessage
) -> ErrorInfo | None:
    """Why the first start of a child execution must fail instead of running, or None."""
    if (
        not isinstance(message, StartExecution)
        or state.status != "new"
        or message.parent_execution_id is None
        # Started by a `playbook` command; an API start may name a parent only as a label.
        or message.parent_command_id is None
    ):
        return None
    root = message.root_execution_id or message.parent_execution_id
    live, parent_live = await store.live_tree(root, message.parent_execution_id)
    if not parent_live:
        return ErrorInfo(
            type="cancelled",
            message=f"parent execution {message.parent_execution_id} has ended",
        )
    if live >= settings.max_descendants:
        return ErrorInfo(
            type="descendants",
            message=f"execution {root} already has {live:,} running descendants, the limit "
            f"(NOETL_MAX_DESCENDANTS={settings.max_descendants:,}); sub-playbook "
            f"`{message.path}` not started",
        )
    return None
