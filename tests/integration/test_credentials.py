"""Credentials against a real PostgreSQL: the store, encryption at rest, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from noetl.cli_core import CliState
from noetl.cli_credentials import credential
from noetl.config import Settings
from noetl.crypto import KEY_FILE, generate_key, load_key
from noetl.errors import ConfigError, MissingKeyError, RenderError, StoreError
from noetl.store import Store
from noetl.store.credentials import CredentialStore, resolve_secrets

PASSWORD = "pg-Pa55word-xyz"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[Store]:
    s = await Store.connect(pg_dsn, max_size=2)
    await s.init_schema()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


async def test_set_get_list_delete(store: Store, key: bytes) -> None:
    creds = CredentialStore(store.pool, key)
    data = {"host": "db", "port": "5432", "user": "etl", "password": PASSWORD, "database": "w"}
    assert await creds.set("pg_main", "postgres", data) is True
    got = await creds.get("pg_main")
    assert got.type == "postgres"
    assert got.data == {**data, "port": 5432}
    assert PASSWORD not in repr(got)
    first_update = got.updated_at

    assert await creds.set("pg_main", "postgres", {"dsn": "postgresql://etl@db/w"}) is False
    again = await creds.get("pg_main")
    assert again.data == {"dsn": "postgresql://etl@db/w"}
    assert again.created_at == got.created_at and again.updated_at > first_update

    await creds.set("api", "bearer", {"token": "tok-123"})
    assert [(i.name, i.type) for i in await creds.list()] == [
        ("api", "bearer"),
        ("pg_main", "postgres"),
    ]
    assert await creds.delete("api") is True
    assert await creds.delete("api") is False
    assert await creds.find("api") is None
    with pytest.raises(
        StoreError,
        match=r"credential `api` does not exist; create it with "
        r"`noetl-runtime credential set api --type",
    ):
        await creds.get("api")


async def test_invalid_data_is_refused_before_writing(store: Store, key: bytes) -> None:
    creds = CredentialStore(store.pool, key)
    with pytest.raises(ConfigError, match="invalid postgres credential"):
        await creds.set("pg", "postgres", {"host": "db"})
    with pytest.raises(ConfigError, match="invalid credential name"):
        await creds.set("bad name", "secret", {"value": "v"})
    assert await creds.list() == []


async def test_data_is_encrypted_at_rest_and_bound_to_its_name(store: Store, key: bytes) -> None:
    creds = CredentialStore(store.pool, key)
    await creds.set("pg", "postgres", {"dsn": f"postgresql://etl:{PASSWORD}@db/w"})
    await creds.set("other", "secret", {"value": "other-value"})
    raw = await store.pool.fetchval("SELECT data FROM noetl.credential WHERE name = 'pg'")
    assert PASSWORD.encode() not in raw and b"postgresql" not in raw and b"dsn" not in raw

    with pytest.raises(ConfigError, match=r"credential `pg`: cannot decrypt"):
        await CredentialStore(store.pool, os.urandom(32)).get("pg")
    # A ciphertext copied onto another row does not decrypt there.
    await store.pool.execute(
        "UPDATE noetl.credential SET data = (SELECT data FROM noetl.credential "
        "WHERE name = 'pg') WHERE name = 'other'"
    )
    with pytest.raises(ConfigError, match=r"credential `other`: cannot decrypt"):
        await creds.get("other")


async def test_auth_references_check_the_type(store: Store, key: bytes) -> None:
    creds = CredentialStore(store.pool, key)
    await creds.set("pg", "postgres", {"dsn": "postgresql://etl@db/w"})
    assert (await creds.for_auth("pg")).name == "pg"
    assert (await creds.for_auth({"type": "postgres", "credential": "pg"})).type == "postgres"
    with pytest.raises(ConfigError, match="is of type postgres, but `auth` expects snowflake"):
        await creds.for_auth({"type": "snowflake", "credential": "pg"})


async def test_resolve_secrets_prefers_credentials_over_the_environment(
    store: Store, key: bytes
) -> None:
    creds = CredentialStore(store.pool, key)
    await creds.set("api_token", "bearer", {"token": "from-store"})
    await creds.set(
        "pg", "postgres", {"host": "h", "user": "u", "password": PASSWORD, "database": "d"}
    )
    env = {"NOETL_SECRET_API_TOKEN": "from-env", "NOETL_SECRET_ONLY_ENV": "env-value"}
    assert await resolve_secrets(["api_token", "pg", "only_env"], creds, env) == {
        "api_token": "from-store",
        "pg": PASSWORD,
        "only_env": "env-value",
    }
    with pytest.raises(RenderError, match="secret `nope` is not defined"):
        await resolve_secrets(["nope"], creds, env)


# -- CLI ------------------------------------------------------------------------------------


def _cli(
    pg_dsn: str, home: Path, *args: str, stdin: str | None = None, key: str | None = None
) -> Result:
    env = {
        "NOETL_PG_DSN": pg_dsn,
        "NOETL_NATS_URL": "nats://unused:4222",
        "NOETL_HOME": str(home),
        "NOETL_ENCRYPTION_KEY": key,
    }
    state = CliState(overrides={"nats_url": None, "pg_dsn": None, "home": None})
    return CliRunner().invoke(credential, list(args), env=env, obj=state, input=stdin)


def test_cli_set_get_list_delete(pg_dsn: str, noetl_home: Path, tmp_path: Path) -> None:
    data_file = tmp_path / "pg.json"
    data_file.write_text(json.dumps({"dsn": f"postgresql://etl:{PASSWORD}@db:5432/w"}))
    done = _cli(pg_dsn, noetl_home, "set", "pg", "--type", "postgres", "--data", f"@{data_file}")
    assert done.exit_code == 0, done.output
    assert "created credential `pg` (postgres)" in done.stdout
    assert "generated a new encryption key" in done.stderr
    assert (noetl_home / KEY_FILE).exists()

    done = _cli(
        pg_dsn,
        noetl_home,
        "set",
        "api",
        "--type",
        "header",
        "--data",
        "@-",
        stdin='{"name": "X-Api-Key", "value": "header-secret-1"}',
    )
    assert done.exit_code == 0, done.output

    shown = _cli(pg_dsn, noetl_home, "get", "pg", "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["name"] == "pg" and doc["type"] == "postgres"
    assert doc["data"] == {"dsn": "postgresql://etl:***@db:5432/w"}
    assert PASSWORD not in shown.output

    human = _cli(pg_dsn, noetl_home, "get", "api")
    assert human.exit_code == 0, human.output
    assert "X-Api-Key" in human.stdout and "***" in human.stdout
    assert "header-secret-1" not in human.output

    listed = _cli(pg_dsn, noetl_home, "list", "--json")
    assert [(c["name"], c["type"]) for c in json.loads(listed.stdout)] == [
        ("api", "header"),
        ("pg", "postgres"),
    ]
    assert "pg" in _cli(pg_dsn, noetl_home, "list").stdout

    assert _cli(pg_dsn, noetl_home, "delete", "api").exit_code == 0
    gone = _cli(pg_dsn, noetl_home, "delete", "api")
    assert gone.exit_code == 1 and "credential `api` does not exist" in gone.stderr
    missing = _cli(pg_dsn, noetl_home, "get", "api")
    assert missing.exit_code == 1
    assert "create it with `noetl-runtime credential set api" in missing.stderr


async def test_cli_and_runtime_share_the_key_file(
    pg_dsn: str, noetl_home: Path, store: Store
) -> None:
    # In a thread: the command runs its own event loop, as it does from a shell.
    done = await asyncio.to_thread(
        _cli,
        pg_dsn,
        noetl_home,
        "set",
        "tok",
        "--type",
        "bearer",
        "--data",
        '{"token": "bearer-secret"}',
    )
    assert done.exit_code == 0, done.output
    key = load_key(Settings(home=noetl_home))
    assert (await CredentialStore(store.pool, key).get("tok")).data == {"token": "bearer-secret"}


def test_cli_uses_a_configured_key(pg_dsn: str, noetl_home: Path) -> None:
    key = generate_key()
    assert (
        _cli(
            pg_dsn,
            noetl_home,
            "set",
            "s",
            "--type",
            "secret",
            "--data",
            '{"value": "v-1234"}',
            key=key,
        ).exit_code
        == 0
    )
    assert not (noetl_home / KEY_FILE).exists()
    assert _cli(pg_dsn, noetl_home, "get", "s", key=key).exit_code == 0
    wrong = _cli(pg_dsn, noetl_home, "get", "s", key=generate_key())
    assert wrong.exit_code == 2 and "cannot decrypt" in wrong.stderr


async def test_a_lost_key_file_never_orphans_stored_credentials(
    pg_dsn: str, noetl_home: Path, store: Store
) -> None:
    data = '{"token": "kept-secret-1"}'
    args = ("set", "tok", "--type", "bearer", "--data", data)
    assert (await asyncio.to_thread(_cli, pg_dsn, noetl_home, *args)).exit_code == 0
    path = noetl_home / KEY_FILE
    saved = path.read_bytes()
    path.unlink()

    # Neither the CLI nor the runtime makes a new key: each says where the key belongs.
    for command in (("get", "tok"), ("set", "other", "--type", "bearer", "--data", data)):
        done = await asyncio.to_thread(_cli, pg_dsn, noetl_home, *command)
        assert done.exit_code == 2, done.output
        assert f"the encryption key file {path} is missing" in done.stderr
        assert "NOETL_ENCRYPTION_KEY" in done.stderr
    without_key = await CredentialStore.open(store.pool, Settings(home=noetl_home))
    with pytest.raises(MissingKeyError):
        await without_key.find("tok")
    assert [c.name for c in await without_key.list()] == ["tok"]
    assert not path.exists()

    # Restored from the backup, the old credential decrypts as it was.
    path.write_bytes(saved)
    path.chmod(0o600)
    creds = await CredentialStore.open(store.pool, Settings(home=noetl_home))
    assert (await creds.get("tok")).data == {"token": "kept-secret-1"}

    # Given up on purpose: once none is stored, the next command makes a new key.
    path.unlink()
    assert (await asyncio.to_thread(_cli, pg_dsn, noetl_home, "delete", "tok")).exit_code == 0
    again = await asyncio.to_thread(_cli, pg_dsn, noetl_home, *args)
    assert again.exit_code == 0 and "generated a new encryption key" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "pg", "--type", "postgres", "--data", "{not json"), "not valid JSON"),
        (("set", "pg", "--type", "postgres", "--data", '{"host": "h"}'), "invalid postgres"),
        (("set", "bad name", "--type", "secret", "--data", '{"value": "v"}'), "invalid credential"),
        (("set", "pg", "--data", "{}"), "Missing option '--type'"),
        (("set", "pg", "--type", "x", "--data", "@/nonexistent.json"), "--data @/nonexistent"),
    ],
)
def test_cli_usage_and_invalid_data_exit_2(
    pg_dsn: str, noetl_home: Path, args: tuple[str, ...], message: str
) -> None:
    done = _cli(pg_dsn, noetl_home, *args)
    assert done.exit_code == 2, done.output
    assert message in done.output
