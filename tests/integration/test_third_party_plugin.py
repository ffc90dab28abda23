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
from tests.support.cli import cli

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


SECRET = "echo-secret-4242"


def test_installed_plugin_runs_in_a_playbook(
    echo_plugin: None, settings: Settings, tmp_path: Path
) -> None:
    stored = cli(
        settings, "credential", "set", "echo_cred", "--type", "secret", "--data",
        f'{{"value": "{SECRET}"}}',
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    (tmp_path / "greeting.txt").write_text("from a script file\n")
    path = tmp_path / "uses_echo.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: uses_echo}\n"
        "workload: {who: world}\nworkflow:\n"
        "  - step: start\n    tool: {kind: echo, message: 'hello {{ workload.who }}'}\n"
        "    next: [{step: scripted}]\n"
        "  - step: scripted\n"
        "    tool: {kind: echo, script: {uri: ./greeting.txt, source: {type: file}},"
        " auth: echo_cred}\n"
        "    next: [{step: refused}]\n"
        "  - step: refused\n    tool: {kind: echo, auth: echo_cred, refuse: true}\n"
    )
    done = cli(settings, "run", str(path), "--json")
    assert done.returncode == 1, done.stderr  # the last step fails on purpose
    doc = json.loads(done.stdout)
    start, scripted = doc["steps"]["start"], doc["steps"]["scripted"]
    assert start["echo"] == "HELLO WORLD" and start["credential_fields"] == []
    assert start["command_id"].endswith(":start:1:1")
    assert scripted["echo"] == "FROM A SCRIPT FILE"
    assert scripted["credential_fields"] == ["value"]
    assert "echo tool: refused {'value': '***'}" in doc["error"]["message"]
    assert SECRET not in done.stdout + done.stderr


def test_the_plugin_is_fully_typed_against_the_sdk() -> None:
    # From the repository root, mypy reads the SDK from this source tree.
    root = Path(__file__).parent.parent.parent
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(PACKAGE / "noetl_echo_plugin")],
        capture_output=True, text=True, check=False, timeout=300, cwd=root,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_unknown_kind_is_refused_by_validation(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "uses_echo.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: uses_echo}\nworkflow:\n"
        "  - step: start\n    tool: {kind: echo, message: hi}\n"
    )
    done = cli(settings, "validate", str(path))
    assert done.returncode == 2
    assert "echo" in done.stderr
