"""Background processes of the CLI (`server start`, `worker start`): a pid file and a log
under NOETL_HOME per daemon, start, stop and status.

A pid file records the process's pid and its creation time, so a pid reused by another
program after a crash is never mistaken for the daemon (the file is then stale and
replaced).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec
import psutil

from noetl.errors import NoetlError

__all__ = ["Daemon", "DaemonInfo", "mesh_command"]


class DaemonInfo(msgspec.Struct, kw_only=True):
    """What a pid file holds."""

    pid: int
    created: float  # the process's creation time (psutil), to tell a reused pid apart
    started_at: float
    port: int | None = None
    pool: str | None = None


def mesh_command(*args: str) -> list[str]:
    """The command line of a `noetl-runtime` subcommand run by this same interpreter."""
    return [sys.executable, "-c", "from noetl.cli import main; main()", *args]


class Daemon:
    """One named background process of NOETL_HOME: `home/<name>.pid`, `home/<name>.log`."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.name = name
        self.pid_file = home / f"{name}.pid"
        self.log_file = home / f"{name}.log"

    def running(self) -> DaemonInfo | None:
        """The running daemon, or None; a stale pid file (the process is gone, or the pid
        now belongs to another process) is removed."""
        try:
            info = msgspec.json.decode(self.pid_file.read_bytes(), type=DaemonInfo)
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError, OSError):
            self.pid_file.unlink(missing_ok=True)
            return None
        if self._alive(info):
            return info
        self.pid_file.unlink(missing_ok=True)
        return None

    @staticmethod
    def _alive(info: DaemonInfo) -> bool:
        try:
            proc = psutil.Process(info.pid)
            same = abs(float(proc.create_time()) - info.created) < 1.0
            return same and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        port: int | None = None,
        pool: str | None = None,
    ) -> DaemonInfo:
        """Start `argv` detached (its own session, output appended to the log) and write the
        pid file."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no signal of this terminal reaches it
                close_fds=True,
            )
        info = DaemonInfo(
            pid=proc.pid,
            created=psutil.Process(proc.pid).create_time(),
            started_at=time.time(),
            port=port,
            pool=pool,
        )
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_bytes(msgspec.json.encode(info))
        os.chmod(tmp, 0o600)
        tmp.replace(self.pid_file)
        return info

    def exited(self, info: DaemonInfo) -> int | None:
        """The exit code when the process has ended (reaping it if it is our child)."""
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(info.pid, os.WNOHANG)
            if pid == info.pid:
                return os.waitstatus_to_exitcode(status)
        return None if self._alive(info) else -1

    def stop(self, *, grace: float, force: bool) -> bool:
        """SIGTERM (the daemon drains), wait up to `grace` seconds, then SIGKILL its process
        group when `force`. True when the process is gone (and its pid file removed)."""
        info = self.running()
        if info is None:
            return True
        self._signal(info, signal.SIGTERM)
        if not self._wait_gone(info, grace) and force:
            # The whole process group: what the daemon started goes with it.
            self._signal(info, signal.SIGKILL, group=True)
            self._wait_gone(info, 10.0)
        gone = not self._alive(info)
        if gone:
            self.pid_file.unlink(missing_ok=True)
        return gone

    def _signal(self, info: DaemonInfo, sig: signal.Signals, *, group: bool = False) -> None:
        try:
            if group and os.getpgid(info.pid) == info.pid:  # spawned as a session leader
                os.killpg(info.pid, sig)
            else:
                os.kill(info.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise NoetlError(f"cannot signal {self.name} (pid {info.pid}): {exc}") from exc

    def _wait_gone(self, info: DaemonInfo, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.exited(info) is not None:
                return True
            time.sleep(0.1)
        return self.exited(info) is not None

    def log_size(self) -> int:
        """The log's size now (0 when there is none)."""
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the log got after `offset`."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The end of the log, to show why a daemon did not come up."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
