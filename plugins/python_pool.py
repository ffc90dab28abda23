"""A pool of long-lived python worker processes, driven from asyncio without blocking it.

Each worker is a fresh interpreter (`python -P -c ...`, not a fork of this asyncio process)
with its own session, holding one end of a socket pair. The pool writes a request frame and
the event loop reads the reply when the socket is readable, so a worker that hangs, spins or
dies never stalls the loop. Workers start on demand, up to `size`, and are reused; one that
times out, is cancelled or dies is discarded, and the next call needing it starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import cast

from noetl.errors import ToolError, ToolTimeout
from plugins import python_worker
from plugins.python_worker import HEADER

HEARTBEAT_EVERY = 5.0  # seconds between heartbeats while a call runs
WATCH_AFTER = 0.05  # seconds into a call before cancellation is watched (and heartbeats begin)
EXIT_GRACE = 2.0  # seconds a worker that closed its socket gets to exit before it is killed

# Runs in the worker: take the parent's import path (as multiprocessing's spawn does), then
# serve. `-P` keeps the current directory from shadowing modules before the path is set.
_BOOTSTRAP = (
    "import sys; fd, parent, *sys.path[:] = sys.argv[1:]; sys.argv[:] = ['']; "
    f"from {python_worker.__name__} import serve; serve(int(fd), int(parent))"
)


class _Gone(Exception):
    """The worker closed its socket or exited before it replied."""


class _Channel(asyncio.Protocol):
    """Reassembles the worker's reply frames and hands each to the call waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[bytes] | None = None
        self.lost = False
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write requests with."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Complete the waiting call once its whole frame has arrived."""
        self._buffer += data
        if len(self._buffer) < HEADER:
            return
        end = HEADER + int.from_bytes(self._buffer[:HEADER], "little")
        if len(self._buffer) < end:
            return
        with memoryview(self._buffer) as view:
            payload = bytes(view[HEADER:end])
        del self._buffer[:end]
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the waiting call: no reply can come any more."""
        self.gone()

    def gone(self) -> None:
        """Mark the worker unusable and fail the waiting call, if any."""
        self.lost = True
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(_Gone())


class _Worker:
    """One worker process, its socket and a future resolved with its exit status once reaped."""

    def __init__(self, proc: asyncio.subprocess.Process, channel: _Channel) -> None:
        self.proc = proc
        self.channel = channel
        self.exited = asyncio.ensure_future(proc.wait())
        # Also covers a worker that exits while a process it started still holds the socket.
        self.exited.add_done_callback(lambda _: channel.gone())

    @property
    def alive(self) -> bool:
        """Whether the worker can still take a call."""
        return not self.channel.lost and not self.exited.done()

    def send(self, payload: bytes) -> asyncio.Future[bytes]:
        """Write one request; the returned future gets the reply frame's payload."""
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.channel.reply = reply
        assert self.channel.transport is not None
        self.channel.transport.write(python_worker.frame(payload))
        return reply

    def kill(self) -> None:
        """Kill the worker and whatever its code started (its whole process group)."""
        if self.proc.returncode is None:  # until it is reaped, its pid and group are its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.channel.transport is not None:
            self.channel.transport.close()

    def how_it_ended(self) -> str:
        """`exit code N` or `signal NAME`, for error messages."""
        code = self.proc.returncode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"signal {signal.Signals(-code).name}"
            return f"signal {-code}"
        return f"exit code {code}"


class WorkerPool:
    """Up to `size` worker processes, started on demand and reused; callers queue in FIFO order."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {size}")
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._closed = False

    async def call(
        self,
        payload: bytes,
        *,
        timeout: float | None,
        cancelled: asyncio.Event,
        heartbeat: Callable[[], Awaitable[None]],
    ) -> bytes:
        """Send `payload` to a free worker and return its reply.

        Raises ToolTimeout after `timeout` seconds and ToolError (`cancelled`) once `cancelled`
        is set, killing the worker in both cases; ToolError if the worker dies meanwhile.
        `heartbeat` is awaited every HEARTBEAT_EVERY seconds of a call and must not raise.
        """
        async with self._slots:
            if self._closed:
                raise ToolError("the python tool is closed", error_type="python")
            worker = self._take_idle() or await self._start()
            reply = worker.send(payload)
            try:
                answer = await _wait(reply, timeout, cancelled, heartbeat)
            except _Gone:
                raise await self._died(worker) from None
            except ToolError:
                worker.kill()
                await worker.exited
                raise
            except BaseException:  # the caller itself was cancelled: kill now, reap later
                worker.kill()
                raise
            self._idle.append(worker)
            return answer

    async def aclose(self) -> None:
        """Kill every worker and wait until each is reaped; later calls fail."""
        self._closed = True
        self._idle.clear()
        workers = list(self._workers)
        for worker in workers:
            worker.kill()
        await asyncio.gather(*(worker.exited for worker in workers))

    def _take_idle(self) -> _Worker | None:
        while self._idle:
            worker = self._idle.pop()  # the most recently used: its caches are warmest
            if worker.alive:
                return worker
        return None

    async def _start(self) -> _Worker:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:  # the worker's end: once started, the worker holds its own copy
            # The channel comes first, so nothing awaits between starting the process and
            # registering it: a caller cancelled in between cannot leave a worker behind.
            transport, channel = await loop.create_unix_connection(_Channel, sock=ours)
            command = [
                sys.executable,
                "-P",
                "-c",
                _BOOTSTRAP,
                str(theirs.fileno()),
                str(os.getpid()),
                *sys.path,
            ]
            try:
                # A new session: a terminal's Ctrl-C does not reach the workers (the pool
                # stops them), and killing the group also ends processes the code started.
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                transport.close()
                raise ToolError(
                    f"could not start a python worker process: {exc}", error_type="python"
                ) from exc
            except BaseException:  # cancelled: asyncio has already killed the process
                transport.close()
                raise
        worker = _Worker(proc, channel)
        self._workers.add(worker)
        worker.exited.add_done_callback(lambda _: self._workers.discard(worker))
        return worker

    async def _died(self, worker: _Worker) -> ToolError:
        # The socket closed first; the exit status follows within moments, unless the code
        # closed the socket itself and lives on.
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), EXIT_GRACE)
        except TimeoutError:
            worker.kill()
            await worker.exited
        if self._closed:
            return ToolError("the python tool was closed while the code ran", error_type="python")
        how = worker.how_it_ended()
        return ToolError(
            f"the python worker process died with {how} while running the code",
            error_type="python",
            exit_code=worker.proc.returncode,
        )


async def _wait(
    reply: asyncio.Future[bytes],
    timeout: float | None,
    cancelled: asyncio.Event,
    heartbeat: Callable[[], Awaitable[None]],
) -> bytes:
    """The reply, unless the timeout passes (ToolTimeout) or `cancelled` is set (ToolError)."""
    if cancelled.is_set():
        raise _cancelled()
    loop = asyncio.get_running_loop()
    start = loop.time()
    # Timers and the watcher fail `reply` itself, so the call awaits a single future. Most
    # calls end within WATCH_AFTER and cost one timer; only longer ones get the deadline
    # timer and the task watching `cancelled` (a task costs a third of a round trip).
    later: list[asyncio.TimerHandle | asyncio.Task[None]] = []

    def watch() -> None:
        if timeout is not None:
            later.append(loop.call_at(start + timeout, _expire, reply, timeout))
        later.append(loop.create_task(_watch(reply, cancelled, heartbeat)))

    first = loop.call_later(WATCH_AFTER if timeout is None else min(WATCH_AFTER, timeout), watch)
    try:
        return await reply
    finally:
        first.cancel()
        for pending in later:
            pending.cancel()


def _expire(reply: asyncio.Future[bytes], timeout: float) -> None:
    _fail(
        reply,
        ToolTimeout(
            f"the python code ran past the step's timeout of {timeout:g} s;"
            " its worker process was killed"
        ),
    )


async def _watch(
    reply: asyncio.Future[bytes], cancelled: asyncio.Event, heartbeat: Callable[[], Awaitable[None]]
) -> None:
    """Fail `reply` once `cancelled` is set; heartbeat every HEARTBEAT_EVERY s meanwhile."""
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEARTBEAT_EVERY):
                await cancelled.wait()
                _fail(reply, _cancelled())
                return
        await heartbeat()


def _fail(reply: asyncio.Future[bytes], error: Exception) -> None:
    if not reply.done():
        reply.set_exception(error)


def _cancelled() -> ToolError:
    return ToolError(
        "the python code was cancelled; its worker process was killed", error_type="cancelled"
    )
