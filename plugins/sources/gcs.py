"""Scripts from Google Cloud Storage through gcloud-aio-storage.

`source.auth` names a service-account credential (the key file's JSON, as stored, or under
`service_account`); without it, Google's default credentials apply. gcloud-aio itself
honours `STORAGE_EMULATOR_HOST` (and then sends no token at all).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import aiohttp
from gcloud.aio.storage import Storage

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext
from plugins.cloud_auth import named_credential, service_account_file
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
    prefix = f"script {where}"
    name, credential = await named_credential(
        ctx, auth, prefix=prefix, field="source.auth", error_type="script"
    )
    return service_account_file(ctx, name, credential, prefix=prefix, error_type="script")
