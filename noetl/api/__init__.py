"""The REST API gateway: an aiohttp server over the store and the actors (not an actor)."""

from noetl.api.app import make_app
from noetl.api.server import ApiServer, allowed_hosts

__all__ = ["ApiServer", "allowed_hosts", "make_app"]
