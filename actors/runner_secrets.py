"""The secrets a runner knows besides a command's: the runtime's own (masked in everything it
records) and the stored credentials a playbook's `keychain` names."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from noetl.config import Settings
from noetl.errors import ToolError
from plugins.base import ToolContext


async def keychain_of(ctx: ToolContext, names: set[str]) -> dict[str, Any]:
    """NoETL's `keychain.NAME`: the data of the stored credential each entry names
    (decrypted through `ctx`, so its secret values are masked in what the command records).
    Raises ToolError for a name the playbook's `keychain` does not declare."""
    found: dict[str, Any] = {}
    for name in sorted(names):
        if name not in ctx.bindings:
            raise ToolError(
                f"`keychain.{name}` is not declared: add `{{name: {name}, kind: credential, "
                "credential: STORED_NAME}` to the playbook's `keychain`",
                error_type="credential",
            )
        found[name] = dict(await ctx.credential(ctx.bindings[name]))
    return found


def runtime_secrets(settings: Settings) -> list[str]:
    """The runtime's own secret values: the API token, the encryption key, the store's and
    the bus's passwords (from their URLs) and every `NOETL_SECRET_*` variable."""
    values = [settings.api_token or "", settings.encryption_key or ""]
    for url in (settings.pg_dsn, settings.nats_url):
        for part in (url or "").split(","):
            password = urlsplit(part.strip()).password
            if password:
                values.append(unquote(password))
    values += [v for k, v in os.environ.items() if k.startswith("NOETL_SECRET_")]
    return [value for value in values if value]
