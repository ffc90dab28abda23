"""On a real mesh: an execution's python steps share its worker process, its async loop runs
on several at once, and the worker is stopped once the execution ends (the runner learns of
the end on the cancel subject)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from actors.mesh import Mesh
from actors.runner import Runner
from noetl.client import Client
from plugins.python import PythonTool
from tests.integration.conftest import run
from tests.support.playbooks import write_playbook
from tests.unit.test_python_keep import exits

BODY = """
- step: start
  tool: {kind: python, code: "import os\\nresult = os.getpid()"}
  next: [{step: again}]
- step: again
  tool: {kind: python, code: "import os\\nresult = os.getpid()"}
  next: [{step: fan}]
- step: fan
  loop: {in: "{{ range(4) | list }}", iterator: i, mode: async}
  tool:
    kind: python
    args: {meeting: "{{ workload.meeting }}", i: "{{ i }}"}
    code: |
      import os, time
      open(os.path.join(meeting, str(i)), "w").close()
      end = time.time() + 20
      while len(os.listdir(meeting)) < 2 and time.time() < end:
          time.sleep(0.01)
      result = os.getpid()
"""


async def test_python_steps_share_their_execution_s_workers_until_it_ends(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    meeting = tempfile.mkdtemp()
    os.chmod(meeting, 0o777)  # the workers may run as another account
    try:
        path = write_playbook(tmp_path, "keep", BODY, workload=f"{{meeting: {meeting}}}")
        doc = await run(client, path)
    finally:
        for name in os.listdir(meeting):
            os.unlink(os.path.join(meeting, name))
        os.rmdir(meeting)
    assert doc["status"] == "completed", doc
    first, again = doc["steps"]["start"], doc["steps"]["again"]
    assert first == again  # the second step ran in the first one's process
    fan = set(doc["steps"]["fan"])
    assert len(fan) >= 2  # the items met: two ran at once, in two workers
    (runner,) = [actor for actor in mesh.actors if isinstance(actor, Runner)]
    assert isinstance(runner.plugins["python"], PythonTool)
    for pid in fan | {first}:
        assert await exits(pid)  # stopped once the execution ended, long before idleness
