"""Secrets used by a run never reach the event table, the projection or the CLI output."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from actors.catalog import CatalogActor
from actors.coordinator import CoordinatorHost
from actors.mesh import Mesh
from actors.runner import Runner
from noetl.client import Client
from tests.support.mesh import credential_store

TOKEN = "tok-9f8e7d6c5b4a"
ENV_SECRET = "env-secret-31415926"
PASSWORD = "pg-pass-27182818"


async def leaks(client: Client, *values: str) -> list[str]:
    """Which of `values` appear anywhere in the event table or the execution rows."""
    found = []
    for value in values:
        hits = await client.store.pool.fetchval(
            "SELECT (SELECT count(*) FROM noetl.event e WHERE e::text LIKE '%' || $1 || '%')"
            " + (SELECT count(*) FROM noetl.execution x WHERE x::text LIKE '%' || $1 || '%')",
            value,
        )
        if hits:
            found.append(value)
    return found


async def test_secret_values_are_masked_everywhere(
    client: Client, mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOETL_SECRET_FROM_ENV", ENV_SECRET)
    creds = credential_store(client)
    await creds.set("api_token", "secret", {"value": TOKEN})
    await creds.set(
        "warehouse",
        "postgres",
        {"host": "127.0.0.1", "port": 1, "user": "u", "password": PASSWORD, "database": "d"},
    )
    path = tmp_path / "uses_secrets.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: uses_secrets}\n"
        "workflow:\n"
        + textwrap.indent(
            textwrap.dedent("""
        - step: start
          tool:
            kind: python
            args: {token: "{{ secret.api_token }}", other: "{{ secret.from_env }}"}
            code: |
              print("token is", token, "and", other)
              result = {"echo": token, "other": other, "length": len(token)}
          next: [fail]
        - step: fail
          tool:
            kind: python
            args: {token: "{{ secret.api_token }}"}
            code: |
              raise ValueError("bad token " + token)
          next:
            - when: "{{ error is defined }}"
              then: [{step: done, args: {why: "{{ error.message }}"}}]
        - step: done
          tool: {kind: python, args: {why: null}, code: "result = why"}
    """),
            "  ",
        )
    )
    reply = await client.register(path)
    eid = await client.start(reply.path, version=reply.version)
    doc = await client.wait(eid, timeout=60)
    assert doc["status"] == "completed", doc
    assert doc["steps"]["start"] == {"echo": "***", "other": "***", "length": len(TOKEN)}
    assert "***" in doc["result"] and TOKEN not in doc["result"]
    assert await leaks(client, TOKEN, ENV_SECRET, PASSWORD) == []


async def test_undefined_secret_fails_the_step_clearly(
    client: Client, mesh: Mesh, tmp_path: Path
) -> None:
    path = tmp_path / "missing_secret.yaml"
    path.write_text(
        "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: missing}\n"
        "workflow:\n  - step: start\n    tool: {kind: python, "
        "args: {t: '{{ secret.nope }}'}, code: 'result = t'}\n"
    )
    reply = await client.register(path)
    doc = await client.wait(await client.start(reply.path), timeout=60)
    assert doc["status"] == "failed"
    assert "secret `nope` is not defined" in doc["error"]["message"]
    assert "NOETL_SECRET_NOPE" in doc["error"]["message"]


class _Leaky:
    """A buggy plugin whose crash message quotes the secret it was given."""

    kind = "python"

    async def run(self, ctx: object, spec: dict[str, object]) -> object:
        args = spec["args"]
        assert isinstance(args, dict)
        raise RuntimeError(f"unexpected token {args['token']}")


async def test_a_crashing_plugin_does_not_leak_secrets(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds = credential_store(client)
    await creds.set("api_token", "secret", {"value": TOKEN})
    actors = [
        CatalogActor(client.bus, client.store, client.settings),
        CoordinatorHost(client.bus, client.store, client.settings),
        Runner(client.bus, client.store, client.settings, plugins={"python": _Leaky()}),
    ]
    for actor in actors:
        await actor.start()
    try:
        path = tmp_path / "leaky.yaml"
        path.write_text(
            "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: leaky}\n"
            "workflow:\n  - step: start\n    tool: {kind: python, code: x, "
            "args: {token: '{{ secret.api_token }}'}}\n"
        )
        reply = await client.register(path)
        with caplog.at_level(logging.ERROR, logger="noetl.runner"):
            doc = await client.wait(await client.start(reply.path), timeout=60)
        assert doc["status"] == "failed"
        assert "unexpected token ***" in doc["error"]["message"]
        assert "plugin crashed" in caplog.text and TOKEN not in caplog.text
        assert await leaks(client, TOKEN) == []
    finally:
        await client.bus.stop_consuming()
        for actor in actors:
            await actor.stop()


async def test_every_stored_secret_is_masked_not_only_the_steps_own(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A value this step never asked for, and the runtime's own token: code that came by them
    # (the review's playbook decrypted every credential) must not get them into the record.
    other = "zz-not" + "-mine-9f31"
    monkeypatch.setenv("NOETL_SECRET_UNRELATED", "env-only-" + "4b5c6d7e")
    creds = credential_store(client)
    await creds.set(
        "someone_elses", "postgres", {"host": "h", "user": "u", "password": other, "database": "d"}
    )
    settings = client.settings
    mesh = Mesh(client.bus, client.store, settings)
    await mesh.start()  # after the credential: the runner loads every stored secret at start
    try:
        path = tmp_path / "exfiltrate.yaml"
        path.write_text(
            "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata: {name: exfiltrate}\n"
            "workflow:\n  - step: start\n    tool:\n      kind: python\n      code: |\n"
            "        stolen = 'zz-not' + '-mine-9f31'\n"
            "        env = 'env-only-' + '4b5c6d7e'\n"
            "        print('got', stolen, env)\n"
            "        result = {'stolen': stolen, 'env': env}\n"
        )
        reply = await client.register(path)
        doc = await client.wait(await client.start(reply.path, version=reply.version), timeout=60)
        assert doc["status"] == "completed", doc
        assert doc["result"] == {"stolen": "***", "env": "***"}
        assert await leaks(client, other, "env-only-4b5c6d7e") == []
    finally:
        await mesh.stop()
