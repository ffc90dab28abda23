"""The coordinator host's reconciler: re-derives lost work of stale executions from the event
table (JetStream may lose messages; PostgreSQL may not) and sends it again."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from actors.outcome import outcome_message
from noetl import keys
from noetl.bus import exec_subject, partition_of
from noetl.messages import CommandIssued, Wake, encode

if TYPE_CHECKING:
    from actors.coordinator import CoordinatorHost


async def reconcile_forever(host: CoordinatorHost) -> None:
    """Sweep every `reconcile_every` seconds until cancelled; a failed sweep is logged."""
    while True:
        await asyncio.sleep(host.settings.reconcile_every)
        try:
            await reconcile(host)
            await host.timers.load()
        except Exception:
            host.log.exception("reconciler sweep failed")


async def reconcile(host: CoordinatorHost) -> int:
    """Re-derive lost work of stale executions from the event table; return how many
    executions were nudged. JetStream may lose messages; PostgreSQL may not."""
    stale_ms = int(1000 * max(3 * host.settings.ack_wait, host.bus.dedup_window + 1))
    mine = set(host.partitions)
    nudged = 0
    for execution_id in await host.store.stale_executions(stale_ms):
        if partition_of(execution_id, host.settings.partitions) not in mine:
            continue
        actor = host.actors.get(execution_id)
        if actor is not None and not actor.mailbox.empty():
            continue  # it is making progress right now
        await _reconcile_one(host, execution_id)
        nudged += 1
    return nudged


async def _reconcile_one(host: CoordinatorHost, execution_id: int) -> None:
    state = await host.store.load_state(execution_id)
    if not state.running:
        return
    engine = await host.engine_for(state.path, state.version)
    reply_to = exec_subject(partition_of(execution_id, host.settings.partitions))
    lost: list[CommandIssued] = []
    commands_in_flight = await host.bus.commands_queued()
    for command_id, pending in state.pending.items():
        if pending.child is not None:
            continue  # a child execution, started again below: its end is the outcome
        outcome = await host.store.find_event(execution_id, keys.outcome_key(command_id))
        if outcome is None:
            # Only when no command message exists anywhere can this one be lost: one
            # still in the stream is being run or will be redelivered.
            if commands_in_flight == 0:
                lost.append(engine.command_message(state, command_id))
            continue
        message = outcome_message(execution_id, outcome, time.time())
        await host.bus.publish(reply_to, encode(message), message.dedup_id)
    if not state.pending and not state.timers:
        wake = Wake(execution_id=execution_id, dedup_id=keys.wake_id(execution_id, state.seq))
        await host.bus.publish(reply_to, encode(wake), wake.dedup_id)
    await host.publish_commands(lost, reply_to)
    for child in engine.pending_children(state):
        await host.bus.publish(host.mailbox_of(child.execution_id), encode(child), child.dedup_id)
    host.log.info("reconciled execution %s", execution_id)
