"""The embedded PostgreSQL 16 of `pgserver`: initdb, start, probe.

Its programs run as the user `noetl.servers.pgowner` says (the `noetl` system user when we
are root), with the data directory as working directory, named `/proc/self/cwd`: so the
server works wherever NOETL_HOME lives. Sessions (the readiness probe, creating the
database) go through psycopg.

Every connection, on loopback TCP or the unix socket, authenticates with scram-sha-256 as
the superuser `noetl` and its generated password: no trust, no peer. The statements are
never logged (`log_statement`, `log_min_error_statement`): they may quote secrets.

Everything here blocks: call it from async code through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import psutil
import psycopg
from psycopg import sql

from noetl.errors import LocalModeError
from noetl.servers import procs
from noetl.servers.pgowner import SELF_CWD, as_owner, bin_dir, not_executable, pg_owner
from noetl.servers.procs import HOST, PortInUse

__all__ = [
    "EMBEDDED_PG_SETTINGS",
    "PG_DATABASE",
    "PG_SUPERUSER",
    "PostgresProcess",
    "ensure_database",
    "init_postgres",
    "live_postmaster",
    "pg_dsn",
    "pg_ready",
    "pidfile_port",
    "reset_password",
    "start_postgres",
    "wait_pg_ready",
]

#: Database superuser created by initdb, and the database noetl-runtime uses.
PG_SUPERUSER = "noetl"
PG_DATABASE = "noetl"
#: Settings of the embedded server. fsync stays on: durability is the product.
EMBEDDED_PG_SETTINGS: Mapping[str, str] = {
    "max_connections": "200",
    "shared_buffers": "128MB",
    "fsync": "on",
}

_START_TIMEOUT = 300.0  # includes crash recovery after an unclean stop
# Set at every start, so that data directories made before they existed get them too.
_ALWAYS: Mapping[str, str] = {
    "listen_addresses": HOST,
    "password_encryption": "scram-sha-256",
    "log_statement": "none",
    "log_min_error_statement": "panic",
    "log_min_duration_statement": "-1",
}
# Every connection must prove the password: on the socket and on loopback TCP.
_HBA = (
    "# noetl-runtime embedded server: scram-sha-256 on the unix socket and loopback only\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "local replication all scram-sha-256\n"
    "host replication all 127.0.0.1/32 scram-sha-256\n"
)


class PostgresProcess(subprocess.Popen[bytes]):
    """A postmaster started by `start_postgres`; `port` says where it listens."""

    port: int
    data_dir: Path
    log_path: Path | None
    password: str

    def dsn(self, database: str = PG_DATABASE) -> str:
        """A DSN (asyncpg/libpq URI, with the password) for `database` on this server."""
        return pg_dsn(self.port, self.password, database)


class _ShmemBusy(LocalModeError):
    """Processes of a killed server still hold its shared memory."""


def pg_dsn(port: int, password: str | None, database: str = PG_DATABASE) -> str:
    """DSN of `database` on an embedded (loopback) server on `port`; None: no password in it."""
    userinfo = f"{PG_SUPERUSER}:{password}" if password is not None else PG_SUPERUSER
    return f"postgresql://{userinfo}@{HOST}:{port}/{database}"


def init_postgres(
    data_dir: Path,
    *,
    password: str,
    settings: Mapping[str, str] = EMBEDDED_PG_SETTINGS,
    sync: bool = True,
) -> None:
    """Create a PostgreSQL data directory at `data_dir` (which must not exist or be empty).

    Superuser `noetl` with `password`, UTF-8 with the C locale, scram-sha-256 for loopback
    and the unix socket only, `settings` appended to postgresql.conf. initdb runs in a sibling temp
    directory that is renamed into place at the end, so a crash never leaves a half-made
    cluster at `data_dir`. `sync=False` skips initdb's fsync (for throwaway test servers).
    """
    data_dir = procs.absolute(data_dir)
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise LocalModeError(
                f"cannot create a PostgreSQL data directory at {data_dir}: it exists and is "
                "not empty (move it away, or start the server it holds)"
            )
        data_dir.rmdir()
    owner = pg_owner()
    staging = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted initdb
    staging.mkdir(mode=0o700, parents=True)
    if owner is not None:
        os.chown(staging, *owner)
    initdb = bin_dir(owner) / "initdb"
    cmd = [
        str(initdb),
        "-D", SELF_CWD,
        "-U", PG_SUPERUSER,
        "--locale=C",
        "--encoding=UTF8",
        "--auth=scram-sha-256",
        "--pwfile=/dev/stdin",
    ]  # fmt: skip
    if not sync:
        cmd.append("--no-sync")
    try:
        with _password_file(password, owner) as pwfile:
            result = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=pwfile,
                timeout=600,
                check=False,
                **as_owner(owner, staging),
            )
    except PermissionError as exc:
        raise not_executable(exc, initdb, owner) from exc
    except subprocess.TimeoutExpired as exc:
        raise LocalModeError(f"initdb for {data_dir} took more than 600 s") from exc
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace").strip()
        raise LocalModeError(
            f"initdb failed for {data_dir} (exit code {result.returncode}):\n"
            f"{procs.tail_text(output)}"
        )
    lines = ["", "# noetl-runtime"]
    lines += [
        f"{name} = '{value.replace(chr(39), chr(39) * 2)}'"
        for name, value in {**_ALWAYS, **settings}.items()
    ]
    _write_file(staging / "pg_hba.conf", _HBA, "w", sync)
    _write_file(staging / "postgresql.conf", "\n".join(lines) + "\n", "a", sync)
    os.replace(staging, data_dir)
    procs.fsync_dir(data_dir.parent)  # the rename itself is durable too


def reset_password(data_dir: Path, password: str) -> None:
    """Give the superuser `password` and require it everywhere, on a stopped server.

    For a data directory whose password is lost, or made when the embedded server trusted
    local users: single-user mode needs no login, and rewrites the role's password.
    """
    data_dir = procs.absolute(data_dir)
    owner = pg_owner()
    _prepare_data_dir(data_dir, owner)
    _remove_stale_pidfile(data_dir)
    _write_file(data_dir / "pg_hba.conf", _HBA, "w", True)
    postgres = bin_dir(owner) / "postgres"
    statement = f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{password}'\n"  # url-safe: no quotes
    try:
        result = subprocess.run(
            [str(postgres), "--single", "-D", SELF_CWD, "postgres"],
            input=statement.encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=_START_TIMEOUT,
            check=False,
            **as_owner(owner, data_dir),
        )
    except PermissionError as exc:
        raise not_executable(exc, postgres, owner) from exc
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0 or "ERROR:" in output:
        raise LocalModeError(
            f"cannot set the password of {PG_SUPERUSER} on {data_dir} (exit code "
            f"{result.returncode}):\n{procs.tail_text(output.replace(password, '***'))}"
        )


def start_postgres(
    data_dir: Path,
    *,
    password: str,
    port: int | None = None,
    log: Path | None = None,
    settings: Mapping[str, str] | None = None,
    detach: bool = False,
) -> PostgresProcess:
    """Start the postmaster of an initialised `data_dir`, return once it accepts sessions.

    Listens on 127.0.0.1 only (`port=None` picks a free port, retrying if it gets taken)
    with its unix socket in the data directory; `password` is the superuser's (for the
    readiness probe and the DSN); `settings` are extra `-c` options. A
    postmaster.pid left by a dead server is removed; a live server on the same data
    directory is an error. Raises LocalModeError with the log tail if it fails.
    """
    data_dir = procs.absolute(data_dir)
    if not (data_dir / "PG_VERSION").is_file():
        raise LocalModeError(f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION)")
    owner = pg_owner()
    _prepare_data_dir(data_dir, owner)
    running = live_postmaster(data_dir)
    if running is not None:
        raise LocalModeError(
            f"a PostgreSQL server (pid {running.pid}) is already running on {data_dir}"
        )
    _remove_stale_pidfile(data_dir)
    deadline = time.monotonic() + _START_TIMEOUT
    attempt = 0
    while True:
        attempt += 1
        try:
            return _spawn(
                data_dir,
                port or procs.free_port(),
                password,
                log,
                settings or {},
                detach,
                owner,
                deadline,
            )
        except PortInUse:
            if port is not None or attempt >= procs.PORT_ATTEMPTS:
                raise
        except _ShmemBusy:
            # Backends of a killed postmaster still hold its shared memory; they notice
            # the postmaster's death and exit within moments.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def pg_ready(port: int, password: str, database: str = "postgres", timeout: float = 2.0) -> bool:
    """True if the server on `port` opens a session on `database` with `password`."""
    try:
        with _connect(port, password, database, timeout):
            return True
    except psycopg.Error:
        return False


def ensure_database(port: int, password: str, database: str = PG_DATABASE) -> None:
    """Create `database` on the server on `port` unless it exists."""
    try:
        with _connect(port, password, "postgres", 120.0) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.errors.DuplicateDatabase:
        pass  # created by a concurrent caller
    except psycopg.OperationalError as exc:
        raise LocalModeError(f"PostgreSQL on port {port} stopped answering: {exc}") from exc
    except psycopg.Error as exc:
        raise LocalModeError(f"cannot create database {database}: {exc}") from exc


def _connect(port: int, password: str, database: str, timeout: float) -> psycopg.Connection[Any]:
    # Every parameter given: a user's PG* variables or service file cannot redirect us.
    return psycopg.connect(
        host=HOST,
        port=port,
        user=PG_SUPERUSER,
        password=password,
        dbname=database,
        application_name="noetl-local",
        sslmode="disable",
        connect_timeout=max(1, round(timeout)),
        autocommit=True,
    )


def live_postmaster(data_dir: Path) -> psutil.Process | None:
    """The live postmaster that holds `data_dir`/postmaster.pid, if any."""
    pid = _pidfile_field(data_dir, 0)
    if pid is None or not pid.isdigit():
        return None
    try:
        proc = psutil.Process(int(pid))
        if procs.is_zombie(proc) or proc.name() != "postgres":
            return None  # dead, or the pid was reused by an unrelated process
        return proc
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        # Alive but unreadable: cannot tell, so assume it is a postmaster.
        return psutil.Process(int(pid))


def pidfile_port(data_dir: Path) -> int | None:
    """The port recorded in `data_dir`/postmaster.pid (its line 4)."""
    value = _pidfile_field(data_dir, 3)
    return int(value) if value and value.isdigit() else None


def wait_pg_ready(
    data_dir: Path,
    port: int,
    proc: subprocess.Popen[bytes] | psutil.Process,
    password: str,
    log_file: Path | None,
    sink: tuple[IO[bytes], int] | None,
    deadline: float,
) -> None:
    """Poll until the server on `port` opens a session; raise with the log tail if it dies."""

    def tail() -> str:
        if sink is not None:
            return procs.read_tail(sink[0], sink[1])
        return procs.tail_text(log_file.read_text(errors="replace")) if log_file else ""

    delay = 0.002
    while True:
        exited = (
            proc.poll() is not None
            if isinstance(proc, subprocess.Popen)
            else (not proc.is_running() or procs.is_zombie(proc))
        )
        if exited:
            text = tail()
            code = proc.returncode if isinstance(proc, subprocess.Popen) else None
            what = f"PostgreSQL exited with code {code} while starting"
            lowered = text.lower()
            if "address already in use" in lowered:
                raise PortInUse(f"{what}: port {port} is taken\n{text}")
            if "pre-existing shared memory block" in lowered:
                raise _ShmemBusy(f"{what}: {text}")
            raise LocalModeError(f"{what}; log:\n{text}")
        # postmaster.pid says "ready" once sessions are accepted: probing only then keeps
        # "the database system is starting up" out of the log.
        if _pidfile_field(data_dir, 7) in (None, "ready") and pg_ready(port, password):
            return
        if time.monotonic() > deadline:
            raise LocalModeError(
                f"PostgreSQL did not accept sessions on port {port} in time; log:\n{tail()}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def _spawn(
    data_dir: Path,
    port: int,
    password: str,
    log: Path | None,
    settings: Mapping[str, str],
    detach: bool,
    owner: tuple[int, int] | None,
    deadline: float,
) -> PostgresProcess:
    # The unix socket sits in the owner-only data directory, whose path may be too long for
    # a socket address (108 bytes): the server names it through its working directory.
    options = {**_ALWAYS, "unix_socket_directories": SELF_CWD, **settings}
    postgres = bin_dir(owner) / "postgres"
    cmd = [str(postgres), "-D", SELF_CWD, "-p", str(port)]
    for name, value in options.items():
        cmd += ["-c", f"{name}={value}"]
    sink, offset, log_path = procs.open_log(log)
    try:
        proc = PostgresProcess(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=detach,
            **as_owner(owner, data_dir),
        )
    except PermissionError as exc:
        sink.close()
        raise not_executable(exc, postgres, owner) from exc
    except OSError as exc:
        sink.close()
        raise LocalModeError(f"cannot run {cmd[0]}: {exc}") from exc
    proc.port = port
    proc.data_dir = data_dir
    proc.log_path = log_path
    proc.password = password
    procs.adopt_child(proc)
    try:
        wait_pg_ready(data_dir, port, proc, password, None, (sink, offset), deadline)
        return proc
    except BaseException:
        if proc.poll() is None:
            procs.kill(proc)
        procs.drop_child(proc.pid)
        raise
    finally:
        sink.close()


def _write_file(path: Path, text: str, mode: str, sync: bool) -> None:
    """Write (or append) `text`, fsynced when `sync`; the file keeps its owner."""
    with path.open(mode) as handle:
        handle.write(text)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def _password_file(password: str, owner: tuple[int, int] | None) -> IO[bytes]:
    """An unlinked file holding `password`, readable by `owner` only, for initdb's stdin.

    initdb reopens its --pwfile by name (/dev/stdin): a pipe made by root would refuse the
    unprivileged user, a file of its own does not.
    """
    handle = tempfile.TemporaryFile()  # noqa: SIM115  (the caller closes it)
    handle.write(password.encode() + b"\n")
    handle.flush()
    handle.seek(0)
    if owner is not None:
        os.fchown(handle.fileno(), *owner)
    return handle


def _remove_stale_pidfile(data_dir: Path) -> None:
    """Delete postmaster.pid when the server that wrote it is dead (killed, host crashed)."""
    pidfile = data_dir / "postmaster.pid"
    if pidfile.exists() and live_postmaster(data_dir) is None:
        pidfile.unlink(missing_ok=True)


def _pidfile_field(data_dir: Path, index: int) -> str | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    return lines[index].strip() if len(lines) > index else None


def _prepare_data_dir(data_dir: Path, owner: tuple[int, int] | None) -> None:
    """Make `data_dir` the server user's: made by another user (before running as root)."""
    if owner is None or data_dir.stat().st_uid == owner[0]:
        return
    for root, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), *owner)
    os.chown(data_dir, *owner)
