"""The `python` tool: runs a step's Python code in a pool of worker processes.

The code gets each arg as a variable, `input_data` (all args), its `libs` and NoETL's
read-only `context` (workload, vars, step results by name, execution_id); its result is
the value of `result`, what `main(...)` returns, or what a top-level `return` returns. See
`plugins.python_worker` for how the code runs and `plugins.python_pool` for the processes.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from noetl.config import Settings
from noetl.errors import ResultTooLarge, ToolError
from plugins.base import ToolContext
from plugins.python_pool import WorkerPool
from plugins.python_worker import Origin, Reply, Request
from plugins.sources import load_code

_reply_decoder = msgspec.json.Decoder(Reply)
#: Bytes a reply may hold beyond its result (captured output, a traceback, the envelope)
#: before the runner refuses it unread.
REPLY_SLACK = 8 * 1024 * 1024


class PythonTool:
    """Tool kind `python`. Concurrent calls are bounded by `workers`, else by the settings'
    `python_workers` (`NOETL_PYTHON_WORKERS`), else by two per CPU: a call holds its slot
    through its worker's fork and its own waits (HTTP, databases), not only while it
    computes."""

    kind = "python"
    # Code is Python, not a template: `{{` in an f-string must reach the interpreter intact.
    raw_fields = frozenset({"code", "code_b64"})

    def __init__(self, workers: int = 0, *, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.max_result = settings.result_max_mb * 1024 * 1024
        self.pool = WorkerPool(
            workers or settings.python_workers or 2 * (os.cpu_count() or 1),
            user=settings.python_user,
            memory_bytes=settings.python_memory_mb * 1024 * 1024,
            preload=settings.python_preload,
            idle=settings.python_idle_workers,
            idle_seconds=settings.python_idle_seconds,
            idle_free_bytes=settings.python_idle_free_mb * 1024 * 1024,
            max_reply_bytes=self.max_result + REPLY_SLACK,
        )

    async def run(self, ctx: ToolContext, spec: dict[str, Any]) -> Any:
        """Run the code of one call in a worker process and return its result."""
        code = await load_code(spec, ctx)
        if code is None:
            raise ToolError(
                "python tool: `code`, `code_b64` or `script` is required", error_type="python"
            )
        request = _request(
            spec, code, ctx.execution_data, _origin(spec, ctx), max_result=self.max_result
        )

        async def heartbeat() -> None:
            try:
                await ctx.heartbeat()
            except Exception as exc:  # a missed heartbeat must not abandon the running code
                ctx.logger.warning("step %s: heartbeat failed: %s", ctx.step, exc)

        payload = await self.pool.call(
            request,
            owner=ctx.execution_id,
            timeout=ctx.timeout,
            cancelled=ctx.cancelled,
            heartbeat=heartbeat,
        )
        reply = _reply_decoder.decode(payload)
        if reply.stdout or reply.stderr:
            ctx.record("output", stdout=reply.stdout, stderr=reply.stderr)
        if reply.too_large:
            raise ResultTooLarge(reply.too_large, self.max_result)
        if not reply.ok:
            message = f"{reply.exception}: {reply.message}" if reply.message else reply.exception
            details = {"at": reply.where} if reply.where else {}
            if reply.where:
                message = f"{message} (at {reply.where})"
            raise ToolError(
                message,
                error_type="python",
                exception=reply.exception,
                traceback=reply.traceback,
                **details,
            )
        result = reply.result
        if isinstance(result, dict) and result.get("status") == "error":
            # NoETL's convention: code reports a failure by returning it.
            message = result.get("error") or result.get("message") or "the code returned an error"
            raise ToolError(str(message), error_type="python", result=result)
        return result

    def execution_ended(self, execution_id: int) -> None:
        """Stop the worker processes kept for `execution_id`: it will send no more code."""
        self.pool.execution_ended(execution_id)

    async def aclose(self) -> None:
        """Stop every worker process."""
        await self.pool.aclose()


def _origin(spec: dict[str, Any], ctx: ToolContext) -> Origin | None:
    """Where the code that runs sits: a script's own uri and lines, or the playbook's lines
    of an inline `code` block (`code_b64` has none)."""
    script = spec.get("script")
    if script is not None:
        uri = script.get("uri") if isinstance(script, dict) else None
        return Origin(file=uri) if isinstance(uri, str) else None
    if spec.get("code_b64") is not None or ctx.code_lines is None:
        return None
    lines = ctx.code_lines
    return Origin(file=lines.file, first=lines.first, lines=list(lines.lines))


def _request(
    spec: dict[str, Any],
    code: str,
    context: dict[str, Any],
    origin: Origin | None,
    *,
    max_result: int = 0,
) -> bytes:
    """The encoded request for the worker, or ToolError naming what is wrong with `spec`."""
    libs = spec.get("libs") or {}
    if not isinstance(libs, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in libs.items()
    ):
        raise ToolError(
            "python tool: `libs` must map aliases to module names, like {pd: pandas}",
            error_type="python",
        )
    args = spec.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(name, str) for name in args):
        raise ToolError(
            "python tool: `args` must map variable names to values", error_type="python"
        )
    try:
        return msgspec.msgpack.encode(
            Request(
                code=code,
                args=args,
                libs=libs,
                context=context,
                origin=origin,
                max_result=max_result,
            )
        )
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise ToolError(
            f"python tool: the args cannot be passed to the code: {exc}", error_type="python"
        ) from exc
