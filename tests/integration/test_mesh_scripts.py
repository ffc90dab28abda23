"""External code on the mesh: files that travel with the playbook, http scripts, refusals."""

from __future__ import annotations

from pathlib import Path

from actors.mesh import Mesh
from noetl.client import Client
from tests.integration.conftest import (
    one_step,
    run,
)
from tests.integration.shared_mesh import shared_client, shared_mesh  # noqa: F401
from tests.support.http_api import HttpApi


async def test_relative_file_script_travels_with_the_one_step(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    (tmp_path / "lib").mkdir()
    script = tmp_path / "lib" / "transform.py"
    script.write_text("def main(n):\n    return {'tripled': n * 3}\n")
    path = one_step(
        tmp_path, "scripted", "{kind: python, args: {n: 4}, script: {uri: ./lib/transform.py}}"
    )
    doc = await run(client, path)
    assert doc["status"] == "completed", doc
    assert doc["result"] == {"tripled": 12}
    rows = await client.store.list_events(int(doc["execution_id"]))
    facts = next(r["payload"]["facts"] for r in rows if r["event_type"] == "command.completed")
    loaded = next(f for f in facts if f["kind"] == "script")
    assert loaded["size"] == len(script.read_bytes()) and len(loaded["sha256"]) == 64
    # The runner never reads the file: moving it away changes nothing for this version...
    script.rename(tmp_path / "moved.py")
    again = await client.wait(await client.start("scripted"), timeout=60)
    assert again["result"] == {"tripled": 12}


async def test_changed_script_is_a_new_version(client: Client, mesh: Mesh, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("result = 1\n")
    path = one_step(tmp_path, "versions", "{kind: python, script: {uri: s.py}}")
    first = await client.register(path)
    script.write_text("result = 2\n")
    second = await client.register(path)
    assert (first.version, second.version) == (1, 2)
    doc = await client.wait(await client.start("versions", version=1), timeout=60)
    assert doc["result"] == 1


async def test_absolute_script_is_refused_by_default(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    script = tmp_path / "abs.py"
    script.write_text("result = 1\n")
    doc = await run(
        client, one_step(tmp_path, "absolute", f"{{kind: python, script: {{uri: {script}}}}}")
    )
    assert doc["status"] == "failed"
    assert "absolute script paths are not allowed" in doc["error"]["message"]


async def test_http_script_and_its_404(
    client: Client, mesh: Mesh, api: HttpApi, tmp_path: Path
) -> None:
    api.scripts["hello.py"] = "result = {'from': 'http'}\n"
    ok = await run(
        client,
        one_step(
            tmp_path, "remote", f"{{kind: python, script: {{uri: '{api.url}/scripts/hello.py'}}}}"
        ),
    )
    assert ok["result"] == {"from": "http"}
    missing = await run(
        client,
        one_step(
            tmp_path,
            "remote_missing",
            f"{{kind: python, script: {{uri: '{api.url}/scripts/nope.py'}}}}",
        ),
    )
    assert missing["status"] == "failed"
    assert "404" in missing["error"]["message"]
