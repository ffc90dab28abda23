"""The catalog actor: validates and registers playbooks, answers lookups by path/version."""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg

from actors.base import Actor
from noetl import dsl
from noetl.bus import CATALOG_GET, CATALOG_REGISTER
from noetl.errors import CatalogError, PlaybookError
from noetl.messages import CatalogReply, GetPlaybook, RegisterPlaybook, encode
from plugins.registry import known_kinds


class CatalogActor(Actor):
    """Serves `noetl.catalog.register` and `noetl.catalog.get` (request/reply)."""

    role = "catalog"

    async def start(self) -> None:
        """Serve registration and lookup requests (queue group: any catalog may answer)."""
        await super().start()
        await self.bus.serve(CATALOG_REGISTER, self._on_register, queue="catalog")
        await self.bus.serve(CATALOG_GET, self._on_get, queue="catalog")

    async def register(self, request: RegisterPlaybook) -> CatalogReply:
        """Validate `request.content` and store it as the next version of its path."""
        try:
            playbook = dsl.load_text(
                request.content, filename=request.filename, known_kinds=known_kinds()
            )
        except PlaybookError as exc:
            return CatalogReply(ok=False, problems=exc.problems)
        version, created = await self.store.register_playbook(
            playbook.catalog_path, request.content, request.files
        )
        return CatalogReply(ok=True, path=playbook.catalog_path, version=version, created=created)

    async def get(self, request: GetPlaybook) -> CatalogReply:
        """The content registered at `request.path` / `request.version`."""
        try:
            version, content = await self.store.get_playbook(request.path, request.version)
        except CatalogError as exc:
            return CatalogReply(ok=False, problems=[str(exc)])
        return CatalogReply(ok=True, path=request.path, version=version, content=content)

    async def _on_register(self, msg: Msg) -> None:
        try:
            request = msgspec.msgpack.decode(msg.data, type=RegisterPlaybook)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await msg.respond(encode(CatalogReply(ok=False, problems=[f"bad request: {exc}"])))
            return
        self.spawn(self._reply(msg, self.register(request)))

    async def _on_get(self, msg: Msg) -> None:
        try:
            request = msgspec.msgpack.decode(msg.data, type=GetPlaybook)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await msg.respond(encode(CatalogReply(ok=False, problems=[f"bad request: {exc}"])))
            return
        self.spawn(self._reply(msg, self.get(request)))

    async def _reply(self, msg: Msg, work: object) -> None:
        try:
            reply = await work  # type: ignore[misc]
        except Exception as exc:  # the requester must always get an answer
            self.log.exception("catalog request failed")
            reply = CatalogReply(ok=False, problems=[f"internal error: {exc}"])
        await msg.respond(encode(reply))
