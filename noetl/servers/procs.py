"""Process, port and file helpers shared by the embedded servers (NATS, PostgreSQL).

Everything here blocks: call it from async code through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import psutil

from noetl.errors import LocalModeError

__all__ = [
    "HOST",
    "PORT_ATTEMPTS",
    "PortInUse",
    "absolute",
    "adopt_child",
    "cmdline_port",
    "create_time",
    "drop_child",
    "free_port",
    "fsync_dir",
    "identify",
    "is_zombie",
    "kill",
    "open_log",
    "port_free",
    "private_dirs",
    "read_tail",
    "send_signal",
    "tail_text",
    "wait_or_kill",
    "write_private",
]

#: The embedded servers listen on loopback only.
HOST = "127.0.0.1"
#: Starts tried on fresh free ports when another process grabs the chosen one first.
PORT_ATTEMPTS = 5

# Popen objects of servers started here: kept so they are never garbage-collected while
# running (no ResourceWarning) and so a server we started and that died gets reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


class PortInUse(LocalModeError):
    """The server could not bind its port (someone took it): retry on another one."""


def adopt_child(proc: subprocess.Popen[bytes]) -> None:
    """Keep `proc` (a server we started) referenced until it is stopped."""
    _children[proc.pid] = proc


def drop_child(pid: int) -> None:
    """Forget the server `pid` (it failed to start, or was stopped)."""
    _children.pop(pid, None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:`port` (as servers bind: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def identify(pid: int | None, name: str, created: float | None) -> psutil.Process | None:
    """The live process `pid`, if it is still the `name` process created at `created`."""
    if pid is None:
        return None
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)  # our own child died: poll() reaped it
        return None
    try:
        proc = psutil.Process(pid)
        if is_zombie(proc) or proc.name() != name:
            return None
        if created is not None and abs(proc.create_time() - created) > 0.5:
            return None  # the pid now belongs to another process
        return proc
    except psutil.Error:
        return None


def is_zombie(proc: psutil.Process) -> bool:
    """True if `proc` has exited (a zombie, or gone)."""
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def create_time(pid: int) -> float | None:
    """psutil's create time of `pid`, None if it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def cmdline_port(proc: psutil.Process, flags: Sequence[str]) -> int | None:
    """The value of the first of `flags` on `proc`'s command line, as a port number."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    for flag, value in itertools.pairwise(cmdline):
        if flag in flags and value.isdigit():
            return int(value)
    return None


def send_signal(proc: psutil.Process, sig: signal.Signals) -> None:
    """Send `sig` to `proc` unless it is already gone."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


def wait_or_kill(proc: psutil.Process, grace: float, escalation: Sequence[signal.Signals]) -> None:
    """Wait `grace` seconds for `proc` to exit, then send each escalation signal in turn."""
    child = _children.pop(proc.pid, None)
    for sig in (None, *escalation):
        if sig is not None:
            send_signal(proc, sig)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(grace)  # our own child: wait() also reaps it
                return
        elif _wait_gone(proc, grace):
            return
    raise LocalModeError(f"process {proc.pid} did not exit after SIGKILL")


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until `proc` (not our child) has exited; a zombie counts as exited."""
    # psutil's wait() would count a zombie as alive: an init that does not reap orphans
    # would then make every stop time out.
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL our child `proc` and reap it."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    _children.pop(proc.pid, None)


def open_log(log: Path | None) -> tuple[IO[bytes], int, Path | None]:
    """The file a server's output goes to, and the offset where this start's output begins."""
    if log is None:
        # Anonymous file: nothing on disk, but the tail is still there for error messages.
        return tempfile.TemporaryFile(), 0, None
    private_dirs(log.parent)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, 0o600)  # a log we made before logs were private
    handle = os.fdopen(fd, "ab")
    return handle, handle.tell(), log


def private_dirs(path: Path) -> None:
    """Create `path` and its missing parents as 0700 directories; existing ones are left."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # whatever the umask


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in an owner-only (0600) file, written then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode otherwise
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_tail(handle: IO[bytes], offset: int) -> str:
    """The last lines written to `handle` since `offset` (read through a new descriptor)."""
    try:
        with open(f"/proc/self/fd/{handle.fileno()}", "rb") as again:
            again.seek(offset)
            text = again.read().decode(errors="replace")
    except OSError:
        return ""
    return tail_text(text)


def tail_text(text: str, lines: int = 15) -> str:
    """The last `lines` lines of `text`."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def absolute(path: Path) -> Path:
    """`path` made absolute (no symlink resolution), `~` expanded."""
    # Absolute, so servers, the state file and pid checks never depend on the cwd.
    return Path(os.path.abspath(Path(path).expanduser()))


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that renames and creations in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
