"""Credential routes (`/api/credentials`): never a secret value in an answer."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from noetl.api.common import ApiError, Route, RouteGroup, body, json_response
from noetl.api.schemas import CredentialBody, CredentialDetail, CredentialInfo, CredentialSet
from noetl.api.schemas import ErrorBody as Err
from noetl.client import Client
from noetl.errors import ConfigError
from noetl.secrets import redact
from noetl.store.credentials import Credential, CredentialStore, validate_credential, validate_name
from noetl.store.credentials import CredentialInfo as StoredInfo

__all__ = ["Credentials", "credential_store"]

_PATH: Final = "/api/credentials/{name}"


def _info(item: StoredInfo | Credential) -> CredentialInfo:
    return CredentialInfo(
        name=item.name,
        type=item.type,
        created_at=item.created_at.isoformat(),
        updated_at=item.updated_at.isoformat(),
    )


async def credential_store(client: Client) -> CredentialStore:
    """The credential store of `client`'s database, with this process's key."""
    try:
        return await CredentialStore.open(client.store.pool, client.settings)
    except ConfigError as exc:
        raise ApiError(500, f"credentials are unavailable: {exc}") from None


class Credentials(RouteGroup):
    """Routes over the encrypted credential table."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._credentials: CredentialStore | None = None

    def routes(self) -> list[Route]:
        tag = "credentials"
        return [
            Route(
                "GET",
                "/api/credentials",
                self.list_credentials,
                "Names, types and dates of every credential (never data)",
                tag,
                {200: list[CredentialInfo], 500: Err},
            ),
            Route(
                "GET",
                _PATH,
                self.get_credential,
                "A credential with its secret values masked",
                tag,
                {200: CredentialDetail, 404: Err, 500: Err},
            ),
            Route(
                "PUT",
                _PATH,
                self.put_credential,
                "Create or replace a credential",
                tag,
                {200: CredentialSet, 201: CredentialSet, 400: Err, 500: Err},
                body=CredentialBody,
            ),
            Route(
                "DELETE",
                _PATH,
                self.delete_credential,
                "Delete a credential",
                tag,
                {204: None, 404: Err, 500: Err},
            ),
        ]

    async def _store(self) -> CredentialStore:
        if self._credentials is None:
            # Loaded on first use, not at startup: a gateway that never touches credentials
            # needs no key (and does not create a key file in NOETL_HOME).
            self._credentials = await credential_store(self.client)
        return self._credentials

    async def list_credentials(self, request: web.Request) -> web.Response:
        """Names, types and dates of every credential (never data)."""
        store = await self._store()
        return json_response([_info(item) for item in await store.list()])

    async def get_credential(self, request: web.Request) -> web.Response:
        """A credential with its secret values masked."""
        name = request.match_info["name"]
        store = await self._store()
        try:
            found = await store.find(name)
        except ConfigError as exc:  # stored with another key: the server's problem
            raise ApiError(500, str(exc)) from None
        if found is None:
            raise ApiError(404, f"no credential `{name}`")
        info = _info(found)
        return json_response(
            CredentialDetail(
                name=info.name,
                type=info.type,
                data=redact(found.data),
                created_at=info.created_at,
                updated_at=info.updated_at,
            )
        )

    async def put_credential(self, request: web.Request) -> web.Response:
        """Create or replace a credential: 201 when created, 200 when replaced."""
        name = request.match_info["name"]
        sent = await body(request, CredentialBody)
        try:
            validate_name(name)
            kind, data = validate_credential(sent.type, sent.data)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        store = await self._store()
        created = await store.set(name, kind, data)
        return json_response(
            CredentialSet(name=name, type=kind, created=created), status=201 if created else 200
        )

    async def delete_credential(self, request: web.Request) -> web.Response:
        """Delete a credential: 204, or 404 when there is none."""
        name = request.match_info["name"]
        store = await self._store()
        if not await store.delete(name):
            raise ApiError(404, f"no credential `{name}`")
        return web.Response(status=204)
