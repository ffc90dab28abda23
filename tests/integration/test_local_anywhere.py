"""Local mode wherever NOETL_HOME lives: a private (0700) folder, no permission changed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from noetl.servers import pgowner
from noetl.servers.pgowner import RUNTIME_DIR
from tests.integration.conftest import fixture
from tests.support.cli import CLI
from tests.support.services import local_mode_stopped

pytestmark = pytest.mark.timeout(240)


def modes(path: Path) -> dict[str, tuple[int, int]]:
    """(mode, owner) of `path` and every ancestor."""
    return {
        str(p): (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid) for p in (path, *path.parents)
    }


@pytest.fixture
def private_home() -> Iterator[Path]:
    """A NOETL_HOME to be, inside a fresh 0700 folder (mkdtemp's mode)."""
    outer = Path(tempfile.mkdtemp(prefix="noetl-private-"))
    home = outer / "home"
    try:
        with local_mode_stopped(home, outer):
            yield home
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_a_playbook_runs_with_noetl_home_in_a_private_folder(private_home: Path) -> None:
    outer = private_home.parent
    assert stat.S_IMODE(outer.stat().st_mode) == 0o700
    before = modes(outer)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOETL_")}
    env["NOETL_HOME"] = str(private_home)  # no NATS nor PostgreSQL configured: local mode

    done = subprocess.run(
        [CLI, "run", str(fixture("hello_world")), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    assert "started embedded NATS" in done.stderr

    # Nothing that existed before has another mode or owner: not the folder, not /.
    assert modes(outer) == before
    data = private_home / "pg"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        # PostgreSQL runs as `noetl` from the runtime's own copy of the programs; the data
        # directory is that user's, reached through the server's working directory only.
        assert data.stat().st_uid != 0
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        exe = Path(os.readlink(f"/proc/{postmaster}/exe"))
        assert exe.is_relative_to(RUNTIME_DIR)
        assert os.readlink(f"/proc/{postmaster}/cwd") == str(data)

    down = subprocess.run(
        [CLI, "down"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert down.returncode == 0, down.stderr
    assert "PostgreSQL" in down.stderr and "NATS" in down.stderr
    assert not (data / "postmaster.pid").exists()
    assert modes(outer) == before


def test_copies_of_removed_installs_are_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the programs are copied for the `noetl` user only when running as root")
    monkeypatch.setattr(pgowner, "RUNTIME_DIR", tmp_path / "runtime")

    def install(name: str) -> Path:
        tree = tmp_path / name / "pgserver" / "pginstall"
        (tree / "bin").mkdir(parents=True)
        (tree / "bin" / "postgres").write_text(name)
        return tree

    gone, kept = install("gone"), install("kept")
    first = pgowner._linked_copy(gone)
    assert first.is_relative_to(tmp_path / "runtime")
    assert (first / "bin" / "postgres").read_text() == "gone"
    assert stat.S_IMODE((tmp_path / "runtime").stat().st_mode) == 0o755
    shutil.rmtree(tmp_path / "gone")  # a deleted checkout
    second = pgowner._linked_copy(kept)
    assert (second / "bin" / "postgres").read_text() == "kept"
    assert not first.exists()
