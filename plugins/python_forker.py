"""The runner's handle on the template process that forks python workers.

The template (`plugins.python_zygote`) is a fresh interpreter with a scrubbed environment
(`NOETL_*` removed). Over one control socket the pool asks it to fork a worker serving a given
socket (`F`) or to kill one (`K`); the template answers with each worker's pid when it starts
(`S`) and its exit code once reaped (`X`). Everything here runs on the event loop and never
blocks it: the control socket is read when readable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping

import msgspec

from noetl.errors import ToolError
from plugins import python_zygote
from plugins.python_zygote import MESSAGE, Options

# Runs in the template: take the parent's import path (as multiprocessing's spawn does), then
# serve. `-P` keeps the current directory from shadowing modules before the path is set.
_BOOTSTRAP = (
    "import sys; fd, parent, options, *sys.path[:] = sys.argv[1:]; "
    f"sys.argv[:] = ['']; from {python_zygote.__name__} import zygote; "
    "zygote(int(fd), int(parent), options)"
)


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What step code may see of the runner's environment: everything but `NOETL_*` (the API
    token, the encryption key, the store's DSN, `NOETL_SECRET_*`)."""
    return {name: value for name, value in environ.items() if not name.startswith("NOETL_")}


class Zygote:
    """The template process, its control socket, and the workers it forked and not yet reaped.

    `exits[pid]` resolves with a worker's exit code (minus the signal number when killed) once
    the template reaps it, or with None if the template itself is gone.
    """

    def __init__(self, proc: asyncio.subprocess.Process, control: socket.socket) -> None:
        self.proc = proc
        self.control = control
        self.exits: dict[int, asyncio.Future[int | None]] = {}
        self._starting: collections.deque[asyncio.Future[int]] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(control.fileno(), self._readable)
        self.alive = True

    @classmethod
    async def start(cls, options: Options) -> Zygote:
        """Start a template working as `options` say."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            command = [
                sys.executable,
                "-P",
                "-c",
                _BOOTSTRAP,
                str(theirs.fileno()),
                str(os.getpid()),
                msgspec.json.encode(options).decode(),
                *sys.path,
            ]
            try:
                # A new session: a terminal's Ctrl-C does not reach it (the pool stops it).
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    env=worker_environment(os.environ),
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise ToolError(
                    f"could not start the python worker template process: {exc}",
                    error_type="python",
                ) from exc
            except BaseException:
                ours.close()
                raise
        ours.setblocking(False)
        zygote = cls(proc, ours)
        asyncio.ensure_future(proc.wait()).add_done_callback(lambda _: zygote.lost())
        return zygote

    async def fork(self, fd: int) -> int:
        """Have the template fork a worker serving the socket `fd`; its pid."""
        started: asyncio.Future[int] = self._loop.create_future()
        self._send(b"F", 0, fds=[fd])
        self._starting.append(started)
        return await started

    def kill(self, pid: int) -> None:
        """Kill the worker `pid` and its process group, unless it was already reaped."""
        if self.alive:
            self._send(b"K", pid)
        elif pid in self.exits:  # no template to ask: its death signal is on the way anyway
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    async def drain(self, timeout: float) -> None:
        """Kill every worker this template forked, those whose fork is still under way
        included, and wait (at most `timeout` seconds) until the template has reaped them."""
        deadline = self._loop.time() + timeout
        while self.alive and (self._starting or self.exits) and self._loop.time() < deadline:
            with contextlib.suppress(ToolError):  # the template is gone: nothing to wait for
                for pid in list(self.exits):
                    self._send(b"K", pid)  # the template ignores a pid it has already reaped
            await asyncio.sleep(0.01)

    async def close(self, timeout: float) -> None:
        """Let the template exit by itself (it removes the homes of the workers it reaped
        first), and kill it if it has not within `timeout` seconds."""
        self.lost()  # closes the control socket: the template reads its end
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            self.stop()
            await self.proc.wait()

    def stop(self) -> None:
        """Kill the template (its workers die with it) and stop reading its socket."""
        self.lost()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def lost(self) -> None:
        """The template is gone: no worker can start, no exit can be reported any more."""
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self.control.fileno())
        self.control.close()
        while self._starting:
            _fail_started(self._starting.popleft())
        for done in self.exits.values():
            if not done.done():
                done.set_result(None)

    def _send(self, kind: bytes, pid: int, fds: list[int] | None = None) -> None:
        try:
            socket.send_fds(self.control, [MESSAGE.pack(kind, pid, 0)], fds or [])
        except OSError as exc:
            self.lost()
            raise ToolError(
                f"the python worker template process is gone: {exc}", error_type="python"
            ) from exc

    def _readable(self) -> None:
        while self.alive:
            try:
                message = self.control.recv(MESSAGE.size)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self.lost()
                return
            kind, pid, code = MESSAGE.unpack(message)
            if kind == b"S":
                self.exits[pid] = self._loop.create_future()
                started = self._starting.popleft()
                if started.done():  # its caller was cancelled meanwhile: nobody will use it
                    self._send(b"K", pid)
                else:
                    started.set_result(pid)
            elif kind == b"X":
                done = self.exits.pop(pid, None)
                if done is not None and not done.done():
                    done.set_result(code)


def _fail_started(started: asyncio.Future[int]) -> None:
    if not started.done():
        started.set_exception(
            ToolError("the python worker template process died", error_type="python")
        )
