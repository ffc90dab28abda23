"""Whether python workers may import the standard library from disk after switching users.

Under a root runtime every worker switches to an unprivileged account before any step code
runs. If that account can read the standard library where it lies (a system or tool-cache
interpreter), workers import from disk as any program does, and the template stays small: a
fork then costs less (its page tables, and the pages a worker's refcounts copy). If it cannot
(an interpreter under root's 0700 home), the template imports the whole library first.

Importing from disk must not let one execution change what another imports: the account must
be unable to write to the library, its `__pycache__` folders, the folders above it, and the
`sys.path` entries searched before it. Otherwise the template imports the whole library too,
so that workers take every standard module from memory. The check runs once per template, in
a forked child switched to the account: the kernel answers (modes, ACLs, mounts), not a model
of it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import pwd
import stat
import sys
import sysconfig
from collections.abc import Sequence

# Third-party packages installed inside the library's folder (a system interpreter's): not
# the standard library, and imported from disk whatever this module decides.
_THIRD_PARTY = frozenset({"site-packages", "dist-packages"})

# Imported by the template in any case: modules step code often imports, each of which costs
# a worker 2 to 8 ms of CPU to import from disk and the fork cycle nothing measurable once in
# the template. None of them imports `threading`, `random` or `logging`, whose handlers run
# in every fork (`os.register_at_fork`; `threading`'s costs some 0.4 ms per worker).
COMMON = (
    "base64", "collections", "copy", "csv", "dataclasses", "datetime", "decimal", "functools",
    "hashlib", "itertools", "json", "math", "pathlib", "re", "string", "time", "typing",
    "urllib.parse", "uuid",
)  # fmt: skip

# Not imported ahead of a user switch: GUI, test-suite, installer and platform-specific
# modules, and those with effects on import.
_NOT_PRELOADED = frozenset(
    {
        "__main__", "__phello__", "_aix_support", "_crypt", "_ctypes_test", "_curses",
        "_msi", "_osx_support", "_overlapped", "_pydecimal", "_pyio", "_scproxy", "_testbuffer",
        "_testcapi", "_testclinic", "_testimportmultiple", "_testinternalcapi",
        "_testmultiphase", "_tkinter", "_winapi", "_xxsubinterpreters", "_xxtestfuzz",
        "antigravity", "crypt", "curses", "distutils", "ensurepip", "idle_test", "idlelib",
        "lib2to3", "msilib", "msvcrt", "nis", "nt", "ossaudiodev", "pydoc_data", "readline",
        "spwd", "test", "tests", "this", "tkinter", "turtle", "turtledemo", "venv", "winreg",
        "winsound", "xxlimited", "xxlimited_35", "xxsubtype",
    }
)  # fmt: skip


def folders() -> list[str]:
    """The folders this interpreter imports the standard library from (pure modules,
    platform modules, extension modules), without those nested in another."""
    base = {
        "base": sys.base_prefix,
        "installed_base": sys.base_prefix,
        "platbase": sys.base_exec_prefix,
        "installed_platbase": sys.base_exec_prefix,
    }
    paths = sysconfig.get_paths(vars=base)
    found = {paths["stdlib"], paths["platstdlib"], sysconfig.get_config_var("DESTSHARED")}
    real = sorted({os.path.realpath(p) for p in found if isinstance(p, str) and os.path.isdir(p)})
    return [p for p in real if not any(p.startswith(q + os.sep) for q in real)]


def importable_by(account: pwd.struct_passwd, roots: Sequence[str], path: Sequence[str]) -> bool:
    """Whether `account` can import every module under `roots` from disk and cannot change any
    of them, nor plant a module in an entry of `path` (the import path) searched before them.

    Runs the check in a child process switched to `account`; the caller must be root."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            code = 0 if _safe(roots, path) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _safe(roots: Sequence[str], path: Sequence[str]) -> bool:
    """As the account: every folder under `roots` readable and searchable, every file
    readable, none of them writable; nothing above them or before them replaceable."""
    real = [os.path.realpath(root) for root in roots]
    if not real:
        return False
    # Both as named and as resolved: a symbolic link on the way can be replaced too.
    searched = [*roots, *real]
    for entry in path:
        resolved = os.path.realpath(entry)
        if any(resolved == r or resolved.startswith(r + os.sep) for r in real):
            break
        if os.path.isabs(entry):  # a relative one is the worker's own home at import time
            searched += [entry, resolved]
    if any(_replaceable(p) for p in searched if os.path.isabs(p)):
        return False
    failed: list[OSError] = []
    for root in real:
        for folder, subfolders, files in os.walk(root, onerror=failed.append):
            subfolders[:] = [s for s in subfolders if s not in _THIRD_PARTY]
            if not os.access(folder, os.R_OK | os.X_OK) or os.access(folder, os.W_OK):
                return False
            for name in files:
                file = os.path.join(folder, name)
                if not os.access(file, os.R_OK) or os.access(file, os.W_OK):
                    return False
    return not failed


def _replaceable(path: str) -> bool:
    """Whether this process could create or write `path` (a folder or file), or replace it or
    a folder above it by renaming: a writable folder above it counts unless its sticky bit
    keeps others' entries (then neither that folder nor the entry may be ours)."""
    uid = os.getuid()
    below = path
    while not os.path.lexists(below):  # an entry yet to exist (`python311.zip`)
        below = os.path.dirname(below)
    if os.access(below, os.W_OK):
        return True
    while below != os.sep:
        above = os.path.dirname(below)
        if os.access(above, os.W_OK):
            folder, entry = os.stat(above), os.lstat(below)
            sticky = folder.st_mode & stat.S_ISVTX
            if not sticky or uid in (folder.st_uid, entry.st_uid):
                return True
        below = above
    return False


def import_common() -> None:
    """Import `COMMON` (those this platform lacks are left out)."""
    for name in COMMON:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def import_all() -> None:
    """Import every standard module and submodule that imports here: after the switch to an
    account that cannot import them from disk, `import json` must not need to."""
    for name in sorted(sys.stdlib_module_names - _NOT_PRELOADED):
        try:
            module = importlib.import_module(name)
        except Exception:  # not built on this platform
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{name}."):
            if _NOT_PRELOADED.isdisjoint(info.name.split(".")):
                with contextlib.suppress(Exception):
                    importlib.import_module(info.name)
