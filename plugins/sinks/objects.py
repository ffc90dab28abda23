"""The `s3` and `gcs` sinks: rows as one object, in the file sink's formats.

`{kind: s3, uri: s3://bucket/key, format, auth}` / `{kind: gcs, uri: gs://bucket/name, ...}`;
without `format`, the key's suffix decides. The object is replaced whole on every write.
s3: aioboto3; `auth` names a credential {aws_access_key_id, aws_secret_access_key,
aws_session_token?, region?, endpoint_url?}, else boto's usual chain applies (botocore
honours AWS_ENDPOINT_URL). gcs: gcloud-aio-storage; `auth` names a service-account key
credential, else Google's default credentials; STORAGE_EMULATOR_HOST is honoured.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from noetl.errors import ToolError, ToolTimeout
from plugins.base import ToolContext
from plugins.cloud_auth import mask_aws_secrets, named_credential, service_account_file
from plugins.sinks.file import CONTENT_TYPES, encode_rows, format_of

DEFAULT_TIMEOUT = 60


def split_uri(uri: Any, scheme: str, who: str) -> tuple[str, str]:
    """`(bucket, key)` of `scheme://bucket/key`."""
    prefix = f"{scheme}://"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        raise ToolError(
            f"{who}: `uri` must look like {prefix}BUCKET/KEY, not {uri!r}", error_type="sink"
        )
    bucket, _, key = uri[len(prefix) :].partition("/")
    if not bucket or not key:
        raise ToolError(
            f"{who}: `uri` must look like {prefix}BUCKET/KEY, not {uri!r}", error_type="sink"
        )
    return bucket, key


async def _encode(rows: list[dict[str, Any]], fmt: str, uri: str, who: str) -> bytes:
    try:
        return await asyncio.to_thread(encode_rows, rows, fmt)
    except ToolError as exc:
        raise ToolError(f"{who}: {uri}: {exc}", error_type="sink") from exc


class S3Sink:
    """Sink kind `s3`."""

    kind = "s3"

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Put `rows` as the object `spec["uri"]`; `{"rows": n, "uri", "format", "bytes"}`."""
        from botocore.exceptions import BotoCoreError, ClientError

        from plugins.sources.s3 import session_of  # aioboto3 is slow to import: only here

        who = "s3 sink"
        uri = spec.get("uri")
        bucket, key = split_uri(uri, "s3", who)
        fmt = format_of(spec, key, who)
        credential: dict[str, Any] = {}
        if spec.get("auth") is not None:
            name, credential = await _credential(ctx, spec["auth"], who)
            mask_aws_secrets(ctx, name, credential)
        data = await _encode(rows, fmt, f"s3://{bucket}/{key}", who)
        session = session_of(credential, spec.get("region"))
        where = f"s3://{bucket}/{key}"
        try:
            async with session.client(
                "s3",
                endpoint_url=spec.get("endpoint_url") or credential.get("endpoint_url") or None,
            ) as client:
                await client.put_object(
                    Bucket=bucket, Key=key, Body=data, ContentType=CONTENT_TYPES[fmt]
                )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                raise ToolError(
                    f"{who}: {where}: no bucket {bucket!r}",
                    error_type="sink",
                    bucket=bucket,
                    key=key,
                ) from exc
            raise ToolError(
                f"{who}: {where}: S3 refused: {code} {error.get('Message', '')}".rstrip(),
                error_type="sink",
                bucket=bucket,
                key=key,
            ) from exc
        except BotoCoreError as exc:
            raise ToolError(
                f"{who}: {where}: {exc}", error_type="sink", bucket=bucket, key=key
            ) from exc
        return {"rows": len(rows), "uri": where, "format": fmt, "bytes": len(data)}


class GcsSink:
    """Sink kind `gcs`."""

    kind = "gcs"

    async def write(
        self, ctx: ToolContext, spec: dict[str, Any], rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Upload `rows` as the object `spec["uri"]`; `{"rows": n, "uri", "format", "bytes"}`."""
        import aiohttp
        from gcloud.aio.storage import Storage  # slow to import: only steps that use it pay

        who = "gcs sink"
        bucket, name = split_uri(spec.get("uri"), "gs", who)
        where = f"gs://{bucket}/{name}"
        fmt = format_of(spec, name, who)
        service_file = await _service_file(ctx, spec.get("auth"), who)
        data = await _encode(rows, fmt, where, who)
        timeout = int(spec.get("timeout") or ctx.timeout or DEFAULT_TIMEOUT)
        try:
            async with Storage(service_file=service_file) as storage:
                await storage.upload(
                    bucket, name, data, content_type=CONTENT_TYPES[fmt], timeout=timeout
                )
        except aiohttp.ClientResponseError as exc:
            what = (
                f"no bucket {bucket!r}" if exc.status == 404 else f"GCS answered HTTP {exc.status}"
            )
            raise ToolError(
                f"{who}: {where}: {what}",
                error_type="sink",
                bucket=bucket,
                key=name,
                status_code=exc.status,
            ) from exc
        except TimeoutError as exc:
            raise ToolTimeout(f"{who}: {where}: no answer from GCS within {timeout}s") from exc
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: an unusable key
            raise ToolError(
                f"{who}: {where}: {type(exc).__name__}: {exc}",
                error_type="sink",
                bucket=bucket,
                key=name,
            ) from exc
        return {"rows": len(rows), "uri": where, "format": fmt, "bytes": len(data)}


async def _credential(ctx: ToolContext, auth: Any, who: str) -> tuple[str, dict[str, Any]]:
    return await named_credential(
        ctx, auth, prefix=who, field="auth", error_type="sink", names=("credential", "key")
    )


async def _service_file(ctx: ToolContext, auth: Any, who: str) -> io.StringIO | None:
    """The service-account key named by `auth`, as the file object gcloud-aio reads."""
    if auth is None:
        return None
    name, credential = await _credential(ctx, auth, who)
    return service_account_file(ctx, name, credential, prefix=who, error_type="sink")
