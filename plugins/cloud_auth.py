"""The credentials of the object stores, read alike by the s3/gcs sinks and script sources.

Every secret a credential holds is handed to the runner's masker before the call is made.
`prefix` starts each error message (`gcs sink`, `script gs://b/k`) and `error_type` is the
caller's (`sink`, `script`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from noetl.errors import ToolError
from plugins.base import ToolContext
from plugins.sql_auth import add_secret

#: The secret fields of an `aws` credential.
AWS_SECRETS = ("aws_secret_access_key", "aws_session_token")


async def named_credential(
    ctx: ToolContext,
    auth: Any,
    *,
    prefix: str,
    field: str,
    error_type: str,
    names: tuple[str, ...] = ("credential",),
) -> tuple[str, dict[str, Any]]:
    """The credential `auth` names (a name, or a mapping with the first of `names` it has),
    resolved through the playbook's bindings: `(name, data)`."""
    if isinstance(auth, Mapping):
        name = next((auth[key] for key in names if key in auth), None)
    else:
        name = auth
    if not isinstance(name, str):
        raise ToolError(f"{prefix}: `{field}` must name a credential", error_type=error_type)
    return name, dict(await ctx.credential(ctx.bindings.get(name, name)))


def mask_aws_secrets(ctx: ToolContext, name: str, credential: Mapping[str, Any]) -> None:
    """Hand an `aws` credential's secrets to the masker."""
    for field in AWS_SECRETS:
        add_secret(ctx, name, field, credential.get(field))


def service_account_file(
    ctx: ToolContext, name: str, credential: Mapping[str, Any], *, prefix: str, error_type: str
) -> io.StringIO:
    """The service-account key in `credential` (its JSON, as stored or under
    `service_account`) as the file object gcloud-aio reads; its private key is masked."""
    key = credential.get("service_account", credential)
    if isinstance(key, str):
        try:
            key = json.loads(key)
        except ValueError as exc:
            raise ToolError(
                f"{prefix}: credential {name!r} holds no service-account JSON",
                error_type=error_type,
            ) from exc
    if not isinstance(key, Mapping) or "type" not in key:
        raise ToolError(
            f"{prefix}: credential {name!r} is not a service-account key (expected "
            "its JSON, with `type`, `client_email`, `private_key`)",
            error_type=error_type,
        )
    add_secret(ctx, name, "private_key", key.get("private_key"))
    return io.StringIO(json.dumps(key))
