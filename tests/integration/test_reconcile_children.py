"""The reconciler and sub-playbooks: a parent waiting on a quiet child (no command in
flight anywhere) is reconciled without its `playbook` command going to a runner."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from actors.mesh import Mesh
from noetl.client import Client
from noetl.config import Settings
from tests.integration.conftest import run
from tests.support.playbooks import write_playbook as write


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Executions count as stale after 3 s, so the reconciler looks at the waiting parent."""
    return msgspec.structs.replace(settings, ack_wait=1.0, dedup_window=1.0)


async def test_a_parent_waiting_on_a_quiet_child_is_reconciled_cleanly(
    client: Client, mesh: Mesh, tmp_path: Path, shared_path: Path
) -> None:
    marker = shared_path / "failed-once"
    await client.register(
        write(
            tmp_path,
            "quiet_child",
            f"""
    - step: start
      tool:
        kind: python
        code: |
          import os
          if not os.path.exists({str(marker)!r}):
              open({str(marker)!r}, "w").close()
              raise RuntimeError("first attempt fails")
          result = 7
      retry: {{max_attempts: 2, delay: 6}}
    """,
        )
    )
    doc = await run(
        client,
        write(
            tmp_path,
            "waiting_parent",
            "- step: start\n  tool: {kind: playbook, path: quiet_child}\n",
        ),
    )
    assert doc["status"] == "completed", doc
