"""Every playbook in the reference documentation validates; those marked `# run:` run on
the mesh and end as the documentation says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.mesh import Mesh
from noetl import dsl
from noetl.client import Client
from plugins.registry import known_kinds

DOCS = Path(__file__).parent.parent.parent / "documentation" / "docs"
BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def playbooks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, block in enumerate(BLOCK.findall(page.read_text())):
            if "apiVersion:" in block:
                found.append((f"{page.relative_to(DOCS)}#{i}", block))
    return found


def runnable() -> list[tuple[str, str, str]]:
    return [
        (name, text, text.splitlines()[0].split(":", 1)[1].strip())
        for name, text in playbooks()
        if text.startswith("# run:")
    ]


def test_there_are_runnable_examples() -> None:
    assert len(runnable()) >= 3


@pytest.mark.parametrize(("name", "text"), playbooks(), ids=[n for n, _ in playbooks()])
def test_documented_playbooks_validate(name: str, text: str) -> None:
    report = dsl.check_text(text, filename=name, known_kinds=known_kinds())
    assert report.errors == [], [str(p) for p in report.errors]


@pytest.mark.parametrize(
    ("name", "text", "expected"), runnable(), ids=[n for n, _, _ in runnable()]
)
async def test_documented_examples_run(
    client: Client, mesh: Mesh, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(text)
    reply = await client.register(path)
    doc = await client.wait(await client.start(reply.path), timeout=60)
    assert doc["status"] == expected, doc
