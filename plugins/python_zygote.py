"""The template process of the python tool: forks a clean worker for each request.

`plugins.python_pool` starts one zygote per pool as a fresh interpreter with a scrubbed
environment; the zygote imports the worker module and then only forks. It never runs step
code, so every worker it forks starts from the same clean state, whatever earlier workers'
code did to theirs. Only the standard library, `plugins.python_stdlib` and
`plugins.python_worker` are imported here.

The control socket (AF_UNIX, SOCK_SEQPACKET: one message per send) carries, pool to zygote:
`F` with one file descriptor attached (fork a worker serving that socket) and `K pid` (kill
that worker's process group); zygote to pool: `S pid` (started, in request order) and
`X pid code` (exited: the exit code, or minus the signal number), sent when it reaps it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pwd
import resource
import select
import shutil
import signal
import socket
import struct
import sys
from typing import NoReturn

import msgspec

from plugins import python_stdlib
from plugins.python_worker import prctl, serve

MESSAGE = struct.Struct("<cii")  # kind, pid, exit code
_FD_SIZE = struct.calcsize("i")
_FD_SPACE = socket.CMSG_SPACE(_FD_SIZE)
_PR_SET_DUMPABLE = 4


class Options(msgspec.Struct, frozen=True):
    """How the pool wants its template to work (JSON on the template's command line).

    `user` (when the template runs as root): the account workers switch to before any step
    code runs; unless that account can import the standard library from disk safely
    (`plugins.python_stdlib`; `stdlib`: its folders, [] for the interpreter's own), the
    template imports the whole library first. `memory_bytes` (when positive): each worker's
    data size limit, so code that allocates without end gets MemoryError instead of the whole
    machine. `preload`: comma-separated modules imported once here, so every worker starts
    with them. `temp`: the temporary folder the workers' homes are made in.
    """

    user: str
    memory_bytes: int
    preload: str
    temp: str
    stdlib: list[str] = []


def zygote(control_fd: int, parent: int, options: str) -> None:
    """Fork workers on request until the pool closes the control socket, then exit.
    `options`: an `Options` as JSON."""
    # Not killed with its parent, unlike a worker: the control socket's end tells it the
    # pool is gone (closed, or its process killed), and it then ends the workers and removes
    # their homes, which a kill would leave behind.
    if os.getppid() != parent:
        os._exit(0)
    opts = msgspec.json.decode(options, type=Options)
    switching = bool(opts.user) and os.geteuid() == 0
    account = pwd.getpwnam(opts.user) if switching else None
    roots = opts.stdlib or python_stdlib.folders()
    if account is not None and not python_stdlib.importable_by(account, roots, sys.path):
        python_stdlib.import_all()
    else:
        python_stdlib.import_common()
    for name in filter(None, (part.strip() for part in opts.preload.split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # the steps that need it will fail with the reason
            sys.stderr.write(f"python workers: cannot preload {name!r}: {exc!r}\n")
    _freeze()
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd is written
    homes: dict[int, str] = {}
    # Homes of reaped workers, removed while no request waits: a removal takes a fraction of
    # a millisecond to milliseconds of wall time on a disk file system, off the forks' path.
    spent: list[str] = []
    me = os.getpid()
    requests = control.fileno()
    events = select.poll()
    events.register(requests, select.POLLIN)
    events.register(wake_r, select.POLLIN)
    while True:
        ready = [fd for fd, _ in events.poll(0 if spent else None)]
        if wake_r in ready:
            os.read(wake_r, 512)
            _reap(control, homes, spent)
        if requests not in ready:
            if spent and not ready:
                _remove(spent.pop())
            continue
        try:
            message, ancillary, _, _ = control.recvmsg(MESSAGE.size, _FD_SPACE)
        except ConnectionResetError:  # killed with our messages unread: gone all the same
            message = b""
        if not message:  # the pool is gone (closed, or its process killed)
            _end(homes, spent)
        kind, pid, _ = MESSAGE.unpack(message)
        if kind == b"K":
            if pid in homes:  # not reaped yet: the pid and its group are still the worker's
                try:  # noqa: SIM105 - see _reap
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            continue
        fd = int.from_bytes(ancillary[0][2][:_FD_SIZE], sys.byteorder)
        home = _new_home(opts.temp)
        if account is not None:
            os.chown(home, account.pw_uid, account.pw_gid)
        child = os.fork()
        if child == 0:
            _become_worker(control, wake_r, wake_w, fd, home, account, opts.memory_bytes, me)
        os.close(fd)
        homes[child] = home
        try:
            control.send(MESSAGE.pack(b"S", child, 0))
        except OSError:  # the pool is gone: no one will use the worker
            _end(homes, spent)


def _end(homes: dict[int, str], spent: list[str]) -> NoReturn:
    """End the workers, kept idle ones too, and remove every home (a worker's own exit
    leaves its home), then exit."""
    for pid in homes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for home in [*spent, *homes.values()]:
        _remove(home)
    os._exit(0)


def _freeze() -> None:
    """Move the template's objects out of the garbage collector's reach: a worker's
    collections then leave the template's pages shared instead of copying them."""
    gc.collect()
    gc.freeze()


def _become_worker(
    control: socket.socket,
    wake_r: int,
    wake_w: int,
    fd: int,
    home: str,
    account: pwd.struct_passwd | None,
    memory_bytes: int,
    zygote_pid: int,
) -> None:
    """In the forked child: drop what the zygote holds, isolate, then serve; never returns."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        os.close(wake_r)
        os.close(wake_w)
        # Its own session: killing the group also ends processes the step code started.
        os.setsid()
        if memory_bytes > 0:
            resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
        os.environ["HOME"] = home
        os.environ["TMPDIR"] = home
        # The template imports `tempfile` only when asked to (it seeds `random` in every
        # fork); if it did, forget the folder it may have chosen.
        if "tempfile" in sys.modules:
            import tempfile

            tempfile.tempdir = None
        if account is not None:
            # Root's files (the key, NOETL_HOME, other users' data) are out of reach from here.
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os.environ["USER"] = os.environ["LOGNAME"] = account.pw_name
            os.chdir(home)
        # Workers of other executions run as the same account: non-dumpable, this one's
        # memory, environment and open files (/proc/<pid>/mem, environ, fd) are out of their
        # reach, which they would not be otherwise (the kernel may have no Yama).
        prctl(_PR_SET_DUMPABLE, 0)
        serve(fd, zygote_pid)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"python worker failed to start: {exc!r}\n")
        os._exit(70)
    os._exit(0)


def _new_home(temp: str) -> str:
    """A new private directory (0700) in `temp`, as `tempfile.mkdtemp` makes one, with fewer
    of the template's pages written (each a page copy while workers share them)."""
    while True:
        home = f"{temp}/noetl-python-{os.urandom(8).hex()}"
        try:
            os.mkdir(home, 0o700)
        except FileExistsError:
            continue
        return home


def _remove(home: str) -> None:
    try:
        os.rmdir(home)  # most code leaves its home empty: one call, no directory scan
    except OSError:
        shutil.rmtree(home, ignore_errors=True)


def _reap(control: socket.socket, homes: dict[int, str], spent: list[str]) -> None:
    """Report every exited worker; its home joins `spent`, to be removed."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        home = homes.pop(pid, None)
        if home is not None:
            spent.append(home)
        # Not `contextlib.suppress`: every object the template touches after a fork is a page
        # fault, and a page copy while the worker lives.
        try:  # noqa: SIM105
            control.send(MESSAGE.pack(b"X", pid, os.waitstatus_to_exitcode(status)))
        except OSError:
            pass
