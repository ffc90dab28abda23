"""Local-mode policy: which embedded servers run, where under NOETL_HOME, reuse, and `down`.

`ensure_local(home)` starts the embedded NATS (JetStream) and PostgreSQL detached (their own
session, so they outlive the process that started them) or reuses the ones already running,
whichever process started them. A file lock on `home/local.lock` makes concurrent callers
start them only once, and `home/local.json` records their pids and ports:

    home/nats/                  JetStream store
    home/nats.conf              the NATS user and password the server requires
    home/pg/                    PostgreSQL 16 data directory (database `noetl`)
    home/logs/nats.log          home/logs/postgres.log
    home/local-credentials.json the generated NATS and PostgreSQL passwords
    home/local.json             pids, start times and ports of the running servers
    home/local.lock             the lock

Both servers listen on 127.0.0.1 only and require the credentials generated on the first
start; the URL and DSN `ensure_local` returns carry them. What the runtime creates here is
owner-only (directories 0700, files 0600); it changes the mode of nothing else.

The servers themselves (processes, ports, initdb) live in `noetl.servers`. The functions
here block (for about a second on a cold start): call them from async code through
`asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil

from noetl.config import Settings
from noetl.errors import LocalModeError
from noetl.servers import procs
from noetl.servers.nats import NatsProcess, nats_info, nats_processes, nats_url, start_nats
from noetl.servers.postgres import (
    PostgresProcess,
    ensure_database,
    init_postgres,
    live_postmaster,
    pg_dsn,
    pg_ready,
    pidfile_port,
    reset_password,
    start_postgres,
    wait_pg_ready,
)
from noetl.servers.procs import PortInUse, free_port

__all__ = [
    "CREDENTIALS_FILE",
    "Services",
    "ensure_local",
    "free_port",
    "resolve",
    "running_nats_url",
    "stop_local",
]

#: The generated credentials of the embedded servers, under NOETL_HOME (0600).
CREDENTIALS_FILE = "local-credentials.json"
_STATE_FILE = "local.json"
_LOCK_FILE = "local.lock"
_NATS_USER = "noetl"
_LOCK_TIMEOUT = 300.0  # a cold start takes ~1 s; crash recovery of a big WAL can take minutes
_PG_START_TIMEOUT = 300.0  # includes crash recovery after an unclean stop
_NATS_STOP_GRACE = 10.0
_PG_STOP_GRACE = 60.0


class Services(msgspec.Struct):
    """Where NATS and PostgreSQL are; `embedded` is True for the local-mode servers.

    The URL and DSN carry the credentials: print them only through the secrets masker.
    """

    nats_url: str
    pg_dsn: str
    embedded: bool


class _Credentials(msgspec.Struct):
    """Content of home/local-credentials.json: made once per home, reused by every start."""

    nats_user: str
    nats_password: str
    pg_password: str


class _Server(msgspec.Struct, omit_defaults=True):
    """One server's entry in local.json (its URL without credentials)."""

    pid: int | None = None
    port: int | None = None
    # psutil create_time of the pid: guards against the pid being reused by another process.
    created: float | None = None
    url: str | None = None


class _State(msgspec.Struct):
    """Content of home/local.json."""

    nats: _Server = msgspec.field(default_factory=_Server)
    postgres: _Server = msgspec.field(default_factory=_Server)


def resolve(settings: Settings, *, announce: Callable[[str], None] | None = None) -> Services:
    """The services to use: the configured ones, or the embedded ones in local mode."""
    if settings.local_mode:
        return ensure_local(settings.home, announce=announce)
    assert settings.nats_url is not None and settings.pg_dsn is not None  # local_mode is False
    return Services(nats_url=settings.nats_url, pg_dsn=settings.pg_dsn, embedded=False)


def ensure_local(home: Path, *, announce: Callable[[str], None] | None = None) -> Services:
    """Start, or reuse if already running, the embedded NATS and PostgreSQL under `home`.

    Reuse needs the state file, both pids alive (the same processes that were recorded) and
    both servers answering with the home's credentials. Whatever is down is (re)started on
    its existing data, on its previous port when that port is still free. When something is
    started, `announce` is called once with a one-line message saying what and where (no
    credentials in it).
    """
    home = procs.absolute(home)
    try:
        procs.private_dirs(home / "logs")
    except OSError as exc:
        raise LocalModeError(f"cannot create the local-mode home {home}: {exc}") from exc
    with _locked(home):
        state = _read_state(home)
        creds, new_credentials = _credentials(home)
        if new_credentials:
            # Servers still running were started without these credentials (an older
            # version, or a lost credentials file): restart them with the new ones.
            _stop(home, state)
            if (home / "pg" / "PG_VERSION").is_file():
                reset_password(home / "pg", creds.pg_password)
        nats_up = _nats_running(state.nats)
        pg_up = _pg_running(state.postgres, creds)
        if nats_up and pg_up:
            return _services(state, creds)
        started: list[str] = []
        # The state is written after each server so a failure of the second one still
        # leaves the first one on record.
        if not nats_up:
            state.nats, fresh = _start_local_nats(home, state.nats, creds)
            _write_state(home, state)
            if fresh:
                started.append(f"NATS ({state.nats.url})")
        if not pg_up:
            state.postgres, fresh = _start_local_postgres(home, state.postgres, creds)
            _write_state(home, state)
            if fresh:
                started.append(f"PostgreSQL ({state.postgres.url})")
    if started and announce is not None:
        announce(
            f"noetl: started embedded {' and '.join(started)} under {home}; "
            "`noetl-runtime down` stops them"
        )
    return _services(state, creds)


def running_nats_url(home: Path) -> str | None:
    """The URL (with credentials) of the embedded NATS of `home` when it runs, else None;
    starts nothing."""
    home = procs.absolute(home)
    state = _read_state(home)
    if not (home / CREDENTIALS_FILE).is_file() or not _nats_running(state.nats):
        return None
    creds, _ = _credentials(home)
    assert state.nats.port is not None
    return nats_url(state.nats.port, (creds.nats_user, creds.nats_password))


def stop_local(home: Path) -> list[str]:
    """Stop the embedded servers under `home`; return a description of each one stopped."""
    home = procs.absolute(home)
    if not home.is_dir():
        return []
    with _locked(home):
        return _stop(home, _read_state(home))


def _stop(home: Path, state: _State) -> list[str]:
    """Stop the servers of `home` (the lock held); the state keeps their ports."""
    stopped: list[str] = []
    # Signal both first, then wait: the two shutdowns overlap.
    nats_procs = nats_processes(home / "nats", _identify(state.nats, "nats-server"))
    pg_proc = live_postmaster(home / "pg") or _identify(state.postgres, "postgres")
    for proc in nats_procs:
        procs.send_signal(proc, signal.SIGTERM)
    if pg_proc is not None:
        procs.send_signal(pg_proc, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
    for proc in nats_procs:
        procs.wait_or_kill(proc, _NATS_STOP_GRACE, [signal.SIGKILL])
        stopped.append(_describe("NATS", state.nats.url, proc.pid))
    if pg_proc is not None:
        # Fast shutdown first; then immediate (SIGQUIT), which recovers on next start.
        procs.wait_or_kill(pg_proc, _PG_STOP_GRACE, [signal.SIGQUIT, signal.SIGKILL])
        stopped.append(_describe("PostgreSQL", state.postgres.url, pg_proc.pid))
    # Keep the ports: the next start reuses them when free, so DSNs stay valid.
    state.nats = _Server(port=state.nats.port, url=state.nats.url)
    state.postgres = _Server(port=state.postgres.port, url=state.postgres.url)
    if (home / _STATE_FILE).exists():
        _write_state(home, state)
    return stopped


def _describe(what: str, url: str | None, pid: int) -> str:
    return f"{what} {url} (pid {pid})" if url else f"{what} (pid {pid})"


def _credentials(home: Path) -> tuple[_Credentials, bool]:
    """The home's credentials, made (True) when missing or unreadable."""
    path = home / CREDENTIALS_FILE
    with contextlib.suppress(FileNotFoundError, msgspec.DecodeError):
        return msgspec.json.decode(path.read_bytes(), type=_Credentials), False
    # url-safe characters only: they go into URLs and config files unescaped.
    creds = _Credentials(
        nats_user=_NATS_USER,
        nats_password=secrets.token_urlsafe(32),
        pg_password=secrets.token_urlsafe(32),
    )
    procs.write_private(path, msgspec.json.format(msgspec.json.encode(creds), indent=2))
    return creds, True


def _services(state: _State, creds: _Credentials) -> Services:
    assert state.nats.port is not None and state.postgres.port is not None
    return Services(
        nats_url=nats_url(state.nats.port, (creds.nats_user, creds.nats_password)),
        pg_dsn=pg_dsn(state.postgres.port, creds.pg_password),
        embedded=True,
    )


def _identify(entry: _Server, name: str) -> psutil.Process | None:
    return procs.identify(entry.pid, name, entry.created)


def _start_local_nats(home: Path, previous: _Server, creds: _Credentials) -> tuple[_Server, bool]:
    """Start NATS for `home` (True), or adopt one that runs but local.json lost (False)."""
    store = home / "nats"
    log = home / "logs" / "nats.log"
    found = nats_processes(store, _identify(previous, "nats-server"))
    if len(found) == 1:
        port = procs.cmdline_port(found[0], ("--port", "-p"))
        if port is not None and _nats_secured(port):
            return _Server(found[0].pid, port, found[0].create_time(), nats_url(port)), False
    # Any other nats-server on our store is hung or a duplicate: it would fight over the store.
    for orphan in found:
        procs.send_signal(orphan, signal.SIGTERM)
    for orphan in found:
        procs.wait_or_kill(orphan, _NATS_STOP_GRACE, [signal.SIGKILL])
    auth = (creds.nats_user, creds.nats_password)
    proc: NatsProcess | None = None
    if previous.port is not None and procs.port_free(previous.port):
        with contextlib.suppress(PortInUse):
            proc = start_nats(store, port=previous.port, log=log, detach=True, auth=auth)
    if proc is None:
        proc = start_nats(store, log=log, detach=True, auth=auth)
    created = procs.create_time(proc.pid)
    return _Server(proc.pid, proc.port, created, nats_url(proc.port)), True


def _start_local_postgres(
    home: Path, previous: _Server, creds: _Credentials
) -> tuple[_Server, bool]:
    """Start PostgreSQL for `home` (True), or adopt the live postmaster of its data (False)."""
    data = home / "pg"
    log = home / "logs" / "postgres.log"
    password = creds.pg_password
    if not (data / "PG_VERSION").is_file():
        init_postgres(data, password=password)
    running = live_postmaster(data)
    if running is not None:
        # A server on our data dir that local.json does not describe (state file lost or
        # rewritten): adopt it rather than fail, once it accepts sessions.
        port = pidfile_port(data)
        if port is None:
            raise LocalModeError(f"PostgreSQL pid {running.pid} runs on {data} on an unknown port")
        deadline = time.monotonic() + _PG_START_TIMEOUT
        wait_pg_ready(data, port, running, password, log, None, deadline)
        ensure_database(port, password)
        return _Server(running.pid, port, running.create_time(), pg_dsn(port, None)), False
    proc: PostgresProcess | None = None
    if previous.port is not None and procs.port_free(previous.port):
        with contextlib.suppress(PortInUse):
            proc = start_postgres(data, password=password, port=previous.port, log=log, detach=True)
    if proc is None:
        proc = start_postgres(data, password=password, log=log, detach=True)
    ensure_database(proc.port, password)
    created = procs.create_time(proc.pid)
    return _Server(proc.pid, proc.port, created, pg_dsn(proc.port, None)), True


def _nats_secured(port: int) -> bool:
    """True if the NATS server on `port` answers and requires credentials (ours)."""
    info = nats_info(port)
    return info is not None and bool(info.get("auth_required"))


def _nats_running(entry: _Server) -> bool:
    proc = _identify(entry, "nats-server")
    return proc is not None and entry.port is not None and _nats_secured(entry.port)


def _pg_running(entry: _Server, creds: _Credentials) -> bool:
    proc = _identify(entry, "postgres")
    if proc is None or entry.port is None:
        return False
    return pg_ready(entry.port, creds.pg_password, "noetl")


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold an exclusive flock on home/local.lock (per open file, so threads are covered)."""
    fd = os.open(home / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "rb") as handle:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise LocalModeError(f"cannot lock {home / _LOCK_FILE}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise LocalModeError(
                        f"another process has held {home / _LOCK_FILE} for over "
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
    procs.write_private(
        home / _STATE_FILE, msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
    )
