"""The coordinator host: one asyncio actor per live execution, on partitioned mailboxes.

Each execution actor is a thin shell around the pure engine: load state (cache or replay),
`decide`, commit the events in one statement, publish the commands, then ack. A crash
anywhere in between is repaired by redelivery, because a decision is deterministic and
every write and publish is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable
from typing import Any

from nats.aio.msg import Msg

from actors.admission import engine_limits, start_refusal
from actors.base import Actor
from actors.batch import combine, decide_run, projection, value_refs
from actors.reconciler import reconcile_forever
from actors.timers import TimerWheel
from noetl import blobs, dsl, keys
from noetl.bus import (
    END_NOTICE,
    EXEC_STREAM,
    START_STREAM,
    START_SUBJECT,
    Bus,
    cancel_subject,
    cmd_subject,
    encode_json,
    events_subject,
    exec_subject,
    gave_up,
    milestones_subject,
    partition_of,
)
from noetl.config import Settings
from noetl.engine import Decision, Engine, Event, ExecutionState, refuse_start
from noetl.engine import events as ev
from noetl.errors import CatalogError, MessageError, PlaybookError, VersionConflict
from noetl.messages import (
    CancelExecution,
    CommandContext,
    CommandIssued,
    ErrorInfo,
    ExecMessage,
    StartExecution,
    decode_exec,
    decode_start,
    encode,
)
from noetl.metrics import EXECUTIONS_ENDED, EXECUTIONS_STARTED
from noetl.render_thread import RenderThreads
from noetl.store import Store
from plugins.registry import known_kinds

# How many times a decision is retried after losing a race with another coordinator.
_MAX_CONFLICTS = 8
# Most messages of one execution decided and committed together.
_MAX_BATCH = 256
# How many large values a coordinator host keeps in memory.
_VALUE_CACHE = 64
# How many of them the decisions of one run of queued messages may read at once.
_VALUES_AT_ONCE = _VALUE_CACHE // 2
# Decisions (and so their templates) running at once, off the event loop.
_DECIDE_THREADS = 8


class ExecutionActor:
    """The coordinator of one execution: handles its messages one at a time, in order."""

    def __init__(self, host: CoordinatorHost, execution_id: int) -> None:
        self.host = host
        self.execution_id = execution_id
        # None is a wake-up sent by `close`.
        self.mailbox: asyncio.Queue[tuple[Msg, ExecMessage] | None] = asyncio.Queue()
        self.task: asyncio.Task[Any] | None = None
        self.busy = False
        self.closing = False
        self.state: ExecutionState | None = None
        self.engine: Engine | None = None
        # Why the playbook of a start request could not be loaded (the start is refused).
        self.refusal: ErrorInfo | None = None
        self.reply_to = exec_subject(partition_of(execution_id, host.settings.partitions))

    async def close(self) -> None:
        """Let the messages in the mailbox be handled, then end the actor."""
        self.closing = True
        if self.mailbox.empty() and not self.busy:
            self.mailbox.put_nowait(None)  # wakes an idle `run` so that it returns
        while self.task is not None and not self.task.done():
            await asyncio.sleep(0.01)

    async def run(self) -> None:
        """Process the mailbox until idle for `idle_evict` seconds, then leave the cache.

        Messages that queued up while a decision was being committed are decided together
        and committed in one statement: a busy execution (a wide loop) pays one round trip
        per batch, not per message, and the order of decisions is the mailbox order.
        """
        while True:
            try:
                first = await asyncio.wait_for(self.mailbox.get(), self.host.settings.idle_evict)
            except TimeoutError:
                if self.mailbox.empty():
                    self.host.evict(self)
                    return
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < _MAX_BATCH and not self.mailbox.empty():
                queued = self.mailbox.get_nowait()
                if queued is not None:
                    batch.append(queued)
            self.busy = True
            try:
                terminal = await self.handle(batch)
            except Exception as exc:
                # The messages stay unacked and come back; the cached state may be ahead of
                # the store, so it is rebuilt from the events next time.
                self.host.log.exception("execution %s: handling failed", self.execution_id)
                self.state = None
                for msg, _ in batch:
                    await self._retry_later(msg, exc)
                continue
            finally:
                self.busy = False
            if self.closing and self.mailbox.empty():
                return
            if terminal and self.mailbox.empty():
                self.host.evict(self)
                return

    async def handle(self, batch: list[tuple[Msg, ExecMessage]]) -> bool:
        """Decide each message, commit all the events at once, carry out what they caused,
        ack. Returns True when the execution has ended."""
        for _ in range(_MAX_CONFLICTS):
            try:
                combined, unusable = await self._decide_all(batch)
                break
            except VersionConflict:
                self.state = None
        else:
            raise VersionConflict(f"execution {self.execution_id}: too many conflicts")
        for msg in unusable:
            await self.host.bus.dead_letter(
                msg,
                f"execution {self.execution_id} has no events and only a start "
                "message can begin one",
            )
        assert self.state is not None
        if combined.duplicate and self.state.running and self.engine is not None:
            # A redelivered message: what it caused may not have been published before the
            # crash that caused the redelivery; dedup drops what was.
            combined.commands = self.engine.pending_commands(self.state)
            combined.children = self.engine.pending_children(self.state)
        await self.host.carry_out(self.execution_id, combined, self.reply_to)
        unusable_ids = {id(m) for m in unusable}
        for msg, _ in batch:
            if id(msg) not in unusable_ids:
                await msg.ack()
        return not self.state.running

    async def _retry_later(self, msg: Msg, exc: BaseException) -> None:
        """Have JetStream deliver the message again; a message that keeps failing is
        dead-lettered with the reason instead of looping forever."""
        limit = self.host.settings.max_deliveries
        if await self.host.bus.retry_later(msg, max_deliveries=limit):
            return
        with contextlib.suppress(Exception):  # the connection may be gone: ack_wait covers it
            await self.host.bus.dead_letter(msg, gave_up(limit, exc))

    async def _decide_all(
        self,
        batch: list[tuple[Msg, ExecMessage]],
    ) -> tuple[Decision, list[Msg]]:
        decisions: list[Decision] = []
        unusable: list[Msg] = []
        fresh = False
        at = 0
        while at < len(batch):
            msg, message = batch[at]
            stale = self.state is None or (self.engine is None and self.refusal is None)
            if stale:
                fresh = True
                if not await self._load(message):
                    unusable.append(msg)
                    at += 1
                    continue
            assert self.state is not None
            refusal = self.refusal or await start_refusal(
                self.host.store, self.host.settings, self.state, message
            )
            if refusal is not None:
                assert isinstance(message, StartExecution)
                decisions.append(refuse_start(self.state, message, refusal))
                at += 1
                continue
            # This message and the following ones up to the next start (whose admission is
            # checked against the store once the messages before it are decided).
            run = [message]
            for _, queued in batch[at + 1 :]:
                if isinstance(queued, StartExecution):
                    break
                run.append(queued)
            decided = await self._decide_run(run)
            decisions.extend(decided)
            at += len(decided)
        if not fresh and any(d.duplicate for d in decisions):
            # "Already done" judged on a cached state may only mean that another host
            # decided since: check against the store before dropping the message.
            self.state = None
            raise VersionConflict(f"execution {self.execution_id}: cached state may be stale")
        combined = combine(decisions)
        if combined.events:
            assert self.state is not None
            await self.host.store.append_decision(
                self.execution_id,
                self.state.parent_execution_id,
                combined.events,
                projection(self.state, combined),
            )
        return combined, unusable

    async def _decide_run(self, run: list[ExecMessage]) -> list[Decision]:
        """Decide `run` in order, or as many of its first messages as read only the stored
        values looked up here (at least one)."""
        assert self.state is not None and self.engine is not None
        values, asked = await self.host.values_for(self.state, run)
        engine = self.engine
        if any(engine.renders(message) for message in run):
            # In a thread, all of them in one hop: a template running until its deadline
            # must not hold the loop (and fails only its own step).
            return await self.host.deciding.run(decide_run, engine, self.state, run, values, asked)
        # Renders no template: nothing can hold the loop long, no thread hop.
        return decide_run(engine, self.state, run, values, asked)

    async def _load(self, message: ExecMessage) -> bool:
        state = await self.host.store.load_state(self.execution_id)
        if state.status == "new":
            if not isinstance(message, StartExecution):
                return False
            path, version = message.path, message.version
        else:
            path, version = state.path, state.version
        try:
            self.engine = await self.host.engine_for(path, version)
        except (CatalogError, PlaybookError) as exc:
            if not isinstance(message, StartExecution):
                raise
            self.refusal = ErrorInfo(type="catalog", message=str(exc))
        self.state = state
        return True


class CoordinatorHost(Actor):
    """Hosts the execution actors of its partitions, the start router and the reconciler."""

    role = "coordinator"

    def __init__(
        self, bus: Bus, store: Store, settings: Settings, partitions: list[int] | None = None
    ) -> None:
        super().__init__(bus, store, settings)
        self.partitions = list(range(settings.partitions)) if partitions is None else partitions
        self.actors: dict[int, ExecutionActor] = {}
        self._engines: dict[tuple[str, int], Engine] = {}
        self._latest: dict[str, int] = {}
        self._start_stream_created = ""
        self._reconciler: asyncio.Task[None] | None = None
        self.timers = TimerWheel(self)
        # Recently used large values by digest (content-addressed, so never stale).
        self._values: dict[str, Any] = {}
        self.deciding = RenderThreads(_DECIDE_THREADS, "noetl-decide")

    async def start(self) -> None:
        """Subscribe to the partitions and the start subject; start the reconciler."""
        await super().start()
        info = await self.bus.js.stream_info(START_STREAM)
        self._start_stream_created = str(info.created or "")
        for p in self.partitions:
            await self.bus.consume(
                EXEC_STREAM, exec_subject(p), f"coordinator-{p}", self._on_exec, max_in_flight=1024
            )
        await self.bus.consume(
            START_STREAM, START_SUBJECT, "router", self._on_start, max_in_flight=256
        )
        await self.timers.load()
        self.timers.start()
        self._reconciler = asyncio.create_task(reconcile_forever(self))
        self.bus.keep_warm()

    async def stop(self) -> None:
        """Stop the reconciler and wait for every actor's mailbox to drain."""
        if self._reconciler is not None:
            self._reconciler.cancel()
        self.timers.stop()
        for actor in list(self.actors.values()):
            await actor.close()
        await super().stop()
        self.deciding.close()

    # -- mailboxes ---------------------------------------------------------------------

    async def _on_exec(self, msg: Msg) -> None:
        try:
            message = decode_exec(msg.data)
        except MessageError as exc:
            await self.bus.dead_letter(msg, str(exc))
            return
        actor = self.actors.get(message.execution_id)
        if actor is None:
            actor = self.actors[message.execution_id] = ExecutionActor(self, message.execution_id)
            actor.task = self.spawn(actor.run())
        actor.mailbox.put_nowait((msg, message))

    def evict(self, actor: ExecutionActor) -> None:
        """Forget an idle or finished execution; a later message rebuilds it by replay."""
        if self.actors.get(actor.execution_id) is actor:
            del self.actors[actor.execution_id]

    async def _on_start(self, msg: Msg) -> None:
        headers = msg.headers or {}
        msg_id = headers.get("Nats-Msg-Id")
        seed = msg_id or f"{self._start_stream_created}:{msg.metadata.sequence.stream}"
        default_id = (
            int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big") >> 1
        )
        try:
            message = decode_start(msg.data, default_id=default_id, msg_id=msg_id)
        except MessageError as exc:
            await self.bus.dead_letter(msg, str(exc))
            return
        message.at = message.at or time.time()
        await self.bus.publish(
            self.mailbox_of(message.execution_id), encode(message), message.dedup_id
        )
        await msg.ack()

    # -- shared services for the actors -------------------------------------------------

    async def engine_for(self, path: str, version: int | None) -> Engine:
        """The engine of a pinned playbook version (latest when None), cached."""
        if version is None:
            version, content = await self.store.get_playbook(path)
            key = (path, version)
            if key in self._engines:
                return self._engines[key]
        else:
            key = (path, version)
            if key in self._engines:
                return self._engines[key]
            version, content = await self.store.get_playbook(path, version)
        playbook, lines = dsl.load_with_lines(
            content, filename=f"{path}@{version}", known_kinds=known_kinds()
        )
        files = await self.store.get_files(path, version)
        limits = engine_limits(self.settings)
        engine = self._engines[key] = Engine(
            playbook, version=version, files=files, limits=limits, code_lines=lines
        )
        return engine

    async def carry_out(self, execution_id: int, decision: Decision, reply_to: str) -> None:
        """Publish what a committed decision caused: commands, child starts, the parent's
        notice, cancellations and timers; then tell live watchers."""
        now = time.time()
        sends: list[Awaitable[None]] = []
        for child in decision.children:
            child.at = child.at or now
            sends.append(
                self.bus.publish(self.mailbox_of(child.execution_id), encode(child), child.dedup_id)
            )
        if decision.parent_notice is not None:
            notice = decision.parent_notice
            sends.append(
                self.bus.publish(
                    self.mailbox_of(notice.execution_id), encode(notice), notice.dedup_id
                )
            )
        for child_id in decision.cancel_children:
            cancel = CancelExecution(
                execution_id=child_id,
                dedup_id=keys.cancel_id(child_id),
                at=now,
                reason=f"parent execution {execution_id} ended",
            )
            sends.append(
                self.bus.publish(self.mailbox_of(child_id), encode(cancel), cancel.dedup_id)
            )
        await asyncio.gather(self.publish_commands(decision.commands, reply_to), *sends)
        if decision.stop_running or decision.ended:
            ended = b"" if decision.stop_running else END_NOTICE  # python workers released
            await self.bus.announce(cancel_subject(execution_id), ended)
        for timer in decision.timers:
            self.timers.schedule(execution_id, timer.name, timer.due_at)
        if decision.events:
            await self.announce(execution_id, decision.events)

    async def values_for(
        self, state: ExecutionState, messages: list[ExecMessage]
    ) -> tuple[dict[str, Any], set[str]]:
        """The stored large values that the state's results and the messages refer to (at
        most `_VALUES_AT_ONCE` of them beyond the first message's), and the digests looked
        up: a value not found is not among the values."""
        digests = value_refs(state, messages, _VALUES_AT_ONCE)
        if not digests:
            return {}, digests
        values = {d: self._values[d] for d in digests if d in self._values}
        missing = [d for d in digests if d not in values]
        if missing:
            # A value holding more items than a loop may have is left in the store: the
            # coordinator only ever needs its length (a loop over it fails).
            limit = self.settings.max_loop_items
            fetched = await self.store.get_blobs(missing, max_items=limit)
            values.update(fetched)
            self._values.update(fetched)
            while len(self._values) > _VALUE_CACHE:
                self._values.pop(next(iter(self._values)))
        return values, digests

    def mailbox_of(self, execution_id: int) -> str:
        """The subject of the partition that coordinates `execution_id`."""
        return exec_subject(partition_of(execution_id, self.settings.partitions))

    async def publish_commands(self, commands: list[CommandIssued], reply_to: str) -> None:
        """Send commands to their runner pools (concurrently; each waits for its ack)."""
        if not commands:
            return
        payloads = []
        for command in commands:
            command.reply_to = reply_to
            data = encode(command)
            if len(data) > self.settings.large_result_bytes:
                # Too big for a message (a loop's results going to its sink, say): the
                # context travels as a stored value and the runner fetches it.
                stored = await self.store.put_blob(blobs.encode(command.context))
                command.context = CommandContext.stored(stored)
                data = encode(command)
            payloads.append((cmd_subject(command.pool), command.command_id, data))
        await asyncio.gather(*(self.bus.publish(to, data, cid) for to, cid, data in payloads))

    async def announce(self, execution_id: int, events: list[Event]) -> None:
        """Tell live watchers what was just committed (best effort, core NATS), and count
        the executions that started or ended. A start, an end or a failed step is also
        repeated on the milestones subject, which `up` logs: it does not receive every
        step's announcement."""
        milestone = False
        for e in events:
            if e.type == ev.EXECUTION_STARTED:
                EXECUTIONS_STARTED.inc()
                milestone = True
            elif e.type.startswith("execution.") and e.status in ev.TERMINAL_STATUSES:
                EXECUTIONS_ENDED.labels(e.status).inc()
                milestone = True
            elif e.type == ev.STEP_FAILED:
                milestone = True
        brief: list[dict[str, Any]] = [
            {"type": e.type, "step": e.step, "status": e.status, "error": e.error}
            for e in events
            if e.type != ev.COMMAND_ISSUED
        ]
        data = encode_json(brief)
        await self.bus.announce(events_subject(execution_id), data)
        if milestone:
            await self.bus.announce(milestones_subject(execution_id), data)
