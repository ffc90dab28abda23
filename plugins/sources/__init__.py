"""Where a tool's code comes from: an external `script`, base64 text, or inline text.

`script: {uri, source: {type: file|http|s3|gcs, ...}}` is read by the module of its source
type; without `source.type`, the uri's scheme decides (s3://, gs://, http(s)://, else a
file). Every loaded script is recorded in the command's events with its hash and size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from noetl.errors import ToolError
from plugins.base import ToolContext

Reader = Callable[[str, Mapping[str, Any], ToolContext], Awaitable[bytes]]

#: Each type's reader is `read` in the module of that name, imported on first use (the
#: cloud SDKs are slow to import and most steps never need them).
SOURCE_TYPES = ("file", "http", "s3", "gcs")


async def load_code(
    spec: dict[str, Any],
    ctx: ToolContext,
    *,
    code_keys: tuple[str, ...] = ("code",),
    b64_keys: tuple[str, ...] = ("code_b64",),
) -> str | None:
    """The code a tool runs: `script` > the first of `b64_keys` > the first of `code_keys`.

    None when `spec` has none of them. A key whose value is null counts as absent.
    """
    script = spec.get("script")
    if script is not None:
        return await load_script(script, ctx)
    for key in b64_keys:
        if spec.get(key) is not None:
            return _decode_b64(key, spec[key])
    for key in code_keys:
        value = spec.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise ToolError(
                    f"`{key}` must be text, not {type(value).__name__}", error_type="script"
                )
            return value
    return None


async def load_script(script: Any, ctx: ToolContext) -> str:
    """The text of `script` (`{uri, source}`), recorded in the command's events."""
    if not isinstance(script, Mapping) or not isinstance(script.get("uri"), str):
        raise ToolError(
            "`script` must be a mapping with a `uri`, like "
            "{uri: ./transform.py, source: {type: file}}",
            error_type="script",
        )
    uri: str = script["uri"]
    source = script.get("source") or {}
    if not isinstance(source, Mapping):
        raise ToolError(
            "`script.source` must be a mapping like {type: s3, region: ...}", error_type="script"
        )
    kind = source.get("type") or source_type(uri)
    if kind not in SOURCE_TYPES:
        raise ToolError(
            f"script {uri}: unknown source type {kind!r} (one of {', '.join(SOURCE_TYPES)})",
            error_type="script",
        )
    reader: Reader = importlib.import_module(f"{__name__}.{kind}").read
    data = await reader(uri, source, ctx)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ToolError(f"script {uri} is not UTF-8 text: {exc}", error_type="script") from exc
    ctx.record(
        "script", uri=uri, source=kind, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    return text


def source_type(uri: str) -> str:
    """The source type a uri's scheme implies."""
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("gs://"):
        return "gcs"
    if uri.startswith(("http://", "https://")):
        return "http"
    return "file"


def split_bucket_uri(uri: str, scheme: str, source: Mapping[str, Any]) -> tuple[str, str]:
    """`(bucket, key)` of `scheme://bucket/key`, or of a plain key with `source.bucket`."""
    prefix = f"{scheme}://"
    if uri.startswith(prefix):
        bucket, _, key = uri[len(prefix) :].partition("/")
    else:
        bucket, key = source.get("bucket") or "", uri.lstrip("/")
    if not bucket or not key:
        raise ToolError(
            f"script {uri}: expected {prefix}BUCKET/KEY (or a key with `source.bucket`)",
            error_type="script",
        )
    return str(bucket), key


def _decode_b64(key: str, value: Any) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ToolError(f"`{key}` is not base64 of UTF-8 text: {exc}", error_type="script") from exc
