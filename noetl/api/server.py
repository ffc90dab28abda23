"""Serving the REST API on a TCP port, started and stopped from a running event loop."""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from noetl.api.app import make_app
from noetl.client import Client
from noetl.errors import ConfigError

__all__ = ["ApiServer", "allowed_hosts"]

log = logging.getLogger("noetl.api")

# Requests still running at stop get this long to finish; open event streams end at once.
_SHUTDOWN_SECONDS = 5.0
# Longest time the server drains the unread body of a request it has answered.
_LINGER_SECONDS = 10.0


class ApiServer:
    """The API gateway listening on `host`:`port` (`port=0` picks a free port).

    Without a token it listens on loopback only, and refuses any other address unless
    `insecure`: anyone who reaches an open API runs code on the runners. With a token it
    listens on every address by default.

    A client gets `read_timeout` seconds to send a request's headers (counted from the
    connection, or from the end of its previous response; an idle keep-alive connection is
    closed after as long) and as long again for its body; slower clients are cut off.
    Responses are not timed: event streams stay open.
    """

    def __init__(
        self,
        client: Client,
        *,
        host: str | None = None,
        port: int = 8082,
        token: str | None = None,
        insecure: bool = False,
        allowed_hosts: frozenset[str] = frozenset(),
        read_timeout: float = 30.0,
    ) -> None:
        self.host = host or ("0.0.0.0" if token else "127.0.0.1")
        if not token and not insecure and not _loopback(self.host):
            raise ConfigError(
                f"the API would serve anyone who reaches {self.host} without a token: set "
                "NOETL_API_TOKEN, listen on 127.0.0.1, or pass --insecure to accept it"
            )
        self.port = port
        self.open = not token
        self._app = make_app(
            client, token=token, allowed_hosts=allowed_hosts, read_timeout=read_timeout
        )
        self.read_timeout = read_timeout
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; afterwards `port` is the bound port. Raises ConfigError when the address
        cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("the API server is already started")
        # aiohttp has no header timeout of its own, but its keep-alive timer closes a
        # connection that is still waiting for a complete request when it fires: timed from
        # the connection (or the previous response), it bounds the time to send headers.
        runner = web.AppRunner(
            self._app,
            shutdown_timeout=_SHUTDOWN_SECONDS,
            keepalive_timeout=self.read_timeout,
            lingering_time=min(_LINGER_SECONDS, self.read_timeout),
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the API cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        # With port 0 the system chose it; a host with several addresses binds each to a
        # port of its own, and the first is reported.
        self.port = int(runner.addresses[0][1])
        log.info("API listening on %s:%d", self.host, self.port)
        if self.open:
            log.warning(
                "the API has no token (NOETL_API_TOKEN): whoever reaches %s:%d may run code",
                self.host,
                self.port,
            )

    async def stop(self) -> None:
        """Stop listening, end open streams and wait briefly for running requests."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(setting: str) -> frozenset[str]:
    """The host names of `NOETL_API_ALLOWED_HOSTS` (comma-separated, ports ignored)."""
    return frozenset(
        name.strip().lower().rsplit(":", 1)[0] for name in setting.split(",") if name.strip()
    )
