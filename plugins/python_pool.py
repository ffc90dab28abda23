"""A pool of python worker processes, forked from a clean template, driven from asyncio.

The pool starts one template process (`plugins.python_zygote`: a fresh interpreter with a
scrubbed environment, `NOETL_*` removed) and asks it to fork each worker, holding one end of
a socket pair per worker. The pool writes a request frame and the event loop reads the reply
when the socket is readable, so a worker that hangs, spins or dies never stalls the loop.

Workers belong to one execution: a worker is reused only by calls of the execution it first
served, so nothing one execution's code does to its process (a patched module, a cached
secret) reaches another's. At most `size` calls run at once, of one execution or of several:
an execution whose calls run concurrently (an async loop's items) gets a worker for each.
Between calls a worker waits for its execution's next one among the idle workers
(`plugins.python_idle`: bounded by count, memory and idleness), and is stopped when its
execution ends. A worker that times out, is cancelled or dies is discarded. Running as root,
workers switch to an unprivileged account before any code.

Every execution's first python step needs a new process, and a fork costs milliseconds
(tens on a loaded machine): the pool keeps up to `size` spares, forked ahead, and binds one
to an execution that needs a worker, forking its replacement in the background. A spare has
run no code, so binding one is the same as forking then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from noetl.errors import ResultTooLarge, ToolError, ToolTimeout
from plugins import python_worker
from plugins.python_forker import Zygote
from plugins.python_idle import IdleWorkers
from plugins.python_worker import HEADER
from plugins.python_zygote import Options

HEARTBEAT_EVERY = 5.0  # seconds between heartbeats while a call runs
WATCH_AFTER = 0.05  # seconds into a call before cancellation is watched (and heartbeats begin)
EXIT_GRACE = 2.0  # seconds a worker that closed its socket gets to exit before it is killed
_PR_SET_DUMPABLE = 4


class _Gone(Exception):
    """The worker closed its socket or exited before it replied."""


class _Channel(asyncio.Protocol):
    """Reassembles the worker's reply frames and hands each to the call waiting for it. A
    frame announcing more than `max_frame` bytes (0: no bound) fails the call at once,
    unread: the worker's own bound on its result failed (its code may have tampered with
    it), and the runner's memory must not pay for that."""

    def __init__(self, max_frame: int = 0) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[bytes] | None = None
        self.lost = False
        self.max_frame = max_frame
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write requests with."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Complete the waiting call once its whole frame has arrived."""
        if self.lost:  # refused, or gone: nothing it sends is read
            return
        self._buffer += data
        if len(self._buffer) < HEADER:
            return
        size = int.from_bytes(self._buffer[:HEADER], "little")
        if self.max_frame and size > self.max_frame:
            self._buffer.clear()
            self.lost = True  # never reused; the failed call kills it
            if self.transport is not None:
                self.transport.pause_reading()
            error = ResultTooLarge(size, self.max_frame, what="the python worker's reply")
            if self.reply is not None and not self.reply.done():
                self.reply.set_exception(error)
            return
        end = HEADER + size
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
    """One worker process of one execution (`owner`), its socket and its exit."""

    def __init__(self, pid: int, owner: object | None, channel: _Channel, zygote: Zygote) -> None:
        self.pid = pid
        self.owner = owner
        self.channel = channel
        self.zygote = zygote
        self.exited = zygote.exits[pid]
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
        if not self.exited.done():
            with contextlib.suppress(ToolError):  # a gone template already took its workers
                self.zygote.kill(self.pid)
        if self.channel.transport is not None:
            self.channel.transport.close()

    @property
    def exit_code(self) -> int | None:
        """The exit code (minus the signal number when killed), once known."""
        return self.exited.result() if self.exited.done() else None

    def how_it_ended(self) -> str:
        """`exit code N` or `signal NAME`, for error messages."""
        code = self.exit_code
        if code is None:
            return "an unknown status"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"signal {signal.Signals(-code).name}"
            return f"signal {-code}"
        return f"exit code {code}"


class WorkerPool:
    """Up to `size` calls at once in worker processes forked from a clean template, up to
    `size` unused spares, and up to `idle` idle workers kept for their executions; a worker
    is reused only by its own execution; callers queue in FIFO order.

    `user`: the account workers run as when the runtime runs as root (ignored otherwise).
    `memory_bytes`: each worker's data size limit (0: none). `preload`: comma-separated
    modules the template imports once, so that workers start with them. `idle_seconds`: how
    long an idle worker is kept; `idle_free_bytes`: idle workers are kept only while this much
    memory is left to the runner. `max_reply_bytes`: a reply frame announcing more fails its
    call unread and its worker is killed (0: no bound). `stdlib`: the folders of the
    standard library whose safety for import by `user` decides whether the template imports
    it all before switching (`plugins.python_stdlib`; default: the interpreter's own).
    """

    def __init__(
        self,
        size: int,
        *,
        user: str = "nobody",
        memory_bytes: int = 0,
        preload: str = "",
        idle: int = 256,
        idle_seconds: float = 30.0,
        idle_free_bytes: int = 0,
        max_reply_bytes: int = 0,
        stdlib: Sequence[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {size}")
        self.size = size
        self.user = user
        self.memory_bytes = memory_bytes
        self.preload = preload
        self.max_reply_bytes = max_reply_bytes
        self.stdlib = list(stdlib)
        self._slots = asyncio.Semaphore(size)
        self._idle: IdleWorkers[_Worker] = IdleWorkers(idle, idle_seconds, idle_free_bytes)
        # Calls running per execution, and executions that ended while theirs ran: their
        # workers are stopped when the call returns instead of being kept.
        self._busy: collections.Counter[object] = collections.Counter()
        self._ended: set[object] = set()
        # Forked ahead, owned by nobody, never used; counted in `_workers` too.
        self._spares: collections.deque[_Worker] = collections.deque()
        self._refill: asyncio.Task[None] | None = None
        self._workers: set[_Worker] = set()
        self._zygote: Zygote | None = None
        self._zygote_lock = asyncio.Lock()
        self._closed = False

    async def call(
        self,
        payload: bytes,
        *,
        owner: object,
        timeout: float | None,
        cancelled: asyncio.Event,
        heartbeat: Callable[[], Awaitable[None]],
    ) -> bytes:
        """Send `payload` to a free worker of `owner` (an execution) and return its reply.

        Raises ToolTimeout after `timeout` seconds and ToolError (`cancelled`) once `cancelled`
        is set, killing the worker in both cases; ToolError if the worker dies meanwhile.
        `heartbeat` is awaited every HEARTBEAT_EVERY seconds of a call and must not raise.
        """
        async with self._slots:
            if self._closed:
                raise ToolError("the python tool is closed", error_type="python")
            try:
                worker = self._idle.take(owner) or await self._start(owner)
            except ToolError:
                if self._closed:
                    raise self._closed_meanwhile() from None
                raise
            reply = worker.send(payload)
            self._busy[owner] += 1
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
            finally:
                ended = self._release(owner)
            if ended or self._closed or not self._idle.keep(worker):
                worker.kill()
            # Forked after the call, not during it: the fork would compete with the code.
            self._keep_spares()
            return answer

    def execution_ended(self, owner: object) -> None:
        """Stop the idle workers of `owner`, and those of its calls still running once they
        return (a call still running is stopped by its own cancellation, if any)."""
        self._idle.drop(owner)
        if self._busy[owner]:
            self._ended.add(owner)

    async def aclose(self) -> None:
        """Kill every worker and the template, and wait until each worker is reaped."""
        self._closed = True
        self._idle.clear()
        self._spares.clear()
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.wait([self._refill])
        workers = list(self._workers)
        for worker in workers:
            worker.kill()
        await asyncio.gather(*(worker.exited for worker in workers))
        async with self._zygote_lock:  # a template still starting is stopped too
            if self._zygote is not None:
                # A spare whose fork was under way when the refill was cancelled is in no
                # worker list yet: the template still knows it.
                await self._zygote.drain(EXIT_GRACE)
                await self._zygote.close(EXIT_GRACE)

    @staticmethod
    def _closed_meanwhile() -> ToolError:
        return ToolError("the python tool was closed while the code ran", error_type="python")

    def _release(self, owner: object) -> bool:
        """Count one call of `owner` done; whether its execution ended meanwhile."""
        self._busy[owner] -= 1
        if self._busy[owner]:
            return owner in self._ended
        del self._busy[owner]
        if owner in self._ended:
            self._ended.discard(owner)
            return True
        return False

    async def _start(self, owner: object) -> _Worker:
        worker = self._take_spare() or await self._fork(await self._template())
        worker.owner = owner
        return worker

    def _take_spare(self) -> _Worker | None:
        while self._spares:
            worker = self._spares.popleft()
            if worker.alive and worker.zygote.alive:
                return worker
            worker.kill()
        return None

    def _keep_spares(self) -> None:
        """Fork spares up to `size` in the background, unless that is under way (or there
        are enough: no task then)."""
        if self._closed or len(self._spares) >= self.size:
            return
        if self._refill is not None and not self._refill.done():
            return
        self._refill = asyncio.get_running_loop().create_task(self._fill_spares())

    async def _fill_spares(self) -> None:
        try:
            while not self._closed and len(self._spares) < self.size:
                zygote = await self._template()
                self._spares.append(await self._fork(zygote))
        except ToolError:
            return  # the template is gone: the next call starts another and forks itself

    async def _fork(self, zygote: Zygote) -> _Worker:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:  # the worker's end: once forked, the worker holds its own copy
            transport, channel = await loop.create_unix_connection(
                lambda: _Channel(self.max_reply_bytes), sock=ours
            )
            try:
                pid = await zygote.fork(theirs.fileno())
            except BaseException:
                transport.close()
                raise
        worker = _Worker(pid, None, channel, zygote)
        self._workers.add(worker)
        worker.exited.add_done_callback(lambda _: self._workers.discard(worker))
        return worker

    async def _template(self) -> Zygote:
        async with self._zygote_lock:
            if self._closed:
                raise self._closed_meanwhile()
            if self._zygote is None or not self._zygote.alive:
                if os.geteuid() != 0:
                    _protect_this_process()
                self._zygote = await Zygote.start(self._options())
            return self._zygote

    def _options(self) -> Options:
        return Options(
            user=self.user,
            memory_bytes=self.memory_bytes,
            preload=self.preload,
            temp=tempfile.gettempdir(),
            stdlib=self.stdlib,
        )

    async def _died(self, worker: _Worker) -> ToolError:
        # The socket closed first; the exit status follows within moments, unless the code
        # closed the socket itself and lives on.
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), EXIT_GRACE)
        except TimeoutError:
            worker.kill()
            await worker.exited
        if self._closed:
            return self._closed_meanwhile()
        how = worker.how_it_ended()
        return ToolError(
            f"the python worker process died with {how} while running the code",
            error_type="python",
            exit_code=worker.exit_code,
        )


def _protect_this_process() -> None:
    """Make this process's memory and `/proc/<pid>/environ` unreadable to other processes of
    the same user, step code included (they hold the API token and the encryption key)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0)


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
