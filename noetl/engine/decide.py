"""`decide`: what an execution does next, given its state and one message.

Pure and deterministic: no clock, no randomness, no I/O. Time arrives in messages (`at`),
jitter is derived from ids. The same state and message give the same events and the same
commands with the same ids, which is what lets a coordinator crash anywhere and a successor
redo its work without doing anything twice.

The work is split "evaluate vs emit": `plan.py` resolves the playbook once per version;
`routing.py`, `rules.py`, `loops.py` and `context.py` evaluate templates in a context they
are given; `commands.py` builds messages; only the run (`run.py`, `steps.py`) emits events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noetl import render
from noetl.dsl import Playbook
from noetl.dsl.loader import NodePath
from noetl.engine.commands import child_message, command_message
from noetl.engine.emitter import Decision
from noetl.engine.limits import DEFAULT_LIMITS, Limits
from noetl.engine.plan import Plan, compile_plan
from noetl.engine.run import Run
from noetl.engine.state import ExecutionState
from noetl.messages import (
    CancelExecution,
    ChildCompleted,
    CodeLines,
    CommandCompleted,
    CommandFailed,
    CommandIssued,
    ExecMessage,
    StartExecution,
    Timer,
    Wake,
)


class Engine:
    """The meaning of one pinned playbook version: decides for any of its executions.

    Built once per (path, version) by the coordinator, which caches it; the plan it
    compiles is immutable, so one engine serves every execution of that version.
    """

    def __init__(
        self,
        playbook: Playbook,
        *,
        version: int,
        files: Mapping[str, str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        code_lines: Mapping[NodePath, CodeLines] | None = None,
    ) -> None:
        self.playbook = playbook
        self.limits = limits
        self.version = version
        self.path = playbook.catalog_path
        self.plan: Plan = compile_plan(playbook, version, files, code_lines)

    def decide(
        self, state: ExecutionState, message: ExecMessage, values: Mapping[str, Any] | None = None
    ) -> Decision:
        """Decide the next events and messages; `state` is advanced by folding the events.

        `values` are the stored large values (by digest) that results in the state or the
        message refer to; content-addressed, so they keep the decision deterministic.
        If the caller cannot commit the events, it must discard `state` and replay.
        An error met while deciding ends a running execution as failed with its message
        (the events emitted before it stand: each was folded and is consistent).
        """
        run = Run(self.plan, state, message.at, values or {}, self.limits)
        try:
            self._dispatch(run, message)
        except Exception as exc:
            # Deciding is deterministic: redelivering the message would fail the same way,
            # and the execution would wait for its timeout. It fails now, with the reason.
            if not state.running:
                raise
            run.abandon(exc)
        return run.decision()

    @staticmethod
    def _dispatch(run: Run, message: ExecMessage) -> None:
        if isinstance(message, StartExecution):
            run.start(message)
        elif isinstance(message, CommandCompleted):
            run.completed(message.command_id, message.result, message.meta)
        elif isinstance(message, CommandFailed):
            run.failed(message.command_id, message.error)
        elif isinstance(message, ChildCompleted):
            run.child(message)
        elif isinstance(message, Timer):
            run.timer(message.name)
        elif isinstance(message, CancelExecution):
            run.cancel(message)
        elif isinstance(message, Wake):
            run.wake()

    def renders(self, message: ExecMessage) -> bool:
        """Whether deciding `message` may run a template that is more than a plain lookup
        (False: it runs none or only lookups, so it cannot hold its thread until the render
        clock's deadline; `render.may_run_long`). Besides the playbook's own templates, a
        start renders the workload it carries."""
        if self.plan.templated:
            return True
        if isinstance(message, StartExecution):
            return render.may_run_long(message.workload) or render.may_run_long(message.restore)
        return False

    def pending_commands(self, state: ExecutionState) -> list[CommandIssued]:
        """The runner messages of every issued command without a consumed outcome."""
        return [
            command_message(self.plan, state, cid, self.limits.pools)
            for cid, p in state.pending.items()
            if p.child is None
        ]

    def pending_children(self, state: ExecutionState) -> list[StartExecution]:
        """The start messages of every child execution still awaited."""
        return [
            child_message(self.plan, state, cid)
            for cid, p in state.pending.items()
            if p.child is not None
        ]

    def command_message(self, state: ExecutionState, command_id: str) -> CommandIssued:
        """Rebuild the message of a pending command from the state (for republishing)."""
        return command_message(self.plan, state, command_id, self.limits.pools)
