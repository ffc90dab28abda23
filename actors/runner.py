"""The tool runner: pulls commands from its pool, runs the plugin, reports the outcome.

Order for every command: record `command.started`, render and run the tool (telling
JetStream it is still in progress), record the outcome once, publish it to the
execution's coordinator, then ack. A first delivery whose tool is done within
`STARTED_WITH_OUTCOME_WITHIN` records its start and outcome in one transaction instead.
A runner that dies anywhere leaves the command unacked, so it is delivered again; an
outcome already recorded is republished instead of running the tool a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
from nats.aio.msg import Msg

from actors.base import Actor
from actors.command_render import job, render_sink, render_tool, renders
from actors.heartbeat import Heartbeat
from actors.outcome import outcome_message
from actors.runner_secrets import keychain_of, runtime_secrets
from noetl import blobs, keys, render
from noetl.bus import (
    CANCEL_PREFIX,
    CMD_STREAM,
    END_NOTICE,
    Bus,
    cmd_subject,
    gave_up,
    pool_ping_subject,
)
from noetl.config import Settings
from noetl.egress import EgressPolicy
from noetl.engine import Event
from noetl.engine import events as ev
from noetl.engine.payloads import CommandDone, CommandStarted, plain
from noetl.errors import (
    ConfigError,
    MessageError,
    RenderError,
    StoreError,
    ToolError,
)
from noetl.messages import (
    CommandContext,
    CommandIssued,
    ErrorInfo,
    decode_command,
    encode,
)
from noetl.metrics import COMMANDS_IN_FLIGHT, STEP_SECONDS
from noetl.render_thread import RenderThreads
from noetl.secrets import Masker, names_by_root, secret_values
from noetl.store import Store
from noetl.store.credentials import CredentialStore, parse_bindings, resolve_secrets
from plugins.base import ToolContext, ToolPlugin, until_done
from plugins.registry import load_plugins
from plugins.sinks import close_sinks, get_sink, rows_of

STORED_SECRETS_EVERY: Final = 30.0  # seconds between refreshes of the masked values
RENDER_THREADS: Final = 4  # tool blocks rendered at once, off the event loop
#: Seconds a first delivery's tool may take before its `command.started` is written alone.
#: A fast step's start then rides in its outcome's transaction, saving a round trip of
#: runner and PostgreSQL work per step; a longer step's start still shows within this
#: bound (status, console, API), which nobody reads sooner than that.
STARTED_WITH_OUTCOME_WITHIN: Final = 0.03


class Runner(Actor):
    """Runs the commands of one pool with at most `runner_concurrency` at a time."""

    role = "runner"

    def __init__(
        self,
        bus: Bus,
        store: Store,
        settings: Settings,
        plugins: dict[str, ToolPlugin] | None = None,
    ) -> None:
        super().__init__(bus, store, settings)
        self.plugins = load_plugins(settings) if plugins is None else plugins
        self._egress = EgressPolicy.from_settings(settings.http_deny, settings.http_allow)
        self._data_root = Path(settings.data_root).expanduser() if settings.data_root else None
        # Contexts of the commands in hand, by execution: set `cancelled` when it ends.
        self._running: dict[int, set[ToolContext]] = {}
        self.credentials: CredentialStore | None = None
        # Every stored secret and the runtime's own (token, key, NOETL_SECRET_*), masked in
        # whatever any command records; refreshed every STORED_SECRETS_EVERY seconds.
        self._known_secrets = Masker(runtime_secrets(settings))
        self._refresher: asyncio.Task[None] | None = None
        root = settings.script_root
        self._script_root = None if root is None else Path(root).expanduser()
        #: Who ran a command, recorded in its `command.started` event.
        self.identity = f"{settings.runner_pool}/{socket.gethostname()}/{os.getpid()}"
        self._render_threads = RenderThreads(RENDER_THREADS, "noetl-runner-render")
        # The histogram's series by tool kind (`labels` looks one up under a lock).
        self._step_seconds = functools.cache(STEP_SECONDS.labels)

    async def start(self) -> None:
        """Join the pool's work queue."""
        # A key generated here (the first run on a new home) is announced: it needs a backup.
        self.credentials = await CredentialStore.open(
            self.store.pool, self.settings, announce=self.log.warning
        )
        await self._refresh_known_secrets()
        await super().start()
        # Not `spawn`ed: `stop` waits for spawned work, and this one never ends by itself.
        self._refresher = asyncio.create_task(self._keep_known_secrets())
        pool = self.settings.runner_pool
        await self.bus.serve(f"{CANCEL_PREFIX}.*", self._on_cancel, queue="")
        # Whether the pool has a live runner is asked here (`status`: "waiting for pool").
        await self.bus.serve(pool_ping_subject(pool), self._pong, queue=f"runner-{pool}")
        await self.bus.pull(
            CMD_STREAM,
            cmd_subject(pool),
            f"runner-{pool}",
            self._on_command,
            max_in_flight=self.settings.runner_concurrency,
        )

    async def stop(self) -> None:
        """Finish the commands in hand, then release the plugins' resources."""
        if self._refresher is not None:
            self._refresher.cancel()
        await super().stop()
        self._render_threads.close()
        await close_sinks()
        for plugin in self.plugins.values():
            close = getattr(plugin, "aclose", None)
            if close is not None:
                await close()

    async def _refresh_known_secrets(self) -> None:
        values = set(runtime_secrets(self.settings))
        if self.credentials is not None:
            values |= await self.credentials.all_secret_values()
        self._known_secrets = Masker(values)

    async def _keep_known_secrets(self) -> None:
        while True:
            await asyncio.sleep(STORED_SECRETS_EVERY)
            try:
                await self._refresh_known_secrets()
            except Exception as exc:  # the store is away: keep the last known set
                self.log.warning("could not refresh the stored secrets to mask: %s", exc)

    @property
    def render_hops(self) -> int:
        """Tool and sink blocks rendered in a thread so far (those with a template)."""
        return self._render_threads.hops

    def executions_in_hand(self) -> set[int]:
        """The executions whose commands this runner is running now."""
        return set(self._running)

    async def _on_cancel(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[1]
        if not token.isdigit():  # nobody's execution: nothing to stop
            return
        execution_id = int(token)
        if msg.data != END_NOTICE:  # it ended with work in flight: stop that work
            for ctx in self._running.get(execution_id, ()):
                ctx.cancelled.set()
        for plugin in self.plugins.values():  # what they keep for it (python workers) goes
            getattr(plugin, "execution_ended", lambda _: None)(execution_id)

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = decode_command(msg.data)
        except MessageError as exc:
            await self.bus.dead_letter(msg, str(exc))
            return
        # Awaited: the bus pulls another command when this one is done.
        await self.tracked(self._execute_or_give_up(msg, command))

    async def _execute_or_give_up(self, msg: Msg, command: CommandIssued) -> None:
        """`execute`, and if that itself breaks (store or bus down), let JetStream deliver
        the command again later; after `max_deliveries`, fail the step instead of looping."""
        try:
            await self.execute(msg, command)
        except Exception as exc:
            self.log.exception(
                "command %s: delivery %d failed", command.command_id, msg.metadata.num_delivered
            )
            limit = self.settings.max_deliveries
            if await self.bus.retry_later(msg, max_deliveries=limit):
                return
            error = ErrorInfo(
                type="delivery",
                message=gave_up(limit, exc),
                step=command.step,
                kind=command.kind,
            ).record()
            failure = Event(
                type=ev.COMMAND_FAILED,
                dedup_key=keys.outcome_key(command.command_id),
                step=command.step,
                command_id=command.command_id,
                status="failed",
                error=error,
            )
            with contextlib.suppress(Exception):
                await self.store.append_runner_event(command.execution_id, failure)
            with contextlib.suppress(Exception):
                await self._report(command, failure)
            await msg.term()

    async def execute(self, msg: Msg, command: CommandIssued) -> None:
        """Run one command to a recorded, published outcome, then ack it."""
        eid, cid = command.execution_id, command.command_id
        started = Event(
            type=ev.COMMAND_STARTED,
            dedup_key=keys.started_key(cid),
            step=command.step,
            command_id=cid,
            status="running",
            payload=plain(
                CommandStarted(
                    attempt=command.attempt,
                    kind=command.kind,
                    runner=self.identity,
                    # The event may be committed with the outcome: its row's time is not this.
                    started_at=time.time(),
                )
            ),
        )
        recorded = None
        if msg.metadata.num_delivered <= 1:
            # First delivery: no outcome can exist yet, so recording the start need not hold
            # up the tool. It is written alone, beside the tool, once the tool is slow.
            loop = asyncio.get_running_loop()
            early: list[asyncio.Task[bool]] = []
            timer = loop.call_later(
                STARTED_WITH_OUTCOME_WITHIN,
                lambda: early.append(
                    loop.create_task(self.store.append_runner_event(eid, started, durable=False))
                ),
            )
            try:
                outcome = await self._run(msg, command)
            finally:
                timer.cancel()
            if early:
                await early[0]
                inserted = await self.store.append_runner_event(eid, outcome)
            else:
                # Start and outcome in one transaction, the start first (lower event id).
                _, inserted = await self.store.append_runner_events(eid, [started, outcome])
        else:
            if not await self.store.append_runner_event(eid, started, durable=False):
                recorded = await self.store.find_event(eid, keys.outcome_key(cid))
            # Redelivered after its outcome was recorded: report that one, run nothing.
            outcome = recorded or await self._run(msg, command)
            inserted = recorded is not None or await self.store.append_runner_event(eid, outcome)
        if not inserted:
            # Another delivery of this command recorded its outcome first: that one counts.
            outcome = await self.store.find_event(eid, keys.outcome_key(cid)) or outcome
        await self._report(command, outcome)
        await msg.ack()

    async def _run(self, msg: Msg, command: CommandIssued) -> Event:
        masker = self._known_secrets.copy()
        ctx = ToolContext(
            execution_id=command.execution_id,
            command_id=command.command_id,
            step=command.step,
            timeout=command.timeout,
            credentials=self._credential_reader(masker),
            bindings=parse_bindings(command.credentials),
            files=command.files,
            code_lines=command.code_lines,
            script_root=self._script_root,
            allow_absolute_scripts=self.settings.allow_absolute_scripts,
            egress=self._egress,
            data_root=self._data_root,
        )
        ctx.in_progress = msg.in_progress
        self._running.setdefault(command.execution_id, set()).add(ctx)
        # Tell JetStream a long tool call is still alive, well before ack_wait runs out.
        beat = Heartbeat(msg.in_progress, max(self.settings.ack_wait / 3, 0.2))
        COMMANDS_IN_FLIGHT.inc()
        began = time.monotonic()
        done = CommandDone()
        try:
            # Plugins enforce the timeout themselves (the python tool kills its worker); this
            # bound, a little later, catches plugins that do not.
            result, data = await until_done(
                ctx, self._call(ctx, command, done, masker), f"step `{ctx.step}`", grace=1.0
            )
            masker.update(ctx.secrets.values())
            result = await self._stored_if_large(result, data, masker)
            done.facts = ctx.events
            done.seconds = time.monotonic() - began
            return Event(
                type=ev.COMMAND_COMPLETED,
                dedup_key=keys.outcome_key(command.command_id),
                step=command.step,
                command_id=command.command_id,
                status="completed",
                payload=masker.mask(plain(done)) | {"result": result},
            )
        except (ToolError, RenderError) as exc:
            error = _error_of(exc)
        except Exception as exc:  # a plugin bug fails the step, never the runner
            trace = traceback.format_exc(limit=20)
            masker.update(ctx.secrets.values())
            # Logged masked: a traceback can quote the values a plugin was handling.
            self.log.error(
                "command %s: plugin crashed\n%s", command.command_id, masker.mask_text(trace)
            )
            error = ErrorInfo(
                type="internal",
                message=f"{type(exc).__name__}: {exc}",
                details={"traceback": trace},
            )
        finally:
            beat.stop()
            COMMANDS_IN_FLIGHT.dec()
            self._step_seconds(command.kind).observe(time.monotonic() - began)
            running = self._running.get(command.execution_id)
            if running is not None:
                running.discard(ctx)
                if not running:
                    del self._running[command.execution_id]
        masker.update(ctx.secrets.values())
        error = msgspec.structs.replace(
            error,
            step=command.step if error.step is None else error.step,
            kind=command.kind if error.kind is None else error.kind,
        )
        message = str(error.message)
        if not message.startswith("step `"):
            # Users read the message alone (CLI, logs): it names the step and the tool.
            error.message = f"step `{command.step}` ({command.kind}): {message}"
        return Event(
            type=ev.COMMAND_FAILED,
            dedup_key=keys.outcome_key(command.command_id),
            step=command.step,
            command_id=command.command_id,
            status="failed",
            payload=masker.mask(
                plain(CommandDone(facts=ctx.events, seconds=time.monotonic() - began))
            ),
            error=masker.mask(error.record()),
        )

    def _credential_reader(self, masker: Masker) -> Callable[[str], Awaitable[Mapping[str, Any]]]:
        """What `ctx.credential(name)` calls: decrypts, and remembers the secret values so
        they are masked in everything this command records."""

        async def read(name: str) -> Mapping[str, Any]:
            if self.credentials is None:
                raise ToolError("no credential store is configured", error_type="credential")
            try:
                credential = await self.credentials.get(name)
            except (StoreError, ConfigError) as exc:
                raise ToolError(str(exc), error_type="credential") from exc
            masker.update(secret_values(credential.data))
            return credential.data

        return read

    async def _stored_if_large(self, result: Any, data: bytes, masker: Masker) -> Any:
        """`result` (encoded as `data`) masked; over `NOETL_LARGE_RESULT_BYTES`, stored once
        and replaced by its reference."""
        masked = masker.mask(result)
        if masked is not result:  # a secret was in it: what is stored is the masked value
            data = blobs.encode(masked)
        if len(data) <= self.settings.large_result_bytes:
            return masked
        return await self.store.put_blob(data)

    async def _call(
        self, ctx: ToolContext, command: CommandIssued, done: CommandDone, masker: Masker
    ) -> tuple[Any, bytes]:
        """The tool call, then the sink that goes with it; sink facts land in `done`. The
        result comes with its JSON, measured before a sink writes or a walk masks it: one
        over `NOETL_RESULT_MAX_MB` fails the step (ResultTooLarge)."""
        stored = command.context.reference()
        if stored is not None:
            command.context = msgspec.convert(await self.store.resolve(stored), CommandContext)
        context = await self._context(command)
        data = command.context
        ctx.execution_data = {
            **{name: context[name] for name in (data.steps or {}) if name in context},
            "workload": data.workload or {},
            "vars": data.vars or {},
            "execution_id": str(command.execution_id),
            "job": job(command),
        }
        found = names_by_root((command.tool, command.args, command.sink), ("secret", "keychain"))
        names, keychain = found["secret"], found["keychain"]
        if names:
            ctx.secrets.update(await resolve_secrets(names, self.credentials))
            masker.update(ctx.secrets.values())
            context["secret"] = dict(ctx.secrets)
        if keychain:
            context["keychain"] = await keychain_of(ctx, keychain)
        if command.kind == "sink":
            result = context.get("result")
            done.sink = await self._sink(ctx, command.tool, result, context)
            return None, blobs.encode(None)
        plugin = self.plugins.get(command.kind)
        if plugin is None:
            raise ToolError(
                f"no plugin is installed for tool kind `{command.kind}`", error_type="unknown_kind"
            )
        if renders(command, plugin):
            # In a thread: a template running until its deadline must not hold the loop.
            spec = await self._render_threads.run(render_tool, command, plugin, context)
        else:
            spec = render_tool(command, plugin, context)  # no template: no thread hop
        result = await plugin.run(ctx, spec)
        encoded = blobs.encode_within(result, self.settings.result_max_mb * 1024 * 1024)
        if command.sink is not None:
            done.sink = await self._sink(ctx, command.sink, result, context)
        return result, encoded

    async def _context(self, command: CommandIssued) -> dict[str, Any]:
        """The template context of a command, large values fetched."""
        data = command.context
        steps = {
            name: await self.store.resolve(value) for name, value in (data.steps or {}).items()
        }
        locals_ = {
            name: await self.store.resolve(value) for name, value in (data.locals or {}).items()
        }
        noetl_job = job(command)
        return render.build_context(
            workload=data.workload or {},
            variables=data.vars or {},
            steps=steps,
            execution_id=str(command.execution_id),
            extra={"job": noetl_job, **locals_} if "job" not in steps else locals_,
        )

    async def _sink(
        self, ctx: ToolContext, block: dict[str, Any], result: Any, context: dict[str, Any]
    ) -> dict[str, Any]:
        """Write `result` (or the sink's rendered `args`/`data`) through the sink's tool."""
        where = f"step `{ctx.step}` sink"
        if render.has_template(block):
            tool, value = await self._render_threads.run(render_sink, block, result, context, where)
        else:
            tool, value = render_sink(block, result, context, where)
        if tool.get("kind") == "postgres" and "statement" in tool:
            return await self._statement_sink(ctx, tool)
        sink = get_sink(str(tool.get("kind", "")))
        outcome = await sink.write(ctx, tool, rows_of(value))
        ctx.record("sink", sink=str(tool.get("kind")), rows=outcome.get("rows", 0))
        return outcome

    async def _statement_sink(self, ctx: ToolContext, tool: dict[str, Any]) -> dict[str, Any]:
        """NoETL's postgres sink `statement:`: the rendered SQL runs instead of a table
        write, through the postgres tool (same auth and pools)."""
        plugin = self.plugins.get("postgres")
        if plugin is None:
            raise ToolError("sink: no plugin is installed for kind `postgres`", error_type="sink")
        spec = {k: v for k, v in tool.items() if k not in ("statement", "table", "mode", "key")}
        outcome = await plugin.run(ctx, {**spec, "command": tool["statement"]})
        rows = outcome.get("rowcount", 0) if isinstance(outcome, dict) else 0
        ctx.record("sink", sink="postgres", rows=rows)
        return {"rows": rows, "statement": True}

    async def _report(self, command: CommandIssued, outcome: Event) -> None:
        """Send the recorded `outcome` to the execution's coordinator."""
        message = outcome_message(command.execution_id, outcome, time.time())
        await self.bus.publish(command.reply_to, encode(message), message.dedup_id)


def _error_of(exc: ToolError | RenderError) -> ErrorInfo:
    if isinstance(exc, ToolError):
        return ErrorInfo.of(exc.details, type=exc.error_type, message=str(exc))
    return ErrorInfo(type=exc.error_type, message=str(exc))
