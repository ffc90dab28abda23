"""A tool plugin installed with pip (entry-point group `noetl.plugins`) runs in a playbook."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from noetl.config import Settings
from tests.integration.test_cli import cli

PACKAGE = Path(__file__).parent.parent / "fixtures" / "plugin_pkg"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture
def echo_plugin(tmp_path: Path) -> Iterator[None]:
    source = tmp_path / "plugin_pkg"
    shutil.copytree(PACKAGE, source)  # builds leave files behind: not in the repository
    installed = pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(source))
    assert installed.returncode == 0, installed.stderr
    try:
        yield
    finally:
        pip("uninstall", "--yes", "--quiet", "noetl-echo-plugin")


def test_installed_plugin_runs_in_a_playbook(
    echo_plugin: None, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "uses_echo.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: uses_echo}\n"
        "workload: {who: world}\nworkflow:\n"
        "  - step: start\n    tool: {kind: echo, message: 'hello {{ workload.who }}'}\n"
    )
    done = cli(settings, "run", str(path), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["result"]["echo"] == "HELLO WORLD"
    assert doc["result"]["command_id"].endswith(":start:1:1")


def test_unknown_kind_is_refused_by_validation(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "uses_echo.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: uses_echo}\nworkflow:\n"
        "  - step: start\n    tool: {kind: echo, message: hi}\n"
    )
    done = cli(settings, "validate", str(path))
    assert done.returncode == 2
    assert "echo" in done.stderr
