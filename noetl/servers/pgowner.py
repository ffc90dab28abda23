"""Who runs the embedded PostgreSQL, and from where, so that it works in any folder.

PostgreSQL refuses to run as root, so when euid is 0 its programs run as the unprivileged
system user `noetl` (created if missing). That user must reach nothing of ours by path,
and nothing of ours has its permissions changed:

- The programs are run from a copy (hard links where possible) of `pgserver`'s install
  tree under `/var/lib/noetl-runtime/`, a root-owned 0755 directory the runtime creates:
  the checkout and its virtual environment may sit in a private (0700) folder.
- The data directory is owned by `noetl` (0700) and the programs start with it as their
  working directory, entered as root before the switch to `noetl`, and name it
  `/proc/self/cwd`: its parents (NOETL_HOME, a private folder) are never traversed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from noetl.errors import LocalModeError

__all__ = [
    "PG_OS_USER",
    "RUNTIME_DIR",
    "SELF_CWD",
    "as_owner",
    "bin_dir",
    "pg_owner",
    "postgres_bin_dir",
]

#: OS account PostgreSQL runs as when we are root (PostgreSQL refuses to run as root).
PG_OS_USER = "noetl"
#: Root-owned directory holding the copy of the PostgreSQL programs run by `PG_OS_USER`.
RUNTIME_DIR = Path("/var/lib/noetl-runtime")
#: How a PostgreSQL program names its data directory: its working directory.
SELF_CWD = "/proc/self/cwd"
# In each copy: the install tree it was made from.
_SOURCE = "source"


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


def bin_dir(owner: tuple[int, int] | None) -> Path:
    """The programs to run as `owner`: in place, or (as root) from the runtime's copy."""
    source = postgres_bin_dir()
    if owner is None or source.parent.name != "pginstall":
        return source  # our own user, or a system install (world-readable by design)
    return _linked_copy(source.parent) / "bin"


def pg_owner() -> tuple[int, int] | None:
    """(uid, gid) PostgreSQL must run as: None when not root, else the `noetl` system user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        _create_system_user(PG_OS_USER)
        entry = pwd.getpwnam(PG_OS_USER)
    return entry.pw_uid, entry.pw_gid


def as_owner(owner: tuple[int, int] | None, cwd: Path) -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL program as `owner`, in directory `cwd`.

    Python changes directory before it drops to `owner`, so `cwd` need not be reachable
    by `owner` through its path. PG* variables are dropped so a user's PGDATA/PGPORT cannot
    redirect the programs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    args: dict[str, Any] = {"cwd": str(cwd), "env": env}
    if owner is not None:
        args.update(user=owner[0], group=owner[1], extra_groups=[])
    return args


def not_executable(exc: OSError, program: Path, owner: tuple[int, int] | None) -> LocalModeError:
    """The error for a PostgreSQL program that `owner` cannot run."""
    who = f"user {PG_OS_USER!r}" if owner is not None else "this user"
    return LocalModeError(f"{program} cannot be run by {who}: {exc}")


@functools.cache
def _linked_copy(pginstall: Path) -> Path:
    """`pginstall` reproduced under RUNTIME_DIR, readable and runnable by every user.

    The wheel's programs find their libraries at `$ORIGIN/../../../pgserver.libs`, so the
    copy keeps the `pgserver/pginstall` + `pgserver.libs` layout. It is keyed by the source
    path and the postgres binary's identity, made in a temp dir and renamed into place, so
    concurrent starters and upgrades of pgserver never see half a copy. Making one removes
    the copies whose source is gone (a deleted checkout): their links would keep its files.
    """
    postgres = (pginstall / "bin" / "postgres").stat()
    key = hashlib.sha256(
        f"{pginstall.resolve()}|{postgres.st_size}|{postgres.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    target = RUNTIME_DIR / f"pg-{key}"
    if (target / "pgserver" / "pginstall" / "bin" / "postgres").is_file():
        return target / "pgserver" / "pginstall"
    _ensure_runtime_dir()
    _prune_orphans()
    staging = Path(tempfile.mkdtemp(prefix=".pg-", dir=RUNTIME_DIR))
    try:
        os.chmod(staging, 0o755)
        (staging / _SOURCE).write_text(str(pginstall.resolve()))
        shutil.copytree(
            pginstall, staging / "pgserver" / "pginstall", symlinks=True, copy_function=_link
        )
        libs = pginstall.parent.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "pgserver.libs", symlinks=True, copy_function=_link)
        for root, dirs, _files in os.walk(staging):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a concurrent starter's copy: a real failure
                raise
    except OSError as exc:
        raise LocalModeError(
            f"cannot copy the PostgreSQL programs of {pginstall} to {target}, where the "
            f"unprivileged user {PG_OS_USER!r} can run them: {exc}"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "pgserver" / "pginstall"


def _prune_orphans() -> None:
    """Remove the copies whose source install tree no longer exists."""
    for copy in RUNTIME_DIR.glob("pg-*"):
        with contextlib.suppress(OSError):
            if not Path((copy / _SOURCE).read_text()).is_dir():
                shutil.rmtree(copy)


def _ensure_runtime_dir() -> None:
    """Create RUNTIME_DIR (root, 0755); refuse one that others could write into."""
    with contextlib.suppress(FileExistsError):
        RUNTIME_DIR.mkdir(mode=0o755, parents=True)
        os.chmod(RUNTIME_DIR, 0o755)  # created by us: our mode, whatever the umask
    st = RUNTIME_DIR.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise LocalModeError(
            f"{RUNTIME_DIR} must be a directory owned by root and writable by root only"
        )


def _link(src: str, dst: str) -> None:
    """Hard-link `src` when everyone may already read (and run) it, else copy it so."""
    mode = os.stat(src).st_mode
    readable = mode & stat.S_IROTH and (not mode & stat.S_IXUSR or mode & stat.S_IXOTH)
    if readable:
        with contextlib.suppress(OSError):  # another filesystem, or links refused
            os.link(src, dst)
            return
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755 if mode & stat.S_IXUSR else 0o644)


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
