"""Under a root runtime, python workers run as `nobody` and still import the standard library,
whether `nobody` can read the interpreter's files (imported from disk) or not (the template
imports the whole library first). Real processes and real file modes throughout: the only
simulation is pointing the check at a folder `nobody` cannot read instead of the library."""

from __future__ import annotations

import asyncio
import importlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from plugins import python_stdlib
from plugins.python_pool import WorkerPool
from plugins.python_worker import Reply, Request

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only a root runtime switches users")

# The marker is a submodule nothing imports unless the whole library was imported.
IMPORTS = (
    "import sys\npreloaded = 'xml.dom.minidom' in sys.modules\n"
    "import csv, decimal, io, json, os, sqlite3, zoneinfo, email.message\n"
    "out = io.StringIO()\ncsv.writer(out).writerow(['a', 1])\n"
    "result = [os.geteuid(), preloaded, json.dumps({'d': str(decimal.Decimal('1.10') + 1)}),"
    " out.getvalue(), sqlite3.connect(':memory:').execute('select 2').fetchone()[0]]"
)


def test_folders_hold_the_standard_library() -> None:
    folders = python_stdlib.folders()
    assert any(Path(folder, "os.py").is_file() for folder in folders)
    for name in ("json", "_json", "_decimal"):
        file = getattr(importlib.import_module(name), "__file__", None)
        if file is not None:  # None: built into the interpreter
            real = os.path.realpath(file)
            assert any(real.startswith(folder + os.sep) for folder in folders), real


async def _call(pool: WorkerPool, code: str) -> Reply:
    """One call of `code` in a new worker of `pool`, then the pool closed."""
    payload = msgspec.msgpack.encode(Request(code=code, args={}, libs={}))
    try:
        answer = await pool.call(
            payload, owner=1, timeout=30.0, cancelled=asyncio.Event(), heartbeat=_nothing
        )
    finally:
        await pool.aclose()
    return msgspec.json.decode(answer, type=Reply)


async def _imports(pool: WorkerPool) -> list[object]:
    reply = await _call(pool, IMPORTS)
    assert reply.ok, reply.traceback
    assert isinstance(reply.result, list)
    return reply.result


async def _nothing() -> None:
    return None


@as_root
async def test_nobody_imports_the_standard_library_it_can_read() -> None:
    nobody = pwd.getpwnam("nobody")
    readable = python_stdlib.importable_by(nobody, python_stdlib.folders(), sys.path)
    uid, preloaded, dumped, row, two = await _imports(WorkerPool(1))
    assert uid == nobody.pw_uid
    # From disk when it can (an interpreter under /usr or a tool cache); preloaded when it
    # cannot (one under root's 0700 home, as pyenv's).
    assert preloaded is not readable
    assert (dumped, row, two) == ('{"d": "2.10"}', "a,1\r\n", 2)


@as_root
async def test_nobody_imports_the_standard_library_it_cannot_read(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    uid, preloaded, dumped, row, two = await _imports(WorkerPool(1, stdlib=[str(private)]))
    assert uid == pwd.getpwnam("nobody").pw_uid
    assert preloaded is True
    assert (dumped, row, two) == ('{"d": "2.10"}', "a,1\r\n", 2)


@pytest.fixture
def tree() -> Iterator[Path]:
    """A library `nobody` may read but not change: root's, 0755 folders, 0644 files, in a
    sticky world-writable temporary folder (as /tmp is), which keeps others from renaming it."""
    top = Path(tempfile.mkdtemp(prefix="noetl-stdlib-"))
    try:
        top.chmod(0o755)
        lib = top / "lib"
        (lib / "pkg" / "__pycache__").mkdir(parents=True)
        (lib / "mod.py").write_text("x = 1\n")
        (lib / "pkg" / "__init__.py").write_text("")
        for folder in (lib, lib / "pkg", lib / "pkg" / "__pycache__"):
            folder.chmod(0o755)
        yield lib
    finally:
        shutil.rmtree(top)


@as_root
def test_the_check_asks_the_kernel_as_the_account(tree: Path) -> None:
    nobody = pwd.getpwnam("nobody")

    def safe(*path: Path) -> bool:
        return python_stdlib.importable_by(nobody, [str(tree)], [str(p) for p in path])

    assert safe(tree)
    tree.chmod(0o700)  # unreadable
    assert not safe(tree)
    tree.chmod(0o755)
    (tree / "mod.py").chmod(0o600)  # a module unreadable
    assert not safe(tree)
    (tree / "mod.py").chmod(0o666)  # a module another execution could rewrite
    assert not safe(tree)
    (tree / "mod.py").chmod(0o644)
    (tree / "pkg" / "__pycache__").chmod(0o777)  # a place to plant bytecode
    assert not safe(tree)
    (tree / "pkg" / "__pycache__").chmod(0o755)
    assert safe(tree)
    # An import path entry searched first where a `json.py` could be planted; searched after
    # the library it does not matter; nor does a relative one (the worker's own home).
    open_folder = tree.parent / "open"
    open_folder.mkdir(mode=0o777)
    open_folder.chmod(0o777)
    assert not safe(open_folder, tree)
    assert not safe(open_folder / "python311.zip", tree)  # yet to exist, creatable
    assert safe(tree, open_folder)
    assert safe(Path(""), tree)
    # Named through a link in a folder others may write to: the link can be swapped.
    link = open_folder / "lib"
    link.symlink_to(tree)
    assert not python_stdlib.importable_by(nobody, [str(link)], [str(link)])
    # A writable folder above it, without the sticky bit: the library could be swapped.
    tree.parent.chmod(0o777)
    assert not safe(tree)
    tree.parent.chmod(0o1777)
    assert safe(tree)


@pytest.mark.parametrize("preload", ["", "tempfile"])
async def test_temporary_files_go_to_the_workers_own_home(preload: str) -> None:
    # Whether or not the template imported `tempfile` before forking.
    code = (
        "import os, tempfile\nfd, name = tempfile.mkstemp()\n"
        "result = [tempfile.gettempdir() == os.environ['HOME'] == os.environ['TMPDIR'],"
        " os.path.dirname(name) == os.environ['HOME']]"
    )
    reply = await _call(WorkerPool(1, preload=preload), code)
    assert reply.result == [True, True], reply.traceback


def test_the_template_imports_nothing_that_runs_in_every_fork() -> None:
    # `threading`, `random` and `logging` register handlers that run in every forked worker.
    probe = (
        "import sys\nfrom plugins import python_stdlib, python_zygote\n"
        "python_stdlib.import_common()\n"
        "print(sorted({'threading', 'random', 'logging', 'tempfile'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
