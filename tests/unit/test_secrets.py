"""Secret masking, `{{ secret.NAME }}` names, credential validation and encryption at rest."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from noetl import crypto
from noetl.config import Settings
from noetl.errors import ConfigError, MissingKeyError, RenderError
from noetl.secrets import (
    MASK,
    Masker,
    redact,
    secret_env_name,
    secret_names_in,
    secret_value,
    secret_values,
)
from noetl.store.credentials import (
    parse_auth,
    parse_bindings,
    resolve_secrets,
    validate_credential,
    validate_name,
)

# -- Masker -------------------------------------------------------------------------------------


def test_masks_every_string_in_a_nested_structure_keys_included() -> None:
    masker = Masker(["hunter22"])
    event = {
        "payload": {"rows": [["id", "hunter22"], ("pw=hunter22;", 3)], "ok": True},
        "hunter22": "key is secret",
        "n": None,
    }
    assert masker.mask(event) == {
        "payload": {"rows": [["id", MASK], (f"pw={MASK};", 3)], "ok": True},
        MASK: "key is secret",
        "n": None,
    }
    assert event["payload"]["rows"][0][1] == "hunter22"  # the input is not modified


def test_unchanged_values_are_returned_as_the_same_objects() -> None:
    data = {"a": [1, "plain", {"b": "text"}], "c": ("x",)}
    assert Masker().mask(data) is data  # no secrets: fast path
    assert Masker(["absent-secret"]).mask(data) is data
    masked = Masker(["text"]).mask(data)
    assert masked is not data and masked["a"][0:2] == [1, "plain"]
    assert masked["c"] is data["c"]


def test_overlapping_and_nested_secrets_leave_no_fragment() -> None:
    masker = Masker(["abcdef", "cdefgh", "bcd1"])
    assert masker.mask_text("x abcdefgh y") == f"x {MASK} y"
    # A short secret inside a longer one: the longest occurrence wins, once.
    masker = Masker(["pass", "password123"])
    assert masker.mask_text("password123 and pass") == f"{MASK} and {MASK}"
    # Adjacent secrets become one mask, so no boundary is revealed.
    assert Masker(["aaaa1", "bbbb2"]).mask_text("aaaa1bbbb2!") == f"{MASK}!"


def test_escaped_and_encoded_forms_are_masked() -> None:
    masker = Masker(['p@ss"word'])
    assert masker.mask_text('{"password": "p@ss\\"word"}') == '{"password": "***"}'
    assert masker.mask_text("postgresql://u:p%40ss%22word@h/db") == f"postgresql://u:{MASK}@h/db"


def test_short_secrets_are_masked_only_as_whole_strings() -> None:
    masker = Masker(["abc"])
    assert masker.mask({"v": "abc", "w": "abcdef"}) == {"v": MASK, "w": "abcdef"}
    assert masker.mask_text("") == ""


def test_special_characters_in_secrets_are_literal() -> None:
    masker = Masker(["a.b*c+(d)", "\\x[1]"])
    assert masker.mask_text("a.b*c+(d) aXbbc \\x[1]") == f"{MASK} aXbbc {MASK}"


# -- which values are secret ----------------------------------------------------------------


def test_secret_values_skip_public_fields() -> None:
    data = {
        "host": "db.example.com",
        "port": 5432,
        "user": "etl",
        "database": "warehouse",
        "password": "s3cr3t-pw",
    }
    values = secret_values(data)
    assert "s3cr3t-pw" in values
    assert not values & {"db.example.com", "5432", "etl", "warehouse"}
    # What an Authorization: Basic header would carry.
    assert base64.b64encode(b"etl:s3cr3t-pw").decode() in values


def test_secret_values_find_passwords_in_dsns_and_urls() -> None:
    assert {"postgresql://u:p%40ss@h/db", "p@ss", "p%40ss"} <= secret_values(
        {"dsn": "postgresql://u:p%40ss@h/db"}
    )
    assert {"kv-pw", "it's"} <= secret_values(
        {"dsn": "host=h password=kv-pw", "other": "password='it''s' user=x"}
    )
    # A public URL field is kept, but the password and token inside it are secret.
    values = secret_values({"url": "https://bob:pw-in-url@api.example.com/v1?api_key=k123"})
    assert values == {"pw-in-url", "k123"}


def test_secret_values_of_header_aws_and_nested_service_account() -> None:
    assert secret_values({"name": "Authorization", "value": "Bearer tok-123"}) == {
        "Bearer tok-123",
        "tok-123",
    }
    aws = secret_values(
        {
            "aws_access_key_id": "AKIAEXAMPLE",
            "aws_secret_access_key": "wJalr",
            "region": "us-east-1",
            "endpoint_url": "http://localhost:5000",
        }
    )
    assert aws == {"AKIAEXAMPLE", "wJalr"}
    gcs = secret_values(
        {
            "service_account": {
                "type": "service_account",
                "project_id": "p",
                "private_key": "-----BEGIN KEY-----",
                "client_email": "sa@p.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        }
    )
    assert gcs == {"-----BEGIN KEY-----"}
    assert secret_values({"pin": 123456, "retries": 3, "flag": True}) == {"123456"}


def test_dsn_passwords_are_masked_in_shown_data_and_in_errors() -> None:
    cases = [  # dsn, its password, as shown
        ("postgresql://etl:hunter2@db:5432/w", "hunter2", "postgresql://etl:***@db:5432/w"),
        ("postgres://etl:p@ss@db/w?sslmode=x", "p@ss", "postgres://etl:***@db/w?sslmode=x"),
        (
            "postgresql://db/w?user=e&password=hunter2",
            "hunter2",
            "postgresql://db/w?user=e&password=***",
        ),
        ("host=db password='s3 cret' dbname=w", "s3 cret", "host=db password=*** dbname=w"),
    ]
    for dsn, password, shown in cases:
        assert redact({"dsn": dsn}) == {"dsn": shown}
        # A driver error quoting the DSN, or only its password, masked by the one Masker.
        masker = Masker(secret_values({"dsn": dsn}))
        error = masker.mask_text(f"cannot connect to {dsn}: password {password} refused")
        assert error == "cannot connect to ***: password *** refused"
    for unchanged in ("postgresql://etl@db:5432/w", "postgresql://db:5432/w", "host=db"):
        assert redact({"dsn": unchanged}) == {"dsn": unchanged}


def test_url_encoded_forms_are_masked_both_ways() -> None:
    masker = Masker(["s3cret word&x"])
    assert masker.mask_text("q=s3cret%20word%26x") == "q=***"
    assert masker.mask_text("q=s3cret+word%26x") == "q=***"
    assert masker.mask_text('{"t": "s3cret word&x"}') == '{"t": "***"}'


def test_redact_shows_public_fields_only() -> None:
    shown = redact(
        {
            "dsn": "postgresql://u:pw12@h/db",
            "password": "x",
            "port": 5432,
            "url": "https://a:bbbb@x.com/",
            "extra": {"client_email": "e", "t": 1},
            "enabled": True,
        }
    )
    assert shown == {
        "dsn": "postgresql://u:***@h/db",
        "password": MASK,
        "port": 5432,
        "url": "https://a:***@x.com/",
        "extra": {"client_email": "e", "t": MASK},
        "enabled": True,
    }


# -- {{ secret.NAME }} --------------------------------------------------------------------------


def test_secret_names_in_walks_values_and_reads_both_forms() -> None:
    tool = {
        "kind": "http",
        "headers": {"Authorization": "Bearer {{ secret.api_token }}"},
        "params": ["{{ secret['other-key'] | upper }}", ("{% if secret.flag %}x{% endif %}",)],
        "note": "secret but no template",
        "{{ secret.in_key }}": "keys are not rendered",
    }
    assert secret_names_in(tool) == {"api_token", "other-key", "flag"}
    assert secret_names_in("{{ workload.secret }}") == set()
    assert secret_names_in(42) == set()


@pytest.mark.parametrize(
    "template",
    [
        "{{ secret[name] }}",
        "{{ secret | tojson }}",
        "{{ secret.a }}{{ secret }}",
        "{% for k in secret %}{% endfor %}",
    ],
)
def test_secret_names_in_refuses_dynamic_use(template: str) -> None:
    with pytest.raises(RenderError, match="literal name"):
        secret_names_in(template)


def test_secret_names_in_reports_syntax_errors() -> None:
    with pytest.raises(RenderError, match="syntax error"):
        secret_names_in("{{ secret. }}")


def test_secret_value_picks_the_one_secret_field() -> None:
    assert secret_value("pg", {"host": "h", "user": "u", "password": "pw"}) == "pw"
    assert secret_value("k", {"value": "v1", "token": "t"}) == "v1"
    assert secret_value("a", {"aws_access_key_id": "id", "aws_secret_access_key": "sk"}) == "sk"
    with pytest.raises(RenderError, match=r"credential `gcs` has no single secret value"):
        secret_value("gcs", {"service_account": {"private_key": "k"}})


async def test_resolve_secrets_from_the_environment() -> None:
    env = {"NOETL_SECRET_API_KEY": "from-env"}
    assert secret_env_name("api-key") == "NOETL_SECRET_API_KEY"
    assert await resolve_secrets(["api-key"], None, env) == {"api-key": "from-env"}
    with pytest.raises(RenderError, match=r"NOETL_SECRET_MISSING"):
        await resolve_secrets(["missing"], None, env)


# -- credential data ----------------------------------------------------------------------------


def test_postgres_credentials_validate_and_normalise() -> None:
    assert validate_credential("Postgres", {"dsn": "postgresql://u:p@h/d"}) == (
        "postgres",
        {"dsn": "postgresql://u:p@h/d"},
    )
    kind, data = validate_credential(
        "postgres", {"host": "h", "port": "5433", "user": "u", "password": "p", "database": "d"}
    )
    assert kind == "postgres" and data["port"] == 5433
    with pytest.raises(ConfigError, match=r"either `dsn` or `host` and `password`, not both"):
        validate_credential("postgres", {"dsn": "postgresql://h/d", "host": "h", "password": "p"})
    assert validate_credential("postgres", {"dsn": "postgresql://h/d", "sslmode": "require"})
    with pytest.raises(ConfigError) as info:
        validate_credential(
            "postgres", {"host": "h", "username": "u", "dbname": "d", "port": 70000}
        )
    message = str(info.value)
    assert "`username` (did you mean `user`?)" in message
    assert "`dbname` (did you mean `database`?)" in message
    assert "`port` must be a port number" in message
    assert "needs `dsn` or `host`, `user` and `database`" in message


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("snowflake", {"account": "a", "user": "u", "password": "p", "warehouse": "w"}),
        ("snowflake", {"account": "a", "user": "u", "private_key": "-----BEGIN"}),
        ("bearer", {"token": "t"}),
        ("basic", {"username": "u", "password": "p"}),
        ("header", {"name": "X-Api-Key", "value": "v"}),
        ("header", {"headers": {"X-A": "1", "X-B": "2"}}),
        ("http", {"token": "t"}),
        ("aws", {"aws_access_key_id": "i", "aws_secret_access_key": "s", "region": "eu-west-1"}),
        ("gcs", {"service_account": '{"type": "service_account", "private_key": "k"}'}),
        ("gcs", {"endpoint_url": "http://localhost:9023"}),
        ("secret", {"value": "v"}),
        ("my-vault", {"anything": [1, 2], "goes": {"here": True}}),
    ],
)
def test_known_and_free_form_types_accept_valid_data(kind: str, data: dict[str, object]) -> None:
    validated_kind, validated = validate_credential(kind, data)
    assert validated_kind == kind and validated.keys() == data.keys()
    if kind == "gcs" and "service_account" in data:
        assert validated["service_account"]["private_key"] == "k"


@pytest.mark.parametrize(
    ("kind", "data", "message"),
    [
        ("snowflake", {"account": "a", "user": "u"}, "needs `account`, `user` and `password`"),
        ("bearer", {"token": 42}, "`token` must be a string, got a number"),
        ("basic", {"user": "u", "password": "p"}, "did you mean `username`"),
        ("header", {"headers": {"X": 1}}, "values must be strings"),
        (
            "aws",
            {"aws_access_key_id": "i"},
            "needs `aws_access_key_id` and `aws_secret_access_key`",
        ),
        ("gcs", {"service_account": "not json"}, "must be a JSON object"),
        ("postgres", [], "must be a JSON object"),
        ("anything", {}, "is empty"),
        ("Not A Type!", {"a": 1}, "invalid credential type"),
    ],
)
def test_invalid_credential_data_is_explained(kind: str, data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_credential(kind, data)


def test_names_and_references() -> None:
    assert validate_name("pg_prod-1.eu") == "pg_prod-1.eu"
    for bad in ("", "-x", "a b", "x" * 129, "é"):
        with pytest.raises(ConfigError, match="invalid credential name"):
            validate_name(bad)
    assert parse_auth("pg") == ("pg", None)
    assert parse_auth({"type": "Postgres", "credential": "pg"}) == ("pg", "postgres")
    assert parse_auth({"key": "pg"}) == ("pg", None)
    with pytest.raises(ConfigError, match="`auth` must be"):
        parse_auth({"type": "postgres"})
    assert parse_bindings({"src": {"key": "pg_a"}, "dst": "pg_b"}) == {"src": "pg_a", "dst": "pg_b"}
    with pytest.raises(ConfigError, match=r"credentials\.src"):
        parse_bindings({"src": {"name": "x"}})


# -- encryption -----------------------------------------------------------------------------------


def test_encrypt_roundtrip_with_fresh_nonces() -> None:
    key = crypto.parse_key(crypto.generate_key())
    first = crypto.encrypt(key, b"payload", aad=b"name")
    second = crypto.encrypt(key, b"payload", aad=b"name")
    assert first != second and first[0] == 1  # version byte, random nonce
    assert b"payload" not in first
    assert crypto.decrypt(key, first, aad=b"name") == b"payload"
    assert crypto.decrypt(key, crypto.encrypt(key, b"")) == b""


def test_wrong_key_wrong_aad_and_tampering_are_detected() -> None:
    key, other = os.urandom(32), os.urandom(32)
    blob = crypto.encrypt(key, b"payload", aad=b"a")
    with pytest.raises(ConfigError, match="encryption key is not the one"):
        crypto.decrypt(other, blob, aad=b"a")
    with pytest.raises(ConfigError, match="encryption key is not the one"):
        crypto.decrypt(key, blob, aad=b"b")
    for index in (1, 13, len(blob) - 1):  # nonce, ciphertext, tag
        tampered = bytearray(blob)
        tampered[index] ^= 1
        with pytest.raises(ConfigError, match="altered"):
            crypto.decrypt(key, bytes(tampered), aad=b"a")
    with pytest.raises(ConfigError, match="format version 2"):
        crypto.decrypt(key, b"\x02" + blob[1:], aad=b"a")
    with pytest.raises(ConfigError, match="truncated"):
        crypto.decrypt(key, blob[:20], aad=b"a")


def test_key_forms() -> None:
    raw = os.urandom(32)
    for text in (
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("=") + "\n",
    ):
        assert crypto.parse_key(text) == raw
    phrase = crypto.parse_key("correct horse battery staple")
    assert len(phrase) == 32 and phrase == crypto.parse_key("correct horse battery staple")
    assert phrase != crypto.parse_key("correct horse battery stapler")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        crypto.parse_key("short")


def test_configured_key_wins_over_the_key_file(tmp_path: Path) -> None:
    raw = os.urandom(32)
    settings = Settings(home=tmp_path, encryption_key=base64.b64encode(raw).decode())
    assert crypto.load_key(settings) == raw
    assert not (tmp_path / crypto.KEY_FILE).exists()


def test_key_file_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    notices: list[str] = []
    settings = Settings(home=home)
    key = crypto.load_key(settings, announce=notices.append)
    path = home / crypto.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 32 and crypto.parse_key(path.read_text()) == key
    assert len(notices) == 1 and str(path) in notices[0] and "back it up" in notices[0]
    assert crypto.load_key(settings, announce=notices.append) == key
    assert len(notices) == 1
    assert [p.name for p in home.iterdir()] == [crypto.KEY_FILE]  # no temporary left over


def test_no_key_is_generated_while_credentials_are_stored(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(MissingKeyError) as info:
        crypto.load_key(settings, stored=3)
    path = tmp_path / crypto.KEY_FILE
    assert info.value.path == str(path) and info.value.stored == 3
    assert "restore the file from your backup" in str(info.value)
    assert "NOETL_ENCRYPTION_KEY" in str(info.value)
    assert not path.exists()
    # The configured key needs no file.
    raw = os.urandom(32)
    configured = Settings(home=tmp_path, encryption_key=base64.b64encode(raw).decode())
    assert crypto.load_key(configured, stored=3) == raw


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(crypto.load_key(settings))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_unsafe_or_corrupt_key_files_are_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    crypto.load_key(settings)
    path = tmp_path / crypto.KEY_FILE
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        crypto.load_key(settings)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="restore it"):
        crypto.load_key(settings)
