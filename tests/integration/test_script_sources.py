"""`load_code`: scripts from files, HTTP, S3 (moto) and GCS (emulator); base64 and inline code."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext
from plugins.sources import load_code, source_type
from tests.support.cloud import GcsEmulator, MotoServer, put_gcs_object, put_s3_object
from tests.support.http_api import HttpApi, serve_http_api
from tests.support.tools import tool_context

CODE = "result = {'answer': 42}\n"


def make_ctx(
    credentials: Mapping[str, Mapping[str, Any]] | None = None, **fields: Any
) -> ToolContext:
    """A context whose credential store is the `credentials` mapping."""
    return tool_context(credentials, step="load", **fields)


def script(uri: str, **source: Any) -> dict[str, Any]:
    return {"script": {"uri": uri, **({"source": source} if source else {})}}


def recorded(ctx: ToolContext) -> dict[str, Any]:
    """The one `script` fact of the call."""
    facts = [event for event in ctx.events if event["kind"] == "script"]
    assert len(facts) == 1
    return facts[0]


@pytest_asyncio.fixture(scope="module")
async def api() -> AsyncIterator[HttpApi]:
    async with serve_http_api({"transform.py": CODE, "lib/util.py": "x = 1\n"}) as server:
        yield server


# --- priority and inline code ---------------------------------------------------------------


async def test_script_wins_over_b64_and_code() -> None:
    ctx = make_ctx(files={"a.py": CODE})
    spec = {**script("a.py"), "code_b64": base64.b64encode(b"b64").decode(), "code": "inline"}
    assert await load_code(spec, ctx) == CODE


async def test_b64_wins_over_code_and_is_decoded() -> None:
    ctx = make_ctx()
    spec = {"code_b64": base64.b64encode(CODE.encode()).decode(), "code": "inline"}
    assert await load_code(spec, ctx) == CODE
    assert ctx.events == []  # only external scripts are recorded


async def test_code_fallback_and_custom_keys() -> None:
    ctx = make_ctx()
    assert await load_code({"code": CODE}, ctx) == CODE
    keys = {"code_keys": ("query", "command"), "b64_keys": ("query_b64", "command_b64")}
    assert await load_code({"command": "SELECT 1"}, ctx, **keys) == "SELECT 1"
    spec = {"command": "SELECT 1", "command_b64": base64.b64encode(b"SELECT 2").decode()}
    assert await load_code(spec, ctx, **keys) == "SELECT 2"
    # The first present key wins; a null value is absent.
    assert await load_code({"query": None, "command": "B"}, ctx, **keys) == "B"


async def test_nothing_given_is_none() -> None:
    assert await load_code({"args": {}, "code": None}, make_ctx()) is None


async def test_bad_b64_and_bad_code_fail_clearly() -> None:
    with pytest.raises(ToolError, match="`code_b64` is not base64"):
        await load_code({"code_b64": "not base64!!"}, make_ctx())
    with pytest.raises(ToolError, match="`code_b64` is not base64 of UTF-8"):
        await load_code({"code_b64": base64.b64encode(b"\xff\xfe").decode()}, make_ctx())
    with pytest.raises(ToolError, match="`code` must be text"):
        await load_code({"code": 12}, make_ctx())


async def test_malformed_script_and_unknown_source() -> None:
    with pytest.raises(ToolError, match="mapping with a `uri`"):
        await load_code({"script": "a.py"}, make_ctx())
    with pytest.raises(ToolError, match="unknown source type 'ftp'"):
        await load_code(script("a.py", type="ftp"), make_ctx())


def test_source_type_follows_the_scheme() -> None:
    assert source_type("s3://b/k.py") == "s3"
    assert source_type("gs://b/k.py") == "gcs"
    assert source_type("https://x/k.py") == "http"
    assert source_type("http://x/k.py") == "http"
    assert source_type("./k.py") == "file"
    assert source_type("/abs/k.py") == "file"


# --- file --------------------------------------------------------------------------------


async def test_file_from_playbook_files_records_hash_and_size() -> None:
    ctx = make_ctx(files={"lib/transform.py": CODE})
    assert await load_code(script("./lib/transform.py"), ctx) == CODE
    fact = recorded(ctx)
    assert fact == {
        "kind": "script",
        "uri": "./lib/transform.py",
        "source": "file",
        "sha256": hashlib.sha256(CODE.encode()).hexdigest(),
        "size": len(CODE.encode()),
    }


async def test_file_keys_are_normalised() -> None:
    ctx = make_ctx(files={"./lib/../lib/a.py": "a = 1\n"})
    assert await load_code(script("lib/a.py", type="file"), ctx) == "a = 1\n"


async def test_file_under_script_root(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.py").write_text(CODE)
    ctx = make_ctx(script_root=tmp_path)
    assert await load_code(script("sub/t.py"), ctx) == CODE
    assert recorded(ctx)["size"] == len(CODE)


async def test_playbook_files_win_over_script_root(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("on disk")
    ctx = make_ctx(files={"t.py": "travelled"}, script_root=tmp_path)
    assert await load_code(script("t.py"), ctx) == "travelled"


async def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"script nope\.py: no such file .*nope\.py"):
        await load_code(script("nope.py"), make_ctx(script_root=tmp_path))
    with pytest.raises(ToolError, match="no script directory"):
        await load_code(script("nope.py"), make_ctx())


@pytest.mark.parametrize("uri", ["../secret.py", "a/../../secret.py", "..", "./"])
async def test_relative_paths_cannot_leave_the_root(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.py").write_text("leak")
    with pytest.raises(ToolError, match="inside the playbook's directory") as info:
        await load_code(script(uri), make_ctx(script_root=root))
    assert info.value.error_type == "script"


async def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.py").write_text("leak")
    (root / "link.py").symlink_to(tmp_path / "secret.py")
    with pytest.raises(ToolError, match="outside the script directory"):
        await load_code(script("link.py"), make_ctx(script_root=root))


async def test_absolute_paths_are_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "abs.py"
    path.write_text(CODE)
    for uri in (str(path), f"file://{path}"):
        with pytest.raises(ToolError, match="absolute script paths are not allowed"):
            await load_code(script(uri), make_ctx())
        ctx = make_ctx(allow_absolute_scripts=True)
        assert await load_code(script(uri), ctx) == CODE
        assert recorded(ctx)["source"] == "file"


async def test_non_utf8_script_fails(tmp_path: Path) -> None:
    (tmp_path / "bin.py").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ToolError, match="not UTF-8"):
        await load_code(script("bin.py"), make_ctx(script_root=tmp_path))


# --- http --------------------------------------------------------------------------------


async def test_http_absolute_url(api: HttpApi) -> None:
    ctx = make_ctx()
    uri = f"{api.url}/scripts/transform.py"
    assert await load_code(script(uri), ctx) == CODE
    fact = recorded(ctx)
    assert fact["source"] == "http"
    assert fact["uri"] == uri
    assert fact["sha256"] == hashlib.sha256(CODE.encode()).hexdigest()


async def test_http_relative_to_endpoint_with_headers_and_auth(api: HttpApi) -> None:
    ctx = make_ctx({"scripts_token": {"type": "bearer", "token": "tok-789"}})
    spec = script(
        "./lib/util.py",
        type="http",
        endpoint=f"{api.url}/scripts/",
        headers={"X-Trace": "abc"},
        auth="scripts_token",
    )
    assert await load_code(spec, ctx) == "x = 1\n"
    method, path, headers = api.requests[-1]
    assert (method, path) == ("GET", "/scripts/lib/util.py")
    assert headers["X-Trace"] == "abc"
    assert headers["Authorization"] == "Bearer tok-789"
    assert "tok-789" in ctx.secrets.values()


async def test_http_404_names_url_and_status(api: HttpApi) -> None:
    uri = f"{api.url}/scripts/missing.py"
    with pytest.raises(ToolError, match=r"HTTP 404") as info:
        await load_code(script(uri), make_ctx())
    assert uri in str(info.value)
    assert info.value.details["status_code"] == 404


async def test_http_relative_needs_endpoint() -> None:
    with pytest.raises(ToolError, match=r"needs `source\.endpoint`"):
        await load_code(script("t.py", type="http"), make_ctx())


async def test_http_timeout(api: HttpApi) -> None:
    with pytest.raises(ToolTimeout, match=r"within 0\.3s"):
        await load_code(script(f"{api.url}/slow?seconds=3", timeout=0.3), make_ctx())


async def test_http_unreachable() -> None:
    from noetl.local import free_port

    with pytest.raises(ToolError, match="ClientConnectorError"):
        await load_code(script(f"http://127.0.0.1:{free_port()}/t.py"), make_ctx())


# --- s3 ----------------------------------------------------------------------------------


async def test_s3_with_environment_credentials(aws_env: MotoServer) -> None:
    await put_s3_object("noetl-scripts", "jobs/transform.py", CODE)
    ctx = make_ctx()
    assert await load_code(script("s3://noetl-scripts/jobs/transform.py"), ctx) == CODE
    fact = recorded(ctx)
    assert fact["source"] == "s3"
    assert fact["sha256"] == hashlib.sha256(CODE.encode()).hexdigest()
    assert fact["size"] == len(CODE)


async def test_s3_with_named_credential(
    aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_s3_object("noetl-scripts", "t.py", CODE)
    # Only the credential says where S3 is and which keys to use.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    ctx = make_ctx(
        {
            "aws_creds": {
                "aws_access_key_id": "AKIDTEST",
                "aws_secret_access_key": "very-secret",
                "endpoint_url": aws_env.endpoint_url,
            }
        }
    )
    spec = script("t.py", type="s3", bucket="noetl-scripts", region="us-west-2", auth="aws_creds")
    assert await load_code(spec, ctx) == CODE
    assert "very-secret" in ctx.secrets.values()


async def test_s3_missing_key_and_bucket(aws_env: MotoServer) -> None:
    await put_s3_object("noetl-scripts", "t.py", CODE)
    with pytest.raises(ToolError, match=r"no object 'nope\.py' in bucket 'noetl-scripts'") as info:
        await load_code(script("s3://noetl-scripts/nope.py"), make_ctx())
    assert info.value.details == {"bucket": "noetl-scripts", "key": "nope.py"}
    with pytest.raises(ToolError, match="no bucket 'no-such-bucket'"):
        await load_code(script("s3://no-such-bucket/t.py"), make_ctx())
    with pytest.raises(ToolError, match="BUCKET/KEY"):
        await load_code(script("s3://only-bucket"), make_ctx())


# --- gcs ---------------------------------------------------------------------------------


async def test_gcs_from_emulator(gcs_env: GcsEmulator) -> None:
    await put_gcs_object(gcs_env, "noetl-scripts", "jobs/transform.py", CODE)
    ctx = make_ctx()
    assert await load_code(script("gs://noetl-scripts/jobs/transform.py"), ctx) == CODE
    fact = recorded(ctx)
    assert fact["source"] == "gcs"
    assert fact["sha256"] == hashlib.sha256(CODE.encode()).hexdigest()


async def test_gcs_with_service_account_credential(gcs_env: GcsEmulator) -> None:
    await put_gcs_object(gcs_env, "noetl-scripts", "t.py", CODE)
    key = {
        "type": "service_account",
        "project_id": "p",
        "client_email": "sa@p.iam",
        "private_key": "-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n",
        "token_uri": "http://127.0.0.1:9/token",
    }
    ctx = make_ctx({"gcs_sa": key})
    assert await load_code(script("gs://noetl-scripts/t.py", auth="gcs_sa"), ctx) == CODE
    assert key["private_key"] in ctx.secrets.values()


async def test_gcs_credential_must_be_a_key(gcs_env: GcsEmulator) -> None:
    ctx = make_ctx({"not_a_key": {"token": "x"}})
    with pytest.raises(ToolError, match="not a service-account key"):
        await load_code(script("gs://b/t.py", auth="not_a_key"), ctx)


async def test_gcs_missing_object(gcs_env: GcsEmulator) -> None:
    await put_gcs_object(gcs_env, "noetl-scripts", "t.py", CODE)
    with pytest.raises(ToolError, match=r"no object 'nope\.py' in bucket 'noetl-scripts'"):
        await load_code(script("gs://noetl-scripts/nope.py"), make_ctx())
