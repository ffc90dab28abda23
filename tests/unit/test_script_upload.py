"""Which script files travel with a playbook when it is registered from a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from noetl.client import read_playbook
from noetl.errors import PlaybookError

PLAYBOOK = """\
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: uses_a_script}
workflow:
  - step: start
    tool: {kind: python, script: {uri: scripts/job.py, source: {type: file}}}
"""


def make(tmp_path: Path) -> Path:
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(PLAYBOOK)
    (tmp_path / "scripts").mkdir()
    return playbook


def test_a_relative_script_file_travels(tmp_path: Path) -> None:
    playbook = make(tmp_path)
    (tmp_path / "scripts" / "job.py").write_text("result = 1\n")
    assert read_playbook(playbook) == (PLAYBOOK, {"scripts/job.py": "result = 1\n"})


def test_a_symlinked_script_is_refused(tmp_path: Path) -> None:
    playbook = make(tmp_path)
    (tmp_path / "scripts" / "job.py").symlink_to("/etc/passwd")
    with pytest.raises(PlaybookError, match=r"scripts/job\.py is a symbolic link"):
        read_playbook(playbook)


def test_a_symlinked_directory_on_the_way_is_refused(tmp_path: Path) -> None:
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(PLAYBOOK)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "job.py").write_text("result = 'not mine'\n")
    (tmp_path / "scripts").symlink_to(elsewhere)
    with pytest.raises(PlaybookError, match=r"/scripts is a symbolic link"):
        read_playbook(playbook)
