"""The tool runner: pulls commands from its pool, runs the plugin, reports the outcome.

Order for every command: record `command.started`, render and run the tool (telling
JetStream it is still in progress), record the outcome once, publish it to the
execution's coordinator, then ack. A runner that dies anywhere leaves the command
unacked, so it is delivered again; an outcome already recorded is republished instead of
running the tool a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from typing import Any

from nats.aio.msg import Msg

from actors.base import Actor
from noetl import render
from noetl.bus import CMD_STREAM, Bus, cmd_subject
from noetl.config import Settings
from noetl.engine import Event
from noetl.engine import events as ev
from noetl.errors import MessageError, RenderError, ToolError
from noetl.messages import CommandCompleted, CommandFailed, CommandIssued, decode_command, encode
from noetl.store import Store, outcome_key
from plugins.base import ToolContext, ToolPlugin
from plugins.registry import load_plugins


class Runner(Actor):
    """Runs the commands of one pool with at most `runner_concurrency` at a time."""

    role = "runner"

    def __init__(self, bus: Bus, store: Store, settings: Settings,
                 plugins: dict[str, ToolPlugin] | None = None) -> None:
        super().__init__(bus, store, settings)
        self.plugins = load_plugins() if plugins is None else plugins

    async def start(self) -> None:
        """Join the pool's work queue."""
        await super().start()
        pool = self.settings.runner_pool
        await self.bus.consume(CMD_STREAM, cmd_subject(pool), f"runner-{pool}",
                               self._on_command,
                               max_in_flight=self.settings.runner_concurrency)

    async def stop(self) -> None:
        """Finish the commands in hand, then release the plugins' resources."""
        await super().stop()
        for plugin in self.plugins.values():
            close = getattr(plugin, "aclose", None)
            if close is not None:
                await close()

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = decode_command(msg.data)
        except MessageError as exc:
            await self.bus.dead_letter(msg, str(exc))
            return
        self.spawn(self.execute(msg, command))

    async def execute(self, msg: Msg, command: CommandIssued) -> None:
        """Run one command to a recorded, published outcome, then ack it."""
        eid, cid = command.execution_id, command.command_id
        started = Event(type=ev.COMMAND_STARTED, dedup_key=f"started:{cid}", step=command.step,
                        command_id=cid, status="running",
                        payload={"attempt": command.attempt, "kind": command.kind})
        recorded = None
        if msg.metadata.num_delivered <= 1:
            # First delivery: no outcome can exist yet, so recording the start need not hold
            # up the tool.
            record = asyncio.create_task(
                self.store.append_runner_event(eid, started, durable=False))
            outcome = await self._run(msg, command)
            await record
        else:
            if not await self.store.append_runner_event(eid, started, durable=False):
                recorded = await self.store.find_event(eid, outcome_key(cid))
            # Redelivered after its outcome was recorded: report that one, run nothing.
            outcome = recorded or await self._run(msg, command)
        if recorded is None and not await self.store.append_runner_event(eid, outcome):
            # Another delivery of this command recorded its outcome first: that one counts.
            outcome = await self.store.find_event(eid, outcome_key(cid)) or outcome
        await self._report(command, outcome)
        await msg.ack()

    async def _run(self, msg: Msg, command: CommandIssued) -> Event:
        ctx = ToolContext(execution_id=command.execution_id, command_id=command.command_id,
                          step=command.step, timeout=command.timeout)
        ctx.in_progress = msg.in_progress
        beat = asyncio.create_task(self._keep_alive(msg))
        try:
            plugin = self.plugins.get(command.kind)
            if plugin is None:
                raise ToolError(f"no plugin is installed for tool kind `{command.kind}`",
                                error_type="unknown_kind")
            spec = self._render(command, plugin)
            result = await plugin.run(ctx, spec)
            return Event(type=ev.COMMAND_COMPLETED, dedup_key=outcome_key(command.command_id),
                         step=command.step, command_id=command.command_id, status="completed",
                         payload={"result": result, "facts": ctx.events})
        except (ToolError, RenderError) as exc:
            error = _error_of(exc)
        except Exception as exc:  # a plugin bug fails the step, never the runner
            self.log.exception("command %s: plugin crashed", command.command_id)
            error = {"type": "internal", "message": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=20)}
        finally:
            beat.cancel()
        error = {"step": command.step, "kind": command.kind, **error}
        return Event(type=ev.COMMAND_FAILED, dedup_key=outcome_key(command.command_id),
                     step=command.step, command_id=command.command_id, status="failed",
                     payload={"facts": ctx.events}, error=error)

    def _render(self, command: CommandIssued, plugin: ToolPlugin) -> dict[str, Any]:
        """Render args, then the tool block with the args bound; raw fields stay as written."""
        data = command.context
        where = f"step `{command.step}`"
        base = dict(workload=data.get("workload", {}), variables=data.get("vars", {}),
                    steps=data.get("steps", {}), execution_id=str(command.execution_id))
        args = render.render(command.args, render.build_context(**base), where=f"{where} args")
        assert isinstance(args, dict)
        args.update(command.edge_args)
        context = render.build_context(**base, args=args)
        raw_fields: frozenset[str] = getattr(plugin, "raw_fields", frozenset())
        spec = {
            key: value if key in raw_fields
            else render.render(value, context, where=f"{where} tool.{key}")
            for key, value in command.tool.items()
        }
        spec["args"] = args
        return spec

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream a long tool call is still alive, well before ack_wait runs out."""
        interval = max(self.settings.ack_wait / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _report(self, command: CommandIssued, outcome: Event) -> None:
        message: CommandCompleted | CommandFailed
        dedup = f"{command.command_id}:outcome"
        if outcome.type == ev.COMMAND_COMPLETED:
            message = CommandCompleted(execution_id=command.execution_id, dedup_id=dedup,
                                       command_id=command.command_id, step=command.step,
                                       result=(outcome.payload or {}).get("result"))
        else:
            message = CommandFailed(execution_id=command.execution_id, dedup_id=dedup,
                                    command_id=command.command_id, step=command.step,
                                    error=outcome.error or {})
        await self.bus.publish(command.reply_to, encode(message), dedup)


def _error_of(exc: ToolError | RenderError) -> dict[str, Any]:
    if isinstance(exc, ToolError):
        return {"type": exc.error_type, "message": str(exc), **exc.details}
    return {"type": "render", "message": str(exc)}
