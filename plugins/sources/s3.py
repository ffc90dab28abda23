"""Scripts from Amazon S3 (or any S3-compatible store) through aioboto3.

`source.auth` names a credential `{aws_access_key_id, aws_secret_access_key,
aws_session_token?, region?, endpoint_url?}`; without it, boto's usual chain (environment,
profile, instance role) applies. botocore itself honours `AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aioboto3
from botocore.exceptions import BotoCoreError, ClientError

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.cloud_auth import mask_aws_secrets, named_credential
from plugins.sources import split_bucket_uri

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


async def read(uri: str, source: Mapping[str, Any], ctx: ToolContext) -> bytes:
    """The bytes of the object `s3://bucket/key`."""
    bucket, key = split_bucket_uri(uri, "s3", source)
    credential: dict[str, Any] = {}
    auth = source.get("auth")
    if auth is not None:
        name, credential = await named_credential(
            ctx, auth, prefix=f"script {uri}", field="source.auth", error_type="script"
        )
        mask_aws_secrets(ctx, name, credential)
    session = session_of(credential, source.get("region"))
    where = f"s3://{bucket}/{key}"
    try:
        async with session.client(
            "s3", endpoint_url=credential.get("endpoint_url") or None
        ) as client:
            response = await client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _MISSING:
            raise ToolError(
                f"script {where}: no object {key!r} in bucket {bucket!r}",
                error_type="script",
                bucket=bucket,
                key=key,
            ) from exc
        if code == "NoSuchBucket":
            raise ToolError(
                f"script {where}: no bucket {bucket!r}", error_type="script", bucket=bucket, key=key
            ) from exc
        raise ToolError(
            f"script {where}: S3 refused: {code} {error.get('Message', '')}".strip(),
            error_type="script",
            bucket=bucket,
            key=key,
        ) from exc
    except BotoCoreError as exc:
        # No credentials, an unreachable endpoint, a bad region, ...
        raise ToolError(
            f"script {where}: {exc}", error_type="script", bucket=bucket, key=key
        ) from exc


def session_of(credential: Mapping[str, Any], region: str | None) -> aioboto3.Session:
    """An aioboto3 session for an `aws` credential; without one, the environment's own
    configuration (keys, profile, `AWS_ENDPOINT_URL`) applies."""
    return aioboto3.Session(
        aws_access_key_id=credential.get("aws_access_key_id"),
        aws_secret_access_key=credential.get("aws_secret_access_key"),
        aws_session_token=credential.get("aws_session_token"),
        region_name=region or credential.get("region"),
    )
