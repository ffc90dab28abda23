"""Scripts from Google Cloud Storage through gcloud-aio-storage.

`source.auth` names a service-account credential (the key file's JSON, as stored, or under
`service_account`); without it, Google's default credentials apply. gcloud-aio itself
honours `STORAGE_EMULATOR_HOST` (and then sends no token at all).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from gcloud.aio.storage import Storage

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext
from plugins.sources import split_bucket_uri

DEFAULT_TIMEOUT = 30


async def read(uri: str, source: Mapping[str, Any], ctx: ToolContext) -> bytes:
    """The bytes of the object `gs://bucket/name`."""
    bucket, name = split_bucket_uri(uri, "gs", source)
    where = f"gs://{bucket}/{name}"
    service_file = await _service_file(where, source.get("auth"), ctx)
    timeout = int(source.get("timeout") or DEFAULT_TIMEOUT)
    try:
        async with Storage(service_file=service_file) as storage:
            return await storage.download(bucket, name, timeout=timeout)
    except aiohttp.ClientResponseError as exc:
        if exc.status == 404:
            raise ToolError(
                f"script {where}: no object {name!r} in bucket {bucket!r}",
                error_type="script",
                bucket=bucket,
                key=name,
            ) from exc
        raise ToolError(
            f"script {where}: GCS answered HTTP {exc.status}",
            error_type="script",
            bucket=bucket,
            key=name,
            status_code=exc.status,
        ) from exc
    except TimeoutError as exc:
        raise ToolTimeout(f"script {where}: no answer from GCS within {timeout}s") from exc
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: an unusable key
        raise ToolError(
            f"script {where}: {type(exc).__name__}: {exc}",
            error_type="script",
            bucket=bucket,
            key=name,
        ) from exc


async def _service_file(where: str, auth: Any, ctx: ToolContext) -> io.StringIO | None:
    """The service-account key named by `auth`, as the file object gcloud-aio reads."""
    if auth is None:
        return None
    name = auth.get("credential") if isinstance(auth, Mapping) else auth
    if not isinstance(name, str):
        raise ToolError(
            f"script {where}: `source.auth` must name a credential", error_type="script"
        )
    credential = dict(await ctx.credential(ctx.bindings.get(name, name)))
    key = credential.get("service_account", credential)
    if isinstance(key, str):
        try:
            key = json.loads(key)
        except ValueError as exc:
            raise ToolError(
                f"script {where}: credential {name!r} holds no service-account JSON",
                error_type="script",
            ) from exc
    if not isinstance(key, Mapping) or "type" not in key:
        raise ToolError(
            f"script {where}: credential {name!r} is not a service-account key "
            "(expected its JSON, with `type`, `client_email`, `private_key`)",
            error_type="script",
        )
    if key.get("private_key"):
        ctx.secrets[f"{name}.private_key"] = str(key["private_key"])
    return io.StringIO(json.dumps(key))
